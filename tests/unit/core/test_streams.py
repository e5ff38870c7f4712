"""The connection's byte stream on a real socket pair: chunks as read, end of stream, and write
flow control with several writers waiting at once."""

from __future__ import annotations

import socket

import anyio
import pytest

from engram.server.streams import WRITE_HIGH_WATER, TransportStream


async def _pair() -> tuple[TransportStream, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.setblocking(False)
    return await TransportStream.wrap(ours), theirs


async def test_chunks_arrive_as_read_at_most_max_bytes_then_the_end_of_stream() -> None:
    stream, peer = await _pair()
    peer.sendall(b"0123456789")
    with anyio.fail_after(5):
        assert await stream.receive(4) == b"0123"
        assert await stream.receive(100) == b"456789"
        peer.close()
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
    await stream.aclose()


async def test_every_writer_waiting_for_a_slow_reader_is_woken_when_it_reads() -> None:
    stream, peer = await _pair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frame = b"x" * (WRITE_HIGH_WATER // 2)
    while not stream.write(frame):  # the peer reads nothing: the transport's buffer fills
        pass
    drained: list[int] = []

    async def writer(n: int) -> None:
        await stream.drain()
        drained.append(n)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as writers:
            for n in range(3):
                writers.start_soon(writer, n)
            await anyio.sleep(0.05)
            assert drained == []  # all three wait for the reader
            while len(drained) < 3:  # the peer reads everything: every writer goes on
                try:
                    peer.recv(1 << 20)
                except BlockingIOError:
                    await anyio.sleep(0.001)
    assert sorted(drained) == [0, 1, 2]
    peer.close()
    await stream.aclose()
