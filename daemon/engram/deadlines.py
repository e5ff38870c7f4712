"""A request's deadline, and the earliest-deadline-first queue that work waits in.

A client may give any request a deadline (``params._meta.deadline_ms``, see docs/protocol.md):
milliseconds from when the daemon read it, so that the client's clock need not agree with ours.
The request chain turns it into a :class:`RequestDeadline` on the daemon's monotonic clock and
hands it, as a value, to the handler (``RequestContext.deadline``) and from there to the queues
the request waits in. A request whose deadline passes before it runs is answered -32004
``deadline_missed`` without running (:meth:`RequestDeadline.missed`).

:class:`EdfQueue` is the bounded queue of such work: it hands out the item due first, items of
equal deadline in the order they came. An item without a deadline is due ``undated_s`` after it
was queued: after every item whose deadline is nearer, and never later than that, so a stream of
requests with deadlines cannot starve the others for longer.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio

from engram.errors import InternalSignal, Timeout

__all__ = ["EdfQueue", "QueueFull", "RequestDeadline"]

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class RequestDeadline:
    """When a request must have been answered, on :func:`time.monotonic`'s clock.

    ``waiting_in`` names the queue the request's work waits in while it does (set and cleared
    by that queue's owner, on the event loop): when the deadline passes then, the request never
    ran, and is answered ``deadline_missed`` rather than ``deadline``."""

    ms: int  # as the client gave it
    expires: float  # time.monotonic() when it passes
    waiting_in: str | None = None

    @classmethod
    def after(cls, ms: int, received: float) -> RequestDeadline:
        return cls(ms, received + ms / 1000)

    def remaining(self) -> float:
        return self.expires - time.monotonic()

    def passed(self) -> bool:
        return time.monotonic() >= self.expires

    def missed(self, where: str) -> Timeout:
        """The answer of a request whose deadline passed before it ran (``where``: while waiting
        for the chain to reach its handler, ``before_run``; in a queue, the queue's name)."""
        return Timeout(
            f"the deadline of {self.ms} ms passed before the request ran (it waited: {where})",
            reason="deadline_missed",
            deadline_ms=self.ms,
            where=where,
        )


class QueueFull(InternalSignal):
    """The queue holds as many items as it may; the caller refuses the work (-32003)."""


class EdfQueue(Generic[T]):
    """A bounded queue served earliest deadline first (or first come, first served with
    ``edf=False``, kept for comparison); a heap, so putting and taking cost O(log n).

    ``get`` raises :class:`anyio.EndOfStream` once the queue is closed and empty, as a memory
    object stream would; ``put_nowait`` on a closed queue raises :class:`anyio.ClosedResourceError`.
    """

    def __init__(self, capacity: int, *, edf: bool = True, undated_s: float = 60.0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, not {capacity}")
        self.capacity = capacity
        self.edf = edf
        self.undated_s = undated_s
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()  # ties (and FIFO mode) go by arrival; items are never compared
        self._arrived = anyio.Event()
        self.closed = False

    def __len__(self) -> int:
        return len(self._heap)

    def put_nowait(self, item: T, deadline: float | None = None) -> None:
        """Queue ``item``, due at ``deadline`` (``time.monotonic()``; None: ``undated_s`` from now)."""
        if self.closed:
            raise anyio.ClosedResourceError
        if len(self._heap) >= self.capacity:
            raise QueueFull
        order = next(self._order)
        if not self.edf:
            due = 0.0
        elif deadline is None:
            due = time.monotonic() + self.undated_s
        else:
            due = deadline
        heapq.heappush(self._heap, (due, order, item))
        self._arrived.set()

    def get_nowait(self) -> T:
        if self._heap:
            return heapq.heappop(self._heap)[2]
        if self.closed:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def get(self) -> T:
        while True:
            try:
                return self.get_nowait()
            except anyio.WouldBlock:
                pass
            if self._arrived.is_set():  # set by an item someone else took meanwhile
                self._arrived = anyio.Event()
            await self._arrived.wait()

    def close(self) -> None:
        """Take nothing more; what is queued can still be taken, then ``get`` ends."""
        self.closed = True
        self._arrived.set()

    def drain(self) -> list[T]:
        """Everything still queued, in the order it would have been served; the queue is empty."""
        items = [heapq.heappop(self._heap)[2] for _ in range(len(self._heap))]
        return items
