"""What a consolidation stage is, and the context the runner hands it.

A stage runs once per memory namespace (recalibration once per run) and does its work in small
units, calling :meth:`StageContext.step` between them: that is where it yields to foreground
requests, spends its CPU budget and notices that the run was stopped. Every change a stage makes
is either one short transaction or resumable: through the cursor it saves with
:meth:`StageContext.save` (sleep's own table), or through the checkpoint that memory keeps in the
same transaction as the change. Changes that a later rollback must undo are journalled by memory
under the stage's :attr:`StageContext.tag` before or together with the change, so that undoing a
journalled change that never happened is harmless.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import anyio
import anyio.lowlevel

from engram.sleep.ports import AuditTrail, ConsolidationStore, JournalTag, Recalibrator
from engram.storage.background import GaveWay

if TYPE_CHECKING:
    from engram.bus.bus import EventBus
    from engram.sleep.db import SleepDB
    from engram.sleep.settings import SleepSettings

__all__ = ["FreePacer", "Pacer", "PoolWorker", "Stage", "StageContext", "Worker", "on_one_openmp_thread"]

T = TypeVar("T")


def on_one_openmp_thread(func: Callable[[], T]) -> T:
    """``func()`` with FAISS on one OpenMP thread, so that foreground recall keeps the other cores.
    The count is per calling thread, and set before every unit rather than once per thread:
    memory's index sets it for its own calls (all cores for adds), and that outlives the call."""
    import faiss

    faiss.omp_set_num_threads(1)
    return func()


class Worker(Protocol):
    """Where a stage's blocking units run (the daemon's: :class:`engram.sleep.worker.ConsolidationThread`)."""

    async def run(self, func: Callable[[], T]) -> T: ...


class PoolWorker:
    """Units in anyio's worker threads, FAISS on one OpenMP thread: the default, for a stage run
    directly (tests); the daemon's runs bring their own thread."""

    async def run(self, func: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(on_one_openmp_thread, func)


class Pacer(Protocol):
    """The runner's side of :meth:`StageContext.step`: preemption, CPU budget, cancellation."""

    async def step(self) -> None: ...

    def busy(self) -> bool:
        """Whether foreground requests are in flight (or just were); safe from any thread."""
        ...


class FreePacer:
    """A pacer that never waits: for tests and tools that run a stage directly."""

    async def step(self) -> None:
        await anyio.lowlevel.checkpoint()

    def busy(self) -> bool:
        return False


class StageContext:
    """Everything a stage may use while it runs for one namespace of one run: memory through
    ``store``, sleep's own tables through ``db``."""

    def __init__(
        self,
        *,
        run_id: int,
        namespace: str,
        settings: SleepSettings,
        store: ConsolidationStore,
        db: SleepDB,
        router: Recalibrator | None = None,
        audit: AuditTrail | None = None,
        bus: EventBus | None = None,
        clock: Callable[[], float] = time.time,
        saved: dict[str, Any] | None = None,
        stage: str = "",
        pacer: Pacer | None = None,
        worker: Worker | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.namespace = namespace
        self.settings = settings
        self.store = store
        self.db = db
        self.router = router
        self.audit = audit
        self.bus = bus
        self.clock = clock
        self.saved: dict[str, Any] = dict(saved or {})
        self.stage = stage
        self._pacer: Pacer = pacer or FreePacer()
        self._worker: Worker = worker or PoolWorker()
        self._on_progress = on_progress

    @property
    def tag(self) -> JournalTag:
        """What memory files this stage's journal and checkpoint under."""
        return JournalTag(self.run_id, self.namespace, self.stage)

    async def step(self) -> None:
        """Preemption point: call between small units of work (<= ~10-20 ms of CPU, or one short
        transaction). Waits while foreground requests are in flight, spends the CPU budget, and
        raises the cancellation exception when the run is stopped."""
        await self._pacer.step()

    def preempted(self) -> bool:
        """Whether a foreground request is waiting for this work to get out of the way: long
        loops in a worker thread check it between small chunks and end their unit early (the
        next :meth:`step` then waits), and memory's background transactions give way when it
        turns true. Safe to call from any thread."""
        return self._pacer.busy()

    async def thread(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` in the worker's thread (blocking SQL, numpy, FAISS), with FAISS on
        one OpenMP thread so that foreground recall keeps the other cores. When a transaction of
        ``func`` gave way to a request (rolled back, having changed nothing), ``func`` runs
        again after it — so a unit that writes must change nothing outside its transaction
        before the commit, and may hold at most one transaction that can give way."""

        while True:
            try:
                return await self._worker.run(functools.partial(func, *args))
            except GaveWay:
                await self.step()

    async def save(self, cursor: dict[str, Any]) -> None:
        """Persist this stage's resume cursor for this run and namespace (one short transaction)."""
        await self.thread(self.db.save_cursor, self.run_id, self.namespace, self.stage, cursor)
        self.saved = dict(cursor)

    def progress(self, done: int, total: int) -> None:
        """Report progress within the stage; shows in ``sleep.status``."""
        if self._on_progress is not None:
            self._on_progress(done, total)


class Stage(Protocol):
    """One consolidation stage; see :data:`engram.sleep.stages.ORDER`."""

    name: ClassVar[str]

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        """Do the work for ``ctx.namespace``; return the stage's figures (JSON-able)."""
        ...

    async def rollback(self, ctx: StageContext) -> dict[str, Any]:
        """Undo this run's changes of this stage in ``ctx.namespace``; idempotent; ``{}`` when
        there is nothing to undo."""
        ...
