"""Plans are checked whole at the boundary (every fault a -32602 naming its field), run in an
order that respects their needs, and their $from references are filled from earlier outputs."""

from __future__ import annotations

from typing import Any

import pytest
from engram.errors import InvalidParams
from engram.tasks.plan import UnresolvedReference, execution_order, resolve_args, validate_plan

TOOLS = {"memory.remember", "memory.recall", "infer.embed"}


def _validate(steps: Any) -> Any:
    return validate_plan({"steps": steps}, TOOLS, max_steps=10, max_timeout=60)


def _refused(steps: Any) -> InvalidParams:
    with pytest.raises(InvalidParams) as caught:
        _validate(steps)
    return caught.value


def test_a_valid_plan_is_accepted_and_runs_needs_first():
    plan = _validate([
        {"id": "c", "tool": "infer.embed", "args": {"texts": [{"$from": "b.hits.0.text"}]}, "needs": ["b"]},
        {"id": "a", "tool": "memory.remember", "args": {"items": [{"text": "x"}]}},
        {"id": "b", "tool": "memory.recall", "args": {"query": "x"}, "needs": ["a"]},
        {"id": "d", "tool": "memory.recall", "args": {"query": {"$from": "a.ids.0"}}, "needs": ["c"]},
    ])
    assert [step.id for step in execution_order(plan)] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("steps", "reason", "field"),
    [
        ([], "bad_plan", "plan.steps"),
        ([{"id": "a", "tool": "memory.recall", "args": {}, "extra": 1}], "bad_plan", "plan.steps.0.extra"),
        ([{"id": "1a", "tool": "memory.recall"}], "bad_plan", "plan.steps.0.id"),
        ([{"id": "a", "tool": "models.remove"}], "unknown_tool", "plan.steps.0.tool"),
        ([{"id": "a", "tool": "memory.recall"}, {"id": "a", "tool": "memory.recall"}], "duplicate_step", "plan.steps.1.id"),
        ([{"id": "a", "tool": "memory.recall", "needs": ["zz"]}], "unknown_step", "plan.steps.0.needs.0"),
        (
            [{"id": "a", "tool": "memory.recall", "needs": ["b"]}, {"id": "b", "tool": "memory.recall", "needs": ["a"]}],
            "cyclic_needs", "plan.steps.0.needs",
        ),
        ([{"id": "a", "tool": "memory.recall", "needs": ["a"]}], "cyclic_needs", "plan.steps.0.needs"),
        (
            [{"id": "a", "tool": "memory.recall"}, {"id": "b", "tool": "memory.recall", "args": {"q": {"$from": "a.x"}}}],
            "reference_not_needed", "plan.steps.1.args.q.$from",
        ),
        (
            [{"id": "a", "tool": "memory.recall", "args": {"q": [1, {"$from": "a.x"}]}}],
            "reference_not_needed", "plan.steps.0.args.q.1.$from",
        ),
        (
            [{"id": "a", "tool": "memory.recall"},
             {"id": "b", "tool": "memory.recall", "needs": ["a"], "args": {"q": {"$from": "a..x"}}}],
            "bad_reference", "plan.steps.1.args.q.$from",
        ),
        (
            [{"id": "a", "tool": "memory.recall"},
             {"id": "b", "tool": "memory.recall", "needs": ["a"], "args": {"q": {"$from": 3}}}],
            "bad_reference", "plan.steps.1.args.q.$from",
        ),
        (
            [{"id": "a", "tool": "memory.recall"},
             {"id": "b", "tool": "memory.recall", "needs": ["a"], "args": {"q": {"$from": "a.x", "other": 1}}}],
            "bad_reference", "plan.steps.1.args.q",
        ),
        ([{"id": "a", "tool": "memory.recall", "timeout": 61}], "timeout_too_long", "plan.steps.0.timeout"),
        ([{"id": f"s{n}", "tool": "memory.recall"} for n in range(11)], "too_many_steps", "plan.steps"),
    ],
)
def test_a_bad_plan_is_refused_naming_the_field(steps, reason, field):
    error = _refused(steps)
    assert (error.code, error.reason, error.data["field"]) == (-32602, reason, field)


def test_a_plan_that_is_not_an_object_is_refused():
    with pytest.raises(InvalidParams) as caught:
        validate_plan([1, 2], TOOLS, max_steps=10, max_timeout=60)
    assert caught.value.reason == "bad_plan" and caught.value.data["field"] == "plan"


def test_a_reference_through_transitive_needs_is_accepted():
    _validate([
        {"id": "a", "tool": "memory.remember"},
        {"id": "b", "tool": "memory.recall", "needs": ["a"]},
        {"id": "c", "tool": "memory.recall", "needs": ["b"], "args": {"q": {"$from": "a.ids.0"}}},
    ])


def test_references_are_filled_from_outputs_with_list_indexes():
    outputs = {"a": {"ids": ["ep_1", "ep_2"]}, "b": {"hits": [{"id": "ep_9", "text": "t", "n": None}]}}
    args = {
        "query": {"$from": "b.hits.0.text"},
        "ids": [{"$from": "a.ids.1"}, "literal"],
        "whole": {"$from": "b"},
        "nested": {"none": {"$from": "b.hits.0.n"}, "plain": 3},
    }
    assert resolve_args(args, outputs) == {
        "query": "t",
        "ids": ["ep_2", "literal"],
        "whole": outputs["b"],
        "nested": {"none": None, "plain": 3},
    }
    assert args["ids"][0] == {"$from": "a.ids.1"}  # the plan's own args are left as they were


@pytest.mark.parametrize("path", ["b.hits.1.id", "b.hits.x", "b.missing", "b.hits.0.id.deeper", "b.hits.-1"])
def test_a_path_the_output_lacks_names_where_it_was(path):
    outputs = {"b": {"hits": [{"id": "ep_9"}]}}
    with pytest.raises(UnresolvedReference) as caught:
        resolve_args({"q": [{"$from": path}]}, outputs, "plan.steps.2.args")
    assert caught.value.field == "plan.steps.2.args.q.0"
