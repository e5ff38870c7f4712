"""The online monitors of temporal formulas give the answers of the definitions, point by point.

Random formulas over random event streams (times that repeat, gaps, bursts), with virtual points
(a deny check at a time between two events) interleaved: each monitor value is compared with
:func:`brute_force`, which evaluates the definitions directly in O(n²)."""

from __future__ import annotations

import random

import pytest

from engram.policy.monitor import brute_force, compile_monitor, shown
from engram.policy.mtl import parse

TOPICS = ("a", "b", "c")


def _duration(rng: random.Random) -> str:
    return rng.choice(["0s", "500ms", "1s", "1.5s", "2s", "3s", "5s"])


def _interval(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return ""
    low = rng.choice([0.0, 0.0, 0.5, 1.0, 2.0])
    high = low + rng.choice([0.0, 0.5, 1.0, 2.0, 4.0])
    if rng.random() < 0.15:
        return f"[{low:g}s, inf]"
    if low == 0 and rng.random() < 0.5:
        return f"[{high:g}s]"
    return f"[{low:g}s, {high:g}s]"


def random_formula(rng: random.Random, depth: int = 0) -> str:
    leaf = depth >= 3 or rng.random() < 0.3
    if leaf:
        choice = rng.random()
        if choice < 0.05:
            return rng.choice(["true", "false"])
        topic = rng.choice(TOPICS + ("*",))
        if rng.random() < 0.4:
            op = rng.choice(["<", ">=", "=", "!="])
            return f'event("{topic}", x {op} {rng.randint(0, 3)})'
        if rng.random() < 0.2:
            return f'event("{topic}", tags contains "h")'
        return f'event("{topic}")'
    kind = rng.choice(["not", "and", "or", "once", "historically", "since", "count"])
    sub = lambda: random_formula(rng, depth + 1)  # noqa: E731
    if kind == "not":
        return f"not ({sub()})"
    if kind in ("and", "or"):
        return f"({sub()}) {kind} ({sub()})"
    if kind in ("once", "historically"):
        return f"{kind}{_interval(rng)} ({sub()})"
    if kind == "since":
        return f"({sub()}) since{_interval(rng)} ({sub()})"
    window = rng.choice(["500ms", "1s", "2s", "4s"])
    return f"count[{window}] ({sub()}) {rng.choice(['<', '<=', '>', '>=', '=', '!='])} {rng.randint(0, 3)}"


def random_trace(rng: random.Random, n: int) -> list[tuple[float, dict]]:
    t = 0.0
    trace = []
    for _ in range(n):
        t += rng.choice([0.0, 0.0, 0.25, 0.5, 0.5, 1.0, 1.0, 2.0, 3.5])  # repeated times, bursts, gaps
        event = {"topic": rng.choice(TOPICS), "x": rng.randint(0, 3)}
        if rng.random() < 0.3:
            event["tags"] = ["h"] if rng.random() < 0.7 else ["g"]
        trace.append((t, event))
    return trace


@pytest.mark.parametrize("seed", range(12))
def test_monitors_agree_with_the_definitions_on_random_streams(seed: int):
    rng = random.Random(seed)
    checked = 0
    for _ in range(40):
        text = random_formula(rng)
        node = parse(text)
        trace = random_trace(rng, rng.randint(5, 35))
        expected = brute_force(node, trace)
        monitor = compile_monitor(node)
        for i, (t, event) in enumerate(trace):
            if i and rng.random() < 0.3:  # a deny check between the previous event and this one
                when = trace[i - 1][0] + rng.random() * (t - trace[i - 1][0])
                virtual = brute_force(node, trace[:i] + [(when, None)])[-1]
                assert (monitor.peek(when) is not None) == virtual, (text, i, "peek", when)
                checked += 1
            got = monitor.step(t, event)
            assert (got is not None) == expected[i], (text, trace[: i + 1])
            checked += 1
        end = trace[-1][0] + rng.choice([0.0, 0.7, 2.5, 10.0])
        assert (monitor.peek(end) is not None) == brute_force(node, trace + [(end, None)])[-1], (text, "end")
    assert checked > 500


def test_witnesses_are_the_events_inside_the_window():
    node = parse('once[0s, 10s] event("memory.recalled", tags contains "health")')
    monitor = compile_monitor(node)
    monitor.step(1.0, {"topic": "memory.recalled", "tags": ["health", "x"], "principal": {"uid": 7}})
    monitor.step(3.0, {"topic": "memory.recalled", "tags": ["work"]})
    value = monitor.peek(5.0)
    assert value is not None and shown(value) == [{"topic": "memory.recalled", "time": 1.0, "uid": 7, "tags": "health"}]
    assert monitor.peek(11.5) is None  # out of the window for good


def test_count_keeps_only_what_decides_the_comparison():
    monitor = compile_monitor(parse('count[1h] event("memory.forgotten") >= 3'))
    for i in range(10_000):
        monitor.step(float(i), {"topic": "memory.forgotten"})
    assert len(monitor.points) == 4  # n + 1, however many happened in the window
    value = monitor.peek(10_000.0)
    assert value is not None and [w.time for w in value] == [9996.0, 9997.0, 9998.0, 9999.0]


def test_once_from_zero_keeps_one_witness():
    monitor = compile_monitor(parse('once[0s, 10m] event("a")'))
    for i in range(5_000):
        monitor.step(i * 0.01, {"topic": "a"})
    assert monitor.best is not None and len(monitor.pending) == 0


def test_pending_points_are_bounded():
    monitor = compile_monitor(parse('once[100s, 200s] event("a")'), max_points=16)
    for i in range(40):
        monitor.step(float(i), {"topic": "a"})
    assert len(monitor.pending) == 16 and monitor.dropped_total() == 24


def test_the_benchmark_stream_is_what_the_rules_follow():
    """engram bench policy measures monitoring over events that the rules really evaluate:
    recalls of health episodes make its deny rules hold, and its alert rules stay quiet."""
    from engram_bench.policy import event_stream, temporal_rules

    from engram.policy.temporal import Guarded, TemporalRules
    from engram.principal import Principal

    rules = TemporalRules(temporal_rules(10), owner_uid=1000, groups=lambda principal: frozenset())
    assert len(rules) == 10 and {r.rule.effect for r in rules.rules} == {"deny", "alert"}
    alerts = []
    for event in event_stream(400):
        alerts += rules.observe(event, event.time, event.topic)
    assert alerts == [] and rules.evaluations > 400
    denied = rules.check(Guarded("egress", Principal(uid=1000, gid=1000), "infer.generate", "openai", "remote"), 401.0)
    assert denied is not None and denied.events[0]["tags"] == "health"
