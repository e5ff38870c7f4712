"""The sleep part: triggers, one consolidation run at a time, preemption, reports.

A run goes through the memory namespaces (except those that the composition root says to skip:
the router's, which hold its novelty vectors) and runs, per namespace, importance -> clustering
-> forgetting -> compaction -> replay, then recalibration once (see :mod:`engram.sleep.stages`). Dream replay takes its
"before" snapshot ahead of a namespace's first stage; when it then finds recall worse, the
namespace's forgetting, clustering and importance changes are rolled back (in that order).

**Triggers.** ``sleep.run`` (manual), idle (no foreground request for ``sleep.idle_after``
seconds, and none of the daemon's runs finished within ``sleep.idle_interval``), and the local
times of ``sleep.schedule``. Foreground is every request except monitoring, event streams and
``sleep.*`` itself; the request chain counts them (:class:`engram.sleep.ports.Activity`).

**Preemption.** Stages call :meth:`StageContext.step` between small units of work. There the run
pauses in proportion to the work just done (``sleep.cpu_budget``: t seconds of work, then
``t * (1/budget - 1)`` seconds of pause), and waits while foreground requests are in flight and
for ``sleep.quiet_gap`` after the last one (at most ``sleep.max_yield`` at a time).

**Safety.** Each run is a row of ``sleep_runs`` (sleep's own tables, through its own connection:
:mod:`engram.sleep.db`); its report is rewritten after every finished stage. A run that was still
going when the process died is marked ``interrupted`` at the next start; the next run with the
same namespace and stages takes over its finished stages, cursors, and memory's journal and
checkpoints of it (so it resumes instead of repeating), and a run with other parameters starts
fresh, which is harmless too: every stage is idempotent or resumable from its cursor.

Memory is reached only through the :class:`engram.sleep.ports.ConsolidationStore` the
composition root hands over.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import structlog
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from engram.bus.bus import SubscriptionClosed
from engram.errors import Conflict, InvalidParams
from engram.lifecycle import Health, Part, PartState
from engram.server.methods import RequestContext, rpc
from engram.sleep.api import (
    NextRun,
    Progress,
    SleepReport,
    SleepReportsParams,
    SleepReportsResult,
    SleepRunParams,
    SleepRunResult,
    SleepStatusParams,
    SleepStatusResult,
)
from engram.sleep.db import SleepDB
from engram.sleep.events import (
    SleepFinished,
    SleepPreempted,
    SleepRolledBack,
    SleepStage,
    SleepStarted,
)
from engram.sleep.ports import Activity, AuditTrail, ConsolidationStore, JournalTag, Recalibrator
from engram.sleep.settings import SleepSettings
from engram.sleep.stage import StageContext
from engram.sleep.stages import ORDER, PER_RUN, REGISTRY
from engram.sleep.worker import ConsolidationThread

__all__ = ["Sleep"]

log = structlog.get_logger("engram.sleep")

# Stages whose changes dream replay may undo, in the order they are undone.
ROLLBACK_ORDER = ("forgetting", "deduplication", "clustering", "importance")
_PREEMPTED_EVERY = 5.0  # seconds between sleep.preempted events of one run
_POLL = 0.01  # seconds between looks at the foreground while yielding
_MAX_PAUSE = 10.0  # the CPU-budget pause after one unit, at most


class _NoActivity:
    def __init__(self) -> None:
        self.foreground = 0
        self.last_foreground = time.monotonic()


@dataclass
class _Run:
    id: int
    trigger: str
    namespace: str | None
    stages: list[str]
    started_at: float
    resumes: int | None = None
    stage: str | None = None
    stage_namespace: str | None = None
    progress: tuple[int, int] | None = None
    preemptions: int = 0
    yielding: bool = False
    reports: list[dict[str, Any]] = field(default_factory=list)
    outcome: str | None = None
    error: str | None = None
    finished_at: float | None = None
    done: anyio.Event | None = None  # made on the event loop (runs are built in a worker thread)
    scope: anyio.CancelScope | None = None  # cancelled when the daemon begins to stop
    last_preempted_event: float = 0.0

    def report(self, clock: Callable[[], float]) -> dict[str, Any]:
        end = self.finished_at if self.finished_at is not None else clock()
        return {
            "run": self.id, "trigger": self.trigger, "started_at": self.started_at, "finished_at": self.finished_at,
            "seconds": round(max(0.0, end - self.started_at), 3), "outcome": self.outcome, "stages": list(self.reports),
            "namespace": self.namespace, "preemptions": self.preemptions, "resumes": self.resumes, "error": self.error,
        }


class _Pacer:
    """A run's side of StageContext.step(): CPU budget, yielding to foreground, cancellation;
    and the thread the run's units run in (``worker``, closed by the run)."""

    def __init__(self, sleep: Sleep, run: _Run) -> None:
        self._sleep = sleep
        self._run = run
        self._mark = time.monotonic()
        self.worker = ConsolidationThread(sleep.settings.priority, count=lambda thread: sleep.m_units.labels(thread).inc())

    async def step(self) -> None:
        settings = self._sleep.settings
        worked = time.monotonic() - self._mark
        if settings.cpu_budget < 1.0 and worked > 0:
            await anyio.sleep(min(_MAX_PAUSE, worked * (1.0 / settings.cpu_budget - 1.0)))
        else:
            await anyio.lowlevel.checkpoint()  # a cancellation point even when nothing waits
        await self._yield()
        self._mark = time.monotonic()

    def busy(self) -> bool:
        activity = self._sleep.activity
        return activity.foreground > 0 or time.monotonic() - activity.last_foreground < self._sleep.settings.quiet_gap

    async def _yield(self) -> None:
        if not self.busy():
            return
        run = self._run
        run.preemptions += 1
        run.yielding = True
        self._sleep.m_preemptions.inc()
        now = time.monotonic()
        if now - run.last_preempted_event >= _PREEMPTED_EVERY:
            run.last_preempted_event = now
            self._sleep.bus.publish(SleepPreempted(run=run.id, preemptions=run.preemptions, stage=run.stage,
                                                   namespace=run.stage_namespace))
        try:
            deadline = now + self._sleep.settings.max_yield
            while self.busy() and time.monotonic() < deadline:
                await anyio.sleep(_POLL)
        finally:
            run.yielding = False


