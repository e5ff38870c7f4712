"""Recorded replay: a finished task's plan run again against the tool outputs it recorded.

Each done step's tool is replaced by what the step recorded: a table from (tool, input hash) to
the output it answered. The plan is walked in execution order; each step's input is built as the
executor builds it (:func:`engram.tasks.plan.step_input`), from the outputs replayed so far, and
hashed. Where the table has that (tool, input), the recorded output is the step's output, and its
hash is recomputed from the value; else the step's input is not what was recorded and it has no
output to replay. So a replay where every step **matches** shows that the stored plan, the stored
outputs and the executor's input logic reproduce every input and output hash the task recorded
(and its audit entries name); nothing is called.

The stored bytes are checked too: an input or output whose bytes no longer hash to the digest
they are stored under is reported, not trusted.

A live replay is a new task (``replay_of``) that calls the tools again; :func:`live_differences`
compares its outputs with the original's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from engram.tasks.plan import Plan, UnresolvedReference, execution_order, step_input
from engram.tasks.store import StepRow, canonical_json, digest_of

__all__ = ["ReplayedStep", "live_differences", "replay_recorded"]

Outcome = Literal["match", "differs", "not_recorded"]


@dataclass(frozen=True)
class ReplayedStep:
    id: str
    tool: str
    outcome: Outcome
    recorded_input_hash: str | None
    input_hash: str | None
    recorded_output_hash: str | None
    output_hash: str | None
    reason: str | None  # why it differs, or why it was not recorded (the state it ended in)


def _intact(bodies: Mapping[str, bytes], digest: str | None) -> bytes | None:
    body = bodies.get(digest) if digest is not None else None
    return body if body is not None and digest_of(body) == digest else None


def replay_recorded(
    plan: Plan, namespace: str | None, rows: list[StepRow], bodies: Mapping[str, bytes],
    takes_namespace: Callable[[str], bool],
) -> list[ReplayedStep]:
    """Each step of ``plan`` replayed against the task's recorded steps (``rows``, with the
    stored ``bodies`` of their inputs and outputs by hash), in execution order."""
    recorded = {row.step_id: row for row in rows}
    table: dict[tuple[str, str], str] = {}  # (tool, input hash) -> output hash, of the done steps
    for row in rows:
        if row.state == "done" and row.input_hash is not None and row.output_hash is not None:
            table[(row.tool, row.input_hash)] = row.output_hash
    positions = {step.id: index for index, step in enumerate(plan.steps)}  # where errors' fields point
    outputs: dict[str, Any] = {}
    replayed = []
    for step in execution_order(plan):
        row = recorded.get(step.id)

        def outcome(kind: Outcome, reason: str | None, input_hash: str | None = None, output_hash: str | None = None,
                    row: StepRow | None = row) -> ReplayedStep:
            return ReplayedStep(step.id, step.tool, kind, row.input_hash if row else None, input_hash,
                                row.output_hash if row else None, output_hash, reason)

        if row is None or row.state != "done" or row.output_hash is None:
            replayed.append(outcome("not_recorded", row.state if row else "missing"))
            continue
        if row.input_hash is None:  # done before inputs were recorded (an older daemon)
            replayed.append(outcome("not_recorded", "no_recorded_input"))
            continue
        if _intact(bodies, row.input_hash) is None:
            replayed.append(outcome("differs", "stored_input_corrupt"))
            continue
        try:
            args = step_input(step, positions[step.id], outputs, namespace, takes_namespace)
        except (UnresolvedReference, KeyError):
            # KeyError: a $from names a step that produced no replayed output.
            replayed.append(outcome("differs", "unresolved_reference"))
            continue
        input_hash = digest_of(canonical_json(args))
        answer = table.get((step.tool, input_hash))
        if answer is None:
            replayed.append(outcome("differs", "input_differs", input_hash))
            continue
        body = _intact(bodies, answer)
        if body is None:
            replayed.append(outcome("differs", "stored_output_corrupt", input_hash))
            continue
        output = json.loads(body)
        output_hash = digest_of(canonical_json(output))
        outputs[step.id] = output
        same = output_hash == row.output_hash
        replayed.append(outcome("match" if same else "differs", None if same else "output_differs", input_hash, output_hash))
    return replayed


def live_differences(original: list[StepRow], replay: list[StepRow]) -> dict[str, bool | None]:
    """Per step of a live replay, whether its output differs from the original's (None: one of
    the two has no output to compare)."""
    recorded = {row.step_id: row.output_hash for row in original}
    return {
        row.step_id: None if row.output_hash is None or recorded.get(row.step_id) is None
        else row.output_hash != recorded[row.step_id]
        for row in replay
    }
