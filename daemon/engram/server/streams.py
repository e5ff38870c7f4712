"""Connected sockets as byte streams on asyncio's transport machinery.

anyio's own Unix socket stream re-registers the descriptor with the selector on every receive
(it is built for passing descriptors), which on a ping-sized request costs more than the rest of
the request. An asyncio transport keeps the descriptor registered and buffers reads, so the
server wraps each accepted socket in one; everything above it (task groups, cancel scopes,
timeouts) stays anyio, whose asyncio backend cancels these awaits like any other.
"""

from __future__ import annotations

import asyncio
import socket

import anyio

# Above this much unsent data, send() waits for the client to read (and may time out).
WRITE_HIGH_WATER = 64 * 1024


class TransportStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport  # written to directly: StreamWriter.write only forwards

    @classmethod
    async def wrap(cls, sock: socket.socket) -> TransportStream:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        return cls(reader, writer)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._reader.read(max_bytes)
        if not data:
            raise anyio.EndOfStream
        return data

    def write(self, data: bytes) -> bool:
        """Queue ``data`` whole (frames never interleave); True when the caller must drain()."""
        transport = self._transport
        if transport.is_closing():
            raise anyio.BrokenResourceError
        transport.write(data)
        return transport.get_write_buffer_size() > WRITE_HIGH_WATER

    async def drain(self) -> None:
        await self._writer.drain()

    async def send(self, data: bytes) -> None:
        if self.write(data):
            await self.drain()

    async def aclose(self) -> None:
        self._writer.close()
        with anyio.move_on_after(1.0):
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
