"""``engram bench policy``: what deciding and redacting cost, next to what was there before.

Two comparisons, measured in one run in one process (no daemon: the engine is what is measured):

* **method decision** — the policy's decision for a mix of principals (the owner, a granted uid,
  an unknown uid) and methods, against the built-in check it replaced in the dispatcher (``uid in
  (owner, root) or not owner_only``). Measured with the decision cache (what every request sees
  after the first) and without it (a full evaluation of every rule: the default policy plus
  ``--rules`` grant rules);
* **redaction** — the redact obligation over a JSON payload with personal data sprinkled in,
  against ``json.dumps`` of the same payload (the copy it has to be sent as anyway);
* **temporal monitoring** — publishing a stream of bus events (recalls, forgets, egress
  decisions, checkpoints) with ``--temporal-rules`` temporal rules following them (the policy
  part's subscription drained and every rule's monitors told each event), against publishing the
  same events with no rule (what the daemon does then: nobody subscribes); and a deny rule's
  check before a guarded call.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engram.audit.events import CheckpointSigned
from engram.bus.bus import EventBus, OverflowPolicy
from engram.bus.events import Event
from engram.memory.events import MemoryForgotten, MemoryRecalled
from engram.policy.engine import PolicyEngine
from engram.policy.events import PolicyDecided
from engram.policy.loader import LoadedFile, PolicySet, load_policy_file, shipped_policy
from engram.policy.model import PolicyFile, Rule, TemporalRule
from engram.policy.temporal import Guarded, TemporalRules
from engram.principal import Principal
from engram_bench.stats import Measurement, measure

OWNER = 1000
METHODS = ["system.ping", "system.status", "memory.write", "memory.search", "infer.embed", "system.reload", "policy.show"]
ADMIN = {"system.reload", "policy.show"}


def _policies(extra_rules: int) -> PolicySet:
    base = load_policy_file(shipped_policy("local-first"), "shipped:local-first")
    rules = [
        Rule(
            name=f"grant-{index}",
            effect="allow",
            principals=[f"uid:{2000 + index}"],
            actions=["memory.*", "infer.*", "system.status"],
        )
        for index in range(extra_rules)
    ]
    grants = LoadedFile("bench:grants", Path("bench-grants.toml"), "", PolicyFile(name="grants", rule=rules))
    return PolicySet([base, grants])


def _time_each(func: Callable[[int], Any], count: int) -> tuple[list[float], float]:
    latencies = []
    clock = time.perf_counter
    started = clock()
    for index in range(count):
        t0 = clock()
        func(index)
        latencies.append(clock() - t0)
    return latencies, clock() - started


def sample_payload(kib: int) -> dict[str, Any]:
    """A chat-like JSON payload of about ``kib`` KiB with an email, phone, card, IP and key every few lines."""
    lines = []
    filler = "The quick brown fox jumps over the lazy dog while the meeting notes are summarised. "
    index = 0
    while sum(len(line) for line in lines) < kib * 1024:
        extra = [
            f"write to user{index}@example.org",
            f"call +33 6 12 34 {index % 90 + 10} 78",
            "card 4111 1111 1111 1111",
            f"host 10.0.{index % 250}.7",
            "token sk-proj-abcdefghijklmnopqrstuvwxyz012345",
        ][index % 5]
        lines.append(filler + extra)
        index += 1
    return {"messages": [{"role": "user", "content": line} for line in lines]}


# Temporal rules of every form, cycled to make --temporal-rules of them; i makes each distinct.
_TEMPORAL = [
    lambda i: TemporalRule(name=f"health-{i}", effect="deny", on={"point": "egress", "locality": ["remote"]},
                           when=f'once[0s, {10 + i}m] event("memory.recalled", tags contains "health")'),
    lambda i: TemporalRule(name=f"forgets-{i}", effect="deny", on={"actions": ["memory.forget"]},
                           when=f'count[1h] event("memory.forgotten", scope = "ids") >= {1000 + i}'),
    lambda i: TemporalRule(name=f"remote-{i}", effect="alert",
                           when=f'event("policy.decision", point = "egress", locality = "remote", uid = {5000 + i}) '
                                f'and once[0s, 10m] event("memory.recalled", tags contains "health")'),
    lambda i: TemporalRule(name=f"checkpoint-{i}", effect="alert", every='event("memory.forgotten")',
                           followed_by='event("audit.checkpoint")', within=3600 + i),
    lambda i: TemporalRule(name=f"quiet-{i}", effect="deny", on={"actions": ["memory.export"]},
                           when=f'not historically[0s, {i + 1}m] not event("memory.forgotten") '
                                f'and event("x") since[1s, 1h] event("memory.recalled", tags contains "never")'),
]


def temporal_rules(count: int) -> PolicySet:
    rules = [_TEMPORAL[index % len(_TEMPORAL)](index) for index in range(count)]
    return PolicySet([LoadedFile("bench:temporal", Path("bench-temporal.toml"), "", PolicyFile(name="temporal", temporal=rules))])


def event_stream(count: int) -> list[Event]:
    """Recalls (a tenth of them of health episodes), forgets, egress decisions and checkpoints."""
    principal = Principal(uid=OWNER, gid=OWNER, pid=1, user="owner")
    stream: list[Event] = []
    for index in range(count):
        kind = index % 4
        if kind == 0:
            tags = ["health"] if index % 40 == 0 else ["work", "notes"]
            stream.append(MemoryRecalled(namespace="default", ids=["ep_1", "ep_2"], tags=tags, principal=principal, time=index))
        elif kind == 1:
            stream.append(MemoryForgotten(namespace="default", ids=["ep_3"], text_hmac=["00"], scope="ids", principal=principal,
                                          time=index))
        elif kind == 2:
            stream.append(PolicyDecided(point="egress", effect="allow", rule="r", reason="", principal=principal,
                                        method="infer.generate", provider="openai", locality="remote", audit=False, time=index))
        else:
            stream.append(CheckpointSigned(size=index, root="AA==", key_id="00", time=index))
    return stream


@dataclass
class PolicyReport:
    decisions: int
    rules: int
    payload_kib: int
    temporal_rules: int = 0
    rows: list[Measurement] = field(default_factory=list)
    pairs: list[tuple[str, str, str]] = field(default_factory=list)  # (label, engram target, baseline target)

    def _row(self, target: str) -> Measurement:
        return next(m for m in self.rows if m.target == target)

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "policy",
            "decisions": self.decisions,
            "grant_rules": self.rules,
            "payload_kib": self.payload_kib,
            "temporal_rules": self.temporal_rules,
            "rows": [m.as_dict() for m in self.rows],
            "ratios": [
                {
                    "comparison": label,
                    "engram": engram,
                    "baseline": baseline,
                    "throughput_ratio": round(self._row(engram).throughput / self._row(baseline).throughput, 4),
                    "p99_ratio": round(self._row(engram).p99_ms / self._row(baseline).p99_ms, 3),
                }
                for label, engram, baseline in self.pairs
            ],
        }

    def table(self) -> str:
        lines = [f"{'target':<28} {'ops/s':>12} {'p50 µs':>9} {'p99 µs':>9}"]
        for label, engram, baseline in self.pairs:
            lines.append(f"-- {label}")
            for target in (engram, baseline):
                m = self._row(target)
                lines.append(f"{m.target:<28} {m.throughput:>12.0f} {m.p50_ms * 1000:>9.2f} {m.p99_ms * 1000:>9.2f}")
            e, b = self._row(engram), self._row(baseline)
            lines.append(f"{'ratio':<28} {e.throughput / b.throughput:>11.3f}x {'':>9} {e.p99_ms / b.p99_ms:>8.2f}x")
        lines.append("ratio = engram / baseline (throughput: higher is better; p99: lower is better)")
        lines.append(f"method decisions: default policy + {self.rules} grant rules; redaction: {self.payload_kib} KiB JSON payload")
        lines.append(f"temporal: {self.temporal_rules} rules following recalls, forgets, egress decisions and checkpoints")
        return "\n".join(lines)


def run_policy_bench(decisions: int = 50_000, rules: int = 50, payload_kib: int = 16, temporal: int = 10) -> PolicyReport:
    report = PolicyReport(decisions, rules, payload_kib, temporal)
    policies = _policies(rules)
    principals = [
        Principal(uid=OWNER, gid=OWNER, pid=1, user="owner"),
        Principal(uid=2000 + max(rules - 1, 0), gid=100, pid=2, user=None),
        Principal(uid=65534, gid=65534, pid=3, user="nobody"),
    ]
    calls = [(p, m) for p in principals for m in METHODS]

    def engine(cache: int) -> PolicyEngine:
        return PolicyEngine(
            policies, owner_uid=OWNER, is_admin=ADMIN.__contains__, cache_size=cache, groups=lambda principal: frozenset()
        )

    cached, uncached = engine(4096), engine(0)

    def decide_cached(index: int) -> None:
        principal, method = calls[index % len(calls)]
        cached.authorize_method(principal, method)

    def decide_uncached(index: int) -> None:
        principal, method = calls[index % len(calls)]
        uncached.authorize_method(principal, method)

    def owner_only_check(index: int) -> None:
        principal, method = calls[index % len(calls)]
        _ = principal.uid in (OWNER, 0) or method not in ADMIN

    for label, func in (
        ("policy (cached)", decide_cached),
        ("policy (uncached)", decide_uncached),
        ("owner-only check", owner_only_check),
    ):
        func(0)  # warm up: compile, fill caches
        latencies, seconds = _time_each(func, decisions)
        report.rows.append(measure(label, 1, latencies, seconds))
    report.pairs.append(("method decision (cached)", "policy (cached)", "owner-only check"))
    report.pairs.append(("method decision (uncached)", "policy (uncached)", "owner-only check"))

    payload = sample_payload(payload_kib)
    rounds = max(20, min(2000, decisions // 100))
    redactor = cached.redactor
    for label, func in (
        ("redact (all detectors)", lambda _: redactor.redact(payload)),
        ("json.dumps", lambda _: json.dumps(payload)),
    ):
        func(0)
        latencies, seconds = _time_each(func, rounds)
        report.rows.append(measure(label, 1, latencies, seconds))
    report.pairs.append((f"redaction of {payload_kib} KiB", "redact (all detectors)", "json.dumps"))
    _temporal(report, decisions, temporal, cached, calls)
    return report


def _temporal(report: PolicyReport, count: int, rules: int, engine: PolicyEngine, calls: list[tuple[Principal, str]]) -> None:
    declared = (MemoryRecalled, MemoryForgotten, PolicyDecided, CheckpointSigned)
    events = event_stream(count + 1)
    monitors = TemporalRules(temporal_rules(rules), owner_uid=OWNER, groups=lambda principal: frozenset())
    followed = EventBus(declared)
    subscription = followed.subscribe(monitors.patterns, 4096, OverflowPolicy.DROP_OLDEST) if monitors.patterns else None
    alone = EventBus(declared)
    label = f"events, {rules} temporal rules"

    def publish_monitored(index: int) -> None:
        followed.publish(events[index])
        if subscription is not None:
            while (event := subscription.receive_nowait()) is not None:
                monitors.observe(event, event.time, event.topic)

    def publish_alone(index: int) -> None:
        alone.publish(events[index])

    for target, func in ((label, publish_monitored), ("events, no rules", publish_alone)):
        latencies, seconds = _time_each(lambda i: func(i + 1), count)
        report.rows.append(measure(target, 1, latencies, seconds))
    report.pairs.append(("temporal monitoring (per event)", label, "events, no rules"))

    # Before a guarded call: a deny rule's check at a virtual point now, after the method decision.
    egress = Guarded("egress", calls[0][0], "infer.generate", "openai", "remote")
    end = float(count + 1)

    def check(index: int) -> None:
        principal, method = calls[index % len(calls)]
        engine.authorize_method(principal, method)
        monitors.check(egress, end)

    def decide(index: int) -> None:
        principal, method = calls[index % len(calls)]
        engine.authorize_method(principal, method)

    for target, func in ((f"decision + {rules} temporal checks", check), ("decision alone", decide)):
        latencies, seconds = _time_each(func, count)
        report.rows.append(measure(target, 1, latencies, seconds))
    report.pairs.append(("guarded call", f"decision + {rules} temporal checks", "decision alone"))
