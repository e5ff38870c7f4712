"""Online monitors of past-time MTL formulas (:mod:`engram.policy.mtl`), and the brute-force
evaluator they are tested against.

A monitor is told each point of its trace once, in order (:meth:`Monitor.step`), and answers
whether the formula holds there, with the events that made it true (its *witnesses*). It can also
be asked what the formula says at a virtual point *now*, at which no event happens
(:meth:`Monitor.peek`): that is how a deny rule is consulted before an action. A value is
``None`` (false) or a tuple of witnesses (true; empty when nothing in particular made it true,
as for ``not``).

Cost: each subformula does O(1) amortised work per point. ``once``/``since`` keep the newest
witness that is already inside the interval (an older one would leave the interval first, so it
can never be the only one) plus the witnesses that are still too recent to count (only when the
interval does not start at 0); ``count[w] p > n`` keeps at most the newest n + 1 points of p
within w, which decides every comparison with n. Time only moves forward, so what falls out of a
window is dropped for good, whether the point is real or virtual. Pending witnesses are bounded
(``max_points``); beyond it the oldest are dropped and counted in :attr:`Monitor.dropped`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from engram.policy.mtl import And, Atom, Const, Count, Node, Not, Once, Or, Since, resolve

__all__ = ["MAX_WITNESSES", "Monitor", "Value", "Witness", "brute_force", "compile_monitor", "shown"]

MAX_WITNESSES = 10


class Witness:
    """An event that made an atom true, at its point's time; shown (:meth:`shown`) only when a
    rule reports it, since most witnesses are dropped unseen."""

    __slots__ = ("atom", "event", "time")

    def __init__(self, atom: Atom, event: Any, time: float) -> None:
        self.atom = atom
        self.event = event
        self.time = time

    def shown(self) -> dict[str, Any]:
        """Its topic and time, who caused it, and the fields the atom tested (for ``contains``,
        only the value looked for)."""
        event = self.event
        out: dict[str, Any] = {"topic": resolve(event, ("topic",)), "time": self.time}
        uid = resolve(event, ("principal", "uid"))
        if uid is None:
            uid = resolve(event, ("uid",))
        if uid is not None:
            out["uid"] = uid
        for condition in self.atom.conditions:
            name = ".".join(condition.path)
            out[name] = condition.value if condition.op == "contains" else resolve(event, condition.path)
        return out


Value = tuple[Witness, ...] | None
_EMPTY: tuple[Witness, ...] = ()


def shown(value: tuple[Witness, ...]) -> list[dict[str, Any]]:
    return [w.shown() for w in value]


def _join(values: Sequence[tuple[Witness, ...]]) -> tuple[Witness, ...]:
    out: list[Witness] = []
    for value in values:
        for item in value:
            if not any(item is seen for seen in out):
                out.append(item)
    return tuple(out[-MAX_WITNESSES:])


class Monitor(ABC):
    """One subformula's state."""

    dropped = 0

    @abstractmethod
    def step(self, t: float, event: Any) -> Value:
        """The value at a new point of the trace, at time ``t`` (never before the last one)."""

    @abstractmethod
    def peek(self, t: float) -> Value:
        """The value at a virtual point at time ``t`` where no event happens; the point is not
        kept (only what fell out of the windows by ``t`` is dropped)."""

    def children(self) -> tuple[Monitor, ...]:
        return ()

    def dropped_total(self) -> int:
        return self.dropped + sum(child.dropped_total() for child in self.children())


class _Atom(Monitor):
    __slots__ = ("atom",)

    def __init__(self, atom: Atom) -> None:
        self.atom = atom

    def step(self, t: float, event: Any) -> Value:
        return (Witness(self.atom, event, t),) if self.atom.holds(event) else None

    def peek(self, t: float) -> Value:
        return None


class _Const(Monitor):
    def __init__(self, value: bool) -> None:
        self.value: Value = _EMPTY if value else None

    def step(self, t: float, event: Any) -> Value:
        return self.value

    def peek(self, t: float) -> Value:
        return self.value


