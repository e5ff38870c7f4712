"""The Policy part: start, the dispatcher guard, reload keeping the old policy, privacy switch, egress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from policyhelp import OWNER, FakeClock, principal

from engram.bus import EventBus
from engram.bus.events import CORE_EVENTS
from engram.errors import Conflict, PolicyDenied, StartupError
from engram.observability.metrics import Metrics
from engram.policy.api import ExplainParams, PrivacyParams
from engram.policy.events import POLICY_EVENTS
from engram.policy.service import PRIVACY_FILE, Policy
from engram.policy.settings import PolicySettings
from engram.server.methods import Method, NoParams, RequestContext

GRANT = '[[rule]]\nname = "grant-4242"\neffect = "allow"\nprincipals = ["uid:4242"]\nactions = ["system.status", "memory.*"]\n'
REMOTE = """
[[rule]]
name = "owner-remote"
effect = "allow"
principals = ["owner"]
actions = ["infer.*"]
providers = ["cloud"]
obligations = ["redact", "audit"]
"""


def _method(name: str, owner_only: bool = False) -> Method:
    async def handler(ctx: Any, params: Any) -> None:
        return None

    return Method(name=name, handler=handler, params=NoParams, result=NoParams, summary="", owner_only=owner_only)


def _ctx(uid: int) -> RequestContext:
    return RequestContext(principal=principal(uid), connection=None, request=1)  # type: ignore[arg-type]


class Harness:
    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.dir = tmp_path / "policy.d"
        self.dir.mkdir(exist_ok=True)
        self.state = tmp_path / "state"
        self.state.mkdir(exist_ok=True)
        self.bus = EventBus((*CORE_EVENTS, *POLICY_EVENTS))
        self.events = self.bus.subscribe(["policy.*"], 1000)
        self.clock = FakeClock()
        self.settings = PolicySettings(files=[self.dir], **settings)
        self.localities = {"onnx": "local", "cloud": "remote"}
        self.part = Policy(
            self.settings, self.state, self.bus, Metrics(), owner_uid=OWNER,
            method_admin=lambda name: {"system.reload": True, "system.status": False, "memory.write": False}.get(name),
            provider_locality=self.localities.get, now=self.clock, monotonic=self.clock.monotonic,
        )

    def drain(self) -> list[Any]:
        out = []
        while (event := self.events.receive_nowait()) is not None:
            out.append(event)
        return out


async def test_guard_denies_by_default_and_publishes_every_decision(tmp_path):
    h = Harness(tmp_path)
    async with h.part:
        started = h.drain()
        assert [e.topic for e in started] == ["policy.reloaded"] and started[0].trigger == "start"
        await h.part.method_guard(principal(OWNER), _method("system.status"))
        with pytest.raises(PolicyDenied) as info:
            await h.part.method_guard(principal(4242), _method("system.status"))
        assert info.value.data == {"reason": "policy_denied", "rule": "default", "method": "system.status", "uid": 4242, "point": "method"}
        with pytest.raises(PolicyDenied) as admin:
            await h.part.method_guard(principal(4242), _method("system.reload", owner_only=True))
        assert admin.value.data["rule"] == "default"
        allowed, denied, denied_admin = h.drain()
        assert (allowed.effect, allowed.rule, allowed.audit) == ("allow", "owner-methods", False)
        assert (denied.effect, denied.rule, denied.audit, denied.principal.uid) == ("deny", "default", True, 4242)
        assert denied_admin.method == "system.reload"
        assert (await h.part.health())[0]


async def test_broken_file_at_start_refuses_to_start(tmp_path):
    h = Harness(tmp_path)
    (h.dir / "bad.toml").write_text('[[rule]]\nname = "x"\neffect = "allow"\nprincipals = ["all"]\n')
    with pytest.raises(StartupError) as info:
        async with h.part:
            pass
    assert f"{h.dir}/bad.toml:4 rule[0].principals[0]" in str(info.value)


async def test_reload_applies_a_grant_and_a_broken_file_keeps_the_old_policy(tmp_path):
    h = Harness(tmp_path)
    async with h.part:
        (h.dir / "grant.toml").write_text(GRANT)
        await h.part.reload()
        await h.part.method_guard(principal(4242), _method("system.status"))
        (h.dir / "grant.toml").write_text(GRANT.replace('effect = "allow"', 'effect = "allow"\nprincipals = ["*"]'))
        (h.dir / "typo.toml").write_text("[[rule]\n")
        h.drain()
        with pytest.raises(Conflict) as info:
            await h.part.reload()
        assert info.value.reason == "invalid_policy"
        problems = {(p["file"], p["line"]) for p in info.value.data["problems"]}
        assert problems == {(f"{h.dir}/grant.toml", 5), (f"{h.dir}/typo.toml", 1)}  # the duplicated key; the bad header
        await h.part.method_guard(principal(4242), _method("system.status"))  # the old grant still holds
        [reloaded, _] = h.drain()
        assert reloaded.topic == "policy.reloaded" and not reloaded.ok and reloaded.files[-1].endswith("grant.toml")
        ok, detail = await h.part.health()
        assert not ok and "previous policy stays in force" in detail
        (h.dir / "typo.toml").unlink()
        (h.dir / "grant.toml").unlink()
        await h.part.reload()
        assert (await h.part.health())[0]
        with pytest.raises(PolicyDenied):
            await h.part.method_guard(principal(4242), _method("system.status"))


async def test_privacy_switch_is_persisted_and_overrides_config(tmp_path):
    h = Harness(tmp_path)
    (h.dir / "remote.toml").write_text(REMOTE)
    async with h.part:
        allowed = await h.part.authorize_egress(principal(OWNER), method="infer.embed", provider="cloud", payload="x")
        assert allowed.allowed and allowed.locality == "remote"
        result = await h.part.privacy(_ctx(OWNER), PrivacyParams(mode="on"))
        assert result.privacy_mode and result.source == "override"
        denied = await h.part.authorize_egress(principal(OWNER), method="infer.embed", provider="cloud", payload="x")
        assert denied.rule == "privacy-mode"
        changed = [e for e in h.drain() if e.topic == "policy.privacy"]
        assert [(e.enabled, e.uid) for e in changed] == [(True, OWNER)]
    assert (h.state / PRIVACY_FILE).exists()
    again = Harness(tmp_path)  # a restart: the switch holds
    async with again.part:
        assert again.part.privacy_mode and again.part.privacy_source == "override"
        result = await again.part.privacy(_ctx(OWNER), PrivacyParams(mode="default"))
        assert not result.privacy_mode and result.source == "default" and result.override is None
    assert not (h.state / PRIVACY_FILE).exists()
    configured = Harness(tmp_path, privacy_mode=True)
    async with configured.part:
        assert configured.part.privacy_source == "config"
        assert not (await configured.part.privacy(_ctx(OWNER), PrivacyParams(mode="off"))).privacy_mode


async def test_egress_redacts_big_payloads_in_a_thread_and_checks_the_declared_locality(tmp_path):
    h = Harness(tmp_path, inline_redaction_bytes=16)
    (h.dir / "remote.toml").write_text(REMOTE)
    async with h.part:
        payload = {"text": "mail ada@example.org " + "x" * 100}
        decision = await h.part.require_egress(principal(OWNER), method="infer.embed", provider="cloud", payload=payload)
        assert decision.payload == {"text": "mail [REDACTED:email] " + "x" * 100}
        assert decision.redactions == {"email": 1} and decision.size > 100
        # The caller says local, the installed provider says remote: remote it is.
        assert (await h.part.authorize_egress(principal(OWNER), method="infer.embed", provider="cloud", locality="local")).locality == "remote"
        # Unknown provider, nothing declared: remote.
        unknown = await h.part.authorize_egress(principal(OWNER), method="infer.embed", provider="mystery")
        assert unknown.locality == "remote" and unknown.rule == "default"
        with pytest.raises(PolicyDenied) as info:
            await h.part.require_egress(principal(OWNER), method="infer.embed", provider="mystery")
        assert info.value.data["provider"] == "mystery" and info.value.data["point"] == "egress"
        events = [e for e in h.drain() if e.topic == "policy.decision"]
        assert events[0].redactions == {"email": 1} and events[0].audit  # the audit obligation marks it


async def test_namespace_check_uses_the_method_it_is_given(tmp_path):
    h = Harness(tmp_path)
    (h.dir / "grant.toml").write_text(GRANT)
    async with h.part:
        assert h.part.namespace_allowed(principal(4242), "memory.write", "uid:4242")
        assert not h.part.namespace_allowed(principal(4242), "memory.write", "uid:1")
        assert h.part.namespace_allowed(principal(OWNER), "memory.write", "uid:1")
        with pytest.raises(PolicyDenied) as info:
            h.part.require_namespace(principal(4242), "memory.write", "shared:x")
        assert info.value.data["namespace"] == "shared:x" and info.value.data["method"] == "memory.write"


async def test_namespace_allows_are_published_only_when_someone_takes_them(tmp_path):
    h = Harness(tmp_path)
    async with h.part:
        h.drain()
        for _ in range(2):
            assert h.part.namespace_allowed(principal(OWNER), "memory.write", "uid:1")
        first, second = h.drain()
        assert (first.point, first.effect, first.method, first.namespace) == ("namespace", "allow", "memory.write", "uid:1")
        assert (second.point, second.namespace) == ("namespace", "uid:1") and second is not first
        # Only a subscriber like the audit log's, which admits no routine allow: none is made.
        h.bus.unsubscribe(h.events, "test over")
        h.bus.subscribe(["policy.*"], 10, admits=lambda event: event.audit)
        published = h.bus.published
        assert h.part.namespace_allowed(principal(OWNER), "memory.write", "uid:1")
        assert h.bus.published == published


async def test_explain(tmp_path):
    h = Harness(tmp_path)
    (h.dir / "remote.toml").write_text(REMOTE)
    async with h.part:
        out = await h.part.explain(_ctx(OWNER), ExplainParams(method="system.status", uid=4242))
        assert (out.effect, out.rule, out.uid, out.method_known, out.admin_method) == ("deny", "default", 4242, True, False)
        egress = await h.part.explain(
            _ctx(OWNER), ExplainParams(method="infer.embed", provider="cloud", payload={"q": "call +33 6 12 34 56 78"})
        )
        assert egress.effect == "allow" and egress.rule == "owner-remote" and egress.locality == "remote"
        assert egress.payload == {"q": "call [REDACTED:phone]"} and egress.obligations == ["audit", "redact"]
        assert [e for e in h.drain() if e.topic == "policy.decision"] == []  # explaining decides nothing
        with pytest.raises(PolicyDenied):
            await h.part.explain(_ctx(4242), ExplainParams(method="system.status", uid=OWNER))
        own = await h.part.explain(_ctx(4242), ExplainParams(method="system.ping"))
        assert own.effect == "deny" and own.rule == "default"  # other uids: nothing until granted
        with pytest.raises(ValueError):
            ExplainParams(method="x", namespace="a", provider="b")
