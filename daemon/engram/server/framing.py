"""Newline-delimited framing (the framing of MCP over stdio): one JSON text per line.

The reader enforces the frame size limit without ever holding more than the limit in memory:
a line that grows past it is discarded up to its newline, and the caller is told, so the
connection stays usable for the next request.

Across connections, a :class:`FrameBudget` bounds the bytes held for frames not yet parsed: many
clients each sending a frame just under the limit, and never its newline, would otherwise hold
connections × limit bytes. Each connection buffers its first ``FREE_BYTES`` without drawing on the
budget, so ordinary requests go through whatever large ones are doing; past that, a frame that
finds the budget spent is discarded up to its newline like an oversized one (``BudgetExhausted``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import anyio

from engram.errors import InternalSignal

CHUNK = 65536
FREE_BYTES = 2 * CHUNK  # buffered per connection without drawing on the shared budget


class ByteReceiver(Protocol):
    async def receive(self, max_bytes: int = 65536) -> bytes: ...


class FrameTooLarge(InternalSignal):
    def __init__(self, limit: int) -> None:
        super().__init__(f"frame larger than {limit} bytes")
        self.limit = limit


class BudgetExhausted(InternalSignal):
    """The frame needed more of the shared budget than was left; it was discarded."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"frame bytes buffered across connections reached {limit}")
        self.limit = limit


