"""The tools of external MCP servers: a real stdio server (tests/fixtures/mcp_server) started by
the part, its tools called with the policy deciding each call, the arguments checked against the
tool's inputSchema, its errors, timeouts and death turned into specific errors, a remote server
refused unless the policy allows its egress, and a plan using one after a built-in step."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from engram.bus import EventBus
from engram.bus.events import CORE_EVENTS
from engram.config import REDACTED, load_settings
from engram.errors import Conflict, InvalidParams, NotFound, PolicyDenied, Timeout, Unavailable
from engram.observability.metrics import Metrics
from engram.policy.events import POLICY_EVENTS
from engram.policy.service import Policy
from engram.policy.settings import PolicySettings
from engram.principal import Principal
from engram.server.methods import RequestContext
from engram.storage import Database
from engram.tasks.api import TaskGetParams, TaskSubmitParams
from engram.tasks.events import TASK_EVENTS
from engram.tasks.mcp_tools import McpTools
from engram.tasks.service import Tasks
from engram.tasks.settings import McpServerSettings, TaskSettings
from engram.tasks.tools import CombinedTools, PluginTools
from pydantic import ValidationError

OWNER = Principal(uid=os.getuid(), gid=os.getgid(), pid=1)
OTHER = Principal(uid=os.getuid() + 4242, gid=os.getgid() + 4242, pid=2)
BUS = EventBus((*CORE_EVENTS, *TASK_EVENTS))
SERVER = Path(__file__).resolve().parents[2] / "fixtures" / "mcp_server" / "stdio_server.py"


def _server(**settings: Any) -> McpServerSettings:
    return McpServerSettings(command=[sys.executable, str(SERVER)], **settings)


def _policy(tmp_path: Path, grant: str | None = None) -> Policy:
    policy_dir = tmp_path / "policy.d"
    policy_dir.mkdir(parents=True, exist_ok=True)
    if grant:
        (policy_dir / "grant.toml").write_text(grant)
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    return Policy(PolicySettings(files=[policy_dir]), state, EventBus((*CORE_EVENTS, *POLICY_EVENTS)), Metrics(),
                  owner_uid=OWNER.uid)


async def _error(call: Any) -> Any:
    with pytest.raises(Exception) as info:
        await call
    return info.value


async def test_tools_are_listed_called_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGRAM_TEST_SECRET", "the daemon's")
    policy = _policy(tmp_path)
    servers = {"fx": _server(timeout=0.5, env={"GIVEN": "yes"}, idempotent=["wait"])}
    async with policy, McpTools(servers, policy.tool_guard, policy, BUS) as mcp:
        assert mcp.names == {"mcp:fx.shout", "mcp:fx.fail", "mcp:fx.wait", "mcp:fx.env", "mcp:fx.pid", "mcp:fx.exit"}
        # readOnlyHint makes a tool idempotent, and so does the setting; nothing else does.
        assert [mcp.idempotent(name) for name in ("mcp:fx.shout", "mcp:fx.wait", "mcp:fx.fail")] == [True, True, False]
        assert (await mcp.named_checks())["mcp:fx"].ok

        assert await mcp.call("mcp:fx.shout", {"text": "herons nest"}, OWNER) == {"text": "HERONS NEST", "words": 2}
        # The child gets a minimal environment and its own variables, not the daemon's.
        assert await mcp.call("mcp:fx.env", {"name": "GIVEN"}, OWNER) == {"value": "yes"}
        assert await mcp.call("mcp:fx.env", {"name": "ENGRAM_TEST_SECRET"}, OWNER) == {"value": None}

        missing = await _error(mcp.call("mcp:fx.shout", {}, OWNER))
        assert isinstance(missing, InvalidParams)
        assert (missing.reason, missing.data["field"]) == ("invalid_params", "text")
        wrong = await _error(mcp.call("mcp:fx.shout", {"text": 3}, OWNER))
        assert isinstance(wrong, InvalidParams) and wrong.data["field"] == "text" and "not of type 'string'" in wrong.message

        failed = await _error(mcp.call("mcp:fx.fail", {"message": "no luck"}, OWNER))
        assert isinstance(failed, Conflict) and failed.reason == "tool_error" and "no luck" in failed.data["detail"]

        late = await _error(mcp.call("mcp:fx.wait", {"seconds": 5}, OWNER))
        assert isinstance(late, Timeout) and (late.reason, late.data["limit_s"]) == ("tool_timeout", 0.5)

        unknown = await _error(mcp.call("mcp:fx.nothing", {}, OWNER))
        assert isinstance(unknown, NotFound) and unknown.reason == "unknown_tool"
        # The server still answers after all that.
        assert await mcp.call("mcp:fx.shout", {"text": "still here"}, OWNER) == {"text": "STILL HERE", "words": 2}


async def test_the_policy_decides_who_may_use_a_tool(tmp_path):
    grant = f'[[rule]]\nname = "grant-shout"\neffect = "allow"\nprincipals = ["uid:{OTHER.uid}"]\nactions = ["mcp:fx.shout"]\n'
    policy = _policy(tmp_path, grant)
    async with policy, McpTools({"fx": _server()}, policy.tool_guard, policy, BUS) as mcp:
        assert await mcp.call("mcp:fx.shout", {"text": "a"}, OTHER) == {"text": "A", "words": 1}
        denied = await _error(mcp.call("mcp:fx.env", {"name": "HOME"}, OTHER))
        assert isinstance(denied, PolicyDenied)
        assert (denied.reason, denied.data["method"], denied.data["rule"]) == ("policy_denied", "mcp:fx.env", "default")


async def test_a_remote_server_needs_the_policys_egress_allow(tmp_path):
    servers = {"far": _server(locality="remote")}
    policy = _policy(tmp_path)
    async with policy, McpTools(servers, policy.tool_guard, policy, BUS) as mcp:
        refused = await _error(mcp.call("mcp:far.shout", {"text": "a"}, OWNER))
        assert isinstance(refused, PolicyDenied)
        assert (refused.data["point"], refused.data["provider"], refused.data["locality"]) == ("egress", "mcp:far", "remote")
    allow = ('[[rule]]\nname = "far-ok"\neffect = "allow"\nprincipals = ["owner"]\nproviders = ["mcp:far"]\n'
             'locality = ["remote"]\nobligations = ["redact"]\n')
    policy = _policy(tmp_path / "allowed", allow)
    async with policy, McpTools(servers, policy.tool_guard, policy, BUS) as mcp:
        # Allowed, and what leaves is redacted as the rule obliges.
        assert await mcp.call("mcp:far.shout", {"text": "mail ada@example.org"}, OWNER) == {
            "text": "MAIL [REDACTED:EMAIL]", "words": 2,
        }


async def test_a_server_that_died_fails_calls_then_is_started_again(tmp_path):
    policy = _policy(tmp_path)
    bus = EventBus((*CORE_EVENTS, *TASK_EVENTS))
    changes = bus.subscribe(["mcp.server"], 100)
    async with policy, McpTools({"fx": _server()}, policy.tool_guard, policy, bus) as mcp:
        gone = await _error(mcp.call("mcp:fx.exit", {}, OWNER))
        assert isinstance(gone, Unavailable) and gone.reason == "tool_unavailable"
        with anyio.fail_after(2):
            while (await mcp.named_checks())["mcp:fx"].ok:
                await anyio.sleep(0.01)
        down = await _error(mcp.call("mcp:fx.shout", {"text": "a"}, OWNER))
        assert isinstance(down, Unavailable) and down.data["server"] == "fx"
        assert mcp.names == {"mcp:fx.shout", "mcp:fx.fail", "mcp:fx.wait", "mcp:fx.env", "mcp:fx.pid", "mcp:fx.exit"}  # kept
        with anyio.fail_after(20):
            while not (await mcp.named_checks())["mcp:fx"].ok:
                await anyio.sleep(0.05)
        assert await mcp.call("mcp:fx.shout", {"text": "back"}, OWNER) == {"text": "BACK", "words": 1}
        assert mcp.servers["fx"].starts == 2
    events = []
    while (event := changes.receive_nowait()) is not None:
        events.append((event.state, event.starts, event.tools, event.restart_in_s))
    assert events == [("running", 1, 6, None), ("down", 1, 6, 1.0), ("running", 2, 6, None)]


async def test_a_server_that_cannot_start_leaves_its_tools_absent(tmp_path):
    servers = {"fx": _server(), "broken": McpServerSettings(command=[str(tmp_path / "no-such-program")]),
               "mute": McpServerSettings(command=[sys.executable, "-c", "import time; time.sleep(60)"], start_timeout=0.5)}
    policy = _policy(tmp_path)
    async with policy, McpTools(servers, policy.tool_guard, policy, BUS) as mcp:
        assert {name.partition(".")[0] for name in mcp.names} == {"mcp:fx"}
        checks = await mcp.named_checks()
        assert checks["mcp:fx"].ok and not checks["mcp:broken"].ok and not checks["mcp:mute"].ok
        assert "No such file" in checks["mcp:broken"].detail or "FileNotFoundError" in checks["mcp:broken"].detail
        assert "start_timeout" in checks["mcp:mute"].detail


def test_a_servers_secret_variables_are_redacted_where_settings_are_shown(tmp_path):
    config = tmp_path / "engram.toml"
    config.write_text('[tasks.mcp_servers.search]\ncommand = ["search-mcp"]\n'
                      '[tasks.mcp_servers.search.env]\nSEARCH_API_KEY = "sk-123"\nSEARCH_LANG = "en"\n')
    shown, redacted = load_settings(config, state_dir=tmp_path / "s").redacted_dict()
    assert shown["tasks"]["mcp_servers"]["search"]["env"] == {"SEARCH_API_KEY": REDACTED, "SEARCH_LANG": "en"}
    assert redacted == ["tasks.mcp_servers.search.env.SEARCH_API_KEY"]


def test_server_names_and_commands_are_checked():
    with pytest.raises(ValidationError, match="server name 'a.b'"):
        TaskSettings(mcp_servers={"a.b": {"command": ["x"]}})
    with pytest.raises(ValidationError):
        TaskSettings(mcp_servers={"a": {"command": []}})
    with pytest.raises(ValidationError):
        TaskSettings(mcp_servers={"a": {"command": ["x"], "shell": True}})
    assert TaskSettings(mcp_servers={"a_b-1": {"command": ["x"]}}).mcp_servers["a_b-1"].locality == "local"


class Builtin:
    """A built-in tool of the test's own: ``put`` returns the text it was given."""

    names = frozenset({"put"})

    def takes_namespace(self, tool: str) -> bool:
        return False

    def idempotent(self, tool: str) -> bool:
        return False

    async def call(self, tool: str, args: dict[str, Any], principal: Principal) -> Any:
        return {"stored": {"text": args["text"]}}


