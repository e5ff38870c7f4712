"""Rule matching, deny overrides, obligations, admin methods, privacy mode and egress decisions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engram.errors import PolicyDenied
from engram.policy.engine import AccessRequest

from policyhelp import OWNER, principal

# One policy file exercising every kind of match; the table below asks it questions.
GRANTS = """
version = 1
name = "grants"

[[rule]]
name = "uid-1001-memory"
effect = "allow"
principals = ["uid:1001"]
actions = ["memory.*", "system.status"]

[[rule]]
name = "gid-2000-status"
effect = "allow"
principals = ["gid:2000"]
actions = ["system.status", "system.health"]

[[rule]]
name = "ada-events"
effect = "allow"
principals = ["user:ada"]
actions = ["events.subscribe", "events.unsubscribe"]

[[rule]]
name = "family-infer"
effect = "allow"
principals = ["group:family"]
actions = ["infer.embed"]

[[rule]]
name = "question-glob"
effect = "allow"
principals = ["uid:1002"]
actions = ["models.?ist", "system.[hs]*"]

[[rule]]
name = "shared-namespace"
effect = "allow"
principals = ["uid:1001", "group:family"]
actions = ["memory.*"]
namespaces = ["shared:*", "user:{user}"]

[[rule]]
name = "weekday-batch"
effect = "allow"
principals = ["uid:1500"]
actions = ["infer.*"]
[rule.when.time]
days = ["mon", "tue", "wed", "thu", "fri"]
start = "09:00"
end = "17:00"
timezone = "UTC"

[[rule]]
name = "night-batch"
effect = "allow"
principals = ["uid:1501"]
actions = ["infer.*"]
[rule.when.time]
days = ["fri"]
start = "22:00"
end = "06:00"
timezone = "UTC"

[[rule]]
name = "openai-for-owner"
effect = "allow"
principals = ["owner"]
actions = ["infer.*"]
providers = ["openai*"]
locality = ["remote"]
obligations = ["redact"]

[[rule]]
name = "no-health-out"
effect = "deny"
principals = ["*"]
actions = ["*"]
locality = ["remote"]
when = { tags_any = ["health"] }

[[rule]]
name = "gpt-only-untagged"
effect = "allow"
principals = ["uid:1001"]
actions = ["infer.generate"]
providers = ["openai"]
models = ["gpt-*"]
when = { tags_none = ["personal"] }
obligations = ["audit"]

