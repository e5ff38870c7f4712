"""Temporal rules: the formula grammar and its errors, [[temporal]] tables in policy files, the
rules over a stream (deny, alert, obligation), and `engram policy rules test` over a recorded log."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from engram.policy.cli import policy as policy_cli
from engram.policy.loader import PolicyError, PolicySet, check_files, parse_policy
from engram.policy.model import PolicyFile
from engram.policy.mtl import And, Count, FormulaError, Not, Once, Or, Since, parse, topics_of
from engram.policy.temporal import Guarded, TemporalRules, replay
from engram.principal import Principal

OWNER = Principal(uid=1000, gid=1000, user="ada")

# --- the grammar ---------------------------------------------------------------------------------


def test_operators_and_precedence():
    node = parse('not event("a") and once[1s, 2m] event("b", x >= 2) or event("c") since[5s] event("d")')
    assert isinstance(node, Or)
    first, second = node.children
    assert isinstance(first, And) and isinstance(first.children[0], Not)
    once = first.children[1]
    assert isinstance(once, Once) and (once.low, once.high) == (1.0, 120.0)
    assert isinstance(second, Since) and (second.low, second.high) == (0.0, 5.0)
    assert topics_of(node) == {"a", "b", "c", "d"}


def test_durations_windows_and_defaults():
    assert parse('once event("a")') == Once(0.0, math.inf, parse('event("a")'))
    assert parse('once[2h, inf] event("a")').low == 7200.0
    assert parse('once[250ms] event("a")').high == 0.25
    count = parse('count[1d] event("a", principal.uid in [1, 2]) <= 7')
    assert isinstance(count, Count) and (count.window, count.op, count.n) == (86400.0, "<=", 7)
    historically = parse('historically[10m] not event("a")')
    assert historically == Not(Once(0.0, 600.0, Not(Not(parse('event("a")')))))


def test_conditions_compare_like_json():
    atom = parse('event("memory.*", tags contains "health", principal.uid = 1000, ok = true, n != 1, name matches "x-*")')
    event = {"topic": "memory.recalled", "tags": ["health"], "principal": {"uid": 1000}, "ok": True, "n": 2, "name": "x-1"}
    assert atom.holds(event)
    assert not atom.holds({**event, "ok": 1})  # true is not 1
    assert not atom.holds({**event, "topic": "policy.decision"})
    assert not atom.holds({**event, "name": "y-1"})
    assert parse('event("a", n > 2)').holds({"topic": "a", "n": 2.5})
    assert not parse('event("a", n > 2)').holds({"topic": "a", "n": "3"})  # a string is no number


@pytest.mark.parametrize(
    ("text", "column", "words"),
    [
        ('once[0s,10m] evnt("x")', 14, "expected an event(...)"),
        ('count[1h] event("x")', 21, "expected a comparison"),
        ('count event("x") > 1', 7, "count needs a window"),
        ('count[1h] event("x") > many', 24, "whole number"),
        ('once[5s,1s] event("x")', 9, "ends before it starts"),
        ('once[5 fortnights] event("x")', 8, "expected ',' or ']'"),
        ('(event("x")', 12, "expected ')'"),
        ('event("x") since event("y") since event("z")', 29, "does not chain"),
        ('event(x)', 7, "topic in double quotes"),
        ('event("x", tags ~ "a")', 17, "unexpected character"),
        ('event("x", n < "a")', 16, "compares with a number"),
        ('event("x", n in 3)', 17, "needs a list"),
        ('event("x") event("y")', 12, "expected 'and', 'or'"),
        ("", 1, "ends too early"),
        ('once[-1s] event("x")', 6, "cannot be negative"),
        ('count[1h] event("x") > 100001', 24, "at most 100000"),
        ('once[400d] event("x")', 6, "at most 366 days"),
    ],
)
def test_errors_say_where_and_what(text: str, column: int, words: str):
    with pytest.raises(FormulaError) as info:
        parse(text)
    assert info.value.column == column
    assert words in str(info.value)
    assert str(info.value).splitlines()[-1].index("^") == column + 1  # the caret under the column


def test_nesting_is_bounded():
    with pytest.raises(FormulaError, match="nests deeper"):
        parse("not " * 200 + 'event("x")')


# --- [[temporal]] in policy files -----------------------------------------------------------------

GOOD = """version = 1

[[temporal]]
name = "no-remote-after-health"
description = "health data stays home"
effect = "deny"
when = 'once[0s, 10m] event("memory.recalled", tags contains "health")'
on = { point = "egress", locality = ["remote"] }

[[temporal]]
name = "forget-rate"
effect = "deny"
when = 'count[1h] event("memory.forgotten") >= 3'
on = { actions = ["memory.forget"] }