async def test_a_plan_uses_an_mcp_tool_with_what_an_earlier_step_returned(tmp_path):
    database = tmp_path / "engram.db"
    async with Database(database):
        pass
    bus = EventBus((*CORE_EVENTS, *POLICY_EVENTS, *TASK_EVENTS))
    policy = _policy(tmp_path)
    plan = {"steps": [
        {"id": "a", "tool": "put", "args": {"text": "the heron nests"}},
        {"id": "b", "tool": "mcp:fx.shout", "args": {"text": {"$from": "a.stored.text"}}, "needs": ["a"]},
    ]}
    ctx = RequestContext(principal=OWNER, connection=None, request=1)  # type: ignore[arg-type]
    async with policy, McpTools({"fx": _server()}, policy.tool_guard, policy, BUS) as mcp:
        tools = CombinedTools(Builtin(), PluginTools(dict, policy.tool_guard), mcp)
        async with Tasks(TaskSettings(), database, tools, bus, owner_uid=OWNER.uid) as tasks:
            task_id = (await tasks.submit(ctx, TaskSubmitParams(plan=plan))).task_id
            with anyio.fail_after(10):
                while (result := await tasks.get(ctx, TaskGetParams(task_id=task_id, outputs=True))).task.state != "done":
                    assert result.task.state in ("queued", "running"), result
                    await anyio.sleep(0.01)
    assert result.steps[1].output == {"text": "THE HERON NESTS", "words": 3} and result.steps[1].attempts == 1