[[rule]]
name = "quiet-only-when-private"
effect = "allow"
principals = ["uid:1003"]
actions = ["system.status"]
when = { privacy_mode = true }
"""

M, N, E = "method", "namespace", "egress"
ADA = principal(1001, 1001, "ada")


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    # 2025-01-06 is a Monday: day 0 = Monday ... 6 = Sunday.
    return datetime(2025, 1, 6 + day, hour, minute, tzinfo=UTC)


# (description, request kwargs, principal, time, expected effect, expected deciding rule)
CASES = [
    ("owner may call anything", dict(point=M, action="memory.write"), principal(OWNER), None, "allow", "owner-methods"),
    ("root may call anything", dict(point=M, action="system.status"), principal(0), None, "allow", "owner-methods"),
    ("stranger: nothing by default", dict(point=M, action="system.status"), principal(4242), None, "deny", "default"),
    ("stranger: not even ping", dict(point=M, action="system.ping"), principal(4242), None, "deny", "default"),
    ("uid match", dict(point=M, action="memory.search"), principal(1001), None, "allow", "uid-1001-memory"),
    ("uid match, other method", dict(point=M, action="infer.embed"), principal(1001), None, "deny", "default"),
    ("gid match", dict(point=M, action="system.health"), principal(3000, 2000), None, "allow", "gid-2000-status"),
    ("user name match", dict(point=M, action="events.subscribe"), ADA, None, "allow", "ada-events"),
    ("user name needs the name", dict(point=M, action="events.subscribe"), principal(1001), None, "deny", "default"),
    ("group match (supplementary)", dict(point=M, action="infer.embed"), principal(1700), None, "allow", "family-infer"),
    ("glob with ?", dict(point=M, action="models.list"), principal(1002), None, "allow", "question-glob"),
    ("glob with class", dict(point=M, action="system.status"), principal(1002), None, "allow", "question-glob"),
    ("glob class excludes", dict(point=M, action="system.metrics"), principal(1002), None, "deny", "default"),
    ("glob is anchored", dict(point=M, action="xmodels.list"), principal(1002), None, "deny", "default"),
    ("own namespace", dict(point=N, action="memory.write", namespace="uid:1001"), principal(1001), None, "allow", "own-namespace"),
    ("other's namespace", dict(point=N, action="memory.write", namespace="uid:1002"), principal(1001), None, "deny", "default"),
    ("shared namespace glob", dict(point=N, action="memory.write", namespace="shared:team"), principal(1001), None, "allow", "shared-namespace"),
    ("{user} is the caller's name", dict(point=N, action="memory.read", namespace="user:ada"), ADA, None, "allow", "shared-namespace"),
    ("{user} is not someone else's", dict(point=N, action="memory.read", namespace="user:bob"), ADA, None, "deny", "default"),
    ("owner: every namespace", dict(point=N, action="memory.read", namespace="uid:1001"), principal(OWNER), None, "allow", "owner-namespaces"),
    ("time window inside", dict(point=M, action="infer.embed"), principal(1500), _at(2, 10), "allow", "weekday-batch"),
    ("time window: end exclusive", dict(point=M, action="infer.embed"), principal(1500), _at(2, 17), "deny", "default"),
    ("time window: weekend", dict(point=M, action="infer.embed"), principal(1500), _at(5, 10), "deny", "default"),
    ("overnight window, evening", dict(point=M, action="infer.embed"), principal(1501), _at(4, 23), "allow", "night-batch"),
    ("overnight window, next morning", dict(point=M, action="infer.embed"), principal(1501), _at(5, 5), "allow", "night-batch"),
    ("overnight window, wrong night", dict(point=M, action="infer.embed"), principal(1501), _at(3, 23), "deny", "default"),
    ("local provider", dict(point=E, action="infer.embed", provider="onnx", locality="local"), principal(OWNER), None, "allow", "local-providers"),
    ("remote: denied by default", dict(point=E, action="infer.embed", provider="anthropic", locality="remote"), principal(OWNER), None, "deny", "default"),
    ("remote provider glob", dict(point=E, action="infer.embed", provider="openai-eu", locality="remote"), principal(OWNER), None, "allow", "openai-for-owner"),
    ("data tag deny overrides", dict(point=E, action="infer.embed", provider="openai", locality="remote", tags=frozenset({"health"})), principal(OWNER), None, "deny", "no-health-out"),
    ("model glob + untagged", dict(point=E, action="infer.generate", provider="openai", locality="remote", model="gpt-4o"), principal(1001), None, "allow", "gpt-only-untagged"),
    ("model glob mismatch", dict(point=E, action="infer.generate", provider="openai", locality="remote", model="o1"), principal(1001), None, "deny", "default"),
    ("model required by rule", dict(point=E, action="infer.generate", provider="openai", locality="remote"), principal(1001), None, "deny", "default"),
    ("tags_none excludes", dict(point=E, action="infer.generate", provider="openai", locality="remote", model="gpt-4o", tags=frozenset({"personal"})), principal(1001), None, "deny", "default"),
    ("privacy condition unmet", dict(point=M, action="system.status"), principal(1003), None, "deny", "default"),
]


@pytest.mark.parametrize(("request_kwargs", "who", "when", "effect", "rule"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_matching_table(make_engine, clock, request_kwargs, who, when, effect, rule):
    engine = make_engine(GRANTS, groups={1700: frozenset({"family"})})
    if when is not None:
        clock.value = when
    decision = engine.decide(AccessRequest(principal=who, **request_kwargs))
    assert (decision.effect, decision.rule) == (effect, rule), decision.reason


def test_a_rule_speaks_only_for_the_resources_it_names(make_engine):
    engine = make_engine(GRANTS)
    # uid-1001-memory grants the methods, not every namespace; shared-namespace grants
    # namespaces, not the methods of other uids.
    assert engine.authorize_method(principal(1001), "memory.write").allowed
    assert not engine.authorize_namespace(principal(1001), "memory.write", "uid:7").allowed
    assert not engine.authorize_method(principal(1700), "memory.write").allowed
    # and no method rule lets data leave
    _, decision = engine.decide_egress(principal(1001), method="memory.write", provider="x", locality="remote")
    assert decision.rule == "default" and not decision.allowed


def test_namespace_decision_inherits_a_denied_method(make_engine):
    engine = make_engine()
    decision = engine.authorize_namespace(principal(4242), "memory.write", "uid:4242")
    assert not decision.allowed and decision.point == "namespace" and decision.rule == "default"
    assert "memory.write itself is not allowed" in decision.reason


DENY_OVERRIDES = """
version = 1
[[rule]]
name = "allow-all-4242"
effect = "allow"
principals = ["uid:4242"]
actions = ["*"]
obligations = ["audit"]

