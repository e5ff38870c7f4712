"""Archived episodes (sleep's forgetting) and the replay log, through the memory part's handlers."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from engram.memory.api import (
    ExportParams,
    ForgetParams,
    GetParams,
    GraphUpsertParams,
    RecallParams,
    RememberParams,
    StatsParams,
)
from engram.memory.filters import SqlFilter

from tests.unit.memory.conftest import ctx

NS = "uid:1000"


def remember(*items: dict) -> RememberParams:
    return RememberParams.model_validate({"items": list(items)})


def recall(**params) -> RecallParams:
    return RecallParams.model_validate(params)


async def seqs_of(memory, ids: list[str]) -> list[int]:
    found = await memory._thread(memory.episodic.store.resolve, NS, ids)
    return [found[i] for i in ids]


async def test_an_archived_episode_is_out_of_recall_index_and_counts_but_readable(make_memory) -> None:
    async with make_memory(embedder=None) as (memory, _):
        ids = (await memory.remember(ctx(), remember(
            {"text": "zebra crossing downtown", "vector": [1, 0, 0], "session": "s", "tags": ["t"], "kind": "chat"},
            {"text": "zebra stripes at the zoo", "vector": [0.9, 0.1, 0], "session": "s", "tags": ["t"], "kind": "chat"},
            {"text": "a pinned zebra fact", "vector": [0.8, 0.2, 0], "pinned": True, "session": "s", "tags": ["t"]},
        ))).ids
        seqs = await seqs_of(memory, ids)
        done = await memory._thread(memory.episodic.archive_seqs, NS, seqs, 1234.5)
        assert done == seqs[:2]  # pinned episodes are never archived
        assert memory.index.count(NS) == 1

        # vector path, keyword path, and both filtered paths (exact over the filtered set, widening search)
        hits = (await memory.recall(ctx(), recall(vector=[1, 0, 0], k=10))).hits
        assert [h.id for h in hits] == [ids[2]]
        hits = (await memory.recall(ctx(), recall(vector=[1, 0, 0], query="zebra crossing", k=10))).hits
        assert [h.id for h in hits] == [ids[2]]
        for limit in (2000, 0):
            memory.settings.recall.exact_filter_limit = limit
            hits = (await memory.recall(ctx(), recall(vector=[1, 0, 0], k=10, filter={"session": "s", "tags": ["t"]}))).hits
            assert [h.id for h in hits] == [ids[2]], limit

        got = (await memory.get(ctx(), GetParams(ids=ids))).episodes
        assert [e.archived_at for e in got] == [1234.5, 1234.5, None]

        stats = await memory.stats(ctx(), StatsParams())
        assert (stats.episodes, stats.archived, stats.kinds, stats.pinned) == (1, 2, {"note": 1}, 1)
        assert stats.index.vectors == 1
        export = await memory.export(ctx(), ExportParams())
        assert [i.id for i in export.items] == [ids[2]] and export.total == 1

        # rollback: live again, back in the index and in recall
        back = await memory._thread(memory.episodic.unarchive_seqs, NS, seqs[:1], 1234.5)
        assert back == seqs[:1] and memory.index.count(NS) == 2
        hits = (await memory.recall(ctx(), recall(vector=[1, 0, 0], k=1))).hits
        assert hits[0].id == ids[0]
        assert await memory._thread(memory.episodic.unarchive_seqs, NS, seqs[1:2], 99.0) == []  # another archiving: untouched


async def test_activation_does_not_reach_archived_episodes(make_memory) -> None:
    async with make_memory() as (memory, _):
        ids = (await memory.remember(ctx(), remember({"text": "the cat purrs"}, {"text": "budget meeting"}))).ids
        await memory.graph_upsert(ctx(), GraphUpsertParams.model_validate({"concepts": [{"name": "cat", "episodes": [ids[0]]}]}))
        params = recall(query="cat", k=5, activation=True, weights={"vector": 0.01, "activation": 10})
        assert ids[0] in {h.id for h in (await memory.recall(ctx(), params)).hits}
        await memory._thread(memory.episodic.archive_seqs, NS, await seqs_of(memory, ids[:1]), time.time())
        assert memory.episodic.graph.activate(NS, (await memory.episodic.embed(["cat"], NS, "q"))[0])  # still reached in the graph
        assert ids[0] not in {h.id for h in (await memory.recall(ctx(), params)).hits}


async def test_forget_deletes_archived_episodes(make_memory) -> None:
    async with make_memory(embedder=None) as (memory, events):
        ids = (await memory.remember(ctx(), remember(*({"text": f"n{i}", "vector": [1, i], "session": "x"} for i in range(3))))).ids
        seqs = await seqs_of(memory, ids)
        await memory._thread(memory.episodic.archive_seqs, NS, seqs[:2], 1.0)
        assert (await memory.forget(ctx(), ForgetParams(ids=[ids[0]]))).forgotten == 1
        assert (await memory.forget(ctx(), ForgetParams(filter={"session": "x"}))).ids == ids[1:]
        stats = await memory.stats(ctx(), StatsParams())
        assert (stats.episodes, stats.archived) == (0, 0)

        gone = await memory.forget_seqs(NS, seqs, "sleep")  # the in-process path sleep deletes with
        assert gone.ids == []
        more = (await memory.remember(ctx(), remember({"text": "m", "vector": [0, 1]}))).ids
        gone = await memory.forget_seqs(NS, await seqs_of(memory, more), "sleep")
        assert gone.ids == more and events.events[-1].topic == "memory.forgotten" and events.events[-1].scope == "sleep"


async def test_restart_does_not_put_archived_episodes_back_in_the_index(make_memory, tmp_path: Path) -> None:
    async with make_memory(embedder=None) as (memory, _):
        ids = (await memory.remember(ctx(), remember(*({"text": f"n{i}", "vector": [1, i]} for i in range(4))))).ids
        seqs = await seqs_of(memory, ids)
        await memory._thread(memory.episodic.archive_seqs, NS, seqs[:1], 5.0)

        def archive_behind_the_index() -> None:  # as if killed between the commit and the index update
            with memory.db.transaction() as conn:
                memory.episodic.store.archive(conn, NS, seqs[1:2], 6.0)

        await memory._thread(archive_behind_the_index)
        assert memory.index.count(NS) == 3
    async with make_memory(embedder=None) as (memory, _):
        assert sorted(memory.index.ids(NS).tolist()) == seqs[2:]
        live = await memory._thread(memory.episodic.store.seqs_of, NS)
        assert live.tolist() == seqs[2:]
        hits = (await memory.recall(ctx(), recall(vector=[1, 0], k=4))).hits
        assert {h.id for h in hits} == set(ids[2:])


async def test_replay_log_samples_unfiltered_recalls_and_keeps_the_newest(make_memory) -> None:
    async with make_memory(embedder=None, replay_log={"sample_rate": 1.0, "size": 3}) as (memory, _):
        ids = (await memory.remember(ctx(), remember(*({"text": f"n{i}", "vector": [1, i]} for i in range(3))))).ids
        for i in range(5):
            await memory.recall(ctx(), recall(vector=[1, i], k=2))
        await memory.recall(ctx(), recall(vector=[1, 0], k=2, filter={"session": "nope"}))  # filtered: not sampled
        assert len(memory.episodic.replay) == 5
        assert await memory._thread(memory.episodic.flush_replay) == 5
        kept = await memory._thread(memory.episodic.replay_queries, NS, 10)
        assert len(kept) == 3 and [q.k for q in kept] == [2, 2, 2]
        assert np.allclose(kept[-1].vector, np.array([1, 4]) / np.linalg.norm([1, 4]), atol=1e-6)
        assert kept[-1].ids[0] == ids[2] and kept[0].seq < kept[-1].seq
        again = await memory._thread(memory.episodic.replay_queries, NS, 10, [kept[0].seq])
        assert [q.seq for q in again] == [kept[0].seq]
        # the episodic recall path the replay uses gives the same ids
        hits = memory.episodic.recall(NS, kept[-1].vector, None, 2, SqlFilter(), memory._weights(recall(vector=[1, 0])), False)
        assert [h["id"] for h in hits] == kept[-1].ids

        await memory.recall(ctx(), recall(vector=[1, 0], k=1))
        await memory.forget(ctx(uid=0), ForgetParams(all=True, namespace=NS))
        assert not memory.episodic.replay
        assert await memory._thread(memory.episodic.replay_queries, NS, 10) == []


async def test_replay_log_is_off_at_rate_zero(make_memory) -> None:
    async with make_memory(embedder=None, replay_log={"sample_rate": 0.0}) as (memory, _):
        await memory.remember(ctx(), remember({"text": "n", "vector": [1, 0]}))
        await memory.recall(ctx(), recall(vector=[1, 0], k=1))
        assert not memory.episodic.replay
