"""Sleep's deduplication stage on a real memory part: near-duplicates merge into the older
episode (tags, concept links, relation sources, accesses), the other is archived, the merges are
listed in the figures, and the rollback restores both episodes exactly."""

from __future__ import annotations

import time

import numpy as np
from engram.memory.api import GetParams, GraphUpsertParams, RecallParams, RememberParams
from engram.sleep.deduplication import DeduplicationStage
from engram.sleep.settings import SleepSettings

from tests.unit.memory.conftest import ctx as rpc_ctx
from tests.unit.sleep.memory_env import NS, memory_env

NOW = time.time()  # memory stamps recorded_at with the real clock


def unit(*values: float) -> list[float]:
    v = np.array(values, np.float64)
    return (v / np.linalg.norm(v)).tolist()


async def remember(env, items: list[dict]) -> list[str]:
    return (await env.memory.remember(rpc_ctx(), RememberParams.model_validate({"items": items}))).ids


def state(env) -> list[tuple]:
    """Everything a merge may change, in a comparable form."""
    return [
        env.sql("SELECT seq, archived_at IS NULL, access_count, last_access, text_key IS NOT NULL FROM memory_episodes ORDER BY seq"),
        env.sql("SELECT seq, tag FROM memory_episode_tags ORDER BY seq, tag"),
        env.sql("SELECT concept, episode, weight FROM memory_concept_episodes ORDER BY concept, episode"),
        env.sql("SELECT relation, episode FROM memory_relation_sources ORDER BY relation, episode"),
    ]


async def test_near_duplicates_merge_into_the_older_and_roll_back(tmp_path) -> None:
    async with memory_env(tmp_path, NOW, with_audit=False) as env:
        old, new, other, pinned_a, pinned_b = await remember(env, [
            {"text": "The meeting moved to Tuesday.", "vector": unit(1, 0.01, 0, 0), "tags": ["work"]},
            {"text": "Meeting has moved to Tuesday", "vector": unit(1, 0.02, 0, 0), "tags": ["calendar", "work"]},
            {"text": "Buy oat milk.", "vector": unit(0, 0, 1, 0)},
            {"text": "Pinned one", "vector": unit(0, 1, 0, 0.01), "pinned": True},
            {"text": "Pinned two", "vector": unit(0, 1, 0, 0.02), "pinned": True},
        ])
        await env.memory.graph_upsert(rpc_ctx(), GraphUpsertParams.model_validate({
            "concepts": [{"name": "meeting", "episodes": [new]}],
            "relations": [{"src": "meeting", "type": "on", "dst": "Tuesday", "sources": [new]}],
        }))
        await env.memory.recall(rpc_ctx(), RecallParams(vector=unit(1, 0.02, 0, 0), k=2))  # an access of both
        env.memory.episodic.flush_access()
        before = state(env)
        stage = DeduplicationStage()
        figures = await stage.run(env.ctx(SleepSettings(), stage="deduplication"))
        assert figures["merged"] == 1 and [p[:2] for p in figures["pairs"]] == [[old, new]] and figures["pairs"][0][2] > 0.97
        kept, gone = (await env.memory.get(rpc_ctx(), GetParams(ids=[old, new]))).episodes
        assert kept.archived_at is None and gone.archived_at is not None
        assert sorted(kept.tags) == ["calendar", "work"] and kept.access_count == 2
        assert env.sql("SELECT e.id FROM memory_concept_episodes c JOIN memory_episodes e ON e.seq = c.episode ORDER BY e.seq") == [
            (old,), (new,)]
        hits = (await env.memory.recall(rpc_ctx(), RecallParams(vector=unit(1, 0.02, 0, 0), k=5))).hits
        assert [h.id for h in hits][:1] == [old] and new not in [h.id for h in hits]
        # pinned twins are both kept; an unrelated episode is untouched
        live = {i for (i,) in env.sql("SELECT id FROM memory_episodes WHERE archived_at IS NULL")}
        assert {pinned_a, pinned_b, other} <= live
        again = await stage.run(env.ctx(SleepSettings(), run_id=2, stage="deduplication"))
        assert again["merged"] == 0

        undone = await stage.rollback(env.ctx(SleepSettings(), stage="deduplication"))
        assert undone["unarchived"] == 1 and undone["access"] == 1 and undone["tag"] == 1 and undone["link"] == 1
        after = state(env)
        assert after[1:] == before[1:]
        # the merged one is live again; it had given its text key up while archived and takes it back
        assert after[0] == before[0]
        assert new in [h.id for h in (await env.memory.recall(rpc_ctx(), RecallParams(vector=unit(1, 0.02, 0, 0), k=5))).hits]
        assert await stage.rollback(env.ctx(SleepSettings(), stage="deduplication")) == {}


async def test_the_threshold_and_the_window_are_settings(tmp_path) -> None:
    async with memory_env(tmp_path, NOW, with_audit=False) as env:
        await remember(env, [{"text": "a", "vector": unit(1, 0.2, 0)}, {"text": "b", "vector": unit(1, 0.25, 0)}])
        loose = SleepSettings.model_validate({"deduplication": {"similarity": 0.999}})
        assert (await DeduplicationStage().run(env.ctx(loose, stage="deduplication")))["merged"] == 0
        env.clock.now = NOW + 30 * 86_400  # both recorded before the window
        assert (await DeduplicationStage().run(env.ctx(SleepSettings(), run_id=2, stage="deduplication")))["merged"] == 0
        everything = SleepSettings.model_validate({"deduplication": {"window": 0}})
        assert (await DeduplicationStage().run(env.ctx(everything, run_id=3, stage="deduplication")))["merged"] == 1
