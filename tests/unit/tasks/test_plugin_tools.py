"""Plugin tools (the engram.tools entry-point group) in plans: the plugins part loads the fixture
site's tools and reports those that fail to load; a plan uses a plugin tool after a built-in
step, through a reference; the policy decides each call as the submitting principal."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from engram.bus import EventBus
from engram.bus.events import CORE_EVENTS
from engram.errors import InvalidParams
from engram.observability.metrics import Metrics
from engram.plugins.manager import PluginManager
from engram.plugins.settings import PluginSettings
from engram.policy.events import POLICY_EVENTS
from engram.policy.service import Policy
from engram.policy.settings import PolicySettings
from engram.principal import Principal
from engram.server.methods import NoParams, RequestContext
from engram.storage import Database
from engram.tasks.api import TaskGetParams, TaskSubmitParams
from engram.tasks.events import TASK_EVENTS
from engram.tasks.service import Tasks
from engram.tasks.settings import TaskSettings
from engram.tasks.tools import CombinedTools, PluginTools

OWNER = Principal(uid=os.getuid(), gid=os.getgid(), pid=1)
OTHER = Principal(uid=os.getuid() + 4242, gid=os.getgid() + 4242, pid=2)
TOOL_SITE = Path(__file__).resolve().parents[2] / "fixtures" / "tool_site"
GRANT = f'[[rule]]\nname = "grant-words"\neffect = "allow"\nprincipals = ["uid:{OTHER.uid}"]\nactions = ["plugin:wordcount"]\n'


class Builtin:
    """A built-in tool of the test's own: ``put`` returns the text it was given."""

    names = frozenset({"put"})

    def takes_namespace(self, tool: str) -> bool:
        return False

    def idempotent(self, tool: str) -> bool:
        return False

    async def call(self, tool: str, args: dict[str, Any], principal: Principal) -> Any:
        return {"stored": {"text": args["text"]}}


PLAN = {"steps": [
    {"id": "a", "tool": "put", "args": {"text": "one two three four"}},
    {"id": "b", "tool": "plugin:wordcount", "args": {"text": {"$from": "a.stored.text"}}, "needs": ["a"]},
]}


def _ctx(principal: Principal) -> RequestContext:
    return RequestContext(principal=principal, connection=None, request=1)  # type: ignore[arg-type]


@pytest.fixture
def tool_site(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOL_SITE))


async def _run(tmp_path: Path, principal: Principal, plan: dict[str, Any], grant: str | None = None) -> Any:
    policy_dir = tmp_path / "policy.d"
    policy_dir.mkdir(exist_ok=True)
    if grant:
        (policy_dir / "grant.toml").write_text(grant)
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    database = tmp_path / "engram.db"
    async with Database(database):
        pass
    bus = EventBus((*CORE_EVENTS, *POLICY_EVENTS, *TASK_EVENTS))
    plugins = PluginManager(PluginSettings(), bus, breakers=_NoBreakers())
    policy = Policy(PolicySettings(files=[policy_dir]), state, bus, Metrics(), owner_uid=OWNER.uid)
    tools = CombinedTools(Builtin(), PluginTools(plugins.tools, policy.tool_guard))
    async with plugins, policy, Tasks(TaskSettings(), database, tools, bus, owner_uid=OWNER.uid) as tasks:
        task_id = (await tasks.submit(_ctx(principal), TaskSubmitParams(plan=plan))).task_id
        with anyio.fail_after(10):
            while True:
                result = await tasks.get(_ctx(principal), TaskGetParams(task_id=task_id, outputs=True))
                if result.task.state in ("done", "failed", "cancelled"):
                    return result
                await anyio.sleep(0.01)


class _NoBreakers:
    def state_of(self, provider: str) -> str:
        return "closed"


async def test_tools_load_and_those_that_fail_are_reported(tool_site):
    bus = EventBus(CORE_EVENTS)
    failed = bus.subscribe(["plugin.*"], 100)
    plugins = PluginManager(PluginSettings(), bus, breakers=_NoBreakers())
    async with plugins:
        assert plugins.state.name == "RUNNING"
        assert set(plugins.tools()) == {"plugin:wordcount"}
        listed = {info.name: info for info in (await plugins.list_plugins(_ctx(OWNER), NoParams())).plugins if info.kind == "tool"}
    assert listed["wordcount"].state == "running" and listed["wordcount"].idempotent is True
    assert listed["wordcount"].description == "Counts the words of a text."
    assert (listed["missing"].state, listed["missing"].failed_stage) == ("failed", "import")
    assert "ModuleNotFoundError" in listed["missing"].error
    assert (listed["misnamed"].state, listed["misnamed"].failed_stage) == ("failed", "validate")
    assert "registered as 'misnamed'" in listed["misnamed"].error
    events = []
    while (event := failed.receive_nowait()) is not None:
        if event.name.startswith("plugin:"):  # the providers installed in the environment load too
            events.append((event.topic, event.name))
    assert sorted(events) == [
        ("plugin.failed", "plugin:misnamed"), ("plugin.failed", "plugin:missing"), ("plugin.loaded", "plugin:wordcount"),
    ]


async def test_a_disabled_tool_is_not_loaded(tool_site):
    plugins = PluginManager(PluginSettings(disabled=["plugin:wordcount"]), EventBus(CORE_EVENTS), breakers=_NoBreakers())
    async with plugins:
        assert plugins.tools() == {}
        states = {info.name: info.state for info in await plugins.infos() if info.kind == "tool"}
    assert states["wordcount"] == "disabled"


async def test_a_plan_uses_a_plugin_tool_after_a_built_in_step(tool_site, tmp_path):
    result = await _run(tmp_path, OWNER, PLAN)
    assert result.task.state == "done"
    assert [step.output for step in result.steps] == [
        {"stored": {"text": "one two three four"}}, {"words": 4, "uid": OWNER.uid},
    ]


async def test_another_principal_is_denied_a_tool_no_rule_grants(tool_site, tmp_path):
    result = await _run(tmp_path, OTHER, PLAN)
    assert result.task.state == "failed"
    assert [step.state for step in result.steps] == ["done", "failed"]
    error = result.steps[1].error
    assert (error.code, error.reason) == (-32001, "policy_denied")


async def test_a_rule_grants_another_principal_the_tool(tool_site, tmp_path):
    result = await _run(tmp_path, OTHER, PLAN, GRANT)
    assert result.task.state == "done" and result.steps[1].output == {"words": 4, "uid": OTHER.uid}


async def test_bad_arguments_fail_the_step_with_invalid_params(tool_site, tmp_path):
    plan = {"steps": [{"id": "a", "tool": "plugin:wordcount", "args": {"text": 3}}]}
    result = await _run(tmp_path, OWNER, plan)
    error = result.steps[0].error
    assert (error.code, error.reason) == (-32602, "invalid_params") and result.task.state == "failed"


async def test_a_tool_that_is_not_loaded_is_refused_in_a_plan(tool_site, tmp_path):
    with pytest.raises(InvalidParams) as info:
        await _run(tmp_path, OWNER, {"steps": [{"id": "a", "tool": "plugin:misnamed"}]})
    assert info.value.data["reason"] == "unknown_tool"
