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
"""

from __future__ import annotations

import base64
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from engram.bus import EventBus
from engram.audit.bundle import BUNDLE_FORMAT, KIND_TASK_STEP
from engram.errors import Conflict, InternalError, InvalidParams, NotFound, Overloaded, RPCError, Timeout, Unavailable
from engram.lifecycle import Part
from engram.principal import Principal
from engram.providers.breaker import CircuitBreaker, State
from engram.server.methods import RequestContext, rpc
from engram.tasks.api import (
    ProofCheckpoint,
    ProvenStep,
    StepError,
    StepOut,
    TaskCancelParams,
    TaskCancelResult,
    TaskGetParams,
    TaskGetResult,
    TaskListParams,
    TaskListResult,
    TaskPlanParams,
    TaskPlanResult,
    TaskProveParams,
    TaskProveResult,
    TaskSubmitParams,
    TaskSubmitResult,
    TaskSummary,
)
from engram.tasks.plan import Plan, Step, UnresolvedReference, execution_order, resolve_args, validate_plan
from engram.tasks.planning import TaskPlanning
from engram.tasks.events import TaskEnded, TaskStep
from engram.tasks.ports import AuditTrail
from engram.tasks.settings import TaskSettings
from engram.tasks.store import UNFINISHED, StepRow, TaskRow, TaskStore, canonical_json, digest_of
from engram.tasks.tools import Tools

__all__ = ["Tasks"]

log = structlog.get_logger("engram.tasks")

# Errors that say the tool could not answer now, not that the call was wrong: worth another
# call, and counted by the tool's breaker.
RETRYABLE = (Overloaded, Timeout, Unavailable)


def _step_error(exc: RPCError) -> dict[str, Any]:
    data = {key: value for key, value in exc.data.items() if key != "reason"}
    return {"code": exc.code, "message": exc.message, "reason": exc.reason, "data": data}


class Tasks(Part):
    def __init__(
        self, settings: TaskSettings, database_path: Path, tools: Tools, bus: EventBus, busy_timeout: float = 5.0,
        owner_uid: int | None = None, audit: AuditTrail | None = None,
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
        self.settings = settings
        self.store = TaskStore(database_path, busy_timeout)
        # Plans from goals, replans and teaching (None: every task brings its plan).
        self.planning = None if planning is None else planning(self.store)
        self.tools = tools
        self.bus = bus
        self.owner_uid = owner_uid
        self._send: anyio.abc.ObjectSendStream[str] | None = None
        self._waiting = 0  # tasks admitted and not yet taken by a worker
        self._scopes: dict[str, anyio.CancelScope] = {}  # tasks a worker holds, by id
        self._ended: dict[str, anyio.Event] = {}  # set when the worker lets go of the task
        self._cancelled: set[str] = set()  # ids task.cancel asked to stop, until their worker ends them

    async def setup(self, stack: AsyncExitStack) -> None:
        await anyio.to_thread.run_sync(self.store.open)
        stack.callback(self.store.close)
        await anyio.to_thread.run_sync(self.store.requeue_interrupted)
        resumed = await anyio.to_thread.run_sync(self.store.unfinished)
        # Room for every admitted task: the workers' and the queue's; admission counts _waiting.
        send, receive = anyio.create_memory_object_stream[str](self.settings.queue + self.settings.concurrency)
        self._send = send
        stack.callback(send.close)
        await self.start_tasks(stack)
        for number in range(self.settings.concurrency):
            self.spawn(lambda: self._work(receive), f"worker-{number}", restart=True)
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

    async def _work(self, receive: anyio.abc.ObjectReceiveStream[str]) -> None:
        async for task_id in receive:
            self._waiting -= 1
            scope = self._scopes[task_id] = anyio.CancelScope()
            ended = self._ended.setdefault(task_id, anyio.Event())
            try:
                await self._run(task_id, scope)
            finally:
                self._scopes.pop(task_id, None)
                self._ended.pop(task_id, None)
                self._cancelled.discard(task_id)
                ended.set()

    async def _run(self, task_id: str, scope: anyio.CancelScope) -> None:
        task = await anyio.to_thread.run_sync(self.store.task, task_id)
        if task is None or task.state not in UNFINISHED or task_id in self._cancelled:
            return  # cancelled while it waited: task.cancel has recorded that
        if task.deadline_at is not None:
            scope.deadline = anyio.current_time() + (task.deadline_at - time.time())
        current: list[Step] = []  # the step in flight, for the record of a cancel or a deadline
        outcome: tuple[str, RPCError | None] = ("failed", None)
        try:
            with scope:
                await anyio.to_thread.run_sync(self.store.set_task_state, task_id, "running", time.time())
                outcome = await self._steps(task, current)
        except Exception as exc:  # a fault of the executor: the task fails, the worker goes on
            log.exception("task failed in the executor", task=task_id)
            outcome = ("failed", InternalError(f"the executor failed: {exc}", reason="executor_failed"))
        if scope.cancelled_caught:
            if task_id in self._cancelled:
                outcome = ("cancelled", Conflict("cancelled by task.cancel", reason="cancelled"))
            else:
                outcome = ("failed", Timeout("the task's deadline passed", reason="deadline"))
        state, error = outcome
        # Shielded: a stop arriving now must not leave a task ended here recorded as running,
        # which the next start would run again.
        with anyio.CancelScope(shield=True):
            if current and error is not None:
                step_state = "cancelled" if state == "cancelled" else "failed"
                if await anyio.to_thread.run_sync(
                    self.store.step_ended, task_id, current[0].id, step_state, _step_error(error), time.time()
                ):
                    self._step_event(task, current[0], step_state, reason=error.reason)
            await self._finish(task, state, error)
        await self._teach(task.id, state, error)

    async def _teach(self, task_id: str, state: str, error: RPCError | None) -> None:
        """Teaching, once the end is recorded: outside the shield, so a stop need not wait for it."""
        if self.planning is not None:
            await self.planning.ended(task_id, state, None if error is None else error.reason)

    async def _finish(self, task: TaskRow, state: str, error: RPCError | None) -> None:
        record = None if error is None else _step_error(error)
        await anyio.to_thread.run_sync(self.store.set_task_state, task.id, state, time.time(), record)
        reason = None if error is None else error.reason
        log.info("task ended", task=task.id, state=state, reason=reason)
        self.bus.publish(TaskEnded(task_id=task.id, uid=task.principal.uid, state=state, reason=reason))  # type: ignore[arg-type]

    def _step_event(self, task: TaskRow, step: Step, state: str, output_hash: str | None = None,
                    reason: str | None = None, attempts: int | None = None) -> None:
        self.bus.publish(TaskStep(task_id=task.id, uid=task.principal.uid, step=step.id, tool=step.tool,
                                  state=state, output_hash=output_hash, reason=reason,  # type: ignore[arg-type]
                                  attempts=attempts))

    async def _steps(self, task: TaskRow, current: list[Step]) -> tuple[str, RPCError | None]:
        """Run the steps that are not done, in order; the task's outcome. A cancel or deadline
        leaves through the task's scope with the step in flight named in ``current``. A task
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
        while True:
            plan = Plan.model_validate(task.plan)
            positions = {step.id: position for position, step in enumerate(plan.steps)}
            failed = await self._run_plan(task, plan, positions, outputs, current)
            if failed is None:
                return "done", None
            step, error = failed
            replanned = None if self.planning is None else await self.planning.replan(task, plan, step, error, outputs)
            if replanned is None:
                return "failed", error
            task = replanned

    async def _run_plan(self, task: TaskRow, plan: Plan, positions: dict[str, int], outputs: dict[str, Any],
                        current: list[Step]) -> tuple[Step, RPCError] | None:
        """Run the plan's steps that are not done; the step that failed and its error, or None."""
        for step in execution_order(plan):
            if step.id in outputs:
                continue
            current[:] = [step]
            await anyio.to_thread.run_sync(self.store.step_started, task.id, step.id, time.time())
            self._step_event(task, step, "running")
            error = await self._step(task, step, positions[step.id], outputs)
            if error is not None:
                await anyio.to_thread.run_sync(
                    self.store.step_ended, task.id, step.id, "failed", _step_error(error), time.time(),
                    error.data.get("attempts"),
                )
                current.clear()
                self._step_event(task, step, "failed", reason=error.reason, attempts=error.data.get("attempts"))
                return step, error
            current.clear()
        return None

    async def _step(self, task: TaskRow, step: Step, position: int, outputs: dict[str, Any]) -> RPCError | None:
        """Call one step's tool and commit its output; the error that failed it, or None."""
        try:
            args = resolve_args(step.args, outputs, f"plan.steps.{position}.args")
        except UnresolvedReference as exc:
            return InvalidParams(str(exc), reason="unresolved_reference", field=exc.field)
        if task.namespace is not None and "namespace" not in args and self.tools.takes_namespace(step.tool):
            args["namespace"] = task.namespace
        input_body = canonical_json(args)
        if len(input_body) > self.settings.max_output_bytes:
            return Conflict(
                f"step {step.id!r} has {len(input_body)} bytes of input, more than tasks.max_output_bytes",
                reason="input_too_large", size=len(input_body), limit=self.settings.max_output_bytes,
            )
        limit = step.timeout or self.settings.step_timeout
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
        await anyio.to_thread.run_sync(
            self.store.step_done, task.id, step.id, body, digest, time.time(), input_body, input_hash, seq, calls.made
        )
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

    # --- methods -----------------------------------------------------------------------------------

    def _sees_all(self, principal: Principal) -> bool:
        return principal.uid == 0 or (self.owner_uid is not None and principal.uid == self.owner_uid)

    async def _visible(self, ctx: RequestContext, task_id: str) -> TaskRow:
        task = await anyio.to_thread.run_sync(self.store.task, task_id)
        if task is None or (task.principal.uid != ctx.principal.uid and not self._sees_all(ctx.principal)):
            raise NotFound(f"no task {task_id}", reason="unknown_task", task_id=task_id)
        return task

    @rpc("task.submit", summary="Queue a task: a plan of tool calls run in the background; returns its id at once.")
    async def submit(self, ctx: RequestContext, params: TaskSubmitParams) -> TaskSubmitResult:
        if params.plan is None:
            self._plannable(ctx.principal, params.goal)
            plan = Plan.model_construct(steps=[])  # made by the worker that takes the task
        else:
            plan = validate_plan(params.plan, self.tools.names, self.settings.max_steps, self.settings.max_step_timeout)
        if self._waiting >= self.settings.queue:
            raise Overloaded(
                f"{self._waiting} tasks wait already (tasks.queue); retry later", reason="queue_full",
                limit=self.settings.queue,
            )
        now = time.time()
        task = TaskRow(
            id=f"tk_{secrets.token_hex(12)}", state="queued", plan=plan.model_dump(mode="json", exclude_defaults=True),
            namespace=params.namespace, principal=ctx.principal,
            deadline_at=None if params.deadline is None else now + params.deadline, created_at=now,
            started_at=None, finished_at=None, error=None, goal=params.goal,
        )
        self._waiting += 1  # held while the insert is awaited: a concurrent submit sees it
        try:
            await anyio.to_thread.run_sync(
                self.store.insert, task, [(step.id, step.tool) for step in execution_order(plan)]
            )
        finally:
            self._waiting -= 1
        self._admit(task.id)
        return TaskSubmitResult(task_id=task.id, state="queued")

    def _plannable(self, principal: Principal, goal: str | None) -> None:
        """Refuses at once a task without a plan that no planner could plan (-32602 no_planner)."""
        if goal is None:
            raise InvalidParams("a task needs a plan or a goal to plan it from", reason="no_planner", field="plan")
        why = "this daemon has no planner" if self.planning is None else self.planning.refusal(principal)
        if why is not None:
            raise InvalidParams(
                f"no planner can make a plan from the goal: {why}; give a plan instead", reason="no_planner", field="goal"
            )

    @rpc("task.plan", summary="The plan the planner would make for a goal, without running it.", timeout=900)
    async def plan_goal(self, ctx: RequestContext, params: TaskPlanParams) -> TaskPlanResult:
        self._plannable(ctx.principal, params.goal)
        assert self.planning is not None
        plan, made, examples = await self.planning.dry_plan(ctx.principal, params.namespace, params.goal)
        return TaskPlanResult(plan=plan.model_dump(mode="json", exclude_defaults=True), planned_by=made.providers,
                              replies=made.replies, examples=examples)

    @rpc("task.get", summary="A task: its state, plan, and each step's state, output hash and error.", read_only=True)
    async def get(self, ctx: RequestContext, params: TaskGetParams) -> TaskGetResult:
        task = await self._visible(ctx, params.task_id)
        rows = await anyio.to_thread.run_sync(self.store.steps, task.id)
        outputs = await anyio.to_thread.run_sync(self.store.outputs, task.id) if params.outputs else {}
        return TaskGetResult(
            task=_summary(task, rows),
            plan=task.plan,
            planned_by=(task.planner or {}).get("providers", []),
            steps=[_step_out(row, outputs.get(row.step_id)) for row in rows],
        )

    @rpc("task.list", summary="Tasks, newest first: yours (the daemon's owner: everyone's).", read_only=True)
    async def list_tasks(self, ctx: RequestContext, params: TaskListParams) -> TaskListResult:
        uid = None if self._sees_all(ctx.principal) else ctx.principal.uid
        tasks = await anyio.to_thread.run_sync(self.store.tasks, uid, params.states, params.limit)
        summaries = []
        for task in tasks:
            summaries.append(_summary(task, await anyio.to_thread.run_sync(self.store.steps, task.id)))
        return TaskListResult(tasks=summaries)

    @rpc(
        "task.prove",
        summary="A finished task's proof bundle: its steps' audit entries, their inclusion proofs and a signed checkpoint.",
        read_only=True,
    )
    async def prove(self, ctx: RequestContext, params: TaskProveParams) -> TaskProveResult:
        task = await self._visible(ctx, params.task_id)
        if task.state in UNFINISHED:
            raise Conflict(
                f"task {task.id} is {task.state}; only a finished task can be proven", reason="not_finished",
                task_id=task.id, state=task.state,
            )
        if self.audit is None:
            raise Unavailable("this daemon keeps no audit log, so there is nothing to prove", reason="audit_unavailable")
        rows = [row for row in await anyio.to_thread.run_sync(self.store.steps, task.id) if row.audit_seq is not None]
        if not rows:
            raise Conflict(
                f"task {task.id} has no step with an audit entry (none finished)", reason="nothing_to_prove", task_id=task.id
            )
        proven = await self.audit.prove_entries([row.audit_seq for row in rows])  # type: ignore[misc]
        cp = proven.checkpoint
        return TaskProveResult(
            format=BUNDLE_FORMAT, task_id=task.id, origin=proven.origin,
            checkpoint=ProofCheckpoint(
                note=cp.note, size=cp.size, root=_b64(cp.root), key_id=cp.key_id, time=cp.time
            ),
            entries=[
                ProvenStep(step_id=row.step_id, seq=seq, canonical=_b64(data), proof=[_b64(p) for p in proof])
                for row, (seq, data, proof) in zip(rows, proven.entries, strict=True)
            ],
        )

    @rpc("task.cancel", summary="Stop a task: a queued one never starts, a running one's step in flight is cancelled.")
    async def cancel(self, ctx: RequestContext, params: TaskCancelParams) -> TaskCancelResult:
        task = await self._visible(ctx, params.task_id)
        if task.state in UNFINISHED:
            self._cancelled.add(task.id)
            scope = self._scopes.get(task.id)
            if scope is not None:  # a worker holds it: cancel it there and wait for the record
                ended = self._ended[task.id]
                scope.cancel()
                with anyio.move_on_after(self.settings.cancel_wait):
                    await ended.wait()
            else:  # still queued: its worker will skip it
                cancelled = Conflict("cancelled by task.cancel", reason="cancelled")
                await self._finish(task, "cancelled", cancelled)
                await self._teach(task.id, "cancelled", cancelled)
            task = await self._visible(ctx, params.task_id)
        return TaskCancelResult(task_id=task.id, state=task.state)  # type: ignore[arg-type]


