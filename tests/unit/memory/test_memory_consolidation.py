"""Memory's consolidation interface: the journal it keeps under sleep's tags and undoes, the
checkpoints that commit with a change, and the batched nearest-other search."""

from __future__ import annotations

import numpy as np
from engram.memory.api import RememberParams
from engram.memory.consolidation import MemoryConsolidation
from engram.memory.index import VectorIndex
from engram.memory.neighbours import nearest_other
from engram.memory.settings import IndexSettings

from tests.unit.memory.conftest import ctx

NS = "uid:1000"
NOW = 1_800_000_000.0


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


async def _remember(memory, count: int) -> list[int]:
    items = [{"text": f"note {i}", "vector": [1.0, float(i)], "importance": 0.1, "time": NOW - 86_400 * 60} for i in range(count)]
    await memory.remember(ctx(), RememberParams.model_validate({"items": items}))
    return [seq for seq, _ in _rows(memory, "SELECT seq, salience FROM memory_episodes ORDER BY seq")]


def _rows(memory, sql: str, *args) -> list[tuple]:
    with memory.db.read() as conn:
        return conn.execute(sql, args).fetchall()


async def test_changes_are_journalled_under_a_tag_and_undone_by_it(make_memory) -> None:
    async with make_memory(embedder=None) as (memory, _):
        store = MemoryConsolidation(memory)
        seqs = await _remember(memory, 4)
        mine, other = (7, NS, "importance"), (8, NS, "importance")
        store.set_saliences(mine, [(0.5, seqs[0], None), (0.25, seqs[1], None)], {"after": seqs[1]})
        store.set_saliences(mine, [(0.75, seqs[0], 0.5)], {"after": seqs[2]})
        store.set_saliences(other, [(0.9, seqs[3], None)], {"after": seqs[3]})
        # the checkpoint is the last one kept, and came with the change
        assert store.checkpoints(7) == {(NS, "importance"): {"after": seqs[2]}}
        assert dict(_rows(memory, "SELECT seq, salience FROM memory_episodes"))[seqs[0]] == 0.75

        # undone newest first, a batch at a time, and only the tag's own entries
        assert store.undo(mine, 1) == {"salience": 1}
        assert dict(_rows(memory, "SELECT seq, salience FROM memory_episodes"))[seqs[0]] == 0.5
        assert store.undo(mine, 10) == {"salience": 2}
        assert store.undo(mine, 10) == {}
        saliences = dict(_rows(memory, "SELECT seq, salience FROM memory_episodes"))
        assert [saliences[s] for s in seqs] == [None, None, None, 0.9]

        # a run that resumes another takes its journal and checkpoints over; a finished run's go
        store.adopt([8], 9)
        assert store.checkpoints(8) == {} and store.checkpoints(9) == {(NS, "importance"): {"after": seqs[3]}}
        store.drop_checkpoint((9, NS, "importance"))
        assert store.checkpoints(9) == {}
        assert _rows(memory, "SELECT run FROM memory_changes") == [(9,)]
        store.discard([7, 9])
        assert _rows(memory, "SELECT count(*) FROM memory_changes") == [(0,)]
        assert _rows(memory, "SELECT count(*) FROM memory_checkpoints") == [(0,)]


async def test_archiving_is_journalled_and_the_journal_kept_when_undone(make_memory) -> None:
    async with make_memory(embedder=None) as (memory, _):
        store = MemoryConsolidation(memory)
        seqs = await _remember(memory, 3)
        tag = (3, NS, "forgetting")
        assert store.archive(tag, seqs[:2], NOW) == seqs[:2]
        assert store.count_live(NS) == 1 and memory.index.count(NS) == 1
        assert store.archived(tag) == [(seqs[:2], NOW)]
        assert store.undo(tag, 10) == {}  # archiving is undone by unarchive, not by undo
        assert store.unarchive(NS, seqs[:2], NOW) == seqs[:2]
        assert store.count_live(NS) == 3 and memory.index.count(NS) == 3
        assert store.archived(tag) == [(seqs[:2], NOW)]  # a repeated rollback finds it and changes nothing
        assert store.unarchive(NS, seqs[:2], NOW) == []
