"""The tasks part: takes plans (``task.submit``), runs them in the background, keeps them across
restarts.

A submitted task waits in a bounded queue (``tasks.queue``; past it: -32003) for one of
``tasks.concurrency`` workers. A worker runs the task's steps one at a time, in the plan's
dependency order, each a tool call (:mod:`engram.tasks.tools`) as the principal that submitted
the task, under the step's timeout; the task's deadline and ``task.cancel`` reach the step in
flight through the task's cancel scope. Every state change, and each step's output together with
its ``done`` state, is committed before the next step starts (:mod:`engram.tasks.store`): a task
that a stop or a crash cut short is queued again at start and goes on at its first step that is
not done.

With an audit log (the composition root hands it over), each step that finishes gets an audit
entry of its own, kind ``task.step``, with its provenance: the task, the steps it needs, the tool,
the hashes of its resolved input and of its output (both stored content-addressed), and the
provider that answered where the output names one. The entry is durable before the step is
recorded as done, and its seq is kept with the step: ``task.prove`` proves those entries against
one signed checkpoint (:mod:`engram.audit.bundle`).

A tool call that fails with a retryable error (-32003, -32004, -32005) is made again, at most
``tasks.retries`` times, when the tool is idempotent (:meth:`Tools.idempotent`); the pauses
between the calls grow from ``tasks.retry_backoff`` and are never allowed past the step's
timeout or the task's deadline. Each tool sits behind a circuit breaker
(:class:`engram.providers.breaker.CircuitBreaker`): ``tasks.breaker_failures`` retryable
failures in a row open it, and for ``tasks.breaker_cooldown`` seconds a step calling the tool
fails at once with -32005 ``breaker_open``; then one call is let through to probe it.

Tasks are background work: before each step a task gives way (at most ``tasks.yield_max``
seconds) to the requests clients sent that are in flight. A watchdog looks at the running tasks
every ``tasks.heartbeat`` seconds: it publishes a ``task.heartbeat`` for each, and gives up a step
that has not stopped ``tasks.stuck_grace`` seconds after it was due (its call swallowed the
cancel), failing its task and starting a worker in the place of the one still inside the call.

The ``task.*`` RPC methods are :class:`engram.tasks.methods.TaskMethods`, which this class
inherits: ``task.follow`` streams a task's events to its caller, ``task.replay`` replays a
finished task against its recorded outputs (:mod:`engram.tasks.replay`) or runs its plan again
as a new task.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from engram.audit.bundle import KIND_TASK_STEP
from engram.bus import EventBus
from engram.errors import Conflict, InternalError, InvalidParams, Overloaded, RPCError, Timeout, Unavailable
from engram.lifecycle import Part
from engram.providers.breaker import CircuitBreaker, State
from engram.tasks.events import TaskEnded, TaskHeartbeat, TaskStep
from engram.tasks.methods import TaskMethods
from engram.tasks.plan import Plan, Step, UnresolvedReference, execution_order, step_input
from engram.tasks.planning import TaskPlanning
from engram.tasks.ports import Activity, AuditTrail
from engram.tasks.settings import TaskSettings
from engram.tasks.store import UNFINISHED, TaskRow, TaskStore, canonical_json, digest_of
from engram.tasks.tools import Tools

__all__ = ["Tasks"]

log = structlog.get_logger("engram.tasks")

# Errors that say the tool could not answer now, not that the call was wrong: worth another
# call, and counted by the tool's breaker.
RETRYABLE = (Overloaded, Timeout, Unavailable)

_YIELD_POLL = 0.01  # seconds between looks at the foreground while a task gives way


def _step_error(exc: RPCError) -> dict[str, Any]:
    data = {key: value for key, value in exc.data.items() if key != "reason"}
    return {"code": exc.code, "message": exc.message, "reason": exc.reason, "data": data}


class Tasks(TaskMethods, Part):
    def __init__(
        self, settings: TaskSettings, database_path: Path, tools: Tools, bus: EventBus, busy_timeout: float = 5.0,
        owner_uid: int | None = None, audit: AuditTrail | None = None, activity: Activity | None = None,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        jitter: Callable[[], float] = random.random, planning: Callable[[TaskStore], TaskPlanning] | None = None,
    ) -> None:
        """``clock`` times the breakers, ``sleep`` waits out a retry's pause, ``jitter`` (in
        [0, 1)) spreads the pauses; tests replace them."""
        super().__init__("tasks")
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._breakers: dict[str, CircuitBreaker] = {}
        self.audit = audit
        self.activity = activity
        self.settings = settings
        self.store = TaskStore(database_path, busy_timeout)
        # Plans from goals, replans and teaching (None: every task brings its plan).
        self.planning = None if planning is None else planning(self.store)
        self.tools = tools
        self.bus = bus
        self.owner_uid = owner_uid
        self._send: anyio.abc.ObjectSendStream[str] | None = None
        self._waiting = 0  # tasks admitted and not yet taken by a worker
        self._running: dict[str, _Running] = {}  # tasks a worker holds, by id
        self._cancelled: set[str] = set()  # ids task.cancel asked to stop, until their worker ends them
        self._receive: anyio.abc.ObjectReceiveStream[str] | None = None
        self._replacements = 0  # workers started in the place of stuck ones

    async def setup(self, stack: AsyncExitStack) -> None:
        await anyio.to_thread.run_sync(self.store.open)
        stack.callback(self.store.close)
        unsure = await anyio.to_thread.run_sync(
            self.store.requeue_interrupted, self.tools.idempotent, _step_error(_interrupted()), time.time()
        )
        if unsure:
            log.warning("steps interrupted by the stop are not run again (their tools are not idempotent)", steps=unsure)
        resumed = await anyio.to_thread.run_sync(self.store.unfinished)
        # Room for every admitted task: the workers' and the queue's; admission counts _waiting.
        send, receive = anyio.create_memory_object_stream[str](self.settings.queue + self.settings.concurrency)
        self._send, self._receive = send, receive
        stack.callback(send.close)
        await self.start_tasks(stack)
        for number in range(self.settings.concurrency):
            self.spawn(self._work, f"worker-{number}", restart=True)
        self.spawn(self._watch, "watchdog", restart=True)
        for task in resumed:
            if self._waiting >= self.settings.queue + self.settings.concurrency:
                # Only when tasks.queue was made smaller than the tasks that were waiting.
                await self._finish(task, "failed", Overloaded(
                    "the task did not fit the queue at restart (tasks.queue is smaller now)", reason="queue_full",
                ))
                continue
            self._admit(task.id)
        if resumed:
            log.info("tasks resumed", count=len(resumed))

    def _admit(self, task_id: str) -> None:
        assert self._send is not None
        self._waiting += 1
        self._send.send_nowait(task_id)  # never full: admission keeps _waiting within the buffer

    # --- the workers -------------------------------------------------------------------------------

    async def _work(self) -> None:
        assert self._receive is not None
        async for task_id in self._receive:
            self._waiting -= 1
            run = self._running[task_id] = _Running(task_id)
            try:
                await self._run(run)
            finally:
                if self._running.get(task_id) is run:
                    del self._running[task_id]
                self._cancelled.discard(task_id)
                run.ended.set()
            if run.abandoned:
                return  # the watchdog gave this worker up and started another in its place

    async def _run(self, run: _Running) -> None:
        task = await anyio.to_thread.run_sync(self.store.task, run.task_id)
        if task is None or task.state not in UNFINISHED or run.task_id in self._cancelled:
            return  # cancelled while it waited: task.cancel has recorded that
        run.task = task
        scope = run.scope
        if task.deadline_at is not None:
            scope.deadline = anyio.current_time() + (task.deadline_at - time.time())
        outcome: tuple[str, RPCError | None] = ("failed", None)
        try:
            with scope:
                await anyio.to_thread.run_sync(self.store.set_task_state, task.id, "running", time.time())
                outcome = await self._steps(task, run)
        except Exception as exc:  # a fault of the executor: the task fails, the worker goes on
            log.exception("task failed in the executor", task=task.id)
            outcome = ("failed", InternalError(f"the executor failed: {exc}", reason="executor_failed"))
        if run.abandoned:
            return  # the watchdog recorded the task's end when it gave the step up
        if scope.cancelled_caught:
            if task.id in self._cancelled:
                outcome = ("cancelled", Conflict("cancelled by task.cancel", reason="cancelled"))
            else:
                outcome = ("failed", Timeout("the task's deadline passed", reason="deadline"))
        state, error = outcome
        # Shielded: a stop arriving now must not leave a task ended here recorded as running,
        # which the next start would run again.
        with anyio.CancelScope(shield=True):
            await self._end(task, run.step, state, error)

        await self._teach(task.id, state, error)

    async def _teach(self, task_id: str, state: str, error: RPCError | None) -> None:
        """Teaching, once the end is recorded: outside the shield, so a stop need not wait for it."""
        if self.planning is not None:
            await self.planning.ended(task_id, state, None if error is None else error.reason)

    async def _end(self, task: TaskRow, step: Step | None, state: str, error: RPCError | None) -> None:
        """Record a task's end, and that of its step in flight (``step``) when an error ended it."""
        if step is not None and error is not None:
            step_state = "cancelled" if state == "cancelled" else "failed"
            if await anyio.to_thread.run_sync(
                self.store.step_ended, task.id, step.id, step_state, _step_error(error), time.time()
            ):
                self._step_event(task, step, step_state, reason=error.reason)
        await self._finish(task, state, error)

    # --- heartbeats and the watchdog ---------------------------------------------------------------

    async def _watch(self) -> None:
        """Every ``tasks.heartbeat`` seconds: a ``task.heartbeat`` event per running task, and the
        steps that did not stop within ``tasks.stuck_grace`` of being due (their time limit, the
        task's deadline or a cancel) are given up. Such a step's call swallowed its cancellation or
        waits in a thread that cannot be interrupted; its task fails (``stuck``), and a new worker
        takes its worker's place so that the executor keeps its concurrency."""
        while True:
            await anyio.sleep(self.settings.heartbeat)
            now = anyio.current_time()
            for run in list(self._running.values()):
                if run.task is None or run.abandoned:
                    continue
                if run.step is not None and now > min(run.due, run.scope.deadline) + self.settings.stuck_grace:
                    await self._abandon(run, now)
                elif self.bus.wants(TaskHeartbeat.topic):
                    self.bus.publish(TaskHeartbeat(
                        task_id=run.task_id, uid=run.task.principal.uid,  # type: ignore[arg-type]
                        step=run.step.id if run.step else None, elapsed=round(now - run.since, 3) if run.step else 0.0,
                    ))

    async def _abandon(self, run: _Running, now: float) -> None:
        assert run.task is not None and run.step is not None
        run.abandoned = True
        self._running.pop(run.task_id, None)
        overdue = now - min(run.due, run.scope.deadline)
        log.error("task step stuck; its worker is given up", task=run.task_id, step=run.step.id, tool=run.step.tool,
                  overdue=round(overdue, 3))
        error = Timeout(
            f"step {run.step.id!r} did not stop within {self.settings.stuck_grace:g} s of being due (tasks.stuck_grace)",
            reason="stuck", overdue_s=round(overdue, 3),
        )
        with anyio.CancelScope(shield=True):
            await self._end(run.task, run.step, "failed", error)
        run.ended.set()  # a task.cancel waiting for the task hears of its end now
        await self._teach(run.task_id, "failed", error)
        self._replacements += 1
        self.spawn(self._work, f"worker-replacement-{self._replacements}", restart=True)

    async def _give_way(self) -> None:
        """Before a step: wait, at most ``tasks.yield_max`` seconds, while foreground requests are
        in flight, so that background work does not slow what a client waits for."""
        if self.activity is None or self.settings.yield_max == 0:
            return
        until = anyio.current_time() + self.settings.yield_max
        while self.activity.foreground > 0 and anyio.current_time() < until:
            await anyio.sleep(_YIELD_POLL)

    async def _finish(self, task: TaskRow, state: str, error: RPCError | None) -> None:
        record = None if error is None else _step_error(error)
        if not await anyio.to_thread.run_sync(self.store.set_task_state, task.id, state, time.time(), record):
            return  # it had ended already (the watchdog ended it, or a cancel of a queued task)
        reason = None if error is None else error.reason
        log.info("task ended", task=task.id, state=state, reason=reason)
        self.bus.publish(TaskEnded(task_id=task.id, uid=task.principal.uid, state=state, reason=reason))  # type: ignore[arg-type]

    def _step_event(self, task: TaskRow, step: Step, state: str, output_hash: str | None = None,
                    reason: str | None = None, attempts: int | None = None) -> None:
        self.bus.publish(TaskStep(task_id=task.id, uid=task.principal.uid, step=step.id, tool=step.tool,
                                  state=state, output_hash=output_hash, reason=reason,  # type: ignore[arg-type]
                                  attempts=attempts))

    async def _steps(self, task: TaskRow, run: _Running) -> tuple[str, RPCError | None]:
        """Run the steps that are not done, in order; the task's outcome. A cancel or deadline
        leaves through the task's scope with the step in flight named in ``run.step``. A task
        without its plan is planned first; a failed step of a planned task may be planned anew
        (:mod:`engram.tasks.planning`)."""
        if not task.planned:
            if self.planning is None:
                return "failed", Unavailable("the task has a goal and this daemon has no planner", reason="no_planner")
            try:
                task = await self.planning.first_plan(task)
            except RPCError as exc:
                return "failed", exc
        outputs = await anyio.to_thread.run_sync(self.store.outputs, task.id)
        # Steps a stop cut short whose tools are not idempotent: failed at start, never run again.
        interrupted = {
            row.step_id for row in await anyio.to_thread.run_sync(self.store.steps, task.id)
            if row.state == "failed" and (row.error or {}).get("reason") == "interrupted"
        }
        while True:
            plan = Plan.model_validate(task.plan)
            positions = {step.id: position for position, step in enumerate(plan.steps)}
            failed = await self._run_plan(task, plan, positions, outputs, run, interrupted)
            if failed is None:
                return "done", None
            step, error = failed
            replanned = None if self.planning is None else await self.planning.replan(task, plan, step, error, outputs)
            if replanned is None:
                return "failed", error
            task = replanned

    async def _run_plan(self, task: TaskRow, plan: Plan, positions: dict[str, int], outputs: dict[str, Any],
                        run: _Running, interrupted: set[str]) -> tuple[Step, RPCError] | None:
        """Run the plan's steps that are not done; the step that failed and its error, or None (all
        done, or the step in flight given up by the watchdog, which has recorded the task's end)."""
        for step in execution_order(plan):
            if step.id in outputs:
                continue
            if step.id in interrupted:  # recorded as failed at start
                self._step_event(task, step, "failed", reason="interrupted")
                return step, _interrupted()
            await self._give_way()
            limit = step.timeout or self.settings.step_timeout
            run.begin(step, limit)
            await anyio.to_thread.run_sync(self.store.step_started, task.id, step.id, time.time())
            self._step_event(task, step, "running")
            error = await self._step(task, step, positions[step.id], outputs, limit, run)
            if run.abandoned:
                return None
            if error is not None:
                await anyio.to_thread.run_sync(
                    self.store.step_ended, task.id, step.id, "failed", _step_error(error), time.time(),
                    error.data.get("attempts"),
                )
                run.step = None
                self._step_event(task, step, "failed", reason=error.reason, attempts=error.data.get("attempts"))
                return step, error
            run.step = None
        return None

    async def _step(
        self, task: TaskRow, step: Step, position: int, outputs: dict[str, Any], limit: float, run: _Running
    ) -> RPCError | None:
        """Call one step's tool and commit its output; the error that failed it, or None."""
        try:
            args = step_input(step, position, outputs, task.namespace, self.tools.takes_namespace)
        except UnresolvedReference as exc:
            return InvalidParams(str(exc), reason="unresolved_reference", field=exc.field)
        input_body = canonical_json(args)
        if len(input_body) > self.settings.max_output_bytes:
            return Conflict(
                f"step {step.id!r} has {len(input_body)} bytes of input, more than tasks.max_output_bytes",
                reason="input_too_large", size=len(input_body), limit=self.settings.max_output_bytes,
            )
        calls = _Calls()
        with anyio.move_on_after(limit) as timer:
            output, error = await self._call(task, step, args, calls)
        if timer.cancelled_caught:
            if calls.in_flight:  # the tool did not answer in time: its breaker counts that
                self.breaker(step.tool).failure("step_timeout")
            error = Timeout(f"step {step.id!r} did not finish within {limit:g} s", reason="step_timeout", limit_s=limit)
        if error is not None:
            error.data["attempts"] = calls.made
            return error
        body = canonical_json(output)
        if len(body) > self.settings.max_output_bytes:
            return Conflict(
                f"step {step.id!r} returned {len(body)} bytes, more than tasks.max_output_bytes",
                reason="output_too_large", size=len(body), limit=self.settings.max_output_bytes,
            )
        digest = digest_of(body)
        input_hash = digest_of(input_body)
        if run.abandoned:
            return None  # given up as stuck: its end is recorded, and no provenance is made for it
        seq = None
        if self.audit is not None:
            try:
                seq = await self.audit.append(
                    KIND_TASK_STEP, task.principal, task_id=task.id, parent_id=list(step.needs) or None,
                    input_hash=input_hash, output_hash=digest,
                    detail={"step_id": step.id, "tool": step.tool, "provider": _provider(output)},
                )
            except RPCError as exc:  # no step done without its provenance entry
                return exc
        if not await anyio.to_thread.run_sync(
            self.store.step_done, task.id, step.id, body, digest, time.time(), input_body, input_hash, seq, calls.made
        ):
            return None  # the watchdog failed the step meanwhile; that record stands
        outputs[step.id] = output
        self._step_event(task, step, "done", output_hash=digest, attempts=calls.made)
        return None

    # --- retries and breakers ----------------------------------------------------------------------

    def breaker(self, tool: str) -> CircuitBreaker:
        breaker = self._breakers.get(tool)
        if breaker is None:
            breaker = self._breakers[tool] = CircuitBreaker(
                tool, self.settings.breaker_failures, self.settings.breaker_cooldown, _breaker_changed, clock=self._clock
            )
        return breaker

    async def _call(self, task: TaskRow, step: Step, args: dict[str, Any], calls: _Calls) -> tuple[Any, RPCError | None]:
        """Call the step's tool, again after a retryable error while retries are left; its output,
        or the error that ended the calls. ``calls`` counts them for the caller."""
        breaker = self.breaker(step.tool)
        retries = self.settings.retries if self.tools.idempotent(step.tool) else 0
        while True:
            if not breaker.allow():
                return None, Unavailable(
                    f"tool {step.tool!r} failed {breaker.failures} times in a row; its circuit breaker is open",
                    reason="breaker_open", tool=step.tool,
                )
            calls.made += 1
            calls.in_flight = True
            try:
                output = await self.tools.call(step.tool, args, task.principal)
            except RETRYABLE as exc:
                error: RPCError = exc
            except RPCError as exc:  # the call was wrong, not the tool: no verdict for the breaker
                calls.in_flight = False
                breaker.release()
                return None, exc
            except BaseException:
                # Cancelled, or a fault of the tool. in_flight stays set: if the step's timeout
                # cancelled the call, _step counts that against the tool.
                breaker.release()
                raise
            else:
                calls.in_flight = False
                breaker.success()
                return output, None
            calls.in_flight = False
            breaker.failure(error.reason)
            if calls.made > retries:
                return None, error
            # Exponential backoff with jitter: a pause in [delay/2, delay), so retries of tasks
            # that failed together do not arrive together.
            pause = self.settings.retry_backoff * 2 ** (calls.made - 1) * (1 + self._jitter()) / 2
            if anyio.current_time() + pause >= anyio.current_effective_deadline():
                return None, error  # the step's timeout or the task's deadline would cut the retry short
            log.info("tool call retried", task=task.id, step=step.id, tool=step.tool, reason=error.reason, pause=pause)
            await self._sleep(pause)