class FrameBudget:
    """Bytes of unparsed frames buffered beyond each connection's free allowance, all together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # reloadable: a lower limit refuses new growth, takes nothing back
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


class IdleTimeout(InternalSignal, TimeoutError):
    """No frame started within the idle timeout."""


class SlowFrame(InternalSignal, TimeoutError):
    """A frame was started but not finished within the read timeout."""


class LazyDeadline:
    """A deadline for a cancel scope that is cheap to move: most moves are two float writes.

    Moving an anyio scope's deadline cancels and reschedules a loop callback; a connection's
    reads move theirs twice per frame. Here one callback is armed at a time: when it fires it
    cancels the scope if the deadline has passed, or re-arms itself at the deadline if that moved
    later meanwhile (the usual case: the reads since then pushed it on). Only a move to an earlier
    time than the armed one re-arms at once. ``math.inf`` means no deadline.
    """

    def __init__(self, scope: anyio.CancelScope) -> None:
        self._scope = scope
        self._loop = asyncio.get_running_loop()
        self.now = self._loop.time  # the clock of the deadlines (anyio.current_time on asyncio)
        self._deadline = math.inf
        self._armed: asyncio.TimerHandle | None = None

    def move(self, deadline: float) -> None:
        self._deadline = deadline
        armed = self._armed
        if deadline == math.inf or (armed is not None and armed.when() <= deadline):
            return
        if armed is not None:
            armed.cancel()
        self._armed = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._armed = None
        if self._deadline == math.inf:
            return
        if self._deadline > self._loop.time():
            self._armed = self._loop.call_at(self._deadline, self._fire)
        else:
            self._scope.cancel()

    def close(self) -> None:
        if self._armed is not None:
            self._armed.cancel()
            self._armed = None


class LineReader:
    def __init__(self, stream: ByteReceiver, max_bytes: int, budget: FrameBudget | None = None) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self.max_bytes = max_bytes
        self.eof = False
        self._budget = budget
        self._drawn = 0  # bytes of the budget this reader holds
        self._timer: LazyDeadline | None = None  # see timer()
        self._expiry: type[TimeoutError] = IdleTimeout  # what the timer's deadline stands for now

    def _draw(self, held: int) -> bool:
        """Hold ``held`` bytes beyond the free allowance; False when the budget cannot cover them."""
        if self._budget is None or (held <= FREE_BYTES and not self._drawn):  # every ordinary frame
            return True
        wanted = max(held - FREE_BYTES, 0)
        if wanted > self._drawn and not self._budget.take(wanted - self._drawn):
            return False
        if wanted < self._drawn:
            self._budget.give(self._drawn - wanted)
        self._drawn = wanted
        return True

    def close(self) -> None:
        """Give back what this reader holds of the budget (the connection is done)."""
        self._draw(0)
        self._buffer.clear()

    @contextmanager
    def timer(self) -> Iterator[None]:
        """One timer for every :meth:`read_line` in the block, instead of a timeout per read.

        A timeout per receive cost a cancel scope (and a lookup of the async backend) for every
        frame, and even moving one scope's deadline reschedules a loop callback each time. Here
        a :class:`LazyDeadline` spans the block: each read only writes down when it must end,
        which stays off while the caller handles what it read. When a deadline passes, the read
        under way is cancelled and the block ends with IdleTimeout or SlowFrame, like read_line
        without it; the caller enters a new block to keep reading (the scope is spent)."""
        with anyio.CancelScope() as scope:
            self._timer = LazyDeadline(scope)
            try:
                yield
            finally:
                self._timer.close()
                self._timer = None
        if scope.cancelled_caught:
            raise self._expiry()

    async def _receive(self, deadline: float, expiry: type[TimeoutError]) -> bytes:
        timer = self._timer
        try:
            if deadline == math.inf:
                return await self._stream.receive(CHUNK)
            if timer is not None:
                self._expiry = expiry
                timer.move(deadline)
                try:
                    return await self._stream.receive(CHUNK)
                finally:
                    timer.move(math.inf)
            try:
                with anyio.fail_after(max(deadline - anyio.current_time(), 0)):
                    return await self._stream.receive(CHUNK)
            except TimeoutError:
                raise expiry() from None
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            self.eof = True
            return b""

    async def read_line(self, idle_timeout: float | None, read_timeout: float) -> bytes | None:
        """Return the next line without its newline, or None at end of stream.

        ``idle_timeout`` bounds the wait for the first byte of a frame (IdleTimeout), and
        ``read_timeout`` the time from the first byte to the newline (SlowFrame): a client that
        trickles a frame byte by byte cannot hold a connection slot forever.

        The line returned stays counted against the budget until the next call, which is when
        the caller has parsed it.
        """
        self._draw(len(self._buffer))  # the previous line is parsed: only what is buffered counts
        now = self._timer.now() if self._timer is not None else anyio.current_time()
        idle_deadline = now + idle_timeout if idle_timeout is not None else math.inf
        frame_deadline: float | None = None
        discarding: Exception | None = None  # why the frame under way is being thrown away
        scanned = 0  # bytes of the buffer already searched for a newline
        while True:
            index = self._buffer.find(b"\n", scanned)
            if index >= 0:
                line = bytes(self._buffer[:index])
                del self._buffer[: index + 1]
                if discarding is None and index > self.max_bytes:
                    discarding = FrameTooLarge(self.max_bytes)
                if discarding is not None:
                    self._draw(len(self._buffer))
                    raise discarding
                # Held until the next call, while it is parsed. (Bytes that arrived with the
                # newline may overshoot the budget by one chunk: the line is complete, take it.)
                self._draw(len(self._buffer) + len(line))
                return line
            scanned = len(self._buffer)
            if discarding is None and scanned > self.max_bytes:
                discarding = FrameTooLarge(self.max_bytes)
            elif discarding is None and not self._draw(scanned):
                discarding = BudgetExhausted(self._budget.limit)  # type: ignore[union-attr]
            if discarding is not None:
                self._buffer.clear()
                self._draw(0)
                scanned = 0
            if self.eof:
                return None  # a partial frame at end of stream is a client that went away
            started = bool(self._buffer) or discarding is not None
            if started and frame_deadline is None:
                frame_deadline = (self._timer.now() if self._timer is not None else anyio.current_time()) + read_timeout
            if started:
                chunk = await self._receive(frame_deadline, SlowFrame)  # type: ignore[arg-type]
            else:
                chunk = await self._receive(idle_deadline, IdleTimeout)
            self._buffer += chunk