[[temporal]]
name = "forget-then-checkpoint"
effect = "alert"
every = 'event("memory.forgotten")'
followed_by = 'event("audit.checkpoint")'
within = "60s"
"""


def test_a_valid_file_and_its_schema():
    policy = parse_policy(GOOD, "t.toml")
    assert [t.name for t in policy.temporal] == ["no-remote-after-health", "forget-rate", "forget-then-checkpoint"]
    assert policy.temporal[2].within == 60.0
    schema = PolicyFile.model_json_schema()
    assert "temporal" in schema["properties"]
    assert set(schema["$defs"]["TemporalRule"]["properties"]) >= {"when", "on", "every", "followed_by", "within", "effect"}


def _issue(text: str):
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "t.toml")
    [issue] = info.value.issues
    return issue


def test_a_bad_formula_names_the_rule_the_key_the_line_and_the_column():
    issue = _issue(GOOD.replace('count[1h] event("memory.forgotten") >= 3', 'count[1h] evnt("memory.forgotten") >= 3'))
    assert (issue.key, issue.line) == ("temporal[1].when", 13)
    assert issue.message.startswith("rule 'forget-rate': when: column 11: expected an event(...)")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (('on = { actions = ["memory.forget"] }', ""), "a deny rule needs on"),
        (('effect = "alert"\nevery', 'effect = "deny"\nevery'), "checked after the fact"),
        (('within = "60s"', ""), "needs when, or all of every"),
        (('within = "60s"', 'within = "60s"\nwhen = \'event("x")\''), "either when, or every"),
        (('on = { point = "egress", locality = ["remote"] }', 'on = { locality = ["remote"] }'), 'set point = \\"egress\\"'),
        (('name = "forget-rate"', 'name = "forget-then-checkpoint"'), "two rules are named"),
    ],
)
def test_bad_rules_are_refused_clearly(change: tuple[str, str], words: str):
    issue = _issue(GOOD.replace(*change))
    assert words.replace('\\"', '"') in issue.message


def test_temporal_and_plain_rules_share_names_across_files(tmp_path: Path):
    one = tmp_path / "one.toml"
    one.write_text('version = 1\n[[rule]]\nname = "forget-rate"\neffect = "allow"\nprincipals = ["owner"]\n')
    two = tmp_path / "two.toml"
    two.write_text(GOOD)
    with pytest.raises(PolicyError) as info:
        check_files([(one, None), (two, None)])
    [issue] = info.value.issues
    assert issue.key == "temporal[1].name" and "already used" in issue.message


# --- the rules over a stream ----------------------------------------------------------------------


def _rules(text: str = GOOD) -> TemporalRules:
    from engram.policy.loader import LoadedFile

    policy = parse_policy(text, "t.toml")
    return TemporalRules(PolicySet([LoadedFile("t.toml", Path("t.toml"), "0", policy)]), owner_uid=1000)


def test_deny_after_a_health_recall_for_ten_minutes():
    rules = _rules()
    remote = Guarded("egress", OWNER, "infer.generate", "openai", "remote")
    local = Guarded("egress", OWNER, "infer.generate", "llama", "local")
    assert rules.check(remote, 100.0) is None
    rules.observe({"topic": "memory.recalled", "tags": ["work"], "principal": {"uid": 1000}}, 101.0, "memory.recalled")
    assert rules.check(remote, 102.0) is None
    rules.observe({"topic": "memory.recalled", "tags": ["health"], "principal": {"uid": 1000}}, 110.0, "memory.recalled")
    denied = rules.check(remote, 111.0)
    assert denied is not None and denied.rule == "no-remote-after-health" and denied.effect == "deny"
    assert denied.events == [{"topic": "memory.recalled", "time": 110.0, "uid": 1000, "tags": "health"}]
    assert "health data stays home" in denied.message
    assert rules.check(local, 111.0) is None  # the guard names remote providers only
    assert rules.check(remote, 110.0 + 600.0) is not None  # the interval is closed
    assert rules.check(remote, 110.0 + 600.5) is None


def test_at_most_n_forgets_per_hour():
    rules = _rules()
    forget = Guarded("method", OWNER, "memory.forget")
    for t in (0.0, 10.0, 20.0):
        assert rules.check(forget, t) is None
        rules.observe({"topic": "memory.forgotten"}, t, "memory.forgotten")
    denied = rules.check(forget, 30.0)
    assert denied is not None and [e["time"] for e in denied.events] == [0.0, 10.0, 20.0]
    assert rules.check(Guarded("method", OWNER, "memory.recall"), 30.0) is None
    assert rules.check(forget, 3600.0) is not None
    assert rules.check(forget, 3600.5) is None  # the first one left the hour


def test_an_obligation_alerts_when_its_deadline_passes():
    rules = _rules()
    assert rules.observe({"topic": "memory.forgotten", "namespace": "n"}, 0.0, "memory.forgotten") == []
    assert rules.next_deadline() == 60.0
    assert rules.observe({"topic": "audit.checkpoint"}, 59.0, "audit.checkpoint") == []  # met in time
    assert rules.next_deadline() is None
    rules.observe({"topic": "memory.forgotten"}, 100.0, "memory.forgotten")
    assert rules.expire(160.0) == []  # exactly at the deadline is still in time
    [alert] = rules.expire(160.5)
    assert (alert.rule, alert.kind, alert.time) == ("forget-then-checkpoint", "deadline", 160.0)
    assert alert.events == [{"topic": "memory.forgotten", "time": 100.0}]
    # A checkpoint after the deadline closes nothing.
    rules.observe({"topic": "memory.forgotten"}, 200.0, "memory.forgotten")
    late = rules.observe({"topic": "audit.checkpoint"}, 261.0, "audit.checkpoint")
    assert [v.time for v in late] == [260.0]


def test_an_alert_rule_fires_at_each_event_where_it_holds():
    rules = _rules(
        'version = 1\n[[temporal]]\nname = "remote-after-health"\neffect = "alert"\n'
        "when = 'event(\"policy.decision\", point = \"egress\", locality = \"remote\") and "
        "once[0s, 10m] event(\"memory.recalled\", tags contains \"health\")'\n"
    )
    egress = {"topic": "policy.decision", "point": "egress", "locality": "remote", "principal": {"uid": 1000}}
    assert rules.observe(egress, 1.0, "policy.decision") == []
    rules.observe({"topic": "memory.recalled", "tags": ["health"]}, 2.0, "memory.recalled")
    [alert] = rules.observe(egress, 3.0, "policy.decision")
    assert [e["topic"] for e in alert.events] == ["policy.decision", "memory.recalled"]
    assert rules.observe({"topic": "memory.recalled", "tags": []}, 4.0, "memory.recalled") == []


def test_a_reload_keeps_the_state_of_unchanged_rules_only():
    rules = _rules()
    rules.observe({"topic": "memory.recalled", "tags": ["health"]}, 5.0, "memory.recalled")
    remote = Guarded("egress", OWNER, "infer.generate", "openai", "remote")
    from engram.policy.loader import LoadedFile

    same = TemporalRules(PolicySet([LoadedFile("t.toml", Path("t.toml"), "0", parse_policy(GOOD, "t.toml"))]),
                         owner_uid=1000, previous=rules)
    assert same.check(remote, 6.0) is not None
    changed_text = GOOD.replace("once[0s, 10m]", "once[0s, 20m]")
    changed = TemporalRules(PolicySet([LoadedFile("t.toml", Path("t.toml"), "0", parse_policy(changed_text, "t.toml"))]),
                            owner_uid=1000, previous=rules)
    assert changed.check(remote, 6.0) is None


def test_time_never_goes_back():
    rules = _rules()
    rules.observe({"topic": "memory.recalled", "tags": ["health"]}, 1000.0, "memory.recalled")
    # An event stamped earlier counts as happening at the latest time seen.
    rules.observe({"topic": "memory.recalled", "tags": ["health"]}, 10.0, "memory.recalled")
    denied = rules.check(Guarded("egress", OWNER, "x", "p", "remote"), 1000.0)
    assert denied is not None and denied.events[0]["time"] == 1000.0


# --- replay and `engram policy rules test` -------------------------------------------------------


def _log(tmp_path: Path) -> Path:
    def wire(topic: str, t: float, **data):
        return json.dumps({"topic": topic, "time": t, "data": data})

    decision = {"point": "egress", "effect": "allow", "method": "infer.generate", "provider": "openai", "locality": "remote",
                "principal": {"uid": 1000, "gid": 1000, "user": "ada"}}
    lines = [
        wire("policy.decision", 1.0, **decision),  # before any recall: fine
        wire("memory.recalled", 2.0, namespace="default", ids=["e1"], tags=["health"], principal={"uid": 1000, "gid": 1000}),
        wire("policy.decision", 3.0, **decision),  # would have been denied
        wire("memory.forgotten", 4.0, namespace="default", ids=["e1"], text_hmac=["h"], scope="ids"),
        wire("audit.checkpoint", 30.0, size=3, root="r", key_id="k"),
        wire("memory.forgotten", 40.0, namespace="default", ids=["e2"], text_hmac=["h"], scope="ids"),
        wire("policy.decision", 700.0, **decision),  # out of the 10 minutes; the forget at 40 is overdue
        wire("memory.forgotten", 701.0, namespace="default", ids=["e3"], text_hmac=["h"], scope="ids"),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_replay_finds_what_the_rules_would_have_done(tmp_path: Path):
    rules = _rules()
    events = [json.loads(line) for line in _log(tmp_path).read_text().splitlines()]
    found, count = replay(rules, events, 1000)
    assert count == 8
    assert [(v.rule, v.time) for v in found] == [("no-remote-after-health", 3.0), ("forget-then-checkpoint", 100.0)]
    assert [v.time for v in rules.open_obligations()] == [761.0]


def test_the_cli_prints_each_violation_with_its_events(tmp_path: Path):
    policy = tmp_path / "temporal.toml"
    policy.write_text(GOOD)
    log = _log(tmp_path)
    result = CliRunner().invoke(policy_cli, ["rules", "test", str(policy), "--events", str(log)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0] == "8 events, 3 temporal rules, 2 violations"
    assert lines[1].startswith("no-remote-after-health (deny, ") and lines[1].endswith(": 1 violations")
    assert "3.000 DENY  no-remote-after-health" in lines[2]
    assert "2.000 memory.recalled" in lines[3] and '"tags": "health"' in lines[3]
    assert any("forget-then-checkpoint (alert" in line and "1 still open at the end" in line for line in lines)
    as_json = CliRunner().invoke(policy_cli, ["rules", "test", str(policy), "--events", str(log), "--json"])
    report = json.loads(as_json.output)
    assert report["violations"] == 2 and report["rules"][1]["violations"] == []
    assert report["rules"][0]["violations"][0]["events"][0]["topic"] == "memory.recalled"


def test_the_cli_exits_0_when_nothing_fires_and_2_on_bad_input(tmp_path: Path):
    policy = tmp_path / "temporal.toml"
    policy.write_text(GOOD)
    quiet = tmp_path / "quiet.jsonl"
    quiet.write_text(json.dumps({"topic": "memory.recalled", "time": 1.0, "data": {"tags": ["work"]}}) + "\n")
    assert CliRunner().invoke(policy_cli, ["rules", "test", str(policy), "--events", str(quiet)]).exit_code == 0
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"topic": "a", "time": 1}\n{"topic": 3}\n')
    result = CliRunner().invoke(policy_cli, ["rules", "test", str(policy), "--events", str(broken)])
    assert result.exit_code == 2 and "broken.jsonl:2: not an event" in result.output
    bad_rule = tmp_path / "bad.toml"
    bad_rule.write_text(GOOD.replace('event("audit.checkpoint")', 'event("audit.checkpoint"'))
    result = CliRunner().invoke(policy_cli, ["rules", "test", str(bad_rule), "--events", str(quiet)])
    assert result.exit_code == 2 and "temporal[2].followed_by: rule 'forget-then-checkpoint'" in result.output


def test_check_counts_temporal_rules(tmp_path: Path):
    policy = tmp_path / "temporal.toml"
    policy.write_text(GOOD)
    result = CliRunner().invoke(policy_cli, ["check", str(policy)])
    assert result.exit_code == 0 and f"{policy}: ok (0 rules, 0 limits, 3 temporal rules)" in result.output


def test_a_formula_without_events_follows_nothing_and_always_holds():
    rules = _rules('version = 1\n[[temporal]]\nname = "closed"\neffect = "deny"\nwhen = "true"\non = { actions = ["memory.*"] }\n')
    assert rules.patterns == [] and rules.observe({"topic": "memory.recalled"}, 1.0, "memory.recalled") == []
    denied = rules.check(Guarded("method", OWNER, "memory.recall"), 2.0)
    assert denied is not None and denied.events == []
    assert rules.check(Guarded("method", OWNER, "system.ping"), 2.0) is None


def test_alerts_are_never_part_of_a_trace():
    rules = _rules('version = 1\n[[temporal]]\nname = "any-policy-event"\neffect = "alert"\nwhen = \'event("policy.*")\'\n')
    events = [
        {"topic": "policy.alert", "time": 1.0, "data": {"rule": "x", "policy": "p", "kind": "formula", "message": "m"}},
        {"topic": "policy.reloaded", "time": 2.0, "data": {"ok": True, "trigger": "rpc"}},
    ]
    found, _ = replay(rules, events, 1000)
    assert [(v.rule, v.time) for v in found] == [("any-policy-event", 2.0)]


def test_the_cli_reads_the_log_from_standard_input(tmp_path: Path):
    policy = tmp_path / "temporal.toml"
    policy.write_text(GOOD)
    log = _log(tmp_path).read_text()
    result = CliRunner().invoke(policy_cli, ["rules", "test", str(policy), "--events", "-", "--json"], input=log)
    assert result.exit_code == 1 and json.loads(result.output)["events"] == 8
