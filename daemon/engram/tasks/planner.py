"""The planner: a plan made from a goal by a generate provider, and made again for the rest of a
task after a failed step.

The planner writes a prompt (the goal, the tools a plan may call with their arguments' schemas,
past tasks that reached a similar goal, and when replanning the steps done so far with their
outputs and the error of the step that failed), asks for one JSON plan, and checks the reply
with :func:`engram.tasks.plan.validate_plan`, exactly as a plan a client submits. A reply that is
not a valid plan is asked for again with the error, at most ``tasks.planner.attempts`` replies in
all; then planning fails with -32007 ``plan_invalid`` and the last error.

Every call the planner makes is a method call through the request chain as the principal who
submitted the task (:class:`engram.tasks.ports.MethodCalls`), so the policy, the audit log and
the methods' own checks see it as they would see that principal's own call: ``infer.generate``
(the providers' generate chain: a remote provider only when the policy allows it), or
``route.run`` on ``tasks.planner.route``; ``memory.recall`` for the examples.

Everything is bounded: the prompt (``tasks.planner.max_prompt_chars``; examples go first, then
observations are cut shorter, before the prompt is refused), the reply read
(``max_reply_chars``), each call (``timeout``), the replies per plan (``attempts``) and the plans
per task (``replans``, counted by :mod:`engram.tasks.planning`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from engram.errors import Conflict, InvalidParams, RPCError, Timeout
from engram.principal import Principal
from engram.tasks.plan import Plan, Step, validate_plan
from engram.tasks.ports import MethodCalls
from engram.tasks.settings import TaskPlannerSettings
from engram.tasks.teaching import Example
from engram.tasks.tools import Tools

__all__ = [
    "GENERATE_METHOD", "PLANNER_METHODS", "PLANNER_TAGS", "Failure", "Made", "Observation", "Planner", "compact_schema",
    "extract_json", "write_prompt",
]

log = structlog.get_logger("engram.tasks.planner")

GENERATE_METHOD = "infer.generate"
ROUTE_METHOD = "route.run"
# The methods the planner and teaching call as the submitting principal (runtime.py hands over
# a MethodTools limited to these).
PLANNER_METHODS = ("infer.generate", "route.run", "route.feedback", "memory.recall", "memory.remember")
# Data tags of the planner's generate calls: a policy's egress rules may name them.
PLANNER_TAGS = ("task",)
PREVIOUS_REPLY_CHARS = 600  # of an invalid reply, shown back with its error
SCHEMA_DESCRIPTION_CHARS = 120  # of each argument's description in the tool list

SYSTEM = """You plan tasks for engram, a local memory and inference daemon. A plan is a list of tool calls.
Answer with one JSON object and nothing else:
{"steps": [{"id": "a", "tool": "TOOL", "args": {...}, "needs": []}]}
Rules:
- "id": a name unique in the plan (a letter, then letters, digits, _ or -).
- "tool": one of the tools listed; "args": that tool's arguments, as its schema says.
- To use an earlier step's output as an argument write {"$from": "STEP.path.to.field"} (list indexes
  are path elements: "b.hits.0.id") and put STEP in "needs".
