"""Dream replay: past queries re-run before and after consolidation, to catch a worse memory.

Memory keeps a sample of past recalls (``memory.replay_log``: the query vector, k and the ids it
returned), and replays them for this stage through its consolidation interface. Before the first stage of a namespace the runner calls :meth:`ReplayStage.snapshot`:
the newest ``sleep.replay.queries`` sampled queries are replayed against memory as it is, through
the recall code the daemon serves ``memory.recall`` with (vector search, the configured score
weights, no filter, ``k = sleep.replay.k``), and the result is kept for the run. The replay
stage, after importance, clustering, forgetting and compaction, replays the same queries again.

Quality is recall@k against what each query originally returned: the *relevant* set of a query
is its originally returned ids (the first k) that are still live at the snapshot, and a replay's
recall is the share of them it finds, averaged over the queries that have any. ``drop`` is
``recall_before - recall_after``. A relevant episode missing from a replay's results still counts
as found when it is live and scores no higher than the k-th result: better-scoring episodes took
its place (typically recent or important ones that entered recall's candidate pool once
forgetting emptied part of it), which is ranking working, not memory lost. One that the
deduplication stage merged into another counts as found when that one is. When ``drop`` exceeds ``sleep.replay.max_drop`` the figures say
``worse: true`` and the runner rolls back forgetting, deduplication, clustering and importance of the
namespace.
``overlap`` (the share of the before-results found again) is reported alongside.

The snapshot is saved (sleep's table ``sleep_cursors``, stage ``replay.before``) as it goes, so a run
stopped while taking it continues where it was, and a resumed run compares against the memory of
before its first attempt. Replays only read; each unit of work is a few queries (about 15 ms),
with :meth:`StageContext.step` between.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import structlog

from engram.sleep.ports import JournalTag, ReplayQuery
from engram.sleep.stage import StageContext

__all__ = ["ReplayStage"]

log = structlog.get_logger("engram.sleep")

SNAPSHOT = "replay.before"  # the sleep_cursors stage key of the before-snapshot
_UNIT_SECONDS = 0.015  # replaying stops for a step after this much time
_SAVE_EVERY = 8  # units between saves of a snapshot in progress


def _outranked(ctx: StageContext, query: ReplayQuery, missing: list[str], floor: float | None) -> list[str]:
    """Those of ``missing`` (relevant ids a replay did not return) that recall left out for a good
    reason: they are live and score no higher than the k-th hit, so better-scoring episodes took
    their places. Recall ranks the nearest vectors it fetched (``memory.recall.candidate_factor``
    per hit) by the hybrid score; when forgetting empties part of that pool, recent or important
    episodes from further out enter it and may rightly outrank an old answer. Counting those as
    lost made dream replay roll back every large forgetting (worker thread)."""
    if not missing or floor is None:
        return []
    scores = ctx.store.recall_scores(ctx.namespace, missing, query.vector)  # live ones only: the others are lost
    return [episode_id for episode_id, score in scores.items() if score <= floor]


def _replay_some(ctx: StageContext, queries: list[ReplayQuery], relevant: list[list[str]], start: int,
                 k: int) -> list[dict[str, list[str]] | None]:
    """Replay queries from ``start`` until about ``_UNIT_SECONDS`` have passed (worker thread):
    per query the ids returned and the relevant ids rightly outranked (see :func:`_outranked`);
    None for a query whose vector no longer fits the namespace."""
    store = ctx.store
    out: list[dict[str, list[str]] | None] = []
    began = time.perf_counter()
    for n, q in enumerate(queries[start:], start):
        dim = store.vector_dim(ctx.namespace)
        if dim is None or dim != q.vector.shape[0]:
            out.append(None if dim is not None else {"ids": [], "outranked": []})
        else:
            hits = store.replay_recall(ctx.namespace, q.vector, k)
            ids = [episode_id for episode_id, _score in hits]
            floor = hits[-1][1] if len(hits) >= k else None  # fewer than k: nothing was outranked
            missing = [i for i in relevant[n] if i not in set(ids)]
            out.append({"ids": ids, "outranked": _outranked(ctx, q, missing, floor)})
        if time.perf_counter() - began >= _UNIT_SECONDS:
            break
    return out


def _load(ctx: StageContext) -> dict[str, Any] | None:
    return ctx.db.cursor(ctx.run_id, ctx.namespace, SNAPSHOT)


def _store(ctx: StageContext, snapshot: dict[str, Any]) -> None:
    ctx.db.save_cursor(ctx.run_id, ctx.namespace, SNAPSHOT, snapshot)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class ReplayStage:
    name: ClassVar[str] = "replay"

    @staticmethod
    async def snapshot(ctx: StageContext) -> dict[str, Any]:
        """Replay the namespace's replay set against memory as it is now and keep the result for
        the run (resumable; a finished snapshot is returned as it is)."""
        s = ctx.settings.replay
        snap = await ctx.thread(_load, ctx)
        if snap is not None and snap.get("done"):
            return snap
        if snap is None:
            queries = await ctx.thread(ctx.store.replay_queries, ctx.namespace, s.queries)
            relevant_pool = [i for q in queries for i in q.ids[: s.k]]
            live = await ctx.thread(ctx.store.live_ids, ctx.namespace, relevant_pool)
            snap = {
                "done": False,
                "k": s.k,
                "queries": [{"seq": q.seq, "relevant": [i for i in q.ids[: s.k] if i in live], "before": None} for q in queries],
            }
            await ctx.thread(_store, ctx, snap)
        items = snap["queries"]
        pending = [n for n, item in enumerate(items) if item["before"] is None]
        if pending:
            found = await ctx.thread(ctx.store.replay_queries, ctx.namespace, len(items), [items[n]["seq"] for n in pending])
            by_seq = {q.seq: q for q in found}
            for n in pending:  # queries trimmed from the log meanwhile are left out
                if items[n]["seq"] not in by_seq:
                    items[n]["before"] = "gone"
            places = [n for n in pending if items[n]["seq"] in by_seq]
            queued = [by_seq[items[n]["seq"]] for n in places]
            relevant = [items[n]["relevant"] for n in places]
            done = units = 0
            while done < len(queued):
                results = await ctx.thread(_replay_some, ctx, queued, relevant, done, snap["k"])
                for offset, result in enumerate(results):
                    item = items[places[done + offset]]
                    item["before"] = result["ids"] if result is not None else "gone"
                    item["outranked_before"] = result["outranked"] if result is not None else []
                done += len(results)
                units += 1
                if units % _SAVE_EVERY == 0:
                    await ctx.thread(_store, ctx, snap)
                ctx.progress(done, len(queued))
                await ctx.step()
        snap["done"] = True
        await ctx.thread(_store, ctx, snap)
        return snap

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        s = ctx.settings.replay
        snap = await ctx.thread(_load, ctx)
        if snap is None or not snap.get("done"):
            snap = await self.snapshot(ctx)  # run alone (sleep.run with only this stage): compares memory with itself
        items = [item for item in snap["queries"] if isinstance(item["before"], list)]
        if not items:
            return {"queries": 0, "recall_before": None, "recall_after": None, "drop": 0.0, "overlap": None, "worse": False,
                    "reason": "no replay log for this namespace yet"}
        queries = await ctx.thread(ctx.store.replay_queries, ctx.namespace, len(items), [i["seq"] for i in items])
        by_seq = {q.seq: q for q in queries}
        items = [item for item in items if item["seq"] in by_seq]
        queued = [by_seq[item["seq"]] for item in items]
        relevant_lists = [item["relevant"] for item in items]
        after: list[dict[str, list[str]] | None] = []
        while len(after) < len(queued):
            after += await ctx.thread(_replay_some, ctx, queued, relevant_lists, len(after), snap["k"])
            ctx.progress(len(after), len(queued))
            await ctx.step()
        # An episode this run merged into its near-duplicate is found when that one is.
        into = await ctx.thread(ctx.store.merged_into, JournalTag(ctx.run_id, ctx.namespace, "deduplication"))
        before_recall: list[float] = []
        after_recall: list[float] = []
        overlap: list[float] = []
        worse_queries = 0
        for item, got in zip(items, after):
            found = set(got["ids"]) if got is not None else set()
            before = set(item["before"])
            relevant = set(item["relevant"])
            if relevant:
                # a relevant episode rightly outranked by better-scoring ones counts as found
                b = len((before | set(item.get("outranked_before", []))) & relevant) / len(relevant)
                reached = found | set(got["outranked"] if got is not None else [])
                a = sum(1 for i in relevant if i in reached or into.get(i) in reached) / len(relevant)
                before_recall.append(b)
                after_recall.append(a)
                worse_queries += a < b
            if before:
                overlap.append(len(found & before) / len(before))
        rb, ra = _mean(before_recall), _mean(after_recall)
        drop = (rb - ra) if rb is not None and ra is not None else 0.0
        figures = {
            "queries": len(items),
            "scored": len(before_recall),
            "recall_before": rb,
            "recall_after": ra,
            "drop": drop,
            "overlap": _mean(overlap),
            "queries_worse": worse_queries,
            "max_drop": s.max_drop,
            "worse": drop > s.max_drop,
        }
        log.info("dream replay", namespace=ctx.namespace, run=ctx.run_id, **{k: v for k, v in figures.items() if k != "max_drop"})
        return figures

    async def rollback(self, ctx: StageContext) -> dict[str, Any]:
        """Replay only reads: nothing to undo."""
        return {}
