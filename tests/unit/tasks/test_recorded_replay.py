"""Recorded replay (engram.tasks.replay) on a task's records: the plan walked against the recorded
outputs reproduces each input and output hash, fills the task's namespace as the executor did,
and says where the records and the plan part ways."""

from __future__ import annotations

from typing import Any

from engram.tasks.plan import Plan
from engram.tasks.replay import live_differences, replay_recorded
from engram.tasks.store import StepRow, canonical_json, digest_of

PLAN = Plan.model_validate({"steps": [
    {"id": "a", "tool": "memory.remember", "args": {"items": [{"text": "heron"}]}},
    {"id": "b", "tool": "memory.get", "args": {"ids": [{"$from": "a.ids.0"}]}, "needs": ["a"]},
]})


def _records(namespace: str | None, **outputs: Any) -> tuple[list[StepRow], dict[str, bytes]]:
    """The rows and stored bodies the executor would have left for PLAN in ``namespace``."""
    inputs = {
        "a": {"items": [{"text": "heron"}], **({"namespace": namespace} if namespace else {})},
        "b": {"ids": [outputs["a"]["ids"][0]], **({"namespace": namespace} if namespace else {})},
    }
    rows, bodies = [], {}
    for position, step in enumerate(("a", "b")):
        body_in, body_out = canonical_json(inputs[step]), canonical_json(outputs[step])
        bodies[digest_of(body_in)], bodies[digest_of(body_out)] = body_in, body_out
        tool = PLAN.steps[position].tool
        rows.append(StepRow(step, position, tool, "done", digest_of(body_out), len(body_out), None, 1.0, 2.0,
                            digest_of(body_in), position, 1))
    return rows, bodies


OUTPUTS = {"a": {"ids": ["ep_1"]}, "b": {"episodes": [{"id": "ep_1", "text": "heron"}]}}


def test_the_records_of_a_run_are_reproduced_hash_for_hash_with_the_namespace_filled_in():
    rows, bodies = _records("notes", **OUTPUTS)
    replayed = replay_recorded(PLAN, "notes", rows, bodies, lambda tool: True)
    assert [(step.id, step.outcome) for step in replayed] == [("a", "match"), ("b", "match")]
    assert all(step.input_hash == step.recorded_input_hash for step in replayed)


def test_a_plan_that_builds_another_input_than_the_one_recorded_differs_there():
    rows, bodies = _records("notes", **OUTPUTS)
    # the same records, replayed as if the tools took no namespace: a's input is not the one recorded
    replayed = replay_recorded(PLAN, "notes", rows, bodies, lambda tool: False)
    assert [(step.id, step.outcome, step.reason) for step in replayed] == [
        ("a", "differs", "input_differs"), ("b", "differs", "unresolved_reference"),
    ]


def test_a_step_that_recorded_no_output_is_not_replayed():
    rows, bodies = _records(None, **OUTPUTS)
    failed = rows[1].__class__(**{**vars(rows[1]), "state": "failed", "output_hash": None})
    replayed = replay_recorded(PLAN, None, [rows[0], failed], bodies, lambda tool: True)
    assert [(step.id, step.outcome, step.reason) for step in replayed] == [("a", "match", None), ("b", "not_recorded", "failed")]


def test_live_differences_compare_outputs_step_by_step():
    rows, _ = _records(None, **OUTPUTS)
    again, _ = _records(None, a=OUTPUTS["a"], b={"episodes": []})
    assert live_differences(rows, again) == {"a": False, "b": True}