- "needs": the ids of the steps that must be done first.
- Use as few steps as the goal needs, at most %d."""


@dataclass(frozen=True)
class Observation:
    """A step of the task so far, for a replan: done with its output, or failed with its error."""

    step: Step
    output: Any = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class Failure:
    """The step that failed, and why."""

    step: Step
    error: dict[str, Any]


@dataclass
class Made:
    """A plan the planner made: the steps (for a replan: the new ones only), who answered, and
    the router's decision id of the reply taken (``tasks.planner.route``), which the task's
    outcome is fed back to (a reply that was no plan is fed back as wrong at once)."""

    steps: list[Step]
    replies: int
    providers: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)


class Planner:
    def __init__(self, settings: TaskPlannerSettings, tools: Tools, calls: MethodCalls, max_steps: int,
                 max_step_timeout: float) -> None:
        self.settings = settings
        self._tools = tools
        self._calls = calls
        self._max_steps = max_steps
        self._max_step_timeout = max_step_timeout

    def catalogue(self) -> str:
        """The tools a plan may call: name, what it does, its arguments (compact)."""
        lines = []
        for name in sorted(self._tools.names):
            summary, schema = self._tools.describe(name)
            lines.append(f"- {name}: {summary}\n  args: {compact_schema(schema)}")
        return "\n".join(lines)

    # --- planning --------------------------------------------------------------------------------

    async def plan(self, principal: Principal, goal: str, examples: Sequence[Example],
                   kept: Sequence[Step] = (), done: Sequence[Observation] = (), failure: Failure | None = None,
                   reserved: Collection[str] = ()) -> Made:
        """The steps to run for ``goal``. ``kept``: the steps done so far, which stay in the plan
        (a replan's new steps may need them); ``reserved``: step ids the new steps may not use.
        Raises the RPCError of a generate call that failed, or Conflict ``plan_invalid``."""
        made = Made(steps=[], replies=0)
        retry: tuple[str, str] | None = None
        system = SYSTEM % self._max_steps
        catalogue = self.catalogue()
        for attempt in range(1, self.settings.attempts + 1):
            prompt = write_prompt(self.settings, catalogue, goal, examples, done, failure, reserved, retry)
            reply, decision = await self._generate(principal, prompt, system, made)
            made.replies = attempt
            try:
                made.steps = self._checked(reply, kept, reserved)
            except InvalidParams as exc:
                log.info("planner reply is not a valid plan", attempt=attempt, reason=exc.reason, error=exc.message)
                retry = (reply, exc.message)
                if decision is not None:  # the route's answer was wrong: the router hears it now
                    await self.outcome(principal, [decision], succeeded=False)
                continue
            if decision is not None:  # judged by the task's outcome, when it ends
                made.decisions.append(decision)
            return made
        assert retry is not None
        raise Conflict(
            f"the planner gave no valid plan in {self.settings.attempts} replies (tasks.planner.attempts); "
            f"the last: {retry[1]}",
            reason="plan_invalid", attempts=self.settings.attempts, last_error=retry[1],
            providers=made.providers,
        )

    async def _generate(self, principal: Principal, prompt: str, system: str, made: Made) -> tuple[str, str | None]:
        """The reply's text, and the router's decision id when it came through the route."""
        route = self.settings.route
        decision = None
        try:
            with anyio.fail_after(self.settings.timeout):
                if route is None:
                    result = await self._calls.call(
                        GENERATE_METHOD,
                        {"prompt": prompt, "system": system, "tags": list(PLANNER_TAGS)},
                        principal,
                    )
                else:
                    # Not from the pattern cache: a plan that failed must not come back for the same goal.
                    result = await self._calls.call(
                        ROUTE_METHOD, {"route": route, "text": f"{system}\n\n{prompt}", "use_cache": False}, principal
                    )
                    decision = str(result["decision"])
        except TimeoutError:
            raise Timeout(
                f"the planner's generate call did not answer within {self.settings.timeout:g} s (tasks.planner.timeout)",
                reason="planner_timeout", limit_s=self.settings.timeout,
            ) from None
        made.providers.append(str(result.get("provider") or result.get("target")))
        return str(result.get("text") or ""), decision

    def _checked(self, reply: str, kept: Sequence[Step], reserved: Collection[str]) -> list[Step]:
        """The new steps a reply holds, checked together with the steps kept; else InvalidParams."""
        if len(reply) > self.settings.max_reply_chars:
            raise InvalidParams(
                f"the reply has {len(reply)} characters, more than tasks.planner.max_reply_chars",
                reason="reply_too_long", field="plan",
            )
        raw = extract_json(reply)
        if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list):
            raise InvalidParams(
                'the reply holds no JSON object with a "steps" list', reason="no_plan_json", field="plan"
            )
        whole = {**raw, "steps": [step.model_dump(mode="json", exclude_defaults=True) for step in kept] + raw["steps"]}
        plan: Plan = validate_plan(whole, self._tools.names, self._max_steps, self._max_step_timeout)
        new = plan.steps[len(kept):]
        for step in new:
            if step.id in reserved:
                raise InvalidParams(
                    f"step id {step.id!r} was used by an earlier plan of the task", reason="duplicate_step",
                    field="plan.steps",
                )
        return list(new)

    # --- learning --------------------------------------------------------------------------------

    async def outcome(self, principal: Principal, decisions: Sequence[str], succeeded: bool) -> None:
        """Feed a planned task's outcome back to the router as route.feedback of each of its
        planning decisions: the router learns whether its answer (the plan) was right."""
        for decision in decisions:
            try:
                with anyio.fail_after(self.settings.timeout):
                    await self._calls.call("route.feedback", {"decision": decision, "correct": succeeded}, principal)
            except (RPCError, TimeoutError) as exc:
                log.warning("route feedback of a planned task failed", decision=decision, error=str(exc))


def write_prompt(settings: TaskPlannerSettings, catalogue: str, goal: str, examples: Sequence[Example],
                 done: Sequence[Observation] = (), failure: Failure | None = None, reserved: Collection[str] = (),
                 retry: tuple[str, str] | None = None) -> str:
    """The planner's prompt, within ``settings.max_prompt_chars``: examples are dropped first,
    then each observation is cut shorter; InvalidParams ``prompt_too_long`` when even then it
    does not fit."""
    limit = settings.max_prompt_chars
    budget = settings.observation_chars
    kept = list(examples)
    while True:
        text = _compose(catalogue, goal, kept, done, failure, reserved, retry, budget)
        if len(text) <= limit:
            return text
        if kept:
            kept.pop()
        elif done and budget > 100:
            budget //= 2
        else:
            raise InvalidParams(
                f"the planner's prompt needs {len(text)} characters, more than tasks.planner.max_prompt_chars",
                reason="prompt_too_long", field="goal", size=len(text), limit=limit,
            )


def _compose(catalogue: str, goal: str, examples: Sequence[Example], done: Sequence[Observation],
             failure: Failure | None, reserved: Collection[str], retry: tuple[str, str] | None, budget: int) -> str:
    parts = [f"Goal: {goal}", f"Tools:\n{catalogue}"]
    if examples:
        shown = "\n".join(f"Goal: {e.goal}\nPlan: {_json(e.plan)}" for e in examples)
        parts.append(f"Plans of past tasks that reached a similar goal:\n{shown}")
    if failure is not None:
        lines = [f"- {o.step.id} ({o.step.tool}) output: {_cut(_json(o.output), budget)}" for o in done]
        parts.append(
            "The task ran part of a plan. Steps done (do not repeat them; their outputs can be used with "
            "$from and their ids in needs):\n" + ("\n".join(lines) or "(none)")
        )
        err = failure.error
        parts.append(
            f"Step {failure.step.id} ({failure.step.tool}, args {_cut(_json(failure.step.args), budget)}) failed: "
            f"{err.get('message')} (code {err.get('code')}, reason {err.get('reason')})."
        )
        parts.append(
            "Write only the steps that remain to reach the goal, with ids not used so far "
            f"({', '.join(sorted(reserved))})."
        )
    if retry is not None:
        reply, error = retry
        parts.append(
            f"Your previous reply was not a valid plan: {error}\nIt began: {_cut(reply, PREVIOUS_REPLY_CHARS)}\n"
            "Answer again with the corrected JSON object only."
        )
    return "\n\n".join(parts)


def extract_json(reply: str) -> Any:
    """The first JSON object in ``reply`` (models wrap it in prose or code fences); None if none."""
    decoder = json.JSONDecoder()
    start = reply.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(reply, start)
            return value
        except ValueError:
            start = reply.find("{", start + 1)
    return None


def compact_schema(schema: dict[str, Any]) -> str:
    """A tool's arguments in one line: ``name: type (required) - description``, ``;``-separated."""
    required = set(schema.get("required", []))
    parts = []
    for name, prop in schema.get("properties", {}).items():
        kinds = [prop.get("type")] if "type" in prop else [p.get("type", "object") for p in prop.get("anyOf", [])]
        kind = "|".join(str(k) for k in kinds if k) or "any"
        description = _cut(str(prop.get("description", "")), SCHEMA_DESCRIPTION_CHARS)
        parts.append(f"{name}: {kind}{' (required)' if name in required else ''}" + (f" - {description}" if description else ""))
    return "; ".join(parts) or "none"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
