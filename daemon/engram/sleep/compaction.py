"""Compaction: deleted entries stop costing.

An HNSW graph cannot drop a node, so a forgotten (or archived) episode's vector stays in the
graph, zeroed and masked from every search, until the graph is rebuilt; memory's own maintenance
rebuilds only when masked nodes reach ``memory.index.rebuild_fraction``. During sleep, with time
to spare, a namespace's index is rebuilt as soon as it holds ``sleep.compaction.min_masked``
masked entries: in chunks, with a preemption point between them, on one OpenMP thread, while
recall goes on against the old index; only the final catch-up and the swap hold the
namespace's write lock. Then the full-text index is merged (``optimize``: the tokens of deleted rows
leave its b-tree) and the WAL is checkpointed — once per run.

The figures give the index's size before and after, in vectors, masked entries and bytes
(vectors, graph links and labels, as held in memory).
"""

from __future__ import annotations

from typing import Any, ClassVar

from engram.sleep.stage import StageContext

__all__ = ["CompactionStage"]

_CHUNK = 500  # vectors added to the new graph per unit (~0.1 s of one core for HNSW)


class CompactionStage:
    name: ClassVar[str] = "compaction"

    def __init__(self) -> None:
        self.fts_done = False  # the full-text merge is for the whole table: once per run

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        ctx.stage = ctx.stage or self.name
        store = ctx.store
        namespace = ctx.namespace
        before = await ctx.thread(store.index_size, namespace)
        figures: dict[str, Any] = {"before": before, "rebuilt": False}
        if (before["masked"] > 0 and before["masked"] >= ctx.settings.compaction.min_masked
                and not store.index_stats(namespace)["building"]):
            figures["rebuilt"] = await self._rebuild(ctx, namespace)
        figures["after"] = await ctx.thread(store.index_size, namespace)
        if not self.fts_done:
            await ctx.step()
            await ctx.thread(store.optimize_text_index)
            self.fts_done = True
            figures["fts_optimized"] = True
        return figures

    async def _rebuild(self, ctx: StageContext, namespace: str) -> bool:
        """The namespace's live vectors into a new space of the right kind, then a swap."""
        # In a worker thread: copying a large space's vectors takes long enough to stall the loop.
        job = await ctx.thread(ctx.store.start_index_rebuild, namespace)
        if job is None:
            return False
        try:
            done = 0
            while done < job.total:
                await ctx.step()
                done = await ctx.thread(job.add, done, _CHUNK, ctx.preempted)
                ctx.progress(done, job.total)
            while True:
                await ctx.step()
                if await ctx.thread(job.catch_up):
                    return True
        finally:
            job.close()

    async def rollback(self, ctx: StageContext) -> dict[str, Any]:
        return {}  # compaction changes no memory content: there is nothing to undo
