"""The forgetting stage on crafted episodes: the right ones archived, the pinned, linked, recent and
important ones kept, archived ones deleted (and audited) after the grace period, rollback, resume."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import numpy as np
import pytest
from engram.errors import NotFound
from engram.memory.api import (
    GetParams,
    GraphUpsertParams,
    RecallParams,
    RememberParams,
    StatsParams,
)
from engram.sleep.forgetting import ForgettingStage
from engram.sleep.settings import SleepSettings
from engram.sleep.stages import REGISTRY

from tests.unit.memory.conftest import ctx as rpc_ctx
from tests.unit.sleep.memory_env import NS, StopAfter, memory_env

DAY = 86_400.0
NOW = 1_800_000_000.0
SETTINGS = SleepSettings(forgetting={"min_age": 30 * DAY, "max_salience": 0.2, "grace": 7 * DAY, "batch": 2})


async def crafted(env) -> dict[str, str]:
    """One episode per case; returns case -> id."""
    old, recent = NOW - 40 * DAY, NOW - DAY
    cases = {
        "old_low": {"importance": 0.1, "time": old},
        "old_low_salience": {"importance": 0.9, "time": old},  # scored unimportant: salience wins over importance
        "old_high_salience": {"importance": 0.1, "time": old},  # scored important
        "old_low_2": {"importance": 0.05, "time": old},
        "recent_low": {"importance": 0.1, "time": recent},
        "pinned": {"importance": 0.0, "time": old, "pinned": True},
        "in_concept": {"importance": 0.1, "time": old},
        "relation_source": {"importance": 0.1, "time": old},
        "important": {"importance": 0.8, "time": old},
    }
    items = [{"text": f"episode {name}", "vector": [1.0, i], **spec} for i, (name, spec) in enumerate(cases.items())]
    ids = dict(zip(cases, (await env.memory.remember(rpc_ctx(), RememberParams.model_validate({"items": items}))).ids))
    env.sql("UPDATE memory_episodes SET salience = 0.1 WHERE id = ?", ids["old_low_salience"])
    env.sql("UPDATE memory_episodes SET salience = 0.9 WHERE id = ?", ids["old_high_salience"])
    await env.memory.graph_upsert(rpc_ctx(), GraphUpsertParams.model_validate({
        "concepts": [{"name": "topic", "episodes": [ids["in_concept"]]}],
        "relations": [{"src": "a", "type": "knows", "dst": "b", "sources": [ids["relation_source"]]}],
    }))
    return ids


async def archived_at(env, ids: dict[str, str]) -> dict[str, float | None]:
    got = (await env.memory.get(rpc_ctx(), GetParams(ids=list(ids.values())))).episodes
    return {name: e.archived_at for name, e in zip(ids, got)}


def test_registered() -> None:
    assert REGISTRY["forgetting"] is ForgettingStage and ForgettingStage.name == "forgetting"


async def test_archives_old_unimportant_unlinked_episodes_and_keeps_the_rest(tmp_path: Path) -> None:
    async with memory_env(tmp_path, NOW) as env:
        ids = await crafted(env)
        figures = await ForgettingStage().run(env.ctx(SETTINGS, stage="forgetting"))
        assert figures["archived"] == 3 and figures["kept_pinned"] == 1 and figures["deleted"] == 0
        assert figures["scanned"] == 9 and figures["audit_seqs"] == []
        state = await archived_at(env, ids)
        assert {n for n, at in state.items() if at is not None} == {"old_low", "old_low_salience", "old_low_2"}
        assert state["old_low"] == NOW
        stats = await env.memory.stats(rpc_ctx(), StatsParams())
        assert (stats.episodes, stats.archived, stats.index.vectors) == (6, 3, 6)
        hits = (await env.memory.recall(rpc_ctx(), RecallParams.model_validate({"vector": [1, 0], "k": 20}))).hits
        assert {h.id for h in hits} == {ids[n] for n in ids} - {ids["old_low"], ids["old_low_salience"], ids["old_low_2"]}

        again = await ForgettingStage().run(env.ctx(SETTINGS, run_id=2, stage="forgetting"))  # rerunning is harmless
        assert again["archived"] == 0 and again["deleted"] == 0


async def test_episodes_that_past_recalls_returned_are_kept(tmp_path: Path) -> None:
    async with memory_env(tmp_path, NOW) as env:
        ids = await crafted(env)
        vector = np.array([1.0, 0.0], dtype="<f4").tobytes()
        env.sql("INSERT INTO memory_replay_queries (namespace, time, k, dim, vector, results) VALUES (?, ?, 10, 2, ?, ?)",
                NS, NOW - DAY, vector, json.dumps([ids["old_low"]]))
        figures = await ForgettingStage().run(env.ctx(SETTINGS, stage="forgetting"))
        assert figures["archived"] == 2 and figures["kept_recalled"] == 1
        assert (await archived_at(env, ids))["old_low"] is None

        aggressive = SETTINGS.model_copy(update={"forgetting": SETTINGS.forgetting.model_copy(update={"protect_recalled": False})})
        figures = await ForgettingStage().run(env.ctx(aggressive, run_id=2, stage="forgetting"))
        assert figures["archived"] == 1 and figures["kept_recalled"] == 0
        assert (await archived_at(env, ids))["old_low"] is not None


async def test_archived_episodes_are_deleted_after_the_grace_period_and_audited(tmp_path: Path) -> None:
    async with memory_env(tmp_path, NOW, purge_delay=0) as env:
        ids = await crafted(env)
        await ForgettingStage().run(env.ctx(SETTINGS, run_id=1))
        gone = {n: ids[n] for n in ("old_low", "old_low_salience", "old_low_2")}

        env.clock.now = NOW + 7 * DAY - 1  # not yet
        early = await ForgettingStage().run(env.ctx(SETTINGS, run_id=2))
        assert early["deleted"] == 0 and env.audit_entries("sleep.forget") == []

        env.clock.now = NOW + 7 * DAY + 1
        figures = await ForgettingStage().run(env.ctx(SETTINGS, run_id=3))
        assert figures["deleted"] == 3 and len(figures["audit_seqs"]) == 2  # batches of 2
        entries = env.audit_entries("sleep.forget")
        assert [e["seq"] for e in entries] == figures["audit_seqs"]
        audited = [i for e in entries for i in e["detail"]["ids"]]
        assert sorted(audited) == sorted(gone.values())
        digests = [h for e in entries for h in e["detail"]["text_hmacs"]]
        names = {v: k for k, v in ids.items()}
        key = (tmp_path / "keys" / "content.key").read_bytes()
        plain = [hashlib.sha256(f"episode {names[i]}".encode()).digest() for i in audited]
        # Keyed: a bare SHA-256 of a short text could be found again by trying candidates.
        assert digests == [hmac.new(key, h, hashlib.sha256).hexdigest() for h in plain]
        assert all(e["detail"]["run"] == 3 and e["detail"]["namespace"] == NS for e in entries)
        assert "episode old_low" not in str(entries)  # hashes, never text
        for i in gone.values():
            with pytest.raises(NotFound):
                await env.memory.get(rpc_ctx(), GetParams(ids=[i]))
        kept = (await env.memory.get(rpc_ctx(), GetParams(ids=[ids["pinned"], ids["in_concept"], ids["recent_low"]]))).episodes
        assert [e.archived_at for e in kept] == [None, None, None]
        fts = env.sql("SELECT count(*) FROM memory_fts WHERE memory_fts MATCH 'old_low'")
        assert fts == [(0,)]


async def test_without_an_audit_log_nothing_is_deleted(tmp_path: Path) -> None:
    async with memory_env(tmp_path, NOW, with_audit=False) as env:
        await crafted(env)
        await ForgettingStage().run(env.ctx(SETTINGS, run_id=1))
        env.clock.now = NOW + 8 * DAY
        figures = await ForgettingStage().run(env.ctx(SETTINGS, run_id=2))
        assert figures["deleted"] == 0 and figures["deletion"].startswith("skipped")
        assert (await env.memory.stats(rpc_ctx(), StatsParams())).archived == 3


async def test_rollback_makes_this_runs_archived_episodes_live_again(tmp_path: Path) -> None:
    async with memory_env(tmp_path, NOW) as env:
        ids = await crafted(env)
        stage = ForgettingStage()
        assert await stage.rollback(env.ctx(SETTINGS, run_id=1)) == {}  # nothing done yet
        await stage.run(env.ctx(SETTINGS, run_id=1))
        assert env.memory.index.count(NS) == 6
        assert await stage.rollback(env.ctx(SETTINGS, run_id=1)) == {"unarchived": 3}
        assert all(at is None for at in (await archived_at(env, ids)).values())
        assert env.memory.index.count(NS) == 9
        assert await stage.rollback(env.ctx(SETTINGS, run_id=1)) == {"unarchived": 0}  # idempotent
        assert env.memory.index.count(NS) == 9


async def test_a_stopped_run_resumes_from_its_cursor(tmp_path: Path) -> None:
    async with memory_env(tmp_path, NOW) as env:
        ids = await crafted(env)
        with pytest.raises(KeyboardInterrupt):
            await ForgettingStage().run(env.ctx(SETTINGS, run_id=1, stage="forgetting", pacer=StopAfter(1)))
        [(cursor,)] = env.sql("SELECT cursor FROM sleep_cursors WHERE run = 1 AND namespace = ? AND stage = 'forgetting'", NS)
        saved = json.loads(cursor)
        assert saved["phase"] == "archive" and saved["after"] > 0
        first = {n for n, at in (await archived_at(env, ids)).items() if at is not None}
        assert first and first < {"old_low", "old_low_salience", "old_low_2"}

        env.clock.now = NOW + 3600  # the resumed attempt keeps the first attempt's reference time
        figures = await ForgettingStage().run(env.ctx(SETTINGS, run_id=1, stage="forgetting", saved=saved))
        assert figures["archived"] == 3  # the earlier attempt's work is counted
        state = await archived_at(env, ids)
        assert {n for n, at in state.items() if at is not None} == {"old_low", "old_low_salience", "old_low_2"}
        assert {state["old_low"], state["old_low_2"]} == {NOW}
