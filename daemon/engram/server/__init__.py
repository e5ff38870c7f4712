"""The Unix-socket JSON-RPC 2.0 server: framing, dispatch, connections, the listening socket."""
