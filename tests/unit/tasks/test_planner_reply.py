"""The planner's reading of a model's reply, its compact tool arguments, the bounds of its
prompt, and the store's replacement of a task's plan on a replan (a real database)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from engram.memory.api import RecallParams
from engram.principal import Principal
from engram.storage import Database
from engram.errors import InvalidParams
from engram.tasks.plan import Step
from engram.tasks.planner import Failure, Observation, compact_schema, extract_json, write_prompt
from engram.tasks.settings import TaskPlannerSettings
from engram.tasks.store import TaskRow, TaskStore
from engram.tasks.teaching import Example


@pytest.mark.parametrize(("reply", "expected"), [
    ('{"steps": []}', {"steps": []}),
    ('Here it is:\n```json\n{"steps": [{"id": "a"}]}\n```\nDone.', {"steps": [{"id": "a"}]}),
    # a brace in prose before the object is skipped; the first whole object is taken
    ('Use {curly} braces. {"steps": [1]} and {"steps": [2]}', {"steps": [1]}),
    ("no JSON at all", None),
    ('{"steps": [', None),
])
def test_the_first_json_object_of_a_reply_is_read(reply, expected):
    assert extract_json(reply) == expected


def test_a_tools_arguments_are_shown_in_one_line():
    line = compact_schema(RecallParams.model_json_schema())
    assert line.startswith("query: string|null - Text to recall by")
    assert "k: integer - Hits to return at most" in line
    assert compact_schema({"properties": {"x": {"type": "string"}}, "required": ["x"]}) == "x: string (required)"
    assert compact_schema({}) == "none"


async def test_a_replan_keeps_the_steps_that_ran_and_replaces_those_that_did_not(tmp_path: Path):
    path = tmp_path / "engram.db"
    async with Database(path):
        pass
    store = TaskStore(path)
    store.open()
    try:
        now = time.time()
        task = TaskRow(id="tk_01", state="queued", plan={"steps": []}, namespace=None,
                       principal=Principal(uid=1, gid=1, pid=None), deadline_at=None, created_at=now,
                       started_at=None, finished_at=None, error=None, goal="find the heron")
        store.insert(task, [])
        assert (store.task("tk_01").planned, store.task("tk_01").goal, store.steps("tk_01")) == (False, "find the heron", [])

        first = {"steps": [{"id": "a", "tool": "t"}, {"id": "b", "tool": "t"}, {"id": "c", "tool": "t"}]}
        store.set_plan("tk_01", first, [("a", "t"), ("b", "t"), ("c", "t")], {"providers": ["p"], "decisions": []})
        store.step_started("tk_01", "a", now)
        store.step_done("tk_01", "a", b"{}", "0" * 64, now)
        store.step_started("tk_01", "b", now)
        store.step_ended("tk_01", "b", "failed", {"code": -32602}, now)

        second = {"steps": [{"id": "a", "tool": "t"}, {"id": "d", "tool": "u"}]}
        store.set_plan("tk_01", second, [("d", "u")], {"providers": ["p", "p"], "decisions": ["dc_1"]})
        row = store.task("tk_01")
        assert (row.plan, row.plans, row.planner, row.planned) == (second, 2, {"providers": ["p", "p"], "decisions": ["dc_1"]}, True)
        # a done and b failed stay where they were; c, never run, is gone; d comes after them
        assert [(s.step_id, s.position, s.state) for s in store.steps("tk_01")] == [
            ("a", 0, "done"), ("b", 1, "failed"), ("d", 2, "pending"),
        ]
    finally:
        store.close()


def test_a_prompt_past_its_limit_loses_examples_then_shortens_outputs_then_is_refused():
    catalogue = "- memory.recall: Recall.\n  args: query: string"
    examples = [Example(goal=f"goal {n}", plan={"steps": [{"id": "a", "tool": "memory.recall", "note": "x" * 400}]})
                for n in range(3)]
    done = [Observation(Step(id="a", tool="memory.recall"), output={"text": "y" * 6000})]
    failure = Failure(Step(id="b", tool="memory.get"), {"message": "no such id", "code": -32602, "reason": "bad_id"})
    roomy = TaskPlannerSettings(max_prompt_chars=100_000, observation_chars=3000)
    full = write_prompt(roomy, catalogue, "find it", examples, done, failure, {"a", "b"})
    assert full.count("Goal: goal ") == 3 and "y" * 2900 in full and "ids not used so far (a, b)" in full

    # room for the outputs cut to 3000 characters but not for the examples: they go, all of them
    no_examples = write_prompt(roomy, catalogue, "find it", [], done, failure, {"a", "b"})
    tight = TaskPlannerSettings(max_prompt_chars=len(no_examples), observation_chars=3000)
    prompt = write_prompt(tight, catalogue, "find it", examples, done, failure, {"a", "b"})
    assert prompt == no_examples and "y" * 2900 in prompt
    # less room still: the outputs are cut shorter (to half)
    tighter = TaskPlannerSettings(max_prompt_chars=max(2000, len(no_examples) - 100), observation_chars=3000)
    prompt = write_prompt(tighter, catalogue, "find it", examples, done, failure, {"a", "b"})
    assert "y" * 1600 not in prompt and "y" * 1400 in prompt and len(prompt) <= tighter.max_prompt_chars
    # a goal that cannot fit is refused, saying why
    with pytest.raises(InvalidParams) as caught:
        write_prompt(tighter, catalogue, "g" * 5000, examples)
    assert caught.value.reason == "prompt_too_long" and caught.value.data["limit"] == tighter.max_prompt_chars