[[rule]]
name = "deny-metrics-anyone"
effect = "deny"
principals = ["*"]
actions = ["system.metrics"]

[[rule]]
name = "deny-metrics-4242"
effect = "deny"
principals = ["uid:4242"]
actions = ["system.*"]
obligations = ["audit"]
"""


def test_deny_overrides_allow_whatever_the_order(make_engine):
    engine = make_engine(DENY_OVERRIDES)
    decision = engine.authorize_method(principal(4242), "system.metrics")
    assert decision.effect == "deny" and decision.rule == "deny-metrics-anyone"
    assert [m.name for m in decision.matched] == ["allow-all-4242", "deny-metrics-anyone", "deny-metrics-4242"]
    # a deny matching the owner beats the owner's allow too
    assert engine.authorize_method(principal(OWNER), "system.metrics").rule == "deny-metrics-anyone"
    assert engine.authorize_method(principal(4242), "memory.write").rule == "allow-all-4242"
    # denials are always audit-worthy
    assert decision.audit


def test_obligations_are_the_union_of_every_matching_allow(make_engine):
    engine = make_engine(
        """
version = 1
[[rule]]
name = "a"
effect = "allow"
principals = ["uid:5"]
actions = ["infer.*"]
obligations = ["redact"]
[[rule]]
name = "b"
effect = "allow"
principals = ["*"]
actions = ["infer.embed"]
obligations = ["audit", "local_only"]
[[rule]]
name = "c"
effect = "allow"
principals = ["uid:6"]
actions = ["infer.embed"]
obligations = ["audit"]
"""
    )
    decision = engine.authorize_method(principal(5), "infer.embed")
    assert decision.rule == "a" and decision.obligations == {"redact", "audit", "local_only"}
    assert decision.audit
    routine = engine.authorize_method(principal(OWNER), "system.status")
    assert routine.obligations == frozenset() and not routine.audit


ADMIN = """
version = 1
[[rule]]
name = "broad"
effect = "allow"
principals = ["uid:1001"]
actions = ["system.*"]

[[rule]]
name = "reload-for-1002"
effect = "allow"
principals = ["uid:1002"]
actions = ["system.reload"]
admin = true
"""


def test_admin_methods_need_an_explicit_admin_grant(make_engine):
    engine = make_engine(ADMIN)
    broad = engine.authorize_method(principal(1001), "system.reload")
    assert broad.effect == "deny" and broad.rule == "owner-only" and "admin = true" in broad.reason
    assert engine.authorize_method(principal(1001), "system.status").allowed
    assert engine.authorize_method(principal(1002), "system.reload").rule == "reload-for-1002"
    assert engine.authorize_method(principal(4242), "system.reload").rule == "default"


def test_owner_and_root_can_always_repair_the_policy(make_engine):
    engine = make_engine(
        """
