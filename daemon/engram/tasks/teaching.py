"""Teaching: what finished tasks leave in memory, and what the planner recalls of them.

A task with a goal that ends (done, failed or cancelled) is remembered as one episode of kind ``task`` in
the task's namespace, as the principal who submitted it (``memory.remember`` through the request
chain: the policy decides whether that principal may write there): its text says the goal, the
outcome and the plan; its tag ``task:<state>`` says the outcome; its metadata holds the task id,
the goal and the plan. A task without a goal is not remembered: nothing would say what it was
for, and it could not serve as an example. Memory keeps one episode per text and namespace, so a task that repeats
another's goal, plan and outcome is remembered once.

The planner recalls (``memory.recall``, kind ``task``, tag ``task:done``) the episodes of past
tasks that succeeded, nearest to the new goal, as examples. Teaching never fails a task: an
error is logged and the task's outcome stands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from engram.errors import RPCError
from engram.principal import Principal
from engram.tasks.ports import MethodCalls
from engram.tasks.settings import TaskPlannerSettings

__all__ = ["EPISODE_KIND", "Example", "Teaching"]

log = structlog.get_logger("engram.tasks.teaching")

EPISODE_KIND = "task"
TEXT_CHARS = 8000  # of an episode's text (the plan is cut, the goal and the outcome are not)
METADATA_PLAN_BYTES = 12_000  # a larger plan is left out of the metadata (memory.max_metadata_bytes is 16 KiB)


@dataclass(frozen=True)
class Example:
    """A past task that reached its goal: the goal and the plan it ran."""

    goal: str
    plan: dict[str, Any]


def outcome_tag(state: str) -> str:
    return f"task:{state}"


class Teaching:
    def __init__(self, settings: TaskPlannerSettings, calls: MethodCalls) -> None:
        self.settings = settings
        self._calls = calls

    async def examples(self, principal: Principal, namespace: str | None, goal: str) -> list[Example]:
        """Up to ``tasks.planner.examples`` past tasks that succeeded, nearest to ``goal`` first."""
        if self.settings.examples == 0:
            return []
        params: dict[str, Any] = {
            "query": goal, "k": self.settings.examples,
            "filter": {"kinds": [EPISODE_KIND], "tags": [outcome_tag("done")]},
        }
        if namespace is not None:
            params["namespace"] = namespace
        try:
            with anyio.fail_after(self.settings.timeout):
                result = await self._calls.call("memory.recall", params, principal)
        except (RPCError, TimeoutError) as exc:
            log.warning("no examples for the planner: recall failed", error=str(exc))
            return []
        found = []
        for hit in result.get("hits", []):
            meta = hit.get("metadata") or {}
            if isinstance(meta.get("goal"), str) and isinstance(meta.get("plan"), dict):
                found.append(Example(goal=meta["goal"], plan=meta["plan"]))
        return found

    async def remember(self, principal: Principal, namespace: str | None, task_id: str, goal: str | None,
                       plan: dict[str, Any], state: str, reason: str | None) -> str | None:
        """Remember a finished task with a goal as an episode; its id, or None (no goal,
        ``tasks.planner.remember`` off, or memory refused it)."""
        if not self.settings.remember or goal is None:
            return None
        outcome = state if reason is None else f"{state} ({reason})"
        plan_json = json.dumps(plan, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
        head = f"Task goal: {goal}\nOutcome: {outcome}\nPlan: "
        text = head + (plan_json if len(head) + len(plan_json) <= TEXT_CHARS else plan_json[: TEXT_CHARS - len(head)])
        metadata: dict[str, Any] = {"task_id": task_id, "state": state, "reason": reason, "goal": goal}
        if len(plan_json.encode()) <= METADATA_PLAN_BYTES:
            metadata["plan"] = plan
        params: dict[str, Any] = {"items": [{
            "text": text, "kind": EPISODE_KIND, "tags": [outcome_tag(state)], "metadata": metadata,
            "source": f"task:{task_id}",
        }]}
        if namespace is not None:
            params["namespace"] = namespace
        try:
            with anyio.fail_after(self.settings.timeout):
                result = await self._calls.call("memory.remember", params, principal)
        except (RPCError, TimeoutError) as exc:
            log.warning("finished task not remembered", task=task_id, error=str(exc))
            return None
        episode = result["ids"][0]
        log.info("finished task remembered", task=task_id, episode=episode, state=state)
        return str(episode)
