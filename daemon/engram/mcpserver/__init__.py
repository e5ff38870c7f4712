"""The MCP bridge: ``engram mcp`` serves the Model Context Protocol over stdio and forwards
tools (remember, recall, forget, ask, graph_query, audit_prove, status) and resources (recent
episodes, an episode by id) to the running engramd.

Named ``mcpserver`` so that it never shadows the ``mcp`` SDK it is built on. Modules:
``tools`` (input models, the daemon method of each tool, the text a model reads back),
``server`` (:class:`~engram.mcpserver.server.Bridge`, ``build_server``, ``serve_stdio``) and
``cli`` (the ``engram mcp`` command). This package imports nothing itself, so that the ``engram``
command does not load the MCP SDK unless ``engram mcp`` runs.
"""
