"""Where the executor meets the planner: a task's first plan, its replans, and what its end teaches.

The executor (:mod:`engram.tasks.service`) calls this at four points: ``task.submit`` without a
plan asks :meth:`TaskPlanning.refusal` whether a plan could be made at all; a worker that takes
a task without a plan has it planned (:meth:`first_plan`); a step of a planned task that fails
gets the rest of the task planned again while ``tasks.planner.replans`` allows
(:meth:`replan`); a task that ended is remembered, and its outcome fed back to the router
(:meth:`ended`).

Each plan is committed with the task before a step of it runs (:meth:`TaskStore.set_plan`), so a
task that a restart cut short goes on with the plan it had and is not planned again. A replan
keeps the steps done (they stay done and proven) and replaces the steps that had not run; the
failed step stays recorded as failed, and no new step may take the id of a step the task
already ran.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio
import structlog

from engram.bus import EventBus
from engram.errors import RPCError
from engram.principal import Principal
from engram.tasks.events import TaskPlanned
from engram.tasks.plan import Plan, Step, execution_order
from engram.tasks.planner import GENERATE_METHOD, PLANNER_TAGS, Failure, Made, Observation, Planner
from engram.tasks.ports import GenerateReadiness
from engram.tasks.store import TaskRow, TaskStore
from engram.tasks.teaching import Teaching

__all__ = ["TaskPlanning"]

log = structlog.get_logger("engram.tasks.planning")


class TaskPlanning:
    def __init__(self, planner: Planner, teaching: Teaching, readiness: GenerateReadiness, store: TaskStore,
                 bus: EventBus) -> None:
        self.planner = planner
        self.teaching = teaching
        self._readiness = readiness
        self._store = store
        self._bus = bus

    def refusal(self, principal: Principal) -> str | None:
        """Why a goal of ``principal`` could not be planned now; None when it could. Through a
        route (``tasks.planner.route``) the route decides at planning time."""
        if self.planner.settings.route is not None:
            return None
        return self._readiness.unready(principal, "generate", GENERATE_METHOD, PLANNER_TAGS)

    async def first_plan(self, task: TaskRow) -> TaskRow:
        """The task with the plan the planner made for its goal, committed; raises the RPCError
        that planning failed with."""
        assert task.goal is not None
        examples = await self.teaching.examples(task.principal, task.namespace, task.goal)
        made = await self.planner.plan(task.principal, task.goal, examples)
        return await self._commit(task, Plan(steps=made.steps), made, kept=(), examples=len(examples))

    async def dry_plan(self, principal: Principal, namespace: str | None, goal: str) -> tuple[Plan, Made, int]:
        """The plan the planner makes for ``goal``, not run nor kept (``task.plan``); with how
        it was made and the number of examples shown."""
        examples = await self.teaching.examples(principal, namespace, goal)
        made = await self.planner.plan(principal, goal, examples)
        return Plan(steps=made.steps), made, len(examples)

    async def replan(self, task: TaskRow, plan: Plan, failed: Step, error: RPCError,
                     outputs: dict[str, Any]) -> TaskRow | None:
        """The task with a new plan for its rest after ``failed`` failed with ``error``,
        committed; None when it gets none (a plan that came with it, no replans left, or
        planning failed: then ``error.data["replan"]`` says why)."""
        if task.goal is None or task.plans == 0:
            return None
        if task.plans - 1 >= self.planner.settings.replans:
            log.info("no replans left", task=task.id, plans=task.plans)
            return None
        rows = await anyio.to_thread.run_sync(self._store.steps, task.id)
        done = {row.step_id for row in rows if row.state == "done"}
        kept = [step for step in plan.steps if step.id in done]
        reserved = {row.step_id for row in rows if row.state != "pending"}
        try:
            examples = await self.teaching.examples(task.principal, task.namespace, task.goal)
            made = await self.planner.plan(
                task.principal, task.goal, examples, kept=kept,
                done=[Observation(step, outputs.get(step.id)) for step in kept],
                failure=Failure(failed, {"code": error.code, "message": error.message, "reason": error.reason}),
                reserved=reserved,
            )
        except RPCError as exc:
            log.warning("replanning failed", task=task.id, reason=exc.reason, error=exc.message)
            error.data["replan"] = {"code": exc.code, "message": exc.message, "reason": exc.reason}
            return None
        return await self._commit(task, Plan(steps=[*kept, *made.steps]), made, kept=kept, examples=len(examples))

    async def _commit(self, task: TaskRow, plan: Plan, made: Made, kept: Sequence[Step], examples: int) -> TaskRow:
        kept_ids = {step.id for step in kept}
        record = task.planner or {}
        record = {
            "providers": [*record.get("providers", []), *made.providers],
            "decisions": [*record.get("decisions", []), *made.decisions],
        }
        new = [(step.id, step.tool) for step in execution_order(plan) if step.id not in kept_ids]
        await anyio.to_thread.run_sync(
            self._store.set_plan, task.id, plan.model_dump(mode="json", exclude_defaults=True), new, record
        )
        updated = await anyio.to_thread.run_sync(self._store.task, task.id)
        assert updated is not None
        provider = made.providers[-1] if made.providers else None
        log.info("task planned", task=task.id, plans=updated.plans, steps=len(new), replies=made.replies,
                 provider=provider, examples=examples)
        self._bus.publish(TaskPlanned(
            task_id=task.id, uid=task.principal.uid, plans=updated.plans, steps=len(new), kept=len(kept_ids),
            replies=made.replies, provider=provider, examples=examples,
        ))
        return updated

    async def ended(self, task_id: str, state: str, reason: str | None) -> None:
        """Remember the ended task as an episode; feed a planned task's outcome to the router."""
        task = await anyio.to_thread.run_sync(self._store.task, task_id)
        if task is None:
            return
        started = time.monotonic()
        await self.teaching.remember(task.principal, task.namespace, task.id, task.goal, task.plan, state, reason)
        decisions = (task.planner or {}).get("decisions", [])
        if decisions and state in ("done", "failed"):  # a cancel says nothing about the plan
            await self.planner.outcome(task.principal, decisions, state == "done")
        log.debug("task taught", task=task.id, seconds=round(time.monotonic() - started, 3))