class _Not(Monitor):
    def __init__(self, child: Monitor) -> None:
        self.child = child

    def children(self) -> tuple[Monitor, ...]:
        return (self.child,)

    def step(self, t: float, event: Any) -> Value:
        return _EMPTY if self.child.step(t, event) is None else None

    def peek(self, t: float) -> Value:
        return _EMPTY if self.child.peek(t) is None else None


class _And(Monitor):
    def __init__(self, children: list[Monitor]) -> None:
        self._children = tuple(children)

    def children(self) -> tuple[Monitor, ...]:
        return self._children

    @staticmethod
    def _combine(values: list[Value]) -> Value:
        if any(v is None for v in values):
            return None
        return _join([v for v in values if v is not None])

    def step(self, t: float, event: Any) -> Value:
        # Every child steps, true or not: temporal children must see every point.
        return self._combine([child.step(t, event) for child in self._children])

    def peek(self, t: float) -> Value:
        return self._combine([child.peek(t) for child in self._children])


class _Or(_And):
    @staticmethod
    def _combine(values: list[Value]) -> Value:
        true = [v for v in values if v is not None]
        return _join(true) if true else None


class _Window(Monitor):
    """The state ``once`` and ``since`` share: the newest witness inside [low, high] before now,
    and the witnesses still younger than ``low``."""

    def __init__(self, low: float, high: float, max_points: int) -> None:
        self.low = low
        self.high = high
        self.max_points = max_points
        self.best: tuple[float, tuple[Witness, ...]] | None = None
        self.pending: deque[tuple[float, tuple[Witness, ...]]] = deque()
        self.dropped = 0

    def add(self, t: float, value: tuple[Witness, ...]) -> None:
        if len(self.pending) >= self.max_points:
            self.pending.popleft()
            self.dropped += 1
        self.pending.append((t, value))

    def answer(self, t: float) -> Value:
        pending = self.pending
        while pending and t - pending[0][0] >= self.low:
            self.best = pending.popleft()
        if self.best is not None and t - self.best[0] > self.high:
            self.best = None
        return self.best[1] if self.best is not None else None

    def clear(self) -> None:
        self.best = None
        self.pending.clear()


class _Once(_Window):
    def __init__(self, low: float, high: float, child: Monitor, max_points: int) -> None:
        super().__init__(low, high, max_points)
        self.child = child

    def children(self) -> tuple[Monitor, ...]:
        return (self.child,)

    def step(self, t: float, event: Any) -> Value:
        value = self.child.step(t, event)
        if value is not None:
            self.add(t, value)
        return self.answer(t)

    def peek(self, t: float) -> Value:
        value = self.child.peek(t)
        now = self.answer(t)
        if value is not None and self.low == 0:
            return value
        return now


class _Since(_Window):
    def __init__(self, low: float, high: float, left: Monitor, right: Monitor, max_points: int) -> None:
        super().__init__(low, high, max_points)
        self.left = left
        self.right = right

    def children(self) -> tuple[Monitor, ...]:
        return (self.left, self.right)

    def step(self, t: float, event: Any) -> Value:
        left = self.left.step(t, event)
        right = self.right.step(t, event)
        if left is None:  # no earlier witness survives a point where the left side fails
            self.clear()
        if right is not None:
            self.add(t, right)
        return self.answer(t)

    def peek(self, t: float) -> Value:
        left = self.left.peek(t)
        right = self.right.peek(t)
        now = self.answer(t)  # drops what fell out of the window, which the next point would too
        if right is not None and self.low == 0:
            return right
        return now if left is not None else None