class _Calls:
    """A step's tool calls so far, and whether one is waiting for its answer."""

    def __init__(self) -> None:
        self.made = 0
        self.in_flight = False


def _breaker_changed(tool: str, state: State, previous: State, failures: int, error: str | None) -> None:
    log.warning("tool breaker", tool=tool, state=state, previous=previous, failures=failures, error=error)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _provider(output: Any) -> str | None:
    """The provider that produced a step's output, where the output names one (route.ask does)."""
    provider = output.get("provider") if isinstance(output, dict) else None
    return provider if isinstance(provider, str) else None


def _summary(task: TaskRow, rows: list[StepRow]) -> TaskSummary:
    return TaskSummary(
        task_id=task.id, state=task.state, namespace=task.namespace,  # type: ignore[arg-type]
        steps=len(rows), steps_done=sum(row.state == "done" for row in rows),
        created_at=task.created_at, started_at=task.started_at, finished_at=task.finished_at,
        deadline_at=task.deadline_at, error=StepError(**task.error) if task.error else None,
        goal=task.goal, plans=task.plans,
    )


def _step_out(row: StepRow, output: Any) -> StepOut:
    return StepOut(
        id=row.step_id, tool=row.tool, state=row.state, output_hash=row.output_hash,  # type: ignore[arg-type]
        output_size=row.output_size, output=output, error=StepError(**row.error) if row.error else None,
        attempts=row.attempts, started_at=row.started_at, finished_at=row.finished_at,
    )
