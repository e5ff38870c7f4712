"""The importance, clustering and compaction stages on crafted data, over a real memory part."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engram.bus import EventBus
from engram.bus.events import CORE_EVENTS
from engram.memory.api import RememberParams
from engram.memory.consolidation import MemoryConsolidation
from engram.memory.events import MEMORY_EVENTS
from engram.memory.service import Memory
from engram.memory.settings import MemorySettings
from engram.observability.metrics import Metrics
from engram.sleep.clustering import (
    ClusteringStage,
    Gains,
    relation_gains,
)
from engram.sleep.compaction import CompactionStage
from engram.sleep.db import SleepDB
from engram.sleep.importance import ImportanceStage
from engram.sleep.recalibration import RecalibrationStage
from engram.sleep.settings import SleepSettings
from engram.sleep.stage import StageContext
from engram.storage import Database

from tests.unit.memory.conftest import ctx as rpc_ctx
from tests.unit.sleep.memory_env import NS, Clock


@dataclass
class Env:
    """A real memory part on a real database in a temporary folder (no embedder: vectors given)."""

    memory: Memory
    clock: Clock
    sleep_db: SleepDB

    def ctx(self, settings: SleepSettings, run_id: int = 1, stage: str = "", saved: dict[str, Any] | None = None) -> StageContext:
        return StageContext(run_id=run_id, namespace=NS, settings=settings, store=MemoryConsolidation(self.memory),
                            db=self.sleep_db, clock=self.clock, saved=saved, stage=stage)

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.memory.db.transaction() as conn:
            return conn.execute(query, args).fetchall()


@asynccontextmanager
async def memory_env(tmp_path: Path, now: float, with_audit: bool = False, **memory_settings: Any) -> AsyncIterator[Env]:
    db = Database(tmp_path / "engram.db")
    await db.open()
    bus = EventBus((*CORE_EVENTS, *MEMORY_EVENTS))
    memory_settings.setdefault("extraction", {"enabled": False})  # no spaCy, no graph facts of its own
    memory = Memory(MemorySettings(**memory_settings), tmp_path, tmp_path / "engram.db", bus, Metrics(), embedder=None)
    sleep_db = SleepDB(tmp_path / "engram.db")
    sleep_db.open()
    try:
        async with memory:
            yield Env(memory, Clock(now), sleep_db)
    finally:
        sleep_db.close()
        await db.aclose()

NOW = time.time()  # memory stamps recorded_at with the real clock
DAY = 86_400.0
DIM = 16


def unit(v: np.ndarray) -> list[float]:
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


async def remember(env, items: list[dict]) -> list[str]:
    params = RememberParams.model_validate({"items": items})
    return (await env.memory.remember(rpc_ctx(), params)).ids


def groups(rng: np.random.Generator, words: list[str], per: int, spread: float = 0.05, first: int = 0) -> list[dict]:
    """One tight group of vectors per word, well apart from each other; texts name their group
    and number their notes from ``first`` (a text remembered again would be the same episode)."""
    items = []
    for g, word in enumerate(words):
        centre = np.zeros(DIM, np.float32)
        centre[g] = 1.0
        for i in range(per):
            vec = centre + rng.normal(scale=spread, size=DIM).astype(np.float32)
            items.append({"text": f"{word} note {first + i} about {word}", "vector": unit(vec), "session": f"s{i % 3}",
                          "time": NOW - 60 * (len(items) + 1)})
    return items


def settings(**clustering) -> SleepSettings:
    return SleepSettings.model_validate({"clustering": {"window": 10 * DAY, **clustering}})


async def test_three_separated_groups_become_three_topics_linked_to_their_episodes(tmp_path):
    async with memory_env(tmp_path, NOW, with_audit=False) as env:
        rng = np.random.default_rng(7)
        ids = await remember(env, groups(rng, ["kernel", "garden", "violin"], per=10))
        figures = await ClusteringStage().run(env.ctx(settings(), stage="clustering"))
        assert figures["clusters"] == 3 and figures["concepts_created"] == 3
        topics = env.sql("SELECT seq, name FROM memory_concepts WHERE namespace = ? AND kind = 'topic'", NS)
        assert len(topics) == 3
        by_word = {}
        for seq, name in topics:
            members = {r[0] for r in env.sql(
                "SELECT e.id FROM memory_concept_episodes c JOIN memory_episodes e ON e.seq = c.episode WHERE c.concept = ?", seq)}
            word = name.split()[0]
            by_word[word] = members
        assert by_word == {"kernel": set(ids[:10]), "garden": set(ids[10:20]), "violin": set(ids[20:30])}

        # a second run on the same episodes reuses the topics instead of duplicating them
        again = await ClusteringStage().run(env.ctx(settings(), run_id=2, stage="clustering"))
        assert again["concepts_created"] == 0 and again["concepts_reused"] == 3
        assert len(env.sql("SELECT 1 FROM memory_concepts WHERE kind = 'topic'")) == 3


async def test_relations_follow_cooccurrence_and_adjacency_and_decay(tmp_path):
    async with memory_env(tmp_path, NOW, with_audit=False) as env:
        rng = np.random.default_rng(3)
        items = groups(rng, ["kernel", "garden", "violin"], per=6)
        # kernel and garden share sessions and alternate in time; violin is alone in its own session
        for i, item in enumerate(items):
            word = item["text"].split()[0]
            item["session"] = "solo" if word == "violin" else f"s{i % 6}"
        kernel, garden, violin = items[0:6], items[6:12], items[12:18]
        for i, (k, g) in enumerate(zip(kernel, garden, strict=True)):
            k["time"], g["time"] = NOW - 1000 + 2 * i, NOW - 1000 + 2 * i + 1
        for i, v in enumerate(violin):
            v["time"] = NOW - 500 + i
        await remember(env, items)
        s = settings(cooccurrence_gain=0.1, adjacency_gain=0.05, decay=0.5, floor=0.2)
        first = await ClusteringStage().run(env.ctx(s, stage="clustering"))
        rows = env.sql(
            "SELECT a.name, b.name, r.weight FROM memory_relations r JOIN memory_concepts a ON a.seq = r.src "
            "JOIN memory_concepts b ON b.seq = r.dst WHERE r.type = 'related_to' AND r.retracted_at IS NULL")
        weights = {frozenset((a.split()[0], b.split()[0])): w for a, b, w in rows}
        assert set(weights) >= {frozenset(("kernel", "garden"))}
        strong = weights[frozenset(("kernel", "garden"))]
        # the pair co-occurs in 6 sessions and is adjacent 11 times (alternating): the strongest
        assert all(w < strong for pair, w in weights.items() if pair != frozenset(("kernel", "garden")))
        assert abs(strong - min(1.0, 6 * 0.1 + 11 * 0.05)) < 1e-6 or strong == 1.0
        # the figures count the rows written (the writes open with WITH, which rowcount cannot count)
        assert first["relations_created"] == len(rows) and first["relations_strengthened"] == 0

        # the next run (no new episodes) only decays: halves every sourced relation, retracts below the floor
        env.clock.now = NOW + 10
        env.sql("INSERT INTO sleep_runs (id, trigger, stages, started_at, outcome) VALUES (1, 'manual', '[]', ?, 'completed')",
                time.time() + 5)  # after every episode was recorded (memory stamps recorded_at with the real clock)
        figures = await ClusteringStage().run(env.ctx(s, run_id=2, stage="clustering"))
        assert figures["episodes"] == 0
        after = {frozenset((a.split()[0], b.split()[0])): w for a, b, w in env.sql(
            "SELECT a.name, b.name, r.weight FROM memory_relations r JOIN memory_concepts a ON a.seq = r.src "
            "JOIN memory_concepts b ON b.seq = r.dst WHERE r.type = 'related_to' AND r.retracted_at IS NULL")}
        for pair, w in weights.items():
            if w * 0.5 >= 0.2:
                assert abs(after[pair] - w * 0.5) < 1e-6
            else:
                assert pair not in after
        assert figures["relations_decayed"] + figures["relations_retracted"] == len(weights)


async def test_clustering_rollback_removes_what_the_run_made_and_restores_weights(tmp_path):
    async with memory_env(tmp_path, NOW, with_audit=False) as env:
        rng = np.random.default_rng(5)
        await remember(env, groups(rng, ["kernel", "garden"], per=8))
        s = settings()
        await ClusteringStage().run(env.ctx(s, run_id=1, stage="clustering"))
        before = env.sql("SELECT seq, weight, retracted_at FROM memory_relations ORDER BY seq")
        concepts = env.sql("SELECT seq FROM memory_concepts ORDER BY seq")
        # a second run strengthens/decays; its rollback restores exactly the state after the first
        env.sql("INSERT INTO sleep_runs (id, trigger, stages, started_at, outcome) VALUES (1, 'manual', '[]', ?, 'completed')", 0.0)
        await remember(env, groups(np.random.default_rng(9), ["kernel", "garden", "violin"], per=8, first=8))
        figures = await ClusteringStage().run(env.ctx(s, run_id=2, stage="clustering"))
        assert figures["concepts_created"] == 1 and figures["concepts_reused"] == 2, figures
        live_before = [seq for seq, _w, retracted in before if retracted is None]
        assert 1 <= figures["relations_strengthened"] <= len(live_before) and figures["relations_created"] >= 1
        undone = await ClusteringStage().rollback(env.ctx(s, run_id=2, stage="clustering"))
        assert undone["concept"] == 1
        assert env.sql("SELECT seq FROM memory_concepts ORDER BY seq") == concepts
        assert env.sql("SELECT seq, weight, retracted_at FROM memory_relations ORDER BY seq") == before
        assert await ClusteringStage().rollback(env.ctx(s, run_id=2, stage="clustering")) == {}  # idempotent


async def test_salience_orders_episodes_by_recency_access_novelty_links_and_importance(tmp_path):
    async with memory_env(tmp_path, NOW, with_audit=False) as env:
        base = np.zeros(DIM, np.float32)
        base[0] = 1.0
        other = np.zeros(DIM, np.float32)
        other[1] = 1.0
        dup = base + 0.01
        ids = await remember(env, [
            {"text": "old duplicate", "vector": unit(base), "time": NOW - 90 * DAY, "importance": 0.1},
            {"text": "old duplicate again", "vector": unit(dup), "time": NOW - 90 * DAY, "importance": 0.1},
            {"text": "fresh and novel", "vector": unit(other), "time": NOW - 60, "importance": 0.9},
        ])
        seqs = [r[0] for r in env.sql("SELECT seq FROM memory_episodes ORDER BY seq")]
        env.sql("UPDATE memory_episodes SET access_count = 20, last_access = ? WHERE seq = ?", NOW - 10, seqs[1])
        s = SleepSettings.model_validate({"importance": {"batch": 2}})
        figures = await ImportanceStage().run(env.ctx(s, stage="importance"))
        assert figures["scored"] == 3 and figures["changed"] == 3
        sal = dict(env.sql("SELECT id, salience FROM memory_episodes"))
        assert sal[ids[2]] > sal[ids[1]] > sal[ids[0]]  # fresh+novel+important > accessed > neither
        assert all(0.0 <= v <= 1.0 for v in sal.values())

        # rollback restores the previous (unscored) values; a rerun is harmless
        undone = await ImportanceStage().rollback(env.ctx(s, stage="importance"))
        assert undone == {"restored": 3}
        assert all(v is None for v in dict(env.sql("SELECT id, salience FROM memory_episodes")).values())
        await ImportanceStage().run(env.ctx(s, run_id=2, stage="importance"))
        again = await ImportanceStage().run(env.ctx(s, run_id=3, stage="importance"))
        assert again["changed"] == 0


async def test_importance_resumes_from_its_cursor(tmp_path):
    async with memory_env(tmp_path, NOW, with_audit=False) as env:
        rng = np.random.default_rng(1)
        await remember(env, [{"text": f"t{i}", "vector": unit(rng.normal(size=DIM))} for i in range(10)])
        seqs = [r[0] for r in env.sql("SELECT seq FROM memory_episodes ORDER BY seq")]
        s = SleepSettings.model_validate({"importance": {"batch": 3}})
        figures = await ImportanceStage().run(env.ctx(s, stage="importance", saved={"after": seqs[5], "scored": 6, "changed": 6,
                                                                                    "sum": 0.0, "now": NOW}))
        assert figures["scored"] == 10
        assert [r[0] for r in env.sql("SELECT seq FROM memory_episodes WHERE salience IS NOT NULL ORDER BY seq")] == seqs[6:]


async def test_compaction_rebuilds_an_index_with_masked_entries(tmp_path):
    async with memory_env(tmp_path, NOW, with_audit=False, index={"hnsw_threshold": 50}) as env:
        rng = np.random.default_rng(2)
        await remember(env, [{"text": f"t{i}", "vector": unit(rng.normal(size=DIM))} for i in range(120)])
        memory = env.memory
        for _ in range(100):  # the memory part builds the HNSW graph in the background
            if memory.index.stats(NS)["kind"] == "hnsw":
                break
            await __import__("anyio").sleep(0.05)
        assert memory.index.stats(NS)["kind"] == "hnsw"
        seqs = [r[0] for r in env.sql("SELECT seq FROM memory_episodes ORDER BY seq")][:10]
        await memory._thread(memory.episodic.forget_seqs, NS, seqs)
        assert memory.index.stats(NS)["masked"] == 10
        figures = await CompactionStage().run(env.ctx(SleepSettings(), stage="compaction"))
        assert figures["rebuilt"] is True
        assert figures["before"]["masked"] == 10 and figures["after"]["masked"] == 0
        assert figures["after"]["vectors"] == 110 and figures["after"]["bytes"] < figures["before"]["bytes"]
        assert figures["fts_optimized"] is True
        again = await CompactionStage().run(env.ctx(SleepSettings(), stage="compaction"))
        assert again["rebuilt"] is False
        # search still finds every live episode
        ids, _ = memory.index.search(NS, np.asarray(memory.index.vectors(NS, [seqs[-1] + 1])[1][0]), 1)
        assert ids.tolist() == [seqs[-1] + 1]


async def test_recalibration_without_a_router_does_nothing(tmp_path):
    async with memory_env(tmp_path, NOW, with_audit=False) as env:
        assert (await RecalibrationStage().run(env.ctx(SleepSettings(), stage="recalibration")))["routes"] == []




def _as_dicts(gains: Gains) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], list[int]]]:
    pairs = list(zip(gains.a.tolist(), gains.b.tolist(), strict=True))
    return (dict(zip(pairs, gains.gain.tolist(), strict=True)),
            {pair: gains.episode[gains.pair == i].tolist() for i, pair in enumerate(pairs)})


def test_relation_gains_count_shared_sessions_and_neighbours_in_time():
    # topics 10 and 20 share sessions b (0) and a (1); 30 is alone in c (2). Time order: 1 2 3 4 5 6
    seqs = [6, 5, 4, 3, 2, 1]  # newest first, as the stage reads them
    sessions = [0, 0, 1, 1, 1, 2]
    times = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    concepts = np.array([10, 20, 10, 20, 10, 30])
    gains, evidence = _as_dicts(relation_gains(seqs, sessions, times, concepts, cooccurrence_gain=0.1,
                                               adjacency_gain=0.01, per_pair=10))
    # (10, 20): 2 sessions + neighbours 2-3, 3-4, 4-5, 5-6; (10, 30): neighbours 1-2
    assert gains == pytest.approx({(10, 20): 0.2 + 0.04, (10, 30): 0.01})
    assert evidence[(10, 20)][:4] == [6, 5, 4, 3]  # each session's first episode of either topic, sessions in order
    assert set(evidence[(10, 20)]) == {2, 3, 4, 5, 6} and evidence[(10, 30)] == [1, 2]
    # at most per_pair distinct episodes, co-occurrences first; a pair without gain is left out
    gains, evidence = _as_dicts(relation_gains(seqs, sessions, times, concepts, 0.1, 0.0, per_pair=3))
    assert gains == pytest.approx({(10, 20): 0.2}) and evidence[(10, 20)] == [6, 5, 4]
    assert _as_dicts(relation_gains([], [], [], np.zeros(0, np.int64), 0.1, 0.01, 10)) == ({}, {})


def test_relation_gains_batches_carry_their_own_evidence():
    seqs = list(range(40, 0, -1))
    sessions = [i // 4 for i in range(40)]
    concepts = np.array([100 + i % 5 for i in range(40)])
    gains = relation_gains(seqs, sessions, [float(s) for s in seqs], concepts, 0.1, 0.01, per_pair=4)
    whole, evidence = _as_dicts(gains)
    rows, seen = [], []
    for start in range(0, len(gains), 3):
        pairs, ev = gains.rows(start, start + 3)
        rows += pairs
        seen += ev
    assert [(a, b) for a, b, _g in rows] == sorted(whole) and [g for _a, _b, g in rows] == pytest.approx(list(whole.values()))
    assert seen == [[a, b, e] for (a, b) in sorted(whole) for e in evidence[(a, b)]]


async def test_importance_scores_the_same_when_requests_keep_cutting_its_units_short(tmp_path):
    class Busy:  # a foreground request is always in flight: every search unit ends after one chunk
        async def step(self) -> None:
            pass

        def busy(self) -> bool:
            return True

    rng = np.random.default_rng(4)
    items = [{"text": f"t{i}", "vector": unit(rng.normal(size=DIM)), "time": NOW - i * DAY} for i in range(40)]
    scores = []
    for pacer in (None, Busy()):
        folder = tmp_path / f"run{len(scores)}"
        folder.mkdir()
        async with memory_env(folder, NOW) as env:
            await remember(env, items)
            ctx = StageContext(run_id=1, namespace=NS, settings=SleepSettings(), store=MemoryConsolidation(env.memory),
                               db=env.sleep_db, clock=env.clock, stage="importance", pacer=pacer)
            assert (await ImportanceStage().run(ctx))["scored"] == 40
            scores.append(env.sql("SELECT text, salience FROM memory_episodes ORDER BY text"))
    assert scores[0] == scores[1]
