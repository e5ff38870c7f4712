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
(the last seq scored) commits with each batch, as memory's checkpoint for the stage, so a stopped
run resumes where it was. Memory journals the old salience of every changed episode in the same
transaction; rollback restores it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from engram.sleep.ports import EpisodeColumns
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


class ImportanceStage:
    name: ClassVar[str] = "importance"

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        ctx.stage = ctx.stage or self.name
        settings = ctx.settings.importance
        namespace = ctx.namespace
        store = ctx.store
        cursor: dict[str, Any] = {
            "after": int(ctx.saved.get("after", 0)),
            "scored": int(ctx.saved.get("scored", 0)),
            "changed": int(ctx.saved.get("changed", 0)),
            "sum": float(ctx.saved.get("sum", 0.0)),
            "now": float(ctx.saved.get("now", ctx.clock())),  # one "now" for the whole run, across resumes
        }

        total = await ctx.thread(store.count_live, namespace)
        ctx.progress(cursor["scored"], total)

        def score_and_write(batch: EpisodeColumns, novelty: NDArray[np.float32], cursor: dict[str, Any]) -> dict[str, Any]:
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
            store.set_saliences(ctx.tag, changed, after, ctx.preempted)
            return after

        stats = store.index_stats(namespace)
        if stats["kind"] == "hnsw":
            per_unit = _HNSW_PER_UNIT
        else:
            per_unit = max(8, _FLOPS_PER_UNIT // max(1, stats["vectors"] * (stats["dim"] or 1)))
        while True:
            await ctx.step()
            batch = await ctx.thread(store.salience_page, namespace, cursor["after"], settings.batch)
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
                    nearest = await ctx.thread(store.nearest_other, namespace, batch.seqs[part], batch.vectors[part],
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
        restored = 0
        while True:
            await ctx.step()
            # short lock holds: foreground writers wait for them
            done = sum((await ctx.thread(ctx.store.undo, ctx.tag, 200)).values())
            restored += done
            if done == 0:
                break
        return {"restored": restored} if restored else {}
