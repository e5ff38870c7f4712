"""Novelty from episodic memory (router/novelty.py) against a real Memory part: repeats are not
novel, crafted new inputs are, one vector per input hash, a full queue drops and counts, and what
was remembered is still there after a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import numpy as np
import pytest
from engram.bus import EventBus
from engram.memory.events import MEMORY_EVENTS
from engram.memory.service import Memory
from engram.memory.settings import MemorySettings
from engram.observability.metrics import Metrics
from engram.router.novelty import EpisodicNovelty, namespace_for, tensor_vector
from engram.storage import Database
from prometheus_client import CollectorRegistry, Counter


@asynccontextmanager
async def memory_at(path: Path) -> AsyncIterator[Memory]:
    db = Database(path / "engram.db")
    await db.open()
    memory = Memory(MemorySettings(extraction={"enabled": False}), path, path / "engram.db", EventBus(MEMORY_EVENTS), Metrics())
    try:
        async with memory:
            yield memory
    finally:
        await db.aclose()


def dropped_counter() -> Counter:
    return Counter("dropped", "test", ["route"], registry=CollectorRegistry())


@asynccontextmanager
async def novelty_on(memory: Memory, queue: int = 64) -> AsyncIterator[EpisodicNovelty]:
    novelty = EpisodicNovelty(memory.keyed_vectors, queue, dropped_counter())
    novelty.open()
    async with anyio.create_task_group() as tg:
        tg.start_soon(novelty.run)
        try:
            yield novelty
        finally:
            novelty.close()


def test_tensor_vector_is_fixed_size_and_unit_length():
    short = tensor_vector(np.array([[3.0, 4.0]]), 8)
    assert short.shape == (8,) and short.dtype == np.float32
    assert np.allclose(short[:2], [0.6, 0.8]) and not short[2:].any()
    long = tensor_vector(np.arange(100, dtype=np.float64), 8)
    assert long.shape == (8,) and np.isclose(np.linalg.norm(long), 1.0)
    assert not tensor_vector(np.zeros(3), 4).any()


async def test_repeats_are_not_novel_and_new_inputs_are(tmp_path: Path):
    a, near_a, b = tensor_vector(np.array([9.0, 0.0, 0.0]), 16), tensor_vector(np.array([9.0, 0.5, 0.0]), 16), \
        tensor_vector(np.array([0.0, 0.0, 9.0]), 16)
    async with memory_at(tmp_path) as memory, novelty_on(memory) as novelty:
        assert novelty.novelty("r", a) == 1.0  # nothing remembered yet
        assert novelty.remember("r", "key-a", a)
        assert novelty.novelty("r", a) == pytest.approx(0.0, abs=1e-5)  # pending counts before the write lands
        assert not novelty.remember("r", "key-a", a)  # one vector per input hash
        while novelty.written < 1:
            await anyio.sleep(0.01)
        assert memory.index.count(namespace_for("r")) == 1
        assert novelty.novelty("r", a) == pytest.approx(0.0, abs=1e-5)  # from the index now
        assert 0 < novelty.novelty("r", near_a) < 0.05
        assert novelty.novelty("r", b) == pytest.approx(1.0, abs=1e-5)
        assert novelty.novelty("other", a) == 1.0  # routes have their own namespaces
        assert novelty.remember("r", "key-b", b)  # pending, not yet written
        near = novelty.nearest("r", near_a, 8)
        assert [k for k, _ in near] == ["key-a", "key-b"] and near[0][1] > 0.95  # the semantic cache's lookup


async def test_remembered_inputs_survive_a_restart_and_are_not_written_twice(tmp_path: Path):
    a = tensor_vector(np.array([1.0, 2.0, 3.0]), 16)
    async with memory_at(tmp_path) as memory, novelty_on(memory) as novelty:
        novelty.remember("r", "key-a", a)
    async with memory_at(tmp_path) as memory, novelty_on(memory) as novelty:
        assert memory.index.count(namespace_for("r")) == 1
        assert novelty.novelty("r", a) == pytest.approx(0.0, abs=1e-5)
        novelty.remember("r", "key-a", a)  # the same hash after a restart: the derived id exists already
    async with memory_at(tmp_path) as memory:
        assert memory.index.count(namespace_for("r")) == 1


async def test_full_queue_drops_and_counts(tmp_path: Path):
    async with memory_at(tmp_path) as memory:
        counter = dropped_counter()
        novelty = EpisodicNovelty(memory.keyed_vectors, 1, counter)  # no writer running: the queue fills
        assert novelty.remember("r", "k1", tensor_vector(np.array([1.0, 0.0]), 4))
        assert not novelty.remember("r", "k2", tensor_vector(np.array([0.0, 1.0]), 4))
        assert counter.labels("r")._value.get() == 1
        novelty.close()