version = 1
[[rule]]
name = "lock-everyone-out"
effect = "deny"
principals = ["*"]
actions = ["*"]
""",
        base=None,
    )
    assert engine.authorize_method(principal(OWNER), "system.status").rule == "lock-everyone-out"
    for who in (principal(OWNER), principal(0)):
        for method in ("policy.reload", "policy.show", "policy.explain", "policy.privacy", "system.reload"):
            assert engine.authorize_method(who, method).rule == "builtin:owner-repair"
    assert engine.authorize_method(principal(4242), "policy.reload").rule == "lock-everyone-out"


def test_base_none_allows_nothing(make_engine):
    engine = make_engine(base=None)
    assert engine.authorize_method(principal(OWNER), "system.status").rule == "default"
    assert engine.authorize_method(principal(OWNER), "system.ping").rule == "default"


def test_denial_error_names_rule_method_and_uid(make_engine):
    engine = make_engine()
    request = AccessRequest("method", principal(4242), "system.status")
    error = engine.decide(request).denial(request)
    assert isinstance(error, PolicyDenied) and error.code == -32001
    assert error.data == {"reason": "policy_denied", "rule": "default", "method": "system.status", "uid": 4242, "point": "method"}


def test_decision_cache_follows_privacy_and_skips_timed_rules(make_engine, clock):
    private = [False]
    engine = make_engine(privacy=lambda: private[0])
    assert engine.authorize_method(principal(OWNER), "infer.embed").obligations == frozenset()
    private[0] = True
    assert engine.authorize_method(principal(OWNER), "infer.embed").obligations == {"local_only"}
    timed = make_engine(GRANTS)
    clock.value = _at(2, 10)
    assert timed.authorize_method(principal(1500), "infer.embed").allowed
    clock.value = _at(2, 20)
    assert not timed.authorize_method(principal(1500), "infer.embed").allowed


# --- privacy mode and egress --------------------------------------------------------------------

REMOTE = """
version = 1
[[rule]]
name = "owner-remote"
effect = "allow"
principals = ["owner", "uid:1001"]
actions = ["infer.*"]
providers = ["openai"]
obligations = ["redact"]

[[rule]]
name = "1001-infer-local-only"
effect = "allow"
principals = ["uid:1001"]
actions = ["infer.*"]
obligations = ["local_only"]
"""


def test_privacy_mode_overrides_an_allow(make_engine):
    private = [False]
    engine = make_engine(REMOTE, privacy=lambda: private[0])
    allowed = engine.authorize_egress(principal(OWNER), method="infer.embed", provider="openai", locality="remote", payload="x")
    assert allowed.allowed and allowed.rule == "owner-remote"
    private[0] = True
    denied = engine.authorize_egress(principal(OWNER), method="infer.embed", provider="openai", locality="remote", payload="x")
    assert denied.effect == "deny" and denied.rule == "privacy-mode" and denied.payload is None
    # local targets stay allowed, with the local_only obligation attached
    local = engine.authorize_egress(principal(OWNER), method="infer.embed", provider="onnx", locality="local")
    assert local.allowed and "local_only" in local.obligations
    assert "local_only" in engine.authorize_method(principal(OWNER), "system.status").obligations


def test_local_only_obligation_of_the_method_denies_remote_egress(make_engine):
    engine = make_engine(REMOTE)
    decision = engine.authorize_egress(principal(1001), method="infer.embed", provider="openai", locality="remote")
    assert decision.effect == "deny" and decision.rule == "1001-infer-local-only"
    local = engine.authorize_egress(principal(1001), method="infer.embed", provider="onnx", locality="local")
    assert local.allowed and local.rule == "local-providers"


def test_egress_inherits_a_denied_method(make_engine):
    engine = make_engine(REMOTE)
    decision = engine.authorize_egress(principal(4242), method="infer.embed", provider="onnx", locality="local")
    assert decision.effect == "deny" and decision.rule == "default" and decision.point == "egress"
    assert "infer.embed itself is not allowed" in decision.reason


def test_allowed_egress_payload_is_redacted_when_obliged(make_engine):
    engine = make_engine(REMOTE)
    payload = {"messages": [{"role": "user", "content": "mail ada@example.org, card 4111 1111 1111 1111"}], "n": 3}
    decision = engine.authorize_egress(principal(OWNER), method="infer.generate", provider="openai", locality="remote", payload=payload)
    assert decision.allowed and "redact" in decision.obligations
    assert decision.payload == {
        "messages": [{"role": "user", "content": "mail [REDACTED:email], card [REDACTED:payment_card]"}],
        "n": 3,
    }
    assert decision.redactions == {"email": 1, "payment_card": 1}
    assert payload["messages"][0]["content"].startswith("mail ada@")  # the caller's copy is untouched
    local = engine.authorize_egress(principal(OWNER), method="infer.embed", provider="onnx", locality="local", payload=payload)
    assert local.payload == payload and local.redactions == {}


def test_egress_decision_error_is_a_policy_denial(make_engine):
    engine = make_engine()
    decision = engine.authorize_egress(principal(OWNER), method="infer.embed", provider="openai", locality="remote")
    error = decision.error()
    assert error.code == -32001 and error.data["rule"] == "default"
    assert error.data["provider"] == "openai" and error.data["locality"] == "remote" and error.data["point"] == "egress"


CLIENTS = """
version = 1

