"""Dream replay on crafted memory: past queries replayed before and after forgetting, a memory made
worse is detected, and rolling forgetting back restores what the queries found."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from engram.memory.api import RecallParams, RememberParams
from engram.sleep.forgetting import ForgettingStage
from engram.sleep.replay import ReplayStage
from engram.sleep.settings import SleepSettings
from engram.sleep.stages import REGISTRY

from tests.unit.memory.conftest import ctx as rpc_ctx
from tests.unit.sleep.memory_env import StopAfter, memory_env

DAY = 86_400.0
NOW = 1_800_000_000.0
DIM = 16


def settings(**replay) -> SleepSettings:
    return SleepSettings(
        # protect_recalled off: archiving what the queries found is how these tests make recall worse
        forgetting={"min_age": 30 * DAY, "max_salience": 0.2, "grace": 7 * DAY, "batch": 4, "protect_recalled": False},
        replay={"queries": 50, "k": 3, "max_drop": 0.05, **replay},
    )


async def crafted(env, queried_importance: float) -> list[str]:
    """Eight episodes along the first axes (what the queries find, of ``queried_importance``) and
    eight unimportant ones along the last axes (never found); all old. Then ten recalls near the
    first ones, sampled into the replay log."""
    eye = np.eye(DIM, dtype=np.float32)
    items = [
        {"text": f"found {i}", "vector": (eye[i % 4] + 0.1 * eye[4 + i]).tolist(), "importance": queried_importance,
         "time": NOW - 40 * DAY}
        for i in range(8)
    ] + [
        {"text": f"unfound {i}", "vector": eye[DIM - 1 - (i % 3)].tolist(), "importance": 0.05, "time": NOW - 40 * DAY}
        for i in range(8)
    ]
    ids = (await env.memory.remember(rpc_ctx(), RememberParams.model_validate({"items": items}))).ids
    for i in range(10):
        hits = (await env.memory.recall(rpc_ctx(), RecallParams.model_validate({"vector": eye[i % 4].tolist(), "k": 3}))).hits
        assert hits and all(h.text.startswith("found") for h in hits)
    assert await env.memory._thread(env.memory.episodic.flush_replay) == 10
    return ids


def test_registered() -> None:
    assert REGISTRY["replay"] is ReplayStage and ReplayStage.name == "replay"


async def test_without_a_replay_log_nothing_is_compared(tmp_path: Path) -> None:
    async with memory_env(tmp_path, NOW) as env:
        await env.memory.remember(rpc_ctx(), RememberParams.model_validate({"items": [{"text": "x", "vector": [1, 0]}]}))
        ctx = env.ctx(settings())
        await ReplayStage.snapshot(ctx)
        figures = await ReplayStage().run(ctx)
        assert figures["queries"] == 0 and figures["worse"] is False and figures["drop"] == 0.0
        assert await ReplayStage().rollback(ctx) == {}


async def test_forgetting_what_the_queries_found_is_detected_and_rolled_back(tmp_path: Path) -> None:
    async with memory_env(tmp_path, NOW, replay_log={"sample_rate": 1.0}) as env:
        await crafted(env, queried_importance=0.1)  # the found episodes are forgettable too
        ctx = env.ctx(settings())
        snap = await ReplayStage.snapshot(ctx)
        assert snap["done"] and len(snap["queries"]) == 10

        forgetting = await ForgettingStage().run(env.ctx(settings(), stage="forgetting"))
        assert forgetting["archived"] == 16

        figures = await ReplayStage().run(ctx)
        assert figures["queries"] == 10 and figures["recall_before"] == 1.0 and figures["recall_after"] == 0.0
        assert figures["drop"] == 1.0 and figures["worse"] is True and figures["queries_worse"] == 10

        # what the runner does on "worse": roll forgetting back, and recall is as it was
        assert (await ForgettingStage().rollback(env.ctx(settings(), stage="forgetting")))["unarchived"] == 16
        again = await ReplayStage().run(ctx)
        assert again["recall_after"] == 1.0 and again["drop"] == 0.0 and again["worse"] is False and again["overlap"] == 1.0


async def test_forgetting_what_no_query_found_is_not_worse(tmp_path: Path) -> None:
    async with memory_env(tmp_path, NOW, replay_log={"sample_rate": 1.0}) as env:
        await crafted(env, queried_importance=0.9)
        ctx = env.ctx(settings())
        await ReplayStage.snapshot(ctx)
        assert (await ForgettingStage().run(env.ctx(settings(), stage="forgetting")))["archived"] == 8
        figures = await ReplayStage().run(ctx)
        assert figures["queries"] == 10 and figures["recall_before"] == figures["recall_after"] == 1.0
        assert figures["worse"] is False


async def test_a_stopped_snapshot_resumes_and_a_finished_one_is_kept(tmp_path: Path, monkeypatch) -> None:
    async with memory_env(tmp_path, NOW, replay_log={"sample_rate": 1.0}) as env:
        await crafted(env, queried_importance=0.1)
        monkeypatch.setattr("engram.sleep.replay._UNIT_SECONDS", 0.0)  # one query per unit of work
        monkeypatch.setattr("engram.sleep.replay._SAVE_EVERY", 1)
        with pytest.raises(KeyboardInterrupt):
            await ReplayStage.snapshot(env.ctx(settings(), pacer=StopAfter(3)))
        [(partial,)] = env.sql("SELECT cursor FROM sleep_cursors WHERE run = 1 AND stage = 'replay.before'")
        partial = json.loads(partial)
        assert not partial["done"] and sum(q["before"] is not None for q in partial["queries"]) == 3
        snap = await ReplayStage.snapshot(env.ctx(settings()))
        assert snap["done"] and all(isinstance(q["before"], list) for q in snap["queries"])
        assert snap["queries"][:3] == partial["queries"][:3]
        await ForgettingStage().run(env.ctx(settings(), stage="forgetting"))
        assert await ReplayStage.snapshot(env.ctx(settings())) == snap  # a finished snapshot stays as it is
        assert (await ReplayStage().run(env.ctx(settings())))["worse"] is True


async def test_an_answer_outranked_by_better_episodes_is_not_lost(tmp_path: Path) -> None:
    async with memory_env(tmp_path, NOW, replay_log={"sample_rate": 1.0}) as env:
        await crafted(env, queried_importance=0.1)
        ctx = env.ctx(settings())
        await ReplayStage.snapshot(ctx)
        # Newer, important episodes right on the queries' axes: recall now rightly prefers them.
        eye = np.eye(DIM, dtype=np.float32)
        better = [{"text": f"better {i}", "vector": eye[i % 4].tolist(), "importance": 1.0, "time": NOW} for i in range(12)]
        await env.memory.remember(rpc_ctx(), RememberParams.model_validate({"items": better}))
        figures = await ReplayStage().run(ctx)
        assert figures["overlap"] == 0.0  # none of the old answers is returned any more ...
        assert figures["recall_after"] == 1.0 and figures["worse"] is False  # ... yet none was lost
