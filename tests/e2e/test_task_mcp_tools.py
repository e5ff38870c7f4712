"""An external MCP server's tools in plans, with a real daemon: the small stdio server of
tests/fixtures/mcp_server, named in tasks.mcp_servers, and the plugin tool of tests/fixtures/tool_site
in one plan submitted with task.submit; its proof bundle verifies; a tool error, a timeout, a
remote server under the default policy, and another uid the policy grants tasks but not the tool,
each fail their step with their own error; the servers stop with the daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_policy import as_nobody
from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SERVER = FIXTURES / "mcp_server" / "stdio_server.py"
TOOL_SITE = FIXTURES / "tool_site"
NOBODY = 65534

CONFIG = f"""
[tasks.mcp_servers.fx]
command = [{json.dumps(sys.executable)}, {json.dumps(str(SERVER))}]
timeout = 1.0

[tasks.mcp_servers.far]
command = [{json.dumps(sys.executable)}, {json.dumps(str(SERVER))}]
locality = "remote"

[tasks.mcp_servers.broken]
command = ["/nonexistent/mcp-server"]
"""

ONE_PLAN = {"steps": [
    {"id": "a", "tool": "mcp:fx.shout", "args": {"text": "the heron nests by the mill pond"}},
    {"id": "b", "tool": "plugin:wordcount", "args": {"text": {"$from": "a.text"}}, "needs": ["a"]},
]}


def _engram(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args)  # the commands' output and status are checked, not the process


def _ended(daemon: Any, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        result = daemon.call("task.get", {"task_id": task_id, "outputs": True})
        if result["task"]["state"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def _run(daemon: Any, *steps: dict[str, Any]) -> dict[str, Any]:
    return _ended(daemon, daemon.call("task.submit", {"plan": {"steps": list(steps)}})["task_id"])


@pytest.fixture
def mcp_daemon(make_daemon, state_dir):
    config = state_dir.parent / "engram.toml"
    config.write_text(CONFIG)
    policies = state_dir.parent / "policy.d"
    policies.mkdir()
    (policies / "nobody.toml").write_text(
        f'[[rule]]\nname = "nobody-tasks"\neffect = "allow"\nprincipals = ["uid:{NOBODY}"]\n'
        'actions = ["task.*", "plugin:wordcount"]\n'
    )
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TOOL_SITE), os.environ.get("PYTHONPATH")])),
        "ENGRAM_POLICY__FILES": json.dumps([str(policies)]),
    }
    return make_daemon(env=env, args=["--config", str(config)])


def test_a_plan_uses_an_mcp_servers_tool_and_a_plugin_tool(mcp_daemon, tmp_path):
    daemon = mcp_daemon
    checks = daemon.call("system.health")["checks"]
    assert checks["mcp:fx"]["ok"] and checks["mcp:far"]["ok"], checks
    assert not checks["mcp:broken"]["ok"] and "FileNotFoundError" in checks["mcp:broken"]["detail"]

    result = _ended(daemon, daemon.call("task.submit", {"plan": ONE_PLAN})["task_id"])
    assert result["task"]["state"] == "done", result
    outputs = [step["output"] for step in result["steps"]]
    assert outputs == [{"text": "THE HERON NESTS BY THE MILL POND", "words": 7}, {"words": 7, "uid": os.getuid()}]

    # The task's proof bundle names the MCP tool's step and verifies offline.
    sock = ("--socket", str(daemon.socket))
    pub = tmp_path / "audit.pub"
    exported = _engram("audit", "pubkey", *sock)
    assert exported.returncode == 0, exported.stderr
    pub.write_text(exported.stdout)
    bundle_file = tmp_path / "bundle.json"
    proved = _engram("task", "prove", result["task"]["task_id"], "-o", str(bundle_file), *sock)
    assert proved.returncode == 0, proved.stderr
    assert [entry["step_id"] for entry in json.loads(bundle_file.read_text())["entries"]] == ["a", "b"]
    verified = _engram("audit", "verify-bundle", str(bundle_file), "--pubkey", str(pub))
    assert verified.returncode == 0 and f"{bundle_file} verifies" in verified.stdout, verified.stdout + verified.stderr

    # A plan naming a tool of the server that did not start is refused before it runs.
    refused = daemon.raw().request({"jsonrpc": "2.0", "id": 1, "method": "task.submit",
                                    "params": {"plan": {"steps": [{"id": "a", "tool": "mcp:broken.shout"}]}}})
    assert refused["error"]["data"]["reason"] == "unknown_tool"

    # The servers are child processes of the daemon, and end with it.
    pid = _run(daemon, {"id": "p", "tool": "mcp:fx.pid"})["steps"][0]["output"]["result"]
    os.kill(pid, 0)
    assert daemon.stop() == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_mcp_tool_failures_are_specific_errors(mcp_daemon):
    daemon = mcp_daemon
    failed = _run(daemon, {"id": "a", "tool": "mcp:fx.fail", "args": {"message": "no heron today"}})["steps"][0]
    assert (failed["state"], failed["error"]["code"], failed["error"]["reason"]) == ("failed", -32007, "tool_error")
    assert "no heron today" in failed["error"]["data"]["detail"]

    late = _run(daemon, {"id": "a", "tool": "mcp:fx.wait", "args": {"seconds": 10}})["steps"][0]
    assert (late["error"]["code"], late["error"]["reason"], late["error"]["data"]["limit_s"]) == (-32004, "tool_timeout", 1.0)
    assert late["attempts"] == 1  # wait is not idempotent: no retry

    bad = _run(daemon, {"id": "a", "tool": "mcp:fx.shout", "args": {"words": "x"}})["steps"][0]
    assert (bad["error"]["code"], bad["error"]["reason"], bad["error"]["data"]["field"]) == (-32602, "invalid_params", "text")

    # A remote server's tool: its egress is refused by the default (local-first) policy.
    remote = _run(daemon, {"id": "a", "tool": "mcp:far.shout", "args": {"text": "a"}})["steps"][0]
    error = remote["error"]
    assert (error["code"], error["reason"], error["data"]["point"]) == (-32001, "policy_denied", "egress")
    assert (error["data"]["provider"], error["data"]["locality"]) == ("mcp:far", "remote")


def test_another_uid_is_refused_an_mcp_tool_no_rule_grants(mcp_daemon):
    if os.geteuid() != 0:
        pytest.skip("switching uid needs root")
    daemon = mcp_daemon
    plan = {"steps": [
        {"id": "a", "tool": "plugin:wordcount", "args": {"text": "two words"}},
        {"id": "b", "tool": "mcp:fx.shout", "args": {"text": "x"}, "needs": ["a"]},
    ]}
    (submitted,) = as_nobody(daemon, ("task.submit", {"plan": plan}))
    task_id = submitted["result"]["task_id"]
    deadline = time.monotonic() + 30
    while True:
        (got,) = as_nobody(daemon, ("task.get", {"task_id": task_id, "outputs": True}))
        if got["result"]["task"]["state"] not in ("queued", "running") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    steps = got["result"]["steps"]
    assert [step["state"] for step in steps] == ["done", "failed"]
    assert steps[0]["output"] == {"words": 2, "uid": NOBODY}
    error = steps[1]["error"]
    assert (error["code"], error["reason"], error["data"]["method"], error["data"]["uid"]) == (
        -32001, "policy_denied", "mcp:fx.shout", NOBODY,
    )
