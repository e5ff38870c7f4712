"""What a consolidation stage is, and the context the runner hands it.

A stage runs once per memory namespace (recalibration once per run) and does its work in small
units, calling :meth:`StageContext.step` between them: that is where it yields to foreground
requests, spends its CPU budget and notices that the run was stopped. Every change a stage makes
is either one short transaction or resumable through the cursor it saves with
:meth:`StageContext.save`; changes that a later rollback must undo are recorded with
:meth:`StageContext.journal` (table ``sleep_changes``) before or together with the change, so
that undoing a journalled change that never happened is harmless.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import anyio
import anyio.lowlevel

from engram.memory.db import GaveWay
from engram.sleep.common import json_rows

if TYPE_CHECKING:
    from engram.audit.log import AuditLog
    from engram.bus.bus import EventBus
    from engram.memory.service import Memory
    from engram.router.service import Router
    from engram.sleep.settings import SleepSettings

__all__ = ["FreePacer", "Pacer", "Stage", "StageContext", "one_openmp_thread"]

T = TypeVar("T")


def one_openmp_thread() -> None:
    """FAISS's OpenMP thread count is per calling thread: consolidation's calls use one."""
    import faiss

    faiss.omp_set_num_threads(1)


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
    """Everything a stage may use while it runs for one namespace of one run."""

    def __init__(
        self,
        *,
        run_id: int,
        namespace: str,
        settings: SleepSettings,
        memory: Memory,
        router: Router | None = None,
        audit: AuditLog | None = None,
        bus: EventBus | None = None,
        clock: Callable[[], float] = time.time,
        saved: dict[str, Any] | None = None,
        stage: str = "",
        pacer: Pacer | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.namespace = namespace
        self.settings = settings
        self.memory = memory
        self.router = router
        self.audit = audit
        self.bus = bus
        self.clock = clock
        self.saved: dict[str, Any] = dict(saved or {})
        self.stage = stage
        self._pacer: Pacer = pacer or FreePacer()
        self._on_progress = on_progress

    async def step(self) -> None:
        """Preemption point: call between small units of work (<= ~10-20 ms of CPU, or one short
        transaction). Waits while foreground requests are in flight, spends the CPU budget, and
        raises the cancellation exception when the run is stopped."""
        await self._pacer.step()

    def preempted(self) -> bool:
        """Whether a foreground request is waiting for this work to get out of the way: long
        loops in a worker thread check it between small chunks and end their unit early (the
        next :meth:`step` then waits). Safe to call from any thread."""
        return self._pacer.busy()

    async def thread(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` in a worker thread (blocking SQL, numpy, FAISS), with FAISS on one
        OpenMP thread so that foreground recall keeps the other cores."""

        def call() -> T:
            one_openmp_thread()
            return func(*args)

        while True:
            try:
                return await anyio.to_thread.run_sync(call)
            except GaveWay:  # a transaction of ``func`` made way for a request: after it, again
                await self.step()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction for a unit of work (worker thread): a background one (see
        :meth:`MemoryDB.transaction`) that gives way to foreground requests. If one comes in
        meanwhile it rolls back, and :meth:`thread` runs the unit again after the request — so a
        unit that writes must change nothing outside its transaction before the commit, and may
        hold at most one transaction that can give way."""
        with self.memory.db.transaction(background=True, give_way=self.preempted) as conn:
            yield conn

    async def save(self, cursor: dict[str, Any]) -> None:
        """Persist this stage's resume cursor for this run and namespace (one short transaction)."""
        text = json.dumps(cursor, separators=(",", ":"))

        def write() -> None:
            with self.memory.db.transaction(background=True) as conn:
                conn.execute(
                    "INSERT INTO sleep_cursors (run, namespace, stage, cursor) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (run, namespace, stage) DO UPDATE SET cursor = excluded.cursor",
                    (self.run_id, self.namespace, self.stage, text),
                )

        await self.thread(write)
        self.saved = dict(cursor)

    def save_in(self, conn: Any, cursor: dict[str, Any]) -> None:
        """Persist the resume cursor inside the caller's transaction (worker thread), so that a
        unit of work and the cursor after it commit together."""
        conn.execute(
            "INSERT INTO sleep_cursors (run, namespace, stage, cursor) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (run, namespace, stage) DO UPDATE SET cursor = excluded.cursor",
            (self.run_id, self.namespace, self.stage, json.dumps(cursor, separators=(",", ":"))),
        )
        self.saved = dict(cursor)

    def progress(self, done: int, total: int) -> None:
        """Report progress within the stage; shows in ``sleep.status``."""
        if self._on_progress is not None:
            self._on_progress(done, total)

    async def journal(self, kind: str, ref: str | int, before: Any) -> None:
        """Record one undoable change (a later rollback of this stage undoes it)."""
        row = self.journal_row(kind, ref, before)

        def write() -> None:
            with self.memory.db.transaction(background=True) as conn:
                self.journal_in(conn, [row])

        await self.thread(write)

    # Synchronous helpers for stages that journal inside their own transaction (in a worker
    # thread, on the connection of ``memory.db.transaction()``): the journal rows and the change
    # commit together.

    def journal_row(self, kind: str, ref: str | int, before: Any) -> tuple[Any, ...]:
        return (self.run_id, self.namespace, self.stage, kind, str(ref), json.dumps(before, separators=(",", ":")))

    @staticmethod
    def journal_in(conn: Any, rows: list[tuple[Any, ...]]) -> None:
        """One statement however many rows (see :func:`engram.sleep.common.json_rows`)."""
        if rows:
            conn.execute(
                "INSERT INTO sleep_changes (run, namespace, stage, kind, ref, before) "
                "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), "
                "json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]') FROM json_each(?)",
                (json_rows(rows),),
            )

    def journalled(self, conn: Any, kind: str | None = None) -> list[tuple[int, str, str, Any]]:
        """This run's journal of this stage and namespace, newest first: (id, kind, ref, before)."""
        sql = "SELECT id, kind, ref, before FROM sleep_changes WHERE run = ? AND namespace = ? AND stage = ?"
        args: list[Any] = [self.run_id, self.namespace, self.stage]
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        rows = conn.execute(sql + " ORDER BY id DESC", args).fetchall()
        return [(row[0], row[1], row[2], json.loads(row[3])) for row in rows]


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
