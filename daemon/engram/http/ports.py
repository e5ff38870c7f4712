"""What the HTTP gateway needs of the rest of the daemon, handed to it by the composition root:

- :class:`RequestChain`: running one request through the daemon's request chain as a principal
  (the dispatcher: policy, params validation, audit, metrics, tracing, deadline), as the socket
  server does for its clients.
- :class:`HealthStatus`: the daemon's overall health (ok, degraded or failing), for ``/healthz``.
- :class:`MetricsText`: the daemon's metrics in Prometheus text format, for ``/metrics``.
"""

from __future__ import annotations

from typing import Any, Protocol

from engram.principal import Principal
from engram.server.jsonrpc import Request
from engram.server.methods import Connection

__all__ = ["HealthStatus", "MetricsText", "RequestChain"]


class RequestChain(Protocol):
    async def dispatch(self, request: Request, principal: Principal, connection: Connection) -> Any:
        """The request's JSON-ready result; raises the RPCError to answer with."""
        ...


class HealthStatus(Protocol):
    async def __call__(self) -> str:
        """ok, degraded or failing."""
        ...


class MetricsText(Protocol):
    def __call__(self) -> str: ...
