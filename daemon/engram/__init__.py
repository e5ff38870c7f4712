"""engram: a local-first cognitive daemon.

The public Python API is small: the clients that talk to a running ``engramd`` and the error
hierarchy they raise. Everything else is the daemon's inside.
"""

from engram.errors import (
    Conflict,
    ConfigError,
    DaemonUnreachable,
    EngramError,
    IntegrityError,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    NotFound,
    Overloaded,
    ParseError,
    PolicyDenied,
    RPCError,
    Timeout,
    Unavailable,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "AsyncClient",
    "Client",
    "Conflict",
    "ConfigError",
    "DaemonUnreachable",
    "EngramError",
    "IntegrityError",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "MethodNotFound",
    "NotFound",
    "Overloaded",
    "ParseError",
    "PolicyDenied",
    "RPCError",
    "Timeout",
    "Unavailable",
]


def __getattr__(name: str):  # the clients pull in anyio; import them only when asked for
    if name in ("AsyncClient", "Client"):
        from engram import client

        return getattr(client, name)
    raise AttributeError(f"module 'engram' has no attribute {name!r}")
