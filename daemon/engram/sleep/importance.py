"""Importance: a salience in [0, 1] for every episode of a namespace.

Five signals, each in [0, 1], combined as a weighted mean (weights ``sleep.importance.w_*``):

* recency — ``0.5 ** (age / half_life)``, age from the episode's time;
* access — how often it was recalled (``1 - exp(-count / access_saturation)``), counted fully
  when the last access is recent and half when it is long ago (``access_half_life``);
* novelty — ``1 - cosine`` to the nearest *other* episode of the namespace (batched searches of
  the namespace's vector index; an episode that repeats another adds little);
* links — concepts that mention it and relations learned from it (``1 - exp(-n / link_saturation)``);
* client — the ``importance`` the client gave when it remembered the episode.

Episodes are scored in seq order, ``sleep.importance.batch`` per short transaction; the cursor
(the last seq scored) commits with each batch, so a stopped run resumes where it was. The old
salience of every changed episode is journalled in the same transaction; rollback restores it.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from engram.memory.vectors import from_blob
from engram.sleep.common import archived_clause, nearest_other
from engram.sleep.stage import StageContext

__all__ = ["ImportanceStage", "salience"]

# Queries per FAISS call: about 5e7 multiply-adds against an exact index (~10-20 ms on one core).
_FLOPS_PER_UNIT = 50_000_000
_HNSW_PER_UNIT = 64  # an HNSW query costs well under a millisecond


def salience(
    *,
    now: float,
    time_: float,
    access_count: int,
    last_access: float | None,
    novelty: float,
    links: int,
    client: float,
    settings: Any,
) -> float:
    """The weighted mean of the five signals (see the module docstring)."""
    s = settings
    recency = 0.5 ** (max(0.0, now - time_) / s.half_life)
    frequency = 1.0 - math.exp(-max(0, access_count) / s.access_saturation)
    if last_access is not None:
        fresh = 0.5 ** (max(0.0, now - last_access) / s.access_half_life)
        access = frequency * (0.5 + 0.5 * fresh)
    else:
        access = frequency * 0.5
    linked = 1.0 - math.exp(-max(0, links) / s.link_saturation)
    weights = (s.w_recency, s.w_access, s.w_novelty, s.w_links, s.w_client)
    total = sum(weights) or 1.0
    value = (
        s.w_recency * recency
        + s.w_access * access
        + s.w_novelty * min(1.0, max(0.0, novelty))
        + s.w_links * linked
        + s.w_client * min(1.0, max(0.0, client))
    ) / total
    return min(1.0, max(0.0, value))


class ImportanceStage:
    name: ClassVar[str] = "importance"

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        ctx.stage = ctx.stage or self.name
        settings = ctx.settings.importance
        namespace = ctx.namespace
        db = ctx.memory.db
        after = int(ctx.saved.get("after", 0))
        scored = int(ctx.saved.get("scored", 0))
        changed = int(ctx.saved.get("changed", 0))
        total_sum = float(ctx.saved.get("sum", 0.0))
        now = float(ctx.saved.get("now", ctx.clock()))  # one "now" for the whole run, across resumes

        def count() -> int:
            with db.read() as conn:
                extra = archived_clause(conn)
                return int(conn.execute(
                    f"SELECT count(*) FROM memory_episodes WHERE namespace = ?{extra}", (namespace,)
                ).fetchone()[0])

        total = await ctx.thread(count)
        ctx.progress(scored, total)

        def fetch(after_seq: int) -> list[tuple[Any, ...]]:
            with db.read() as conn:
                extra = archived_clause(conn, "e.")
                return conn.execute(
                    "SELECT e.seq, e.time, e.access_count, e.last_access, e.importance, e.salience, e.dim, e.embedding, "
                    "(SELECT count(*) FROM memory_concept_episodes c WHERE c.episode = e.seq) + "
                    "(SELECT count(*) FROM memory_relation_sources r WHERE r.episode = e.seq) "
                    f"FROM memory_episodes e WHERE e.namespace = ? AND e.seq > ?{extra} "
                    "ORDER BY e.seq LIMIT ?",
                    (namespace, after_seq, settings.batch),
                ).fetchall()

        while True:
            await ctx.step()
            rows = await ctx.thread(fetch, after)
            if not rows:
                break
            seqs = [int(r[0]) for r in rows]
            vectors = np.vstack([from_blob(r[7], r[6]) for r in rows]) if len({r[6] for r in rows}) == 1 else None
            novelty = np.ones(len(rows), dtype=np.float32)
            if vectors is not None:
                dim = vectors.shape[1]
                if ctx.memory.index.stats(namespace)["kind"] == "hnsw":
                    per_unit = _HNSW_PER_UNIT
                else:
                    per_unit = max(8, _FLOPS_PER_UNIT // max(1, ctx.memory.index.count(namespace) * dim))
                for start in range(0, len(seqs), per_unit):
                    if start:
                        await ctx.step()
                    part = slice(start, start + per_unit)
                    nearest = await ctx.thread(nearest_other, ctx.memory.index, namespace, seqs[part], vectors[part])
                    novelty[part] = np.where(nearest < -0.5, 1.0, 1.0 - np.clip(nearest, 0.0, 1.0))
            updates: list[tuple[float, int]] = []
            journal: list[tuple[Any, ...]] = []
            for i, (seq, time_, access_count, last_access, importance, old, *_rest) in enumerate(rows):
                value = round(salience(
                    now=now, time_=time_, access_count=access_count, last_access=last_access,
                    novelty=float(novelty[i]), links=int(rows[i][8]), client=importance, settings=settings,
                ), 6)
                total_sum += value
                if old is None or abs(old - value) > 1e-6:
                    updates.append((value, seq))
                    journal.append(ctx.journal_row("salience", seq, old))
            after = seqs[-1]
            scored += len(rows)
            changed += len(updates)
            cursor = {"after": after, "scored": scored, "changed": changed, "sum": total_sum, "now": now}
            await ctx.step()

            def write(updates: list[tuple[float, int]] = updates, journal: list[tuple[Any, ...]] = journal,
                      cursor: dict[str, Any] = cursor) -> None:
                with db.transaction() as conn:
                    ctx.journal_in(conn, journal)
                    conn.executemany("UPDATE memory_episodes SET salience = ? WHERE seq = ?", updates)
                    ctx.save_in(conn, cursor)

            await ctx.thread(write)
            ctx.progress(scored, max(total, scored))

        return {
            "scored": scored,
            "changed": changed,
            "mean_salience": round(total_sum / scored, 4) if scored else None,
        }

    async def rollback(self, ctx: StageContext) -> dict[str, Any]:
        ctx.stage = ctx.stage or self.name
        db = ctx.memory.db
        restored = 0
        while True:
            await ctx.step()

            def undo() -> int:
                with db.transaction() as conn:
                    rows = conn.execute(
                        "SELECT id, ref, before FROM sleep_changes WHERE run = ? AND namespace = ? AND stage = ? AND kind = 'salience' "
                        "ORDER BY id DESC LIMIT 200",  # short lock holds: foreground writers wait for them
                        (ctx.run_id, ctx.namespace, ctx.stage),
                    ).fetchall()
                    conn.executemany(
                        "UPDATE memory_episodes SET salience = json(?) ->> '$' WHERE seq = ? AND namespace = ?",
                        [(before, int(ref), ctx.namespace) for _id, ref, before in rows],
                    )
                    conn.executemany("DELETE FROM sleep_changes WHERE id = ?", [(r[0],) for r in rows])
                    return len(rows)

            done = await ctx.thread(undo)
            restored += done
            if done == 0:
                break
        return {"restored": restored} if restored else {}


