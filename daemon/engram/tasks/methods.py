"""The ``task.*`` RPC methods: submit, plan, get, list, follow, replay, prove, cancel.

:class:`TaskMethods` is the methods' half of the tasks part; :class:`engram.tasks.service.Tasks`
(the executor) inherits it, so a part is one object in the method table and in the composition
root. The methods read and write through the executor's store and queue, and stop a running task
through the executor's cancel scope; the attributes they use are declared below.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from engram.audit.bundle import BUNDLE_FORMAT
from engram.bus import EventBus
from engram.errors import Conflict, InvalidParams, NotFound, Overloaded, RPCError, Unavailable
from engram.principal import Principal
from engram.server.methods import RequestContext, rpc
from engram.tasks.api import (
    FOLLOW_NOTIFICATION,
    MAX_FOLLOW_WAIT,
    ProofCheckpoint,
    ProvenStep,
    ReplayedStepOut,
    StepError,
    StepOut,
    TaskCancelParams,
    TaskCancelResult,
    TaskFollowParams,
    TaskFollowResult,
    TaskGetParams,
    TaskGetResult,
    TaskListParams,
    TaskListResult,
    TaskPlanParams,
    TaskPlanResult,
    TaskProveParams,
    TaskProveResult,
    TaskReplayParams,
    TaskReplayResult,
    TaskSubmitParams,
    TaskSubmitResult,
    TaskSummary,
)
from engram.tasks.events import TaskEnded
from engram.tasks.plan import Plan, execution_order, validate_plan
from engram.tasks.planning import TaskPlanning
from engram.tasks.ports import AuditTrail
from engram.tasks.replay import live_differences, replay_recorded
from engram.tasks.settings import TaskSettings
from engram.tasks.store import UNFINISHED, StepRow, TaskRow, TaskStore
from engram.tasks.tools import Tools

if TYPE_CHECKING:
    from engram.tasks.service import _Running

__all__ = ["TaskMethods"]

log = structlog.get_logger("engram.tasks")

FOLLOW_QUEUE = 256  # events a follower may lag behind by; the oldest go first past it (counted as missed)


class TaskMethods:
    # What the methods use of the executor (engram.tasks.service.Tasks sets all of them).
    settings: TaskSettings
    store: TaskStore
    tools: Tools
    bus: EventBus
    audit: AuditTrail | None
    planning: TaskPlanning | None
    owner_uid: int | None
    _waiting: int
    _running: dict[str, _Running]
    _cancelled: set[str]
    _admit: Callable[[str], None]  # queue a stored task for a worker
    _finish: Callable[[TaskRow, str, RPCError | None], Awaitable[None]]  # record a task's end
    _teach: Callable[[str, str, RPCError | None], Awaitable[None]]  # what an ended task teaches


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
        task = await self._enqueue(ctx.principal, plan, params.namespace, params.deadline, goal=params.goal)
        return TaskSubmitResult(task_id=task.id, state="queued")

    async def _enqueue(
        self, principal: Principal, plan: Plan, namespace: str | None, deadline: float | None,
        goal: str | None = None, replay_of: str | None = None,
    ) -> TaskRow:
        """A new task, stored and admitted to the queue (-32003 when the queue is full)."""
        if self._waiting >= self.settings.queue:
            raise Overloaded(
                f"{self._waiting} tasks wait already (tasks.queue); retry later", reason="queue_full",
                limit=self.settings.queue,
            )
        now = time.time()
        task = TaskRow(
            id=f"tk_{secrets.token_hex(12)}", state="queued", plan=plan.model_dump(mode="json", exclude_defaults=True),
            namespace=namespace, principal=principal, deadline_at=None if deadline is None else now + deadline,
            created_at=now, started_at=None, finished_at=None, error=None, goal=goal, replay_of=replay_of,
        )
        self._waiting += 1  # held while the insert is awaited: a concurrent submit sees it
        try:
            await anyio.to_thread.run_sync(
                self.store.insert, task, [(step.id, step.tool) for step in execution_order(plan)]
            )
        finally:
            self._waiting -= 1
        self._admit(task.id)
        return task

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
        summary, steps = await self._details(task, params.outputs)
        return TaskGetResult(
            task=summary, plan=task.plan, planned_by=(task.planner or {}).get("providers", []), steps=steps
        )

    async def _details(self, task: TaskRow, with_outputs: bool = False) -> tuple[TaskSummary, list[StepOut]]:
        """A task's summary and steps; a live replay's steps say whether their outputs differ."""
        rows = await anyio.to_thread.run_sync(self.store.steps, task.id)
        outputs = await anyio.to_thread.run_sync(self.store.outputs, task.id) if with_outputs else {}
        differs: dict[str, bool | None] = {}
        if task.replay_of is not None:
            differs = live_differences(await anyio.to_thread.run_sync(self.store.steps, task.replay_of), rows)
        return _summary(task, rows), [_step_out(row, outputs.get(row.step_id), differs.get(row.step_id)) for row in rows]

    @rpc(
        "task.follow",
        summary="Follow a task: its progress as task.progress notifications on this connection, then its state once it ends.",
        read_only=True, timeout=MAX_FOLLOW_WAIT + 30,
    )
    async def follow(self, ctx: RequestContext, params: TaskFollowParams) -> TaskFollowResult:
        task = await self._visible(ctx, params.task_id)
        # Subscribed before the state is read again: an end that comes between is not missed.
        subscription = self.bus.subscribe(
            ("task.*",), maxsize=FOLLOW_QUEUE, admits=lambda event: getattr(event, "task_id", None) == task.id
        )
        notified = 0
        try:
            task = await self._visible(ctx, params.task_id)
            ended = task.state not in UNFINISHED
            with anyio.move_on_after(params.wait):
                while not ended:
                    event = await subscription.receive()
                    await ctx.connection.notify(FOLLOW_NOTIFICATION, event.wire())
                    notified += 1
                    ended = event.topic == TaskEnded.topic
        finally:
            self.bus.unsubscribe(subscription)
        task = await self._visible(ctx, params.task_id)
        summary, steps = await self._details(task)
        return TaskFollowResult(
            task=summary, steps=steps, ended=task.state not in UNFINISHED, notified=notified, missed=subscription.dropped
        )

    @rpc(
        "task.replay",
        summary="Replay a finished task: recorded (its plan against its recorded outputs, hash for hash) or live (run again).",
    )
    async def replay(self, ctx: RequestContext, params: TaskReplayParams) -> TaskReplayResult:
        task = await self._visible(ctx, params.task_id)
        if task.state in UNFINISHED:
            raise Conflict(
                f"task {task.id} is {task.state}; only a finished task can be replayed", reason="not_finished",
                task_id=task.id, state=task.state,
            )
        if params.mode == "live":
            # Checked again as a new submission would be: a tool may have gone since (a plugin removed).
            plan = validate_plan(task.plan, self.tools.names, self.settings.max_steps, self.settings.max_step_timeout)
            replay = await self._enqueue(ctx.principal, plan, task.namespace, None, replay_of=task.id)
            log.info("task replayed live", task=task.id, replay=replay.id)
            return TaskReplayResult(mode="live", task_id=task.id, replay_task_id=replay.id)
        rows = await anyio.to_thread.run_sync(self.store.steps, task.id)
        if not any(row.state == "done" for row in rows):
            raise Conflict(
                f"task {task.id} has no done step, so nothing was recorded to replay", reason="nothing_to_replay",
                task_id=task.id,
            )
        hashes = [digest for row in rows for digest in (row.input_hash, row.output_hash) if digest is not None]
        bodies = await anyio.to_thread.run_sync(self.store.bodies, hashes)
        replayed = replay_recorded(Plan.model_validate(task.plan), task.namespace, rows, bodies, self.tools.takes_namespace)
        matches = all(step.outcome != "differs" for step in replayed)
        log.info("task replayed from its records", task=task.id, matches=matches)
        return TaskReplayResult(
            mode="recorded", task_id=task.id, matches=matches,
            steps=[ReplayedStepOut(**vars(step)) for step in replayed],
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
            run = self._running.get(task.id)
            if run is not None:  # a worker holds it: cancel it there and wait for the record
                run.due = min(run.due, anyio.current_time())  # the watchdog's clock for a stuck step
                run.scope.cancel()
                with anyio.move_on_after(self.settings.cancel_wait):
                    await run.ended.wait()
            else:  # still queued: its worker will skip it
                cancelled = Conflict("cancelled by task.cancel", reason="cancelled")
                await self._finish(task, "cancelled", cancelled)
                await self._teach(task.id, "cancelled", cancelled)
            task = await self._visible(ctx, params.task_id)
        return TaskCancelResult(task_id=task.id, state=task.state)  # type: ignore[arg-type]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _summary(task: TaskRow, rows: list[StepRow]) -> TaskSummary:
    return TaskSummary(
        task_id=task.id, state=task.state, namespace=task.namespace,  # type: ignore[arg-type]
        steps=len(rows), steps_done=sum(row.state == "done" for row in rows),
        created_at=task.created_at, started_at=task.started_at, finished_at=task.finished_at,
        deadline_at=task.deadline_at, error=StepError(**task.error) if task.error else None,
        goal=task.goal, plans=task.plans, replay_of=task.replay_of,
    )


def _step_out(row: StepRow, output: Any, differs: bool | None = None) -> StepOut:
    return StepOut(
        id=row.step_id, tool=row.tool, state=row.state, output_hash=row.output_hash,  # type: ignore[arg-type]
        output_size=row.output_size, output=output, error=StepError(**row.error) if row.error else None,
        attempts=row.attempts, started_at=row.started_at, finished_at=row.finished_at, differs=differs,
    )
