"""The server's settings section (``[server]``)."""

from __future__ import annotations

from pydantic import Field

from engram.sections import PositiveSeconds, Section

__all__ = ["ServerSettings"]


class ServerSettings(Section):
    """The Unix-socket JSON-RPC server. Limits are reloadable with SIGHUP."""

    socket_group: str | None = Field(
        default=None,
        description="Group that may connect; the socket becomes 0660 with this group instead of 0600.",
    )
    max_frame_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest request line accepted; longer lines get -32600 (frame_too_large).",
    )
    max_buffered_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        le=64 * 1024 * 1024 * 1024,
        description="Bytes of request lines not yet parsed that all connections together may hold beyond "
        "128 KiB each; a line that finds them spent is dropped with -32003 (buffered_limit).",
    )
    max_json_depth: int = Field(
        default=64,
        ge=8,
        le=512,
        description="Deepest nesting of arrays and objects accepted in a frame (the envelope counts); "
        "deeper frames get -32600 (too_deep) before they are parsed.",
    )
    max_connections: int = Field(
        default=1024, ge=1, le=65_536, description="Connections served at once; more are refused with -32003."
    )
    max_inflight: int = Field(
        default=512, ge=1, le=65_536, description="Requests executing at once across all connections."
    )
    max_inflight_per_connection: int = Field(
        default=64, ge=1, le=65_536, description="Requests executing at once on one connection."
    )
    request_timeout: PositiveSeconds = Field(
        default=60.0, description="Seconds a request may run before it is answered with -32004."
    )
    idle_timeout: PositiveSeconds = Field(
        default=600.0,
        description="Seconds a connection with no request in flight and no subscription may stay silent.",
    )
    read_timeout: PositiveSeconds = Field(
        default=30.0, description="Seconds a client may take to finish a request line it has started."
    )
    write_timeout: PositiveSeconds = Field(
        default=10.0, description="Seconds a client may take to read a response before it is dropped."
    )
    layer_timing: bool = Field(
        default=False,
        description="Add up the time each layer of the request chain spends on its own, exported as "
        "engram_request_layer_seconds_total (costs a few µs per request; for engram bench rpc). Read at start.",
    )
    drain_timeout: PositiveSeconds = Field(
        default=10.0, description="Grace period for in-flight requests on SIGTERM before they are cancelled."
    )
