"""Plans: a DAG of steps, each one tool call whose arguments may take values from earlier outputs.

A plan is ``{"steps": [{"id", "tool", "args", "needs"?, "timeout"?}]}``. An argument value
``{"$from": "STEP.path.to.field"}`` is replaced, when the step runs, by that value of step STEP's
output (list indexes are path elements: ``"b.hits.0.id"``); STEP must be among the step's needs,
directly or through them, so that its output exists by then.

:func:`validate_plan` checks all of this when the plan is submitted, so a plan that is accepted
cannot fail on its own shape later; every problem is an :class:`InvalidParams` whose
``data.field`` is the dotted path of the culprit under ``plan``. :func:`execution_order` is the
order the executor runs the steps in; :func:`resolve_args` fills the references in, and
:func:`step_input` makes a step's whole input.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engram.errors import InternalSignal, InvalidParams

__all__ = [
    "FROM_KEY", "Plan", "Reference", "Step", "UnresolvedReference", "execution_order", "resolve_args", "step_input",
    "validate_plan",
]

FROM_KEY = "$from"
STEP_ID = r"[A-Za-z][A-Za-z0-9_-]{0,63}"
_PATH_ELEMENT = re.compile(r"^[^.]+$")


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=f"^{STEP_ID}$", description="The step's name, unique in the plan.")
    tool: str = Field(
        min_length=1, max_length=200,
        description="The tool it calls: a method name, plugin:<name> or mcp:<server>.<tool>.",
    )
    args: dict[str, Any] = Field(default_factory=dict, description="The tool's arguments; values may be {\"$from\": ...}.")
    needs: list[str] = Field(default_factory=list, description="Steps that must be done before this one.")
    timeout: float | None = Field(default=None, gt=0, description="Seconds this step may run (default: tasks.step_timeout).")


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: list[Step] = Field(min_length=1, description="The steps; the order among independent ones is kept.")


class Reference(BaseModel):
    """A parsed ``$from`` value: the step and the path into its output."""

    model_config = ConfigDict(frozen=True)

    step: str
    path: tuple[str, ...]

    @classmethod
    def parse(cls, text: Any, field: str) -> Reference:
        if not isinstance(text, str) or not text:
            raise InvalidParams(f"{field}: a $from value is a string 'STEP.path'", reason="bad_reference", field=field)
        step, *path = text.split(".")
        if not re.fullmatch(STEP_ID, step) or not all(_PATH_ELEMENT.match(p) for p in path):
            raise InvalidParams(f"{field}: {text!r} is not 'STEP.path.to.field'", reason="bad_reference", field=field)
        return cls(step=step, path=tuple(path))


def _references(value: Any, field: str) -> list[tuple[Reference, str]]:
    """Every ``$from`` in an argument value, with the field it sits at."""
    if isinstance(value, dict):
        if FROM_KEY in value:
            if len(value) != 1:
                raise InvalidParams(
                    f"{field}: an object with $from has no other members", reason="bad_reference", field=field
                )
            return [(Reference.parse(value[FROM_KEY], f"{field}.{FROM_KEY}"), f"{field}.{FROM_KEY}")]
        return [ref for key, item in value.items() for ref in _references(item, f"{field}.{key}")]
    if isinstance(value, list):
        return [ref for index, item in enumerate(value) for ref in _references(item, f"{field}.{index}")]
    return []


def _pydantic_field(error: ValidationError, prefix: str) -> tuple[str, str]:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return (f"{prefix}.{where}" if where else prefix), first["msg"]


def validate_plan(raw: Any, tools: Collection[str], max_steps: int, max_timeout: float, field: str = "plan") -> Plan:
    """The plan ``raw`` stands for, checked: shape, tool names, ids, needs (known, acyclic),
    references (well-formed, to a step among the needs), timeouts; else InvalidParams."""
    try:
        plan = Plan.model_validate(raw)
    except ValidationError as exc:
        where, message = _pydantic_field(exc, field)
        raise InvalidParams(f"{where}: {message}", reason="bad_plan", field=where) from None
    if len(plan.steps) > max_steps:
        raise InvalidParams(
            f"{field}.steps: {len(plan.steps)} steps, at most {max_steps} (tasks.max_steps)",
            reason="too_many_steps", field=f"{field}.steps", limit=max_steps,
        )
    index: dict[str, int] = {}
    for position, step in enumerate(plan.steps):
        where = f"{field}.steps.{position}"
        if step.id in index:
            raise InvalidParams(f"{where}.id: step id {step.id!r} is used twice", reason="duplicate_step", field=f"{where}.id")
        index[step.id] = position
        if step.tool not in tools:
            raise InvalidParams(
                f"{where}.tool: unknown tool {step.tool!r} (tools: {', '.join(sorted(tools))})",
                reason="unknown_tool", field=f"{where}.tool",
            )
        if step.timeout is not None and step.timeout > max_timeout:
            raise InvalidParams(
                f"{where}.timeout: at most {max_timeout:g} s (tasks.max_step_timeout)",
                reason="timeout_too_long", field=f"{where}.timeout", limit=max_timeout,
            )
    for position, step in enumerate(plan.steps):
        for n, need in enumerate(step.needs):
            if need not in index:
                where = f"{field}.steps.{position}.needs.{n}"
                raise InvalidParams(f"{where}: no step {need!r} in the plan", reason="unknown_step", field=where)
    order = _topological(plan, field)
    ancestors: dict[str, set[str]] = {}
    for step in order:
        ancestors[step.id] = set(step.needs).union(*(ancestors[need] for need in step.needs))
    for position, step in enumerate(plan.steps):
        for reference, where in _references(step.args, f"{field}.steps.{position}.args"):
            if reference.step not in ancestors[step.id]:
                raise InvalidParams(
                    f"{where}: step {reference.step!r} is not among the steps {step.id!r} needs",
                    reason="reference_not_needed", field=where,
                )
    return plan


def _topological(plan: Plan, field: str) -> list[Step]:
    """The steps in an order where each comes after its needs, keeping the plan's order where it
    may (Kahn's algorithm taking the earliest ready step each time); a cycle is InvalidParams."""
    by_id = {step.id: step for step in plan.steps}
    waiting = {step.id: set(step.needs) for step in plan.steps}
    order: list[Step] = []
    while waiting:
        ready = next((step for step in plan.steps if step.id in waiting and not waiting[step.id]), None)
        if ready is None:
            stuck = next(position for position, step in enumerate(plan.steps) if step.id in waiting)
            where = f"{field}.steps.{stuck}.needs"
            raise InvalidParams(
                f"{where}: the needs of steps {sorted(waiting)} form a cycle", reason="cyclic_needs", field=where
            )
        order.append(by_id[ready.id])
        del waiting[ready.id]
        for needs in waiting.values():
            needs.discard(ready.id)
    return order


def execution_order(plan: Plan) -> list[Step]:
    """The order the executor runs a validated plan's steps in."""
    return _topological(plan, "plan")


class UnresolvedReference(InternalSignal):
    """A ``$from`` path that the referenced output does not have; ``field`` says where it was."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def _follow(output: Any, reference: Reference, field: str) -> Any:
    value = output
    for depth, element in enumerate(reference.path):
        walked = ".".join((reference.step, *reference.path[: depth + 1]))
        if isinstance(value, dict) and element in value:
            value = value[element]
        elif isinstance(value, list) and element.isdigit() and int(element) < len(value):
            value = value[int(element)]
        else:
            raise UnresolvedReference(f"{field}: the output of step {reference.step!r} has no {walked}", field)
    return value


def resolve_args(args: dict[str, Any], outputs: Mapping[str, Any], field: str = "args") -> dict[str, Any]:
    """``args`` with every ``$from`` replaced by the value it names in ``outputs`` (step id ->
    output); a path the output does not have raises :class:`UnresolvedReference`."""

    def resolve(value: Any, where: str) -> Any:
        if isinstance(value, dict):
            if FROM_KEY in value:
                reference = Reference.parse(value[FROM_KEY], f"{where}.{FROM_KEY}")
                return _follow(outputs[reference.step], reference, where)
            return {key: resolve(item, f"{where}.{key}") for key, item in value.items()}
        if isinstance(value, list):
            return [resolve(item, f"{where}.{index}") for index, item in enumerate(value)]
        return value

    return resolve(args, field)


def step_input(
    step: Step, position: int, outputs: Mapping[str, Any], namespace: str | None, takes_namespace: Callable[[str], bool]
) -> dict[str, Any]:
    """The arguments a step's tool is called with: its args resolved against ``outputs``, and the
    task's namespace filled in where the tool takes one and the args name none. The executor and
    a recorded replay build a step's input with this one function, so their input hashes agree."""
    args = resolve_args(step.args, outputs, f"plan.steps.{position}.args")
    if namespace is not None and "namespace" not in args and takes_namespace(step.tool):
        args["namespace"] = namespace
    return args
