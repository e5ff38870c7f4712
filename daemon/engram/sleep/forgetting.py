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
:meth:`StageContext.step` between. Each archiving transaction journals the seqs it archived
(``sleep_changes``, kind ``archived``) in the same commit, so :meth:`ForgettingStage.rollback`
makes exactly those live again (and puts them back in the index). Deletions are not undone: they
touch only episodes that were already out of recall for the whole grace period.

The cursor (phase, the run's reference time, the last seq scanned, the counts and audit seqs)
is saved after every unit that changed something, so a stopped run resumes where it was;
re-scanning what was scanned is harmless.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, ClassVar

import structlog

from engram.sleep.common import chunks, marks
from engram.sleep.stage import StageContext

__all__ = ["ForgettingStage"]

log = structlog.get_logger("engram.sleep")

_SAVE_EVERY = 16  # units that changed nothing between cursor saves (re-scanning is harmless)


def _expired(conn: sqlite3.Connection, namespace: str, cutoff: float, limit: int) -> list[tuple[int, str, str]]:
    """Archived episodes whose archiving is at or before ``cutoff``: (seq, id, text_sha256)."""
    return conn.execute(
        "SELECT seq, id, text_sha256 FROM memory_episodes WHERE namespace = ? AND archived_at IS NOT NULL AND archived_at <= ? "
        "AND pinned = 0 ORDER BY seq LIMIT ?",
        (namespace, cutoff, limit),
    ).fetchall()


def _window(conn: sqlite3.Connection, namespace: str, after: int, limit: int) -> list[int]:
    """The next ``limit`` live episodes' seqs after ``after``."""
    return [
        s
        for (s,) in conn.execute(
            "SELECT seq FROM memory_episodes WHERE namespace = ? AND archived_at IS NULL AND seq > ? ORDER BY seq LIMIT ?",
            (namespace, after, limit),
        )
    ]


def _recalled(conn: sqlite3.Connection, namespace: str) -> set[str]:
    """Ids of the episodes that the namespace's sampled past recalls returned (the replay log)."""
    return {
        i
        for (i,) in conn.execute(
            "SELECT DISTINCT j.value FROM memory_replay_queries q, json_each(q.results) j WHERE q.namespace = ?", (namespace,)
        )
    }


def _eligible(conn: sqlite3.Connection, seqs: list[int], older_than: float, max_salience: float) -> list[tuple[int, str, bool]]:
    """Those of ``seqs`` that are old, unimportant and unlinked: (seq, id, pinned)."""
    return [
        (s, i, bool(p))
        for s, i, p in conn.execute(
            f"SELECT e.seq, e.id, e.pinned FROM memory_episodes e WHERE e.seq IN ({marks(len(seqs))}) AND e.archived_at IS NULL "
            "AND e.time < ? AND coalesce(e.salience, e.importance) <= ? "
            "AND NOT EXISTS (SELECT 1 FROM memory_concept_episodes c WHERE c.episode = e.seq) "
            "AND NOT EXISTS (SELECT 1 FROM memory_relation_sources r WHERE r.episode = e.seq) ORDER BY e.seq",
            (*seqs, older_than, max_salience),
        )
    ]


class ForgettingStage:
    name: ClassVar[str] = "forgetting"

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        s = ctx.settings.forgetting
        memory = ctx.memory
        ns = ctx.namespace
        cursor: dict[str, Any] = {
            "phase": "delete", "now": ctx.clock(), "after": 0, "deleted": 0, "scanned": 0, "kept_pinned": 0, "audit": [],
            **ctx.saved,
        }
        now = float(cursor["now"])

        def read(func: Any, *args: Any) -> Any:
            with memory.db.read() as conn:
                return func(conn, *args)

        if cursor["phase"] == "delete":
            if ctx.audit is not None:
                while True:
                    batch = await ctx.thread(read, _expired, ns, now - s.grace, s.batch)
                    if not batch:
                        break
                    seq = await ctx.audit.append(
                        "sleep.forget",
                        None,
                        detail={
                            "namespace": ns,
                            "ids": [i for _, i, _ in batch],
                            "text_hmacs": memory.content_digests([h for _, _, h in batch]),
                            "run": ctx.run_id,
                        },
                    )
                    cursor["audit"].append(seq)
                    gone = await memory.forget_seqs(ns, [q for q, _, _ in batch], "sleep")
                    cursor["deleted"] += len(gone.ids)
                    await ctx.save(cursor)
                    await ctx.step()
            cursor["phase"] = "archive"
            await ctx.save(cursor)

        if cursor["phase"] == "archive":
            total = await ctx.thread(
                read, lambda conn: conn.execute(
                    "SELECT count(*) FROM memory_episodes WHERE namespace = ? AND archived_at IS NULL", (ns,)
                ).fetchone()[0]
            )
            unsaved = 0
            # What past recalls found is in use, however old: archiving it would make recall worse
            # by design, and dream replay would then (rightly) roll the whole stage back.
            recalled = await ctx.thread(read, _recalled, ns) if s.protect_recalled else set()

            def journal(conn: sqlite3.Connection, archived: list[int]) -> None:
                ctx.journal_in(conn, [self._journal_row(ctx, archived, now)])

            while True:
                window = await ctx.thread(read, _window, ns, int(cursor["after"]), s.batch)
                if not window:
                    break
                found = await ctx.thread(read, _eligible, window, now - s.min_age, s.max_salience)
                cursor["after"] = window[-1]
                cursor["scanned"] += len(window)
                cursor["kept_pinned"] += sum(1 for _, _, pinned in found if pinned)
                kept = [seq for seq, i, pinned in found if not pinned and i in recalled]
                cursor["kept_recalled"] = int(cursor.get("kept_recalled", 0)) + len(kept)
                chosen = [seq for seq, i, pinned in found if not pinned and i not in recalled]
                if chosen:
                    await ctx.thread(memory.episodic.archive_seqs, ns, chosen, now, journal, ctx.preempted)
                unsaved += 1
                if chosen or unsaved >= _SAVE_EVERY:
                    await ctx.save(cursor)
                    unsaved = 0
                ctx.progress(min(int(cursor["scanned"]), total), max(total, int(cursor["scanned"])))
                await ctx.step()
            cursor["phase"] = "done"
            await ctx.save(cursor)

        archived = await ctx.thread(self._archived_count, ctx)
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
        entries = await ctx.thread(self._journal, ctx)
        restored = 0
        for _, before in entries:
            for part in chunks(list(before["seqs"]), 128):  # short lock holds: foreground recall waits for them
                done = await ctx.thread(ctx.memory.episodic.unarchive_seqs, ctx.namespace, list(part), float(before["at"]))
                restored += len(done)
                await ctx.step()
        if not entries:
            return {}
        log.info("forgetting rolled back", namespace=ctx.namespace, run=ctx.run_id, unarchived=restored)
        return {"unarchived": restored}

    # --- the journal ------------------------------------------------------------------------------------

    def _journal_row(self, ctx: StageContext, archived: list[int], now: float) -> tuple[Any, ...]:
        before = json.dumps({"seqs": archived, "at": now}, separators=(",", ":"))
        return (ctx.run_id, ctx.namespace, self.name, "archived", str(archived[0]), before)

    def _journal(self, ctx: StageContext) -> list[tuple[int, dict[str, Any]]]:
        with ctx.memory.db.read() as conn:
            rows = conn.execute(
                "SELECT id, before FROM sleep_changes WHERE run = ? AND namespace = ? AND stage = ? AND kind = 'archived' "
                "ORDER BY id DESC",
                (ctx.run_id, ctx.namespace, self.name),
            ).fetchall()
        return [(row_id, json.loads(before)) for row_id, before in rows]

    def _archived_count(self, ctx: StageContext) -> int:
        """Episodes this run archived in the namespace (from the journal, so a resumed run counts
        what its earlier attempt did too)."""
        return sum(len(before["seqs"]) for _, before in self._journal(ctx))