class _Count(Monitor):
    def __init__(self, window: float, child: Monitor, op: str, n: int) -> None:
        self.window = window
        self.child = child
        self.compare: Callable[[int], bool] = {
            "<": lambda c: c < n, "<=": lambda c: c <= n, ">": lambda c: c > n,
            ">=": lambda c: c >= n, "=": lambda c: c == n, "!=": lambda c: c != n,
        }[op]
        self.positive = op in (">", ">=", "!=")
        # min(true count, n + 1) decides every comparison with n.
        self.points: deque[tuple[float, tuple[Witness, ...]]] = deque(maxlen=n + 1)

    def children(self) -> tuple[Monitor, ...]:
        return (self.child,)

    def _trim(self, t: float) -> None:
        points = self.points
        while points and t - points[0][0] > self.window:
            points.popleft()

    def _answer(self, extra: Value) -> Value:
        count = min(len(self.points) + (extra is not None), (self.points.maxlen or 0))
        if not self.compare(count):
            return None
        if not self.positive:
            return _EMPTY
        values = [value for _, value in self.points]
        if extra is not None:
            values.append(extra)
        return _join(values)

    def step(self, t: float, event: Any) -> Value:
        value = self.child.step(t, event)
        if value is not None:
            self.points.append((t, value))
        self._trim(t)
        return self._answer(None)

    def peek(self, t: float) -> Value:
        value = self.child.peek(t)
        self._trim(t)
        return self._answer(value)


def compile_monitor(node: Node, max_points: int = 65_536) -> Monitor:
    """A fresh monitor (empty history) for ``node``."""
    if isinstance(node, Atom):
        return _Atom(node)
    if isinstance(node, Const):
        return _Const(node.value)
    if isinstance(node, Not):
        return _Not(compile_monitor(node.child, max_points))
    if isinstance(node, And):
        return _And([compile_monitor(c, max_points) for c in node.children])
    if isinstance(node, Or):
        return _Or([compile_monitor(c, max_points) for c in node.children])
    if isinstance(node, Once):
        return _Once(node.low, node.high, compile_monitor(node.child, max_points), max_points)
    if isinstance(node, Since):
        return _Since(node.low, node.high, compile_monitor(node.left, max_points), compile_monitor(node.right, max_points), max_points)
    assert isinstance(node, Count)
    return _Count(node.window, compile_monitor(node.child, max_points), node.op, node.n)


# --- the reference: the definitions, point by point ------------------------------------------------


def brute_force(node: Node, trace: Sequence[tuple[float, Any]]) -> list[bool]:
    """Whether ``node`` holds at each point of ``trace`` (``(time, event)``; an event of None is a
    virtual point where nothing happens), straight from the definitions, in O(n²) per operator."""
    n = len(trace)
    times = [t for t, _ in trace]
    if isinstance(node, Atom):
        return [event is not None and node.holds(event) for _, event in trace]
    if isinstance(node, Const):
        return [node.value] * n
    if isinstance(node, Not):
        return [not v for v in brute_force(node.child, trace)]
    if isinstance(node, And):
        columns = [brute_force(c, trace) for c in node.children]
        return [all(col[i] for col in columns) for i in range(n)]
    if isinstance(node, Or):
        columns = [brute_force(c, trace) for c in node.children]
        return [any(col[i] for col in columns) for i in range(n)]
    if isinstance(node, Once):
        child = brute_force(node.child, trace)
        return [
            any(child[j] and node.low <= times[i] - times[j] <= node.high for j in range(i + 1)) for i in range(n)
        ]
    if isinstance(node, Since):
        left = brute_force(node.left, trace)
        right = brute_force(node.right, trace)
        return [
            any(
                right[j] and node.low <= times[i] - times[j] <= node.high and all(left[k] for k in range(j + 1, i + 1))
                for j in range(i + 1)
            )
            for i in range(n)
        ]
    assert isinstance(node, Count)
    child = brute_force(node.child, trace)
    out = []
    for i in range(n):
        count = sum(1 for j in range(i + 1) if child[j] and times[i] - times[j] <= node.window)
        out.append({"<": count < node.n, "<=": count <= node.n, ">": count > node.n, ">=": count >= node.n,
                    "=": count == node.n, "!=": count != node.n}[node.op])
    return out
