"""Helpers the consolidation stages share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from engram.memory.index import VectorIndex
from engram.memory.settings import IndexSettings
from engram.sleep.common import nearest_other
from engram.sleep.settings import SleepSettings

from tests.unit.sleep.memory_env import memory_env


def test_nearest_other_skips_the_episode_itself_and_stops_early_when_asked() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[1] = vectors[0]  # a duplicate: its nearest other episode is the original
    index = VectorIndex(IndexSettings())
    index.add("a", list(range(1, 41)), vectors)
    seqs = list(range(1, 41))
    full = nearest_other(index, "a", seqs, vectors)
    assert len(full) == 40 and abs(full[0] - 1.0) < 1e-5 and abs(full[1] - 1.0) < 1e-5
    assert all(v < 1.0 - 1e-5 for v in full[2:])
    part = nearest_other(index, "a", seqs, vectors, stop=lambda: True)  # a request came in: one chunk, a prefix
    assert 0 < len(part) < 40 and np.allclose(part, full[: len(part)])
    assert (nearest_other(index, "b", seqs, vectors) == -1).all()  # no index for that namespace


async def test_a_unit_whose_transaction_gave_way_runs_again_after_the_request(tmp_path: Path) -> None:
    class Request:  # a foreground request comes in during the unit's first attempt, then is served
        def __init__(self) -> None:
            self.in_flight = False
            self.steps = 0

        async def step(self) -> None:
            self.steps += 1
            self.in_flight = False

        def busy(self) -> bool:
            return self.in_flight

    request = Request()
    attempts = []
    async with memory_env(tmp_path, 1_000_000.0) as env:
        ctx = env.ctx(SleepSettings(), pacer=request)

        def unit() -> int:
            attempts.append(1)
            with ctx.transaction() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS units (n INTEGER)")
                if len(attempts) == 1:
                    request.in_flight = True
                conn.execute("INSERT INTO units VALUES (?)", (len(attempts),))
            return len(attempts)

        assert await ctx.thread(unit) == 2
        assert request.steps == 1  # waited once, for the request
        with env.memory.db.read() as conn:
            assert conn.execute("SELECT n FROM units").fetchall() == [(2,)]
