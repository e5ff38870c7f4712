"""The :class:`~engram.server.methods.Connection` an HTTP request's handler sees.

An HTTP request is a connection of its own as far as handlers go: what it pushes is either
forwarded to the response (the ``infer.chunk`` notifications of a streamed chat answer, into a
bounded stream the response reads) or has nowhere to go (event subscriptions need the socket).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from anyio.abc import ObjectSendStream

from engram.principal import Principal

__all__ = ["HttpConnection"]

CHUNK_NOTIFICATION = "infer.chunk"  # engram.providers.api.CHUNK_NOTIFICATION, the stream's pushes


class HttpConnection:
    subscriptions = 0

    def __init__(
        self, conn_id: int, principal: Principal, chunks: ObjectSendStream[dict[str, Any]] | None = None,
        traceparent: str | None = None,
    ) -> None:
        self.id = conn_id
        self.principal = principal
        self._chunks = chunks
        # The HTTP request's traceparent header: its calls become children of the client's trace.
        self.traceparent = traceparent
        self._close_callbacks: list[Callable[[], None]] = []

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        # Waits while the stream is full: a client that reads slowly slows the answer down
        # instead of growing a buffer (http.stream_buffer chunks at most).
        if self._chunks is not None and method == CHUNK_NOTIFICATION:
            await self._chunks.send(params)

    def on_close(self, callback: Callable[[], None]) -> None:
        self._close_callbacks.append(callback)

    def close(self) -> None:
        """The response is sent: release what the request held (an event subscription opened
        over HTTP ends with it; pushes need the socket)."""
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            callback()

    def declare_client(self, name: str) -> Principal:
        # For this request only: the next request is a connection of its own.
        self.principal = self.principal.model_copy(update={"client": name})
        return self.principal

    def on_drain(self, pending: Callable[[], int]) -> None:
        pass

    def start_soon(self, func: Callable[[], Awaitable[None]], name: str) -> None:
        pass  # a push pump would outlive the request it belongs to