def _interrupted() -> RPCError:
    return Conflict(
        "the daemon stopped while this step ran and its tool is not idempotent: it is not run again, "
        "and whether it took effect is unknown", reason="interrupted",
    )


class _Running:
    """A task a worker holds: its cancel scope (task.cancel and the deadline reach the step in flight
    through it), the step in flight, since when and when it is due to end (the watchdog's view)."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.task: TaskRow | None = None  # once the worker has read it
        self.scope = anyio.CancelScope()
        self.ended = anyio.Event()  # set when the task's end is recorded and its worker let go
        self.step: Step | None = None
        self.since = 0.0
        self.due = math.inf
        self.abandoned = False  # given up by the watchdog as stuck

    def begin(self, step: Step, limit: float) -> None:
        self.step = step
        self.since = anyio.current_time()
        self.due = self.since + limit


class _Calls:
    """A step's tool calls so far, and whether one is waiting for its answer."""

    def __init__(self) -> None:
        self.made = 0
        self.in_flight = False


def _breaker_changed(tool: str, state: State, previous: State, failures: int, error: str | None) -> None:
    log.warning("tool breaker", tool=tool, state=state, previous=previous, failures=failures, error=error)


def _provider(output: Any) -> str | None:
    """The provider that produced a step's output, where the output names one (route.ask does)."""
    provider = output.get("provider") if isinstance(output, dict) else None
    return provider if isinstance(provider, str) else None
