"""Newline-delimited framing (the framing of MCP over stdio): one JSON text per line.

The reader enforces the frame size limit without ever holding more than the limit in memory:
a line that grows past it is discarded up to its newline, and the caller is told, so the
connection stays usable for the next request.
"""

from __future__ import annotations

import math

import anyio
from typing import Protocol

CHUNK = 65536


class ByteReceiver(Protocol):
    async def receive(self, max_bytes: int = 65536) -> bytes: ...


class FrameTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"frame larger than {limit} bytes")
        self.limit = limit


class IdleTimeout(TimeoutError):
    """No frame started within the idle timeout."""


class SlowFrame(TimeoutError):
    """A frame was started but not finished within the read timeout."""


class LineReader:
    def __init__(self, stream: ByteReceiver, max_bytes: int) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self.max_bytes = max_bytes
        self.eof = False

    async def _receive(self, deadline: float) -> bytes:
        try:
            if deadline == math.inf:
                return await self._stream.receive(CHUNK)
            with anyio.fail_after(max(deadline - anyio.current_time(), 0)):
                return await self._stream.receive(CHUNK)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            self.eof = True
            return b""

    async def read_line(self, idle_timeout: float | None, read_timeout: float) -> bytes | None:
        """Return the next line without its newline, or None at end of stream.

        ``idle_timeout`` bounds the wait for the first byte of a frame (IdleTimeout), and
        ``read_timeout`` the time from the first byte to the newline (SlowFrame): a client that
        trickles a frame byte by byte cannot hold a connection slot forever.
        """
        idle_deadline = anyio.current_time() + idle_timeout if idle_timeout is not None else math.inf
        frame_deadline: float | None = None
        discarding = False
        scanned = 0  # bytes of the buffer already searched for a newline
        while True:
            index = self._buffer.find(b"\n", scanned)
            if index >= 0:
                line = bytes(self._buffer[:index])
                del self._buffer[: index + 1]
                if discarding or index > self.max_bytes:
                    raise FrameTooLarge(self.max_bytes)
                return line
            scanned = len(self._buffer)
            if scanned > self.max_bytes:
                self._buffer.clear()
                scanned = 0
                discarding = True
            if self.eof:
                return None  # a partial frame at end of stream is a client that went away
            started = bool(self._buffer) or discarding
            if started and frame_deadline is None:
                frame_deadline = anyio.current_time() + read_timeout
            try:
                chunk = await self._receive(frame_deadline if started else idle_deadline)  # type: ignore[arg-type]
            except TimeoutError:
                raise (SlowFrame() if started else IdleTimeout()) from None
            self._buffer += chunk
