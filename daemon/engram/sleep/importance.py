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

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from engram.memory.vectors import from_blob
from engram.sleep.common import archived_clause, nearest_other
from engram.sleep.stage import StageContext

__all__ = ["ImportanceStage", "saliences"]

# Queries per FAISS call: about 5e7 multiply-adds against an exact index (~10-20 ms on one core).
_FLOPS_PER_UNIT = 50_000_000
_HNSW_PER_UNIT = 64  # an HNSW query costs well under a millisecond


def saliences(
    *,
    now: float,
    time_: NDArray[np.float64],
    access_count: NDArray[np.float64],
    last_access: NDArray[np.float64],
    novelty: NDArray[np.float32],
    links: NDArray[np.float64],
    client: NDArray[np.float64],
    settings: Any,
) -> NDArray[np.float64]:
    """The weighted mean of the five signals (see the module docstring), one per episode;
    ``last_access`` is NaN for an episode never recalled. Vectorised: a batch is scored in
    microseconds, so scoring never holds the interpreter long enough to delay a request."""
    s = settings
    recency = 0.5 ** (np.maximum(0.0, now - time_) / s.half_life)
    frequency = 1.0 - np.exp(-np.maximum(0.0, access_count) / s.access_saturation)
    fresh = np.where(np.isnan(last_access), 0.0, 0.5 ** (np.maximum(0.0, now - np.nan_to_num(last_access, nan=now)) / s.access_half_life))
    access = frequency * (0.5 + 0.5 * fresh)  # counted fully when recent, half when long ago or never
    linked = 1.0 - np.exp(-np.maximum(0.0, links) / s.link_saturation)
    weights = (s.w_recency, s.w_access, s.w_novelty, s.w_links, s.w_client)
    total = sum(weights) or 1.0
    value = (
        s.w_recency * recency
        + s.w_access * access
        + s.w_novelty * np.clip(novelty, 0.0, 1.0)
        + s.w_links * linked
        + s.w_client * np.clip(client, 0.0, 1.0)
    ) / total
    return np.round(np.clip(value, 0.0, 1.0), 6)


@dataclass
class _Batch:
    """One unit's episodes, as columns."""

    seqs: list[int]
    old: list[float | None]  # the salience stored now
    time: NDArray[np.float64]
    access_count: NDArray[np.float64]
    last_access: NDArray[np.float64]  # NaN: never recalled
    client: NDArray[np.float64]
    links: NDArray[np.float64]
    vectors: NDArray[np.float32] | None  # None when the batch mixes dimensions (no novelty then)

    @classmethod
    def of(cls, rows: list[tuple[Any, ...]]) -> _Batch:
        def column(i: int) -> NDArray[np.float64]:
            return np.array([np.nan if r[i] is None else r[i] for r in rows], dtype=np.float64)

        same_dim = len({r[6] for r in rows}) == 1
        return cls(
            seqs=[int(r[0]) for r in rows],
            old=[r[5] for r in rows],
            time=column(1),
            access_count=column(2),
            last_access=column(3),
            client=column(4),
            links=column(8),
            vectors=np.vstack([from_blob(r[7], r[6]) for r in rows]) if same_dim else None,
        )


class ImportanceStage:
    name: ClassVar[str] = "importance"

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        ctx.stage = ctx.stage or self.name
        settings = ctx.settings.importance
        namespace = ctx.namespace
        db = ctx.memory.db
        index = ctx.memory.index
        cursor: dict[str, Any] = {
            "after": int(ctx.saved.get("after", 0)),
            "scored": int(ctx.saved.get("scored", 0)),
            "changed": int(ctx.saved.get("changed", 0)),
            "sum": float(ctx.saved.get("sum", 0.0)),
            "now": float(ctx.saved.get("now", ctx.clock())),  # one "now" for the whole run, across resumes
        }

        def count() -> int:
            with db.read() as conn:
                extra = archived_clause(conn)
                return int(conn.execute(
                    f"SELECT count(*) FROM memory_episodes WHERE namespace = ?{extra}", (namespace,)
                ).fetchone()[0])

        total = await ctx.thread(count)
        ctx.progress(cursor["scored"], total)

        def fetch(after_seq: int) -> _Batch | None:
            with db.read() as conn:
                extra = archived_clause(conn, "e.")
                rows = conn.execute(
                    "SELECT e.seq, e.time, e.access_count, e.last_access, e.importance, e.salience, e.dim, e.embedding, "
                    "(SELECT count(*) FROM memory_concept_episodes c WHERE c.episode = e.seq) + "
                    "(SELECT count(*) FROM memory_relation_sources r WHERE r.episode = e.seq) "
                    f"FROM memory_episodes e WHERE e.namespace = ? AND e.seq > ?{extra} "
                    "ORDER BY e.seq LIMIT ?",
                    (namespace, after_seq, settings.batch),
                ).fetchall()
            return _Batch.of(rows) if rows else None

        def score_and_write(batch: _Batch, novelty: NDArray[np.float32], cursor: dict[str, Any]) -> dict[str, Any]:
            values = saliences(now=cursor["now"], time_=batch.time, access_count=batch.access_count,
                               last_access=batch.last_access, novelty=novelty, links=batch.links, client=batch.client,
                               settings=settings).tolist()
            changed = [(value, seq, old) for value, seq, old in zip(values, batch.seqs, batch.old, strict=True)
                       if old is None or abs(old - value) > 1e-6]
            after = {
                "after": batch.seqs[-1],
                "scored": cursor["scored"] + len(values),
                "changed": cursor["changed"] + len(changed),
                "sum": cursor["sum"] + sum(values),
                "now": cursor["now"],
            }
            with ctx.transaction() as conn:
                ctx.journal_in(conn, [ctx.journal_row("salience", seq, old) for _value, seq, old in changed])
                conn.executemany("UPDATE memory_episodes SET salience = ? WHERE seq = ?", [(v, seq) for v, seq, _old in changed])
                ctx.save_in(conn, after)
            return after

        if index.stats(namespace)["kind"] == "hnsw":
            per_unit = _HNSW_PER_UNIT
        else:
            per_unit = max(8, _FLOPS_PER_UNIT // max(1, index.count(namespace) * (index.dim(namespace) or 1)))
        while True:
            await ctx.step()
            batch = await ctx.thread(fetch, cursor["after"])
            if batch is None:
                break
            novelty = np.ones(len(batch.seqs), dtype=np.float32)
            if batch.vectors is not None:
                done = 0
                while done < len(batch.seqs):
                    if done:
                        await ctx.step()
                    part = slice(done, done + per_unit)
                    # ends early, after a few queries, when a request comes in (see nearest_other)
                    nearest = await ctx.thread(nearest_other, index, namespace, batch.seqs[part], batch.vectors[part],
                                               ctx.preempted)
                    novelty[done : done + len(nearest)] = np.where(nearest < -0.5, 1.0, 1.0 - np.clip(nearest, 0.0, 1.0))
                    done += len(nearest)
            await ctx.step()
            cursor = await ctx.thread(score_and_write, batch, novelty, cursor)
            ctx.progress(cursor["scored"], max(total, cursor["scored"]))

        scored = cursor["scored"]
        return {
            "scored": scored,
            "changed": cursor["changed"],
            "mean_salience": round(cursor["sum"] / scored, 4) if scored else None,
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


