"""Temporal rules in force: their monitors over the event stream, the deny checks and the alerts.

:class:`TemporalRules` is built from a loaded :class:`PolicySet` (its ``[[temporal]]`` tables) and
is pure like the engine: it is handed events and times, and answers with :class:`Violation`\\ s;
the Policy part feeds it from the bus and publishes what it finds, ``engram policy rules test``
feeds it from a recorded log. Three forms:

* **deny** (``when`` + ``on``) — consulted before each guarded request or provider call, at a
  virtual point *now*: while ``when`` holds, the call is refused, naming the rule and the events
  that made it true;
* **alert** (``when``) — evaluated at each event of the rule's trace: where it holds, an alert;
* **obligation** (``every`` / ``followed_by`` / ``within``, alert) — each point where ``every``
  holds must be followed, at a later point no more than ``within`` seconds after it, by a point
  where ``followed_by`` holds; a deadline that passes is an alert. Deadlines are checked when
  later events arrive and by the caller's timer (:meth:`TemporalRules.expire`).

A rule's trace is the events whose topic matches one of its ``event(...)`` atoms; times are the
events' own, never going back. Monitors of a rule that a reload leaves unchanged keep their
state; a restart starts every window afresh.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from engram.policy.engine import _globs, _principals, _Who, group_names
from engram.policy.loader import PolicySet
from engram.policy.model import TemporalRule
from engram.policy.monitor import Monitor, Witness, compile_monitor, shown
from engram.policy.mtl import parse, topics_of
from engram.principal import Principal

__all__ = ["ALERT_TOPIC", "Guarded", "TemporalRules", "Violation", "event_view"]

_ROUTES_KEPT = 1024
# Alerts are never part of a trace: a rule over them would answer each alert with another.
ALERT_TOPIC = "policy.alert"


@dataclass(frozen=True)
class Violation:
    rule: str
    policy: str  # the file the rule comes from
    effect: Literal["deny", "alert"]
    kind: Literal["formula", "deadline"]
    time: float
    message: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule, "policy": self.policy, "effect": self.effect, "kind": self.kind, "time": self.time,
            "message": self.message, "events": self.events,
        }


@dataclass(frozen=True, slots=True)
class Guarded:
    """A request or provider call a deny rule may guard."""

    point: Literal["method", "egress"]
    principal: Principal
    action: str
    provider: str | None = None
    locality: str | None = None


def event_view(wire: dict[str, Any]) -> dict[str, Any]:
    """An event as ``events.subscribe`` delivers it (``{"topic", "time", "data"}``), flattened
    the way atoms read bus events: its fields, its topic and its time."""
    data = wire.get("data")
    view = dict(data) if isinstance(data, dict) else {}
    view["topic"] = wire.get("topic")
    view["time"] = wire.get("time")
    return view


class _State:
    """What a rule remembers: kept across a reload that leaves the rule unchanged."""

    def __init__(self, rule: TemporalRule, max_points: int) -> None:
        self.max_points = max_points
        self.when: Monitor | None = compile_monitor(parse(rule.when), max_points) if rule.when else None
        self.every: Monitor | None = compile_monitor(parse(rule.every), max_points) if rule.every else None
        self.followed_by: Monitor | None = compile_monitor(parse(rule.followed_by), max_points) if rule.followed_by else None
        # Open obligations, oldest first: (deadline, opened at, what opened it). One `within` for
        # all of them, so deadlines come in order.
        self.pending: deque[tuple[float, float, tuple[Witness, ...]]] = deque()
        self.dropped = 0

    def dropped_total(self) -> int:
        return self.dropped + sum(m.dropped_total() for m in (self.when, self.every, self.followed_by) if m is not None)


class _Rule:
    def __init__(self, rule: TemporalRule, policy: str, state: _State, owner_uid: int) -> None:
        self.rule = rule
        self.name = rule.name
        self.policy = policy
        self.state = state
        formulas = [f for f in (rule.when, rule.every, rule.followed_by) if f]
        # The topics of its trace; a formula without atoms (`true`) has none.
        self.patterns = sorted(set().union(*(topics_of(parse(f)) for f in formulas)))
        self.topics = _globs(self.patterns) if self.patterns else None
        guard = rule.on
        self.point = guard.point if guard else None
        self._who = _principals(guard.principals, owner_uid) if guard else None
        self._actions = _globs(guard.actions) if guard else None
        self._providers = _globs(guard.providers) if guard and guard.providers else None
        self._locality = frozenset(guard.locality) if guard and guard.locality else None

    def guards(self, call: Guarded, who: _Who) -> bool:
        if self.point != call.point or self._actions is None or self._who is None:
            return False
        if not self._actions.match(call.action):
            return False
        if self._providers is not None and not self._providers.match(call.provider or ""):
            return False
        if self._locality is not None and call.locality not in self._locality:
            return False
        return self._who(who)

    def reason(self, verb: str) -> str:
        text = f"temporal rule {self.name!r} {verb}"
        return text + (f" ({self.rule.description})" if self.rule.description else "")


def _key(rule: TemporalRule) -> str:
    return rule.model_dump_json()


class TemporalRules:
    """The ``[[temporal]]`` rules of a policy set, with their monitors."""

    def __init__(
        self,
        policies: PolicySet,
        *,
        owner_uid: int,
        previous: TemporalRules | None = None,
        max_points: int = 65_536,
        groups: Callable[[Principal], frozenset[str]] = group_names,
    ) -> None:
        kept = previous._states if previous is not None else {}
        self._states: dict[tuple[str, str], _State] = {}
        self.rules: list[_Rule] = []
        for file in policies.files:
            for rule in file.policy.temporal:
                key = (rule.name, _key(rule))
                state = kept.get(key) or _State(rule, max_points)
                self._states[key] = state
                self.rules.append(_Rule(rule, file.label, state, owner_uid))
        self.deny = [r for r in self.rules if r.rule.effect == "deny"]
        self.guarded_points = frozenset(r.point for r in self.deny if r.point is not None)
        self.patterns = sorted({p for r in self.rules for p in r.patterns})
        self._routes: dict[str, tuple[_Rule, ...]] = {}
        self._groups = groups
        self.last_time = previous.last_time if previous is not None else 0.0
        self.evaluations = previous.evaluations if previous is not None else 0  # a running total

    def __len__(self) -> int:
        return len(self.rules)

    @property
    def dropped(self) -> int:
        return sum(state.dropped_total() for state in self._states.values())

    def _time(self, t: float) -> float:
        if t > self.last_time:
            self.last_time = t
        return self.last_time

    def _route(self, topic: str) -> tuple[_Rule, ...]:
        route = self._routes.get(topic)
        if route is None:
            if len(self._routes) >= _ROUTES_KEPT:
                self._routes.clear()
            route = self._routes[topic] = tuple(r for r in self.rules if r.topics is not None and r.topics.match(topic))
        return route

    # --- the stream --------------------------------------------------------------------------

    def observe(self, event: Any, t: float, topic: str) -> list[Violation]:
        """Tell every rule whose trace includes ``event`` (published at ``t``, of ``topic``) about
        it; returns the alerts it raises (deadlines that passed before it included)."""
        rules = self._route(topic)
        if not rules:
            return []
        t = self._time(t)
        found: list[Violation] = []
        for rule in rules:
            self.evaluations += 1
            state = rule.state
            if state.when is not None:
                value = state.when.step(t, event)
                if value is not None and rule.rule.effect == "alert":
                    found.append(Violation(rule.name, rule.policy, "alert", "formula", t, rule.reason("holds"), shown(value)))
                continue
            assert state.every is not None and state.followed_by is not None and rule.rule.within is not None
            found += self._expire_rule(rule, t)
            if state.followed_by.step(t, event) is not None:
                state.pending.clear()
            opened = state.every.step(t, event)
            if opened is not None:
                if len(state.pending) >= state.max_points:
                    state.pending.popleft()
                    state.dropped += 1
                state.pending.append((t + rule.rule.within, t, opened))
        return found

    def _expire_rule(self, rule: _Rule, t: float) -> list[Violation]:
        found = []
        pending = rule.state.pending
        while pending and pending[0][0] < t:
            deadline, opened, what = pending.popleft()
            message = rule.reason(f"was not met: nothing matching followed_by within {rule.rule.within:g} s")
            found.append(Violation(rule.name, rule.policy, "alert", "deadline", deadline, message, shown(what)))
        return found

    def expire(self, t: float) -> list[Violation]:
        """Obligations whose deadline is before ``t``: each an alert (the caller's timer)."""
        t = self._time(t)
        found: list[Violation] = []
        for rule in self.rules:
            if rule.state.pending:
                found += self._expire_rule(rule, t)
        return found

    def next_deadline(self) -> float | None:
        deadlines = [rule.state.pending[0][0] for rule in self.rules if rule.state.pending]
        return min(deadlines) if deadlines else None

    def open_obligations(self) -> list[Violation]:
        """Obligations still open (``rules test`` reports them at the end of a log)."""
        return [
            Violation(rule.name, rule.policy, "alert", "deadline", deadline, rule.reason("is still open"), shown(what))
            for rule in self.rules
            for deadline, _, what in rule.state.pending
        ]

    # --- deny checks -------------------------------------------------------------------------

    def _guarding(self, call: Guarded, t: float) -> Iterator[tuple[_Rule, Violation | None]]:
        if call.point not in self.guarded_points:
            return
        t = self._time(t)
        who = _Who(call.principal, self._groups)
        for rule in self.deny:
            if not rule.guards(call, who):
                continue
            assert rule.state.when is not None
            self.evaluations += 1
            value = rule.state.when.peek(t)
            violation = None
            if value is not None:
                violation = Violation(rule.name, rule.policy, "deny", "formula", t, rule.reason(f"denies {call.action}"), shown(value))
            yield rule, violation

    def statuses(self, call: Guarded, t: float) -> list[tuple[_Rule, Violation | None]]:
        """Every deny rule guarding ``call``, with what it says at ``t`` (a violation: it holds)."""
        return list(self._guarding(call, t))

    def check(self, call: Guarded, t: float) -> Violation | None:
        """The first deny rule that holds for ``call`` at ``t``, if any (the later ones are not read)."""
        for _, violation in self._guarding(call, t):
            if violation is not None:
                return violation
        return None


def replay(rules: TemporalRules, events: Iterable[dict[str, Any]], owner_uid: int) -> tuple[list[Violation], int]:
    """Run ``rules`` over recorded events (as ``events.subscribe`` delivers them, in order).

    Deny rules are checked where the log shows a call they guard: each ``policy.decision`` that
    allowed a method or egress, before that event; alerts as online. Returns the violations, in
    the order they happened, and the number of events read."""
    found: list[Violation] = []
    count = 0
    for wire in events:
        count += 1
        view = event_view(wire)
        topic = view["topic"]
        t = float(view["time"])
        if topic == "policy.decision" and view.get("effect") == "allow" and view.get("point") in rules.guarded_points:
            principal = view.get("principal") or {}
            call = Guarded(
                view["point"],
                Principal(uid=int(principal.get("uid", owner_uid)), gid=int(principal.get("gid", 0)), user=principal.get("user")),
                str(view.get("method") or ""),
                view.get("provider"),
                view.get("locality"),
            )
            denied = rules.check(call, t)
            if denied is not None:
                found.append(denied)
        found += rules.expire(t)
        if topic != ALERT_TOPIC:
            found += rules.observe(view, t, topic)
    return sorted(found, key=lambda v: v.time), count


def violation_lines(violation: Violation) -> list[str]:
    """A violation for people: the rule, when, and each event that made it true."""
    lines = [f"{violation.time:.3f} {violation.effect.upper():<5} {violation.rule}  {violation.message}"]
    for event in violation.events:
        rest = {k: v for k, v in event.items() if k not in ("topic", "time")}
        lines.append(f"    {event['time']:.3f} {event['topic']:<24} {json.dumps(rest, sort_keys=True)}")
    return lines