async def test_a_read_only_tool_is_retried_until_its_server_is_back(tmp_path):
    """The server has just died: the step's first call fails with tool_unavailable, and the
    executor calls the read-only tool again after its pauses, until the restarted server answers."""
    database = tmp_path / "engram.db"
    async with Database(database):
        pass
    bus = EventBus((*CORE_EVENTS, *POLICY_EVENTS, *TASK_EVENTS))
    policy = _policy(tmp_path)
    ctx = RequestContext(principal=OWNER, connection=None, request=1)  # type: ignore[arg-type]
    plan = {"steps": [{"id": "a", "tool": "mcp:fx.shout", "args": {"text": "again"}}]}
    settings = TaskSettings(retries=6, retry_backoff=0.5)
    async with policy, McpTools({"fx": _server()}, policy.tool_guard, policy, BUS) as mcp:
        tools = CombinedTools(Builtin(), PluginTools(dict, policy.tool_guard), mcp)
        async with Tasks(settings, database, tools, bus, owner_uid=OWNER.uid) as tasks:
            await _error(mcp.call("mcp:fx.exit", {}, OWNER))
            task_id = (await tasks.submit(ctx, TaskSubmitParams(plan=plan))).task_id
            with anyio.fail_after(30):
                while (result := await tasks.get(ctx, TaskGetParams(task_id=task_id, outputs=True))).task.state in (
                    "queued", "running",
                ):
                    await anyio.sleep(0.02)
    step = result.steps[0]
    assert result.task.state == "done", result
    assert step.output == {"text": "AGAIN", "words": 1} and step.attempts > 1