[[rule]]
name = "agent-may-recall"
effect = "allow"
principals = ["uid:4242"]
actions = ["memory.recall"]
when = { clients = ["agent-*"] }

[[rule]]
name = "no-forgetting-through-the-browser"
effect = "deny"
principals = ["owner"]
actions = ["memory.forget"]
when = { clients = ["browser-extension"] }
"""


def test_client_names_narrow_but_never_admit_alone(make_engine):
    engine = make_engine(CLIENTS)
    bare, agent = principal(4242), principal(4242).model_copy(update={"client": "agent-7"})
    assert engine.authorize_method(bare, "memory.recall").effect == "deny"  # no name: the rule does not match
    assert engine.authorize_method(agent, "memory.recall").rule == "agent-may-recall"
    assert engine.authorize_method(agent.model_copy(update={"client": "other"}), "memory.recall").effect == "deny"
    owner = principal(OWNER)
    assert engine.authorize_method(owner, "memory.forget").effect == "allow"
    browser = owner.model_copy(update={"client": "browser-extension"})
    assert engine.authorize_method(browser, "memory.forget").rule == "no-forgetting-through-the-browser"


def test_an_allow_on_a_client_name_alone_is_refused():
    from engram.policy.loader import parse_policy

    with pytest.raises(Exception, match="verified principals"):
        parse_policy(
            'version = 1\n[[rule]]\nname = "x"\neffect = "allow"\nprincipals = ["*"]\nwhen = { clients = ["a"] }\n',
            "bad.toml",
        )


TIMED_NAMESPACE = """
version = 1
[[rule]]
name = "office-hours-notes"
effect = "allow"
principals = ["uid:1600"]
actions = ["memory.*"]
namespaces = ["shared:notes"]
[rule.when.time]
days = ["mon", "tue", "wed", "thu", "fri"]
start = "09:00"
end = "17:00"
timezone = "UTC"
"""


def test_namespace_decisions_are_remembered_unless_timed(make_engine, clock):
    engine = make_engine(GRANTS)
    first = engine.authorize_namespace(principal(1001), "memory.recall", "shared:notes")
    assert first.allowed and engine.authorize_namespace(principal(1001), "memory.recall", "shared:notes") is first
    private = [False]
    switching = make_engine(GRANTS, privacy=lambda: private[0])
    assert switching.authorize_namespace(principal(1001), "memory.recall", "shared:x").obligations == frozenset()
    private[0] = True
    assert switching.authorize_namespace(principal(1001), "memory.recall", "shared:x").obligations == {"local_only"}
    timed = make_engine(GRANTS, TIMED_NAMESPACE)
    clock.value = _at(2, 10)  # the namespace rules alone: uid 1600 is granted no method here
    assert timed.authorize_namespace(principal(1600), "memory.recall", "shared:notes", check_method=False).allowed
    clock.value = _at(2, 20)
    assert not timed.authorize_namespace(principal(1600), "memory.recall", "shared:notes", check_method=False).allowed
