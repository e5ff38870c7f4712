"""Connected sockets as byte streams on asyncio's transport machinery.

anyio's own Unix socket stream re-registers the descriptor with the selector on every receive
(it is built for passing descriptors), which on a ping-sized request costs more than the rest of
the request. An asyncio transport keeps the descriptor registered and reads as data comes, so the
server wraps each accepted socket in one, with a protocol of its own (:class:`StreamProtocol`)
that hands the chunks read to :meth:`TransportStream.receive` as they came. asyncio's
StreamReader would copy each into a buffer of its own and out again, which the line reader above
(:mod:`engram.server.framing`, with its own buffer and limits) has no use for. Everything above
(task groups, cancel scopes, timeouts) stays anyio, whose asyncio backend cancels these awaits
like any other.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque

import anyio

# Above this much unsent data, send() waits for the client to read (and may time out).
WRITE_HIGH_WATER = 64 * 1024
# Above this much read and not yet received, the transport stops reading from the socket (the
# kernel's buffer then fills and the client waits) until receive() has taken half of it.
READ_HIGH_WATER = 1 << 20


class StreamProtocol(asyncio.Protocol):
    """What the transport reads, queued for :meth:`receive` (one reader: the connection's read
    loop); write flow control for :meth:`drained` (any number of writers: a connection's
    responses and notifications queue whole frames and wait only past the high-water mark)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._held = 0  # bytes in _chunks
        self._reading_paused = False
        self._ended = False  # end of stream or connection lost: no more chunks will come
        self._waiter: asyncio.Future[None] | None = None  # receive() waiting for a chunk
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # --- the transport's calls ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._held += len(data)
        if self._held > READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake_reader()

    def eof_received(self) -> bool:
        self._ended = True
        self._wake_reader()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        self._wake_reader()
        self._wake_drainers()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drainers()

    # --- the stream's side -------------------------------------------------------------------

    async def receive(self, max_bytes: int) -> bytes:
        """The next chunk read (at most ``max_bytes``); raises EndOfStream once the client has
        closed or gone and everything it sent was taken."""
        while not self._chunks:
            if self._ended:
                raise anyio.EndOfStream
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        if len(data) > max_bytes:
            self._chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        self._held -= len(data)
        if self._reading_paused and self._held <= READ_HIGH_WATER // 2:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return data

    async def drained(self) -> None:
        """Wait until the transport's write buffer is below its low-water mark; raises
        BrokenResourceError when the connection is lost meanwhile."""
        while self._writing_paused:
            if self._ended:
                raise anyio.BrokenResourceError
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                self._drain_waiters.remove(waiter)
        if self._ended:
            raise anyio.BrokenResourceError

    def _wake_reader(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drainers(self) -> None:
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)


class TransportStream:
    def __init__(self, transport: asyncio.Transport, protocol: StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    @classmethod
    async def wrap(cls, sock: socket.socket) -> TransportStream:
        transport, protocol = await asyncio.get_running_loop().create_unix_connection(StreamProtocol, sock=sock)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        return cls(transport, protocol)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._protocol.receive(max_bytes)

    def write(self, data: bytes) -> bool:
        """Queue ``data`` whole (frames never interleave); True when the caller must drain()."""
        transport = self._transport
        if transport.is_closing():
            raise anyio.BrokenResourceError
        transport.write(data)
        return transport.get_write_buffer_size() > WRITE_HIGH_WATER

    async def drain(self) -> None:
        await self._protocol.drained()

    async def send(self, data: bytes) -> None:
        if self.write(data):
            await self.drain()

    async def aclose(self) -> None:
        self._transport.close()
        with anyio.move_on_after(1.0):
            await asyncio.shield(self._protocol.closed)
