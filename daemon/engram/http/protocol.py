"""uvicorn's h11 protocol with a time limit on the request head.

uvicorn closes a keep-alive connection that stays idle after an answer (``timeout_keep_alive``),
but not a new connection that never sends a byte, nor one whose request line and headers never
end (a slowloris): either would hold one of ``http.max_connections`` for as long as the client
likes, and enough of them would lock every other client out. Here the head must be complete
within ``head_timeout`` seconds (``http.read_timeout``) of the connection being made, or of the
first byte of a following request on a kept-alive connection; otherwise the connection is closed.
The body has its own limit (the gateway reads it under the same timeout).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["head_timed_protocol"]


class _HeadTimedProtocol(H11Protocol):
    head_timeout: float = 30.0
    _head_timer: asyncio.TimerHandle | None = None

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_expired)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._waiting_for_head() and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self._waiting_for_head():
            self._arm_head_timer()  # a following request on a kept-alive connection begins
        super().data_received(data)
        if not self._waiting_for_head():
            self._cancel_head_timer()  # the head is complete

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)


def head_timed_protocol(head_timeout: float) -> type[H11Protocol]:
    """The protocol class for uvicorn's ``http`` setting, with this head timeout."""
    return type("HeadTimedH11Protocol", (_HeadTimedProtocol,), {"head_timeout": head_timeout})
