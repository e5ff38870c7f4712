"""The Policy part with temporal rules: it follows only the topics its rules name, a decision sees
every event published before it, and the owner's repair methods stay reachable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from policyhelp import OWNER, principal

from engram.bus import EventBus
from engram.bus.events import CORE_EVENTS
from engram.errors import PolicyDenied
from engram.memory.events import MEMORY_EVENTS, MemoryForgotten
from engram.observability.metrics import Metrics
from engram.policy.events import POLICY_EVENTS
from engram.policy.service import Policy
from engram.policy.settings import PolicySettings
from engram.server.methods import Method, NoParams

RATE = """
[[temporal]]
name = "forget-rate"
effect = "deny"
when = 'count[1h] event("memory.forgotten") >= 2'
on = { actions = ["memory.forget", "policy.*"] }
"""


def _method(name: str, owner_only: bool = False) -> Method:
    async def handler(ctx: Any, params: Any) -> None:
        return None

    return Method(name=name, handler=handler, params=NoParams, result=NoParams, summary="", owner_only=owner_only)


def _forgotten() -> MemoryForgotten:
    return MemoryForgotten(namespace="default", ids=["ep_1"], text_hmac=["00"], scope="ids", principal=principal(OWNER))


def _part(tmp_path: Path) -> tuple[Policy, EventBus, Path]:
    folder = tmp_path / "policy.d"
    folder.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    bus = EventBus((*CORE_EVENTS, *POLICY_EVENTS, *MEMORY_EVENTS))
    part = Policy(PolicySettings(files=[folder]), state, bus, Metrics(), owner_uid=OWNER)
    return part, bus, folder


async def test_it_follows_only_what_its_rules_name(tmp_path):
    part, bus, folder = _part(tmp_path)
    async with part:
        assert bus.subscriptions == []  # no temporal rule: nothing subscribes, events cost nothing more
        (folder / "rate.toml").write_text(RATE)
        await part.reload()
        [sub] = bus.subscriptions
        assert sub.patterns == ("memory.forgotten",)
        (folder / "rate.toml").unlink()
        await part.reload()
        assert bus.subscriptions == []
    assert bus.subscriptions == []


async def test_a_decision_sees_every_event_published_before_it(tmp_path):
    part, bus, folder = _part(tmp_path)
    (folder / "rate.toml").write_text(RATE)
    async with part:
        forget = _method("memory.forget")
        await part.method_guard(principal(OWNER), forget)
        bus.publish(_forgotten())
        bus.publish(_forgotten())
        # No await between the publishes and the decision: the watcher task has not run, the
        # decision drains the queue itself.
        with pytest.raises(PolicyDenied) as denied:
            await part.method_guard(principal(OWNER), forget)
        data = denied.value.data
        assert data["rule"] == "forget-rate" and data["point"] == "method" and len(data["events"]) == 2
        # The owner may still repair the policy, though the rule guards policy.*.
        await part.method_guard(principal(OWNER), _method("policy.reload", owner_only=True))
        with pytest.raises(PolicyDenied):
            await part.method_guard(principal(OWNER), _method("policy.check"))
        # A reload that leaves the rule unchanged keeps its window.
        await part.reload()
        with pytest.raises(PolicyDenied):
            await part.method_guard(principal(OWNER), forget)
        ok, detail = await part.health()
        assert ok and "1 temporal rules" in detail


async def test_alerts_are_published_and_never_feed_the_rules(tmp_path):
    import anyio

    part, bus, folder = _part(tmp_path)
    (folder / "loud.toml").write_text('[[temporal]]\nname = "loud"\neffect = "alert"\nwhen = \'event("policy.reloaded")\'\n')
    (folder / "echo.toml").write_text('[[temporal]]\nname = "echo"\neffect = "alert"\nwhen = \'event("policy.*")\'\n')
    alerts = bus.subscribe(["policy.alert"], 100)
    async with part:
        await part.reload()  # one policy.reloaded, seen by both rules
        await anyio.sleep(0.3)  # the watcher task tells the rules
        seen = []
        while (event := alerts.receive_nowait()) is not None:
            seen.append(event)
        # The start's policy.reloaded and the reload's (the rules follow from the start) make two
        # alerts each, and those alerts make none.
        assert sorted(e.rule for e in seen) == ["echo", "echo", "loud", "loud"]
        assert all(e.events[0]["topic"] == "policy.reloaded" for e in seen)