class Sleep(Part):
    """The sleep part: triggers and the consolidation run in progress."""

    def __init__(
        self,
        settings: SleepSettings,
        store: ConsolidationStore,
        database_path: Path,
        router: Recalibrator | None = None,
        audit: AuditTrail | None = None,
        bus: Any = None,
        metrics: Any = None,
        clock: Callable[[], float] = time.time,
        activity: Activity | None = None,
        *,
        busy_timeout: float = 5.0,
        skipped_prefixes: tuple[str, ...] = (),
    ) -> None:
        super().__init__("sleep")
        self.settings = settings
        self.store = store
        self.db = SleepDB(database_path, busy_timeout)
        # Namespaces that hold someone else's data rather than memories (the router's novelty vectors).
        self.skipped_prefixes = skipped_prefixes
        self.router = router
        self.audit = audit
        self.bus = bus
        self.clock = clock
        # Foreground requests in flight and when the last one came (in the daemon, the
        # ForegroundActivity layer of the request chain: engram.sleep.activity).
        self.activity: Activity = activity if activity is not None else _NoActivity()
        self._run: _Run | None = None
        self._starting = False
        self._last_report: dict[str, Any] | None = None
        self._last_preemptions = 0
        self._last_finished_mono: float | None = None
        self._next_schedule: float | None = None
        self._stopping = False  # the daemon is stopping: no new runs
        kwargs: dict[str, Any] = {"registry": metrics.registry if metrics is not None else None}
        self.m_runs = Counter("engram_sleep_runs", "Consolidation runs finished, by outcome.", ["outcome"], **kwargs)
        self.m_stage_seconds = Histogram(
            "engram_sleep_stage_duration_seconds", "Seconds per consolidation stage (per namespace).", ["stage"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600), **kwargs,
        )
        self.m_units = Counter(
            "engram_sleep_units", "Units of consolidation work, by the thread they ran in: lowered (sleep.priority) "
            "or daemon (the daemon's priority, while the machine is short of CPU).", ["thread"], **kwargs,
        )
        self.m_preemptions = Counter("engram_sleep_preemptions", "Times consolidation yielded to foreground requests.", **kwargs)
        self.m_rollbacks = Counter("engram_sleep_rollbacks", "Namespaces whose consolidation dream replay rolled back.", **kwargs)
        if metrics is not None:
            metrics.add_collector(self._collect)

    # --- lifecycle ------------------------------------------------------------------------------------

    async def setup(self, stack: AsyncExitStack) -> None:
        await anyio.to_thread.run_sync(self.db.open)
        stack.push_async_callback(self._close_db)
        await anyio.to_thread.run_sync(self._recover)
        self._next_schedule = self._schedule_after(self.clock())
        # At close the tasks are cancelled: a run in progress is recorded as interrupted on its way out.
        await self.start_tasks(stack)
        self.start_soon(self._triggers, name="sleep triggers")
        if self.bus is not None:
            self.start_soon(self._watch_stop, name="sleep stop watcher")

    async def _close_db(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.db.close)

    async def _watch_stop(self) -> None:
        """When the daemon begins to stop, the run in progress stops too (recorded interrupted),
        so that a ``sleep.run`` waiting for it does not hold up the drain of requests."""
        sub = self.bus.subscribe(["daemon.stopping"], maxsize=4)
        try:
            await sub.receive()
        except SubscriptionClosed:  # the bus closed the subscription: nothing to watch
            return
        finally:
            self.bus.unsubscribe(sub)
        self._stopping = True
        if self._run is not None and self._run.scope is not None:
            self._run.scope.cancel()

    async def health(self) -> Health:
        run = self._run
        if run is not None:
            return Health(True, f"run {run.id} ({run.trigger}) at {run.stage or 'start'}")
        last = self._last_report
        return Health(True, "idle" + (f"; last run {last['run']} {last['outcome']}" if last else "; no run yet"))

    def _collect(self) -> Iterable[Metric]:
        state = GaugeMetricFamily("engram_sleep_state", "1 for the state consolidation is in.", labels=["state"])
        current = self._phase()
        for name in ("idle", "running", "yielding"):
            state.add_metric([name], 1.0 if name == current else 0.0)
        yield state

    # --- recovery -------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Runs without an outcome were cut short (crash, kill): mark them interrupted."""
        now = self.clock()
        with self.db.transaction() as conn:
            for run_id, report in conn.execute("SELECT id, report FROM sleep_runs WHERE outcome IS NULL").fetchall():
                data = json.loads(report)
                data.update(outcome="interrupted", finished_at=now)
                data["seconds"] = round(max(0.0, now - float(data.get("started_at", now))), 3)
                conn.execute(
                    "UPDATE sleep_runs SET outcome = 'interrupted', finished_at = ?, report = ? WHERE id = ?",
                    (now, json.dumps(data), run_id),
                )
                log.warning("consolidation run was interrupted (the daemon stopped during it)", run=run_id)
        last = self._reports(1)
        self._last_report = last[0] if last else None

    def _reports(self, limit: int) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT report FROM sleep_runs WHERE outcome IS NOT NULL ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    # --- starting a run -------------------------------------------------------------------------------

    async def start(self, trigger: str, namespace: str | None = None, stages: list[str] | None = None) -> _Run:
        """Begin a run in the background; Conflict when one is going."""
        if self._run is not None or self._starting:
            running = self._run.id if self._run is not None else None
            raise Conflict("a consolidation run is going already", reason="sleep_running", run=running)
        if self.state is not PartState.RUNNING or self._stopping:
            raise Conflict("sleep is not running (the daemon is stopping)", reason="sleep_stopped")
        chosen = [s for s in ORDER if s in (stages if stages is not None else self.settings.stages)]
        self._starting = True
        try:
            run = await anyio.to_thread.run_sync(self._insert_run, trigger, namespace, chosen)
        finally:
            self._starting = False
        run.done = anyio.Event()
        self._run = run
        self.start_soon(self._execute, run, name=f"sleep run {run.id}")
        return run

    def _insert_run(self, trigger: str, namespace: str | None, stages: list[str]) -> _Run:
        now = self.clock()
        text = json.dumps(stages)
        adopted: list[int] = []
        with self.db.transaction() as conn:
            last = conn.execute(
                "SELECT id, namespace, stages, outcome, resumed_by FROM sleep_runs ORDER BY id DESC LIMIT 1"
            ).fetchone()
            run_id = int(conn.execute(
                "INSERT INTO sleep_runs (trigger, namespace, stages, started_at) VALUES (?, ?, ?, ?) RETURNING id",
                (trigger, namespace, text, now),
            ).fetchone()[0])
            resumes = None
            if last is not None and last[3] == "interrupted" and last[4] is None and last[1] == namespace and json.loads(last[2]) == stages:
                resumes = int(last[0])
                for table in ("sleep_cursors", "sleep_stage_done"):
                    conn.execute(f"UPDATE {table} SET run = ? WHERE run = ?", (run_id, resumes))
                conn.execute("UPDATE sleep_runs SET resumed_by = ? WHERE id = ?", (run_id, resumes))
                # The run taken over and the runs it took over in turn: memory's journal of one of
                # them is still under its own id if the process died before it was handed on.
                adopted = [r for (r,) in conn.execute(
                    "WITH RECURSIVE chain (id) AS (SELECT ? UNION SELECT r.id FROM sleep_runs r JOIN chain c ON r.resumed_by = c.id) "
                    "SELECT id FROM chain",
                    (resumes,),
                )]
            run = _Run(run_id, trigger, namespace, stages, now, resumes=resumes)
            conn.execute("UPDATE sleep_runs SET report = ? WHERE id = ?", (json.dumps(run.report(self.clock)), run_id))
        self.store.adopt(adopted, run_id)  # memory's journal and checkpoints of what this run resumes
        return run

    # --- running --------------------------------------------------------------------------------------

    async def _execute(self, run: _Run) -> None:
        started = time.monotonic()
        try:
            with anyio.CancelScope() as scope:
                run.scope = scope
                await self._stages(run)
            run.outcome = "interrupted" if scope.cancelled_caught else "completed"
        except anyio.get_cancelled_exc_class():
            run.outcome = "interrupted"
            with anyio.CancelScope(shield=True):
                await self._finish(run, started)
            raise
        except Exception as exc:
            log.exception("consolidation run failed", run=run.id, stage=run.stage, namespace=run.stage_namespace)
            run.outcome = "failed"
            run.error = f"{run.stage or 'start'}: {type(exc).__name__}: {exc}"
        with anyio.CancelScope(shield=True):
            await self._finish(run, started)

    async def _finish(self, run: _Run, started: float) -> None:
        run.finished_at = self.clock()
        report = run.report(self.clock)
        keep = run.outcome == "interrupted"  # an interrupted run's journal and cursors let the next one resume

        def write() -> None:
            with self.db.transaction() as conn:
                conn.execute(
                    "UPDATE sleep_runs SET outcome = ?, finished_at = ?, report = ? WHERE id = ?",
                    (run.outcome, run.finished_at, json.dumps(report), run.id),
                )
                if not keep:
                    conn.execute("DELETE FROM sleep_cursors WHERE run = ?", (run.id,))
                    conn.execute("DELETE FROM sleep_stage_done WHERE run = ?", (run.id,))
                old = [r for (r,) in conn.execute(
                    "SELECT id FROM sleep_runs WHERE outcome IS NOT NULL ORDER BY id DESC LIMIT -1 OFFSET ?",
                    (self.settings.keep_reports,),
                )]
                for chunk_start in range(0, len(old), 500):
                    part = old[chunk_start : chunk_start + 500]
                    marks = ",".join("?" * len(part))
                    for table in ("sleep_cursors", "sleep_stage_done"):
                        conn.execute(f"DELETE FROM {table} WHERE run IN ({marks})", part)
                    conn.execute(f"DELETE FROM sleep_runs WHERE id IN ({marks})", part)
            for chunk_start in range(0, len(old), 500):
                self.store.discard(old[chunk_start : chunk_start + 500])
            if not keep:  # the journal of a finished run is no longer needed (memory deletes it in short slices)
                self.store.discard([run.id])

        try:
            await anyio.to_thread.run_sync(write)
        except Exception:
            log.exception("recording the end of a consolidation run failed", run=run.id)
        self.m_runs.labels(run.outcome).inc()
        self._last_report = report
        self._last_preemptions = run.preemptions
        self._last_finished_mono = time.monotonic()
        self._run = None
        assert run.done is not None
        run.done.set()
        seconds = round(time.monotonic() - started, 3)
        log.info("consolidation run finished", run=run.id, outcome=run.outcome, seconds=seconds,
                 preemptions=run.preemptions, error=run.error)
        self.bus.publish(SleepFinished(run=run.id, outcome=run.outcome or "failed", seconds=seconds,
                                       preemptions=run.preemptions, error=run.error))

    def _namespaces(self, run: _Run) -> list[str]:
        if run.namespace is not None:
            return [run.namespace]
        return [ns for ns in self.store.namespaces() if not self._skipped(ns)]

    def _skipped(self, namespace: str) -> bool:
        return namespace.startswith(self.skipped_prefixes)

    def _context(self, run: _Run, pacer: _Pacer, namespace: str, stage: str, saved: dict[str, Any]) -> StageContext:
        def progress(done: int, total: int) -> None:
            run.progress = (done, total)

        return StageContext(
            run_id=run.id, namespace=namespace, settings=self.settings, store=self.store, db=self.db, router=self.router,
            audit=self.audit, bus=self.bus, clock=self.clock, saved=saved, stage=stage, pacer=pacer,
            worker=pacer.worker, on_progress=progress,
        )

    def _load_done(self, run_id: int) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]:
        with self.db.read() as conn:
            done = {
                (ns, stage): {"seconds": seconds, "figures": json.loads(figures), "rolled_back": bool(rolled)}
                for ns, stage, seconds, figures, rolled in conn.execute(
                    "SELECT namespace, stage, seconds, figures, rolled_back FROM sleep_stage_done WHERE run = ? ORDER BY done_at",
                    (run_id,),
                )
            }
            cursors = {
                (ns, stage): json.loads(cursor)
                for ns, stage, cursor in conn.execute("SELECT namespace, stage, cursor FROM sleep_cursors WHERE run = ?", (run_id,))
            }
        # A stage keeps its cursor either here or, when it must commit with memory's change, as
        # memory's checkpoint; a checkpoint is the newer of the two.
        cursors.update(self.store.checkpoints(run_id))
        return done, cursors

    async def _stages(self, run: _Run) -> None:
        pacer = _Pacer(self, run)
        try:
            await self._stages_paced(run, pacer)
        finally:
            await pacer.worker.close()

    async def _stages_paced(self, run: _Run, pacer: _Pacer) -> None:
        namespaces = await anyio.to_thread.run_sync(self._namespaces, run)
        done, cursors = await anyio.to_thread.run_sync(self._load_done, run.id)
        per_ns = [s for s in run.stages if s not in PER_RUN and s in REGISTRY]
        per_run = [s for s in run.stages if s in PER_RUN and s in REGISTRY]
        instances = {name: REGISTRY[name]() for name in run.stages if name in REGISTRY}
        for (ns, stage), entry in done.items():  # finished by the interrupted run this one resumes
            run.reports.append({"name": stage, "namespace": ns or None, **entry})
        log.info("consolidation run started", run=run.id, trigger=run.trigger, namespaces=len(namespaces),
                 stages=run.stages, resumes=run.resumes)
        self.bus.publish(SleepStarted(run=run.id, trigger=run.trigger, namespaces=namespaces, stages=run.stages,
                                      resumes=run.resumes))
        for ns in namespaces:
            replay = instances.get("replay")
            if replay is not None and (ns, "replay") not in done and hasattr(replay, "snapshot"):
                run.stage, run.stage_namespace, run.progress = "replay", ns, None
                await replay.snapshot(self._context(run, pacer, ns, "replay", cursors.get((ns, "replay"), {})))
            for name in per_ns:
                if (ns, name) in done:
                    continue
                figures = await self._run_stage(run, pacer, instances[name], ns, name, cursors.get((ns, name), {}))
                if name == "replay" and figures.get("worse"):
                    await self._rollback(run, pacer, instances, ns, per_ns, figures)
        for name in per_run:
            if ("", name) in done:
                continue
            await self._run_stage(run, pacer, instances[name], "", name, cursors.get(("", name), {}))

    async def _run_stage(self, run: _Run, pacer: _Pacer, stage: Any, namespace: str, name: str,
                         saved: dict[str, Any]) -> dict[str, Any]:
        run.stage, run.stage_namespace, run.progress = name, namespace or None, None
        ctx = self._context(run, pacer, namespace, name, saved)
        began = time.monotonic()
        figures = await stage.run(ctx)
        seconds = round(time.monotonic() - began, 3)
        entry = {"name": name, "namespace": namespace or None, "seconds": seconds, "figures": figures, "rolled_back": False}
        run.reports.append(entry)
        report = run.report(self.clock)

        def record() -> None:
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO sleep_stage_done (run, namespace, stage, seconds, figures, done_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (run.id, namespace, name, seconds, json.dumps(figures), self.clock()),
                )
                conn.execute("DELETE FROM sleep_cursors WHERE run = ? AND namespace = ? AND stage = ?", (run.id, namespace, name))
                conn.execute("UPDATE sleep_runs SET report = ? WHERE id = ?", (json.dumps(report), run.id))
            # After the stage is recorded done: a checkpoint left by a crash in between is never read.
            self.store.drop_checkpoint(JournalTag(run.id, namespace, name))

        with anyio.CancelScope(shield=True):  # the stage's work is done: record it even when stopping
            await anyio.to_thread.run_sync(record)
        self.m_stage_seconds.labels(name).observe(seconds)
        log.info("consolidation stage done", run=run.id, stage=name, namespace=namespace or None, seconds=seconds, **{
            k: v for k, v in figures.items() if isinstance(v, int | float | bool | str) and k not in ("stage", "namespace")
        })
        self.bus.publish(SleepStage(run=run.id, name=name, namespace=namespace or None, seconds=seconds, figures=figures))
        return figures

    async def _rollback(self, run: _Run, pacer: _Pacer, instances: dict[str, Any], namespace: str, per_ns: list[str],
                        replay_figures: dict[str, Any]) -> None:
        undone: dict[str, Any] = {}
        for name in ROLLBACK_ORDER:
            if name not in per_ns:
                continue
            run.stage, run.stage_namespace, run.progress = f"rollback:{name}", namespace, None
            undone[name] = await instances[name].rollback(self._context(run, pacer, namespace, name, {}))
            for entry in run.reports:
                if entry["name"] == name and entry["namespace"] == namespace:
                    entry["rolled_back"] = True
        report = run.report(self.clock)

        def record() -> None:
            with self.db.transaction() as conn:
                conn.executemany(
                    "UPDATE sleep_stage_done SET rolled_back = 1 WHERE run = ? AND namespace = ? AND stage = ?",
                    [(run.id, namespace, name) for name in undone],
                )
                conn.execute("UPDATE sleep_runs SET report = ? WHERE id = ?", (json.dumps(report), run.id))

        await anyio.to_thread.run_sync(record)
        self.m_rollbacks.inc()
        log.warning("consolidation rolled back: dream replay found recall worse", run=run.id, namespace=namespace,
                    stages=list(undone))
        self.bus.publish(SleepRolledBack(
            run=run.id, namespace=namespace, stages=list(undone), figures=undone,
            reason=f"dream replay: recall dropped by more than {self.settings.replay.max_drop:g}"
            + (f" ({replay_figures.get('drop')})" if replay_figures.get("drop") is not None else ""),
        ))

    # --- triggers -------------------------------------------------------------------------------------

    def _schedule_after(self, now: float) -> float | None:
        """The next local "HH:MM" of sleep.schedule after ``now`` (Unix time), or None."""
        if not self.settings.schedule:
            return None
        here = dt.datetime.fromtimestamp(now).astimezone()
        best: float | None = None
        for item in self.settings.schedule:
            hour, minute = (int(x) for x in item.split(":"))
            at = here.replace(hour=hour, minute=minute, second=0, microsecond=0)
            if at.timestamp() <= now:
                at = (at + dt.timedelta(days=1)).replace(hour=hour, minute=minute)
            if best is None or at.timestamp() < best:
                best = at.timestamp()
        return best

    def _idle_at(self) -> float | None:
        """The monotonic time the idle trigger fires, or None when it is off."""
        if not self.settings.enabled:
            return None
        at = self.activity.last_foreground + self.settings.idle_after
        if self._last_finished_mono is not None:
            at = max(at, self._last_finished_mono + self.settings.idle_interval)
        return at

    async def _triggers(self) -> None:
        poll = max(0.05, min(1.0, self.settings.idle_after / 4))
        while True:
            await anyio.sleep(poll)
            if not self.settings.enabled or self._run is not None or self._starting:
                continue
            now = self.clock()
            trigger = None
            if self._next_schedule is not None and now >= self._next_schedule:
                self._next_schedule = self._schedule_after(now)
                trigger = "schedule"
            elif (idle := self._idle_at()) is not None and self.activity.foreground == 0 and time.monotonic() >= idle:
                trigger = "idle"
            if trigger is None:
                continue
            try:
                await self.start(trigger)
            except Conflict:
                continue
            except Exception:
                log.exception("starting a consolidation run failed", trigger=trigger)
                self._last_finished_mono = time.monotonic()  # wait an idle interval before trying again

    # --- status ---------------------------------------------------------------------------------------

    def _phase(self) -> str:
        run = self._run
        if run is None:
            return "idle"
        return "yielding" if run.yielding else "running"

    def _next_run(self) -> NextRun | None:
        if not self.settings.enabled:
            return None
        options: list[tuple[float, str]] = []
        if self._next_schedule is not None:
            options.append((self._next_schedule, "schedule"))
        if (idle := self._idle_at()) is not None:
            options.append((self.clock() + max(0.0, idle - time.monotonic()), "idle"))
        if not options:
            return None
        at, trigger = min(options)
        return NextRun(at=at, trigger=trigger)  # type: ignore[arg-type]

    def status(self) -> SleepStatusResult:
        run = self._run
        return SleepStatusResult(
            state=self._phase(),  # type: ignore[arg-type]
            run=run.id if run else None,
            trigger=run.trigger if run else None,
            stage=run.stage if run else None,
            namespace=run.stage_namespace if run else None,
            progress=Progress(done=run.progress[0], total=run.progress[1]) if run and run.progress else None,
            preemptions=run.preemptions if run else self._last_preemptions,
            last_report=SleepReport.model_validate(self._last_report) if self._last_report else None,
            next_run=self._next_run(),
        )

    # --- RPC ------------------------------------------------------------------------------------------

    @rpc("sleep.run", summary="Start a consolidation run now (optionally wait for its report).", owner_only=True,
         timeout=86_400.0)
    async def sleep_run(self, ctx: RequestContext, params: SleepRunParams) -> SleepRunResult:
        if params.namespace is not None and (not params.namespace or self._skipped(params.namespace)):
            raise InvalidParams(f"namespace: {params.namespace!r} cannot be consolidated", field="namespace",
                                reason="bad_namespace")
        run = await self.start("manual", params.namespace, list(params.stages) if params.stages else None)
        report = None
        if params.wait:
            assert run.done is not None
            await run.done.wait()
            report = SleepReport.model_validate(run.report(self.clock))
        return SleepRunResult(run=run.id, started=True, report=report)

    @rpc("sleep.status", summary="What consolidation is doing, its last report and its next planned run.", audit=False)
    async def sleep_status(self, ctx: RequestContext, params: SleepStatusParams) -> SleepStatusResult:
        return self.status()

    @rpc("sleep.reports", summary="Reports of recent consolidation runs, newest first.", audit=False)
    async def sleep_reports(self, ctx: RequestContext, params: SleepReportsParams) -> SleepReportsResult:
        rows = await anyio.to_thread.run_sync(self._reports, params.limit)
        return SleepReportsResult(reports=[SleepReport.model_validate(r) for r in rows])
