"""The line reader: frame limit, discard-and-recover, idle and slow-frame timeouts, the shared budget."""

from __future__ import annotations

import anyio
import pytest

from engram.server.framing import (
    CHUNK,
    FREE_BYTES,
    BudgetExhausted,
    FrameBudget,
    FrameTooLarge,
    IdleTimeout,
    LineReader,
    SlowFrame,
)


class ChunkStream:
    """A byte stream that yields the given chunks, with optional pauses, then ends."""

    def __init__(self, *chunks: bytes | float) -> None:
        self.chunks = list(chunks)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while self.chunks:
            chunk = self.chunks.pop(0)
            if isinstance(chunk, float):
                await anyio.sleep(chunk)
                continue
            return chunk
        raise anyio.EndOfStream


async def test_lines_split_across_and_within_chunks():
    reader = LineReader(ChunkStream(b'{"a":', b'1}\n{"b":2}\n{"c"', b":3}\n"), 1024)
    assert [await reader.read_line(None, 5) for _ in range(3)] == [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    assert await reader.read_line(None, 5) is None


async def test_oversized_frame_is_discarded_and_the_next_one_read():
    big = b"x" * 5000
    reader = LineReader(ChunkStream(big[:3000], big[3000:] + b"\nok\n"), 1024)
    with pytest.raises(FrameTooLarge):
        await reader.read_line(None, 5)
    assert await reader.read_line(None, 5) == b"ok"


async def test_oversized_frame_within_one_chunk():
    reader = LineReader(ChunkStream(b"y" * 2000 + b"\nnext\n"), 1024)
    with pytest.raises(FrameTooLarge):
        await reader.read_line(None, 5)
    assert await reader.read_line(None, 5) == b"next"


async def test_frame_of_exactly_the_limit_is_accepted():
    reader = LineReader(ChunkStream(b"z" * 1024 + b"\n"), 1024)
    assert await reader.read_line(None, 5) == b"z" * 1024


async def test_partial_frame_at_end_of_stream_is_dropped():
    reader = LineReader(ChunkStream(b'{"half":'), 1024)
    assert await reader.read_line(None, 5) is None


async def test_idle_timeout_before_any_byte():
    reader = LineReader(ChunkStream(1.0, b"late\n"), 1024)
    with pytest.raises(IdleTimeout):
        await reader.read_line(0.05, 5)


async def test_slow_frame_timeout_once_started():
    reader = LineReader(ChunkStream(b"sta", 0.3, b"rted\n"), 1024)
    with pytest.raises(SlowFrame):
        await reader.read_line(None, 0.1)


async def test_one_timer_serves_many_reads_and_stays_off_between_them():
    reader = LineReader(ChunkStream(b"one\n", 0.02, b"two\n", b"three\n"), 1024)
    with reader.timer():
        assert await reader.read_line(0.5, 0.5) == b"one"
        await anyio.sleep(0.6)  # handling a frame: no read under way, so no deadline
        assert await reader.read_line(0.5, 0.5) == b"two"
        assert await reader.read_line(0.5, 0.5) == b"three"
        assert await reader.read_line(0.5, 0.5) is None


async def test_the_timer_ends_its_block_with_idle_or_slow():
    idle = LineReader(ChunkStream(b"first\n", 1.0, b"late\n"), 1024)
    with pytest.raises(IdleTimeout):
        with idle.timer():
            assert await idle.read_line(0.05, 5) == b"first"
            await idle.read_line(0.05, 5)
    slow = LineReader(ChunkStream(b"sta", 0.3, b"rted\n"), 1024)
    with pytest.raises(SlowFrame):
        with slow.timer():
            await slow.read_line(5, 0.1)


def chunked(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


async def test_a_frame_beyond_the_free_allowance_draws_on_the_budget_until_parsed():
    frame = b"f" * (FREE_BYTES * 3)
    budget = FrameBudget(FREE_BYTES * 4)
    reader = LineReader(ChunkStream(*chunked(frame + b"\nsmall\n")), 1 << 20, budget)
    assert await reader.read_line(None, 5) == frame
    assert budget.used > 0  # held while the caller parses the line
    assert await reader.read_line(None, 5) == b"small"
    assert budget.used == 0
    reader.close()
    assert budget.used == 0


async def test_a_frame_the_budget_cannot_cover_is_discarded_and_the_next_one_read():
    budget = FrameBudget(FREE_BYTES)
    held = LineReader(ChunkStream(*chunked(b"h" * (FREE_BYTES * 2))), 1 << 20, budget)
    with anyio.move_on_after(0.2):  # no newline: it holds what it has read
        await held.read_line(None, 5)
    assert budget.used == budget.limit
    reader = LineReader(ChunkStream(*chunked(b"g" * (FREE_BYTES * 2) + b"\nok\n")), 1 << 20, budget)
    with pytest.raises(BudgetExhausted):
        await reader.read_line(None, 5)
    assert await reader.read_line(None, 5) == b"ok"
    held.close()
    assert budget.used == 0


async def test_the_timer_follows_a_deadline_that_each_read_pushes_on():
    # Every wait is shorter than the idle timeout, all of them together longer: the deadline
    # armed for the first read has moved on by the time it comes, and must not end the block.
    reader = LineReader(ChunkStream(b"a\n", 0.03, b"b\n", 0.03, b"c\n", 0.03, b"d\n"), 1024)
    with reader.timer():
        assert [await reader.read_line(0.05, 5) for _ in range(4)] == [b"a", b"b", b"c", b"d"]
