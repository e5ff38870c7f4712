"""Forgetting: archive what no longer matters, and delete what was archived long enough ago.

Two phases per namespace, in this order:

1. **Delete** the episodes archived more than ``sleep.forgetting.grace`` seconds ago, through the
   same path as ``memory.forget`` (rows, tags, full-text entries, graph links and the relations
   learned only from them, vector index entries; a ``memory.forgotten`` event with scope
   ``sleep``; the full-text purge). Every batch is audited *before* it is deleted: an audit entry
   of kind ``sleep.forget`` with the namespace, the ids, the SHA-256 of each text (never the
   text) and the run. A crash between the two leaves an entry for a deletion that the resumed run
   then does (and audits again); never a deletion without an entry. Without an audit log nothing
   is deleted.
2. **Archive** the live episodes that are old (``time`` older than ``sleep.forgetting.min_age``),
   unimportant (``salience`` at most ``sleep.forgetting.max_salience``, or the client's
   ``importance`` while the importance stage has not scored them), unlinked (no concept mentions
   them, no relation was learned from them), not pinned, and (with
   ``sleep.forgetting.protect_recalled``) not among what the sampled past recalls of the replay
   log returned. Pinned episodes are never archived and so never deleted; they are counted in
   ``kept_pinned``, recalled ones in ``kept_recalled``. An archived episode leaves recall
   and the vector index at once but stays in SQLite until its grace has passed.

Work goes in units of ``sleep.forgetting.batch`` episodes, one short transaction each, with
:meth:`StageContext.step` between. Memory journals the seqs each archiving transaction archived
(kind ``archived``, under the stage's tag) in the same commit, so
:meth:`ForgettingStage.rollback` makes exactly those live again (and puts them back in the index). Deletions are not undone: they
touch only episodes that were already out of recall for the whole grace period.

The cursor (phase, the run's reference time, the last seq scanned, the counts and audit seqs)
is saved after every unit that changed something, so a stopped run resumes where it was;
re-scanning what was scanned is harmless.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import structlog

from engram.sleep.ports import JournalTag
from engram.sleep.stage import StageContext

__all__ = ["ForgettingStage"]

log = structlog.get_logger("engram.sleep")

_SAVE_EVERY = 16  # units that changed nothing between cursor saves (re-scanning is harmless)
_UNARCHIVE = 128  # episodes made live again per transaction: foreground recall waits for each


def _chunks(values: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class ForgettingStage:
    name: ClassVar[str] = "forgetting"

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        s = ctx.settings.forgetting
        store = ctx.store
        ns = ctx.namespace
        cursor: dict[str, Any] = {
            "phase": "delete", "now": ctx.clock(), "after": 0, "deleted": 0, "scanned": 0, "kept_pinned": 0, "audit": [],
            **ctx.saved,
        }
        now = float(cursor["now"])

        if cursor["phase"] == "delete":
            if ctx.audit is not None:
                while True:
                    batch = await ctx.thread(store.expired, ns, now - s.grace, s.batch)
                    if not batch:
                        break
                    seq = await ctx.audit.append(
                        "sleep.forget",
                        None,
                        detail={
                            "namespace": ns,
                            "ids": [i for _, i, _ in batch],
                            "text_hmacs": store.content_digests([h for _, _, h in batch]),
                            "run": ctx.run_id,
                        },
                    )
                    cursor["audit"].append(seq)
                    gone = await store.forget(ns, [q for q, _, _ in batch])
                    cursor["deleted"] += len(gone)
                    await ctx.save(cursor)
                    await ctx.step()
            cursor["phase"] = "archive"
            await ctx.save(cursor)

        if cursor["phase"] == "archive":
            total = await ctx.thread(store.count_live, ns)
            unsaved = 0
            # What past recalls found is in use, however old: archiving it would make recall worse
            # by design, and dream replay would then (rightly) roll the whole stage back.
            recalled = await ctx.thread(store.recalled_ids, ns) if s.protect_recalled else set()
            tag = self._tag(ctx)
            while True:
                window = await ctx.thread(store.live_after, ns, int(cursor["after"]), s.batch)
                if not window:
                    break
                found = await ctx.thread(store.forgettable, window, now - s.min_age, s.max_salience)
                cursor["after"] = window[-1]
                cursor["scanned"] += len(window)
                cursor["kept_pinned"] += sum(1 for _, _, pinned in found if pinned)
                kept = [seq for seq, i, pinned in found if not pinned and i in recalled]
                cursor["kept_recalled"] = int(cursor.get("kept_recalled", 0)) + len(kept)
                chosen = [seq for seq, i, pinned in found if not pinned and i not in recalled]
                if chosen:
                    await ctx.thread(store.archive, tag, chosen, now, ctx.preempted)
                unsaved += 1
                if chosen or unsaved >= _SAVE_EVERY:
                    await ctx.save(cursor)
                    unsaved = 0
                ctx.progress(min(int(cursor["scanned"]), total), max(total, int(cursor["scanned"])))
                await ctx.step()
            cursor["phase"] = "done"
            await ctx.save(cursor)

        # Episodes this run archived in the namespace (from the journal, so a resumed run counts
        # what its earlier attempt did too).
        archived = sum(len(seqs) for seqs, _at in await ctx.thread(store.archived, self._tag(ctx)))
        figures: dict[str, Any] = {
            "archived": archived,
            "deleted": int(cursor["deleted"]),
            "kept_pinned": int(cursor["kept_pinned"]),
            "kept_recalled": int(cursor.get("kept_recalled", 0)),
            "scanned": int(cursor["scanned"]),
            "audit_seqs": list(cursor["audit"]),
        }
        if ctx.audit is None:
            figures["deletion"] = "skipped: no audit log"
        log.info("forgetting done", namespace=ns, run=ctx.run_id, archived=archived, deleted=figures["deleted"],
                 kept_pinned=figures["kept_pinned"])
        return figures

    async def rollback(self, ctx: StageContext) -> dict[str, Any]:
        """Make the episodes this run archived in ``ctx.namespace`` live again (idempotent: only
        those still archived at this run's time are touched)."""
        entries = await ctx.thread(ctx.store.archived, self._tag(ctx))
        restored = 0
        for seqs, at in entries:
            for part in _chunks(seqs, _UNARCHIVE):
                done = await ctx.thread(ctx.store.unarchive, ctx.namespace, list(part), at)
                restored += len(done)
                await ctx.step()
        if not entries:
            return {}
        log.info("forgetting rolled back", namespace=ctx.namespace, run=ctx.run_id, unarchived=restored)
        return {"unarchived": restored}

    def _tag(self, ctx: StageContext) -> JournalTag:
        """The journal's tag names this stage whatever the context says (a stage run directly,
        by a tool or test, may have none)."""
        return JournalTag(ctx.run_id, ctx.namespace, self.name)
