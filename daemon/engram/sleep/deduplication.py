"""Deduplication: merge near-duplicate episodes into one, reversibly.

``memory.remember`` already keeps one episode per normalised text; this stage catches what
differs in wording but not in meaning. Per namespace it pages through the live episodes recorded
in the last ``sleep.deduplication.window`` seconds (0: all of them), ``sleep.deduplication.batch``
at a time, and looks each one up in the namespace's vector index: a pair whose cosine similarity
is at least ``sleep.deduplication.similarity`` is merged by memory
(:mod:`engram.memory.merging`): the older (or the pinned) episode is kept and gains the other's
tags, concept links, relation sources and accesses; the other is archived, so forgetting deletes
it after its grace, with the audit entry of any deletion. Each unit is one short background
transaction that journals what it added and what it archived under the stage's tag.

Audited like sleep's other changes: the stage's figures, in the run report and the ``sleep.stage``
event the audit log records, list the merges (kept id, merged id, similarity; the first
``_LISTED``). :meth:`DeduplicationStage.rollback` (dream replay found recall worse, or an operator's
undo) removes what the merges added, restores the access counts and makes the merged episodes live
again.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import structlog

from engram.sleep.ports import JournalTag
from engram.sleep.stage import StageContext

__all__ = ["DeduplicationStage"]

log = structlog.get_logger("engram.sleep")

_LISTED = 1000  # merges listed by id in the figures (all are counted)
_UNDO = 250  # journal entries undone per transaction
_UNARCHIVE = 128  # episodes made live again per transaction


class DeduplicationStage:
    name: ClassVar[str] = "deduplication"

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        s = ctx.settings.deduplication
        store = ctx.store
        cursor: dict[str, Any] = {"now": ctx.clock(), "after": 0, "scanned": 0, "merged": 0, "pairs": [], **ctx.saved}
        now = float(cursor["now"])
        since = now - s.window if s.window > 0 else float("-inf")
        tag = JournalTag(ctx.run_id, ctx.namespace, self.name)
        total = await ctx.thread(store.count_live, ctx.namespace)
        while True:
            pairs, last = await ctx.thread(store.near_duplicates, ctx.namespace, since, int(cursor["after"]), s.batch,
                                           s.similarity, ctx.preempted)
            if last is None:
                break
            merged = await ctx.thread(store.merge_duplicates, tag, pairs, now, ctx.preempted) if pairs else []
            cursor["after"] = last
            cursor["scanned"] += 1
            cursor["merged"] += len(merged)
            room = _LISTED - len(cursor["pairs"])
            cursor["pairs"] += [[kept, gone, round(sim, 6)] for kept, gone, sim in merged[:max(room, 0)]]
            await ctx.save(cursor)
            ctx.progress(min(int(cursor["scanned"]) * s.batch, total), max(total, 1))
            await ctx.step()
        figures = {"merged": int(cursor["merged"]), "pages": int(cursor["scanned"]), "pairs": list(cursor["pairs"])}
        log.info("deduplication done", namespace=ctx.namespace, run=ctx.run_id, merged=figures["merged"])
        return figures

    async def rollback(self, ctx: StageContext) -> dict[str, Any]:
        """Undo this run's merges in ``ctx.namespace``: what they added to the kept episodes, their
        access counts, and the archiving of the merged ones (idempotent)."""
        tag = JournalTag(ctx.run_id, ctx.namespace, self.name)
        undone: Counter[str] = Counter()
        while True:
            await ctx.step()
            batch = await ctx.thread(ctx.store.undo, tag, _UNDO)
            if not batch:
                break
            undone.update(batch)
        restored = 0
        for seqs, at in await ctx.thread(ctx.store.archived, tag):
            for start in range(0, len(seqs), _UNARCHIVE):
                restored += len(await ctx.thread(ctx.store.unarchive, ctx.namespace, seqs[start : start + _UNARCHIVE], at))
                await ctx.step()
        ctx.store.graph_changed(ctx.namespace)
        if not undone and not restored:
            return {}
        log.info("deduplication rolled back", namespace=ctx.namespace, run=ctx.run_id, unarchived=restored)
        return {**dict(undone), "unarchived": restored}
