"""Past-time metric temporal logic over the event stream: the formulas of ``[[temporal]]`` rules.

A formula is evaluated at *points*: the events of its trace, in order, each with its time (the
event's ``time``, made non-decreasing). Grammar (keywords are lower case; ``#`` is not a comment)::

    formula   := disjunct ("or" disjunct)*
    disjunct  := conjunct ("and" conjunct)*
    conjunct  := unary ("since" interval? unary)?
    unary     := "not" unary
               | "once" interval? unary            # at some point in the interval before now
               | "historically" interval? unary    # at every point in the interval before now
               | "count" window unary CMP INTEGER  # points in the window where it held
               | "(" formula ")" | "true" | "false" | atom
    atom      := "event" "(" STRING ("," condition)* ")"
    condition := PATH OP value                      # PATH: a field, dotted for nested (principal.uid)
    OP        := "=" | "!=" | "<" | "<=" | ">" | ">=" | "contains" | "in" | "matches"
    value     := STRING | NUMBER | "true" | "false" | "null" | "[" value ("," value)* "]"
    interval  := "[" DURATION "," (DURATION | "inf") "]" | "[" DURATION "]"   # [d] is [0, d]
    window    := "[" DURATION "]"
    CMP       := "<" | "<=" | ">" | ">=" | "=" | "!="                        # INTEGER: 0 to 100000
    DURATION  := NUMBER ("ms" | "s" | "m" | "h" | "d")?                        # bare: seconds

Meaning at point i (time t_i):

* ``event("glob", c...)`` — the event of point i has a topic matching the glob and every condition;
* ``once[a,b] p`` — some point j <= i with a <= t_i - t_j <= b satisfies p (no interval: [0, inf]);
* ``historically[a,b] p`` — every such point satisfies p (``not once[a,b] not p``);
* ``p since[a,b] q`` — some point j <= i with a <= t_i - t_j <= b satisfies q, and p holds at every
  point after j up to i;
* ``count[w] p > n`` — the number of points j <= i with t_i - t_j <= w that satisfy p, compared with n.

:func:`parse` returns the syntax tree or raises :class:`FormulaError` with the column; the monitors
that evaluate a tree online are in :mod:`engram.policy.monitor`.
"""

from __future__ import annotations

import fnmatch
import json
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from engram.errors import EngramError

__all__ = [
    "And",
    "Atom",
    "Condition",
    "Const",
    "Count",
    "FormulaError",
    "Node",
    "Not",
    "Once",
    "Or",
    "Since",
    "parse",
    "topics_of",
]

CompareOp = Literal["<", "<=", ">", ">=", "=", "!="]
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MAX_DEPTH = 64
_MAX_LENGTH = 4096
_MAX_COUNT = 100_000
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


class FormulaError(EngramError, ValueError):
    """A formula that cannot be parsed: ``column`` (1-based) is where the problem is."""

    def __init__(self, message: str, text: str, position: int) -> None:
        self.reason = message
        self.text = text
        self.column = position + 1
        super().__init__(f"column {self.column}: {message}\n  {text}\n  {' ' * position}^")


# --- the syntax tree -----------------------------------------------------------------------------


def _equal(a: Any, b: Any) -> bool:
    # true is not 1, and 1 is 1.0, as in JSON
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


@dataclass(frozen=True, slots=True)
class Condition:
    path: tuple[str, ...]
    op: str
    value: Any

    def holds(self, event: Any) -> bool:
        found = resolve(event, self.path)
        op, value = self.op, self.value
        if op == "=":
            return _equal(found, value)
        if op == "!=":
            return not _equal(found, value)
        if op == "contains":
            return isinstance(found, (list, tuple, str, frozenset, set)) and value in found
        if op == "in":
            return any(_equal(found, item) for item in value)
        if op == "matches":
            return isinstance(found, str) and fnmatch.fnmatchcase(found, value)
        if isinstance(found, bool) or not isinstance(found, (int, float)):
            return False
        return bool(_ORDER[op](found, value))

    def shown(self) -> str:
        return f"{'.'.join(self.path)} {self.op} {json.dumps(self.value)}"


@dataclass(frozen=True, slots=True)
class Atom:
    topic: str  # a glob
    conditions: tuple[Condition, ...]
    _topic_re: re.Pattern[str]
    _topics: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)  # topic -> matches

    def holds(self, event: Any) -> bool:
        topic = event.get("topic") if isinstance(event, dict) else getattr(event, "topic", None)
        matches = self._topics.get(topic)  # type: ignore[arg-type]
        if matches is None:
            matches = isinstance(topic, str) and self._topic_re.match(topic) is not None
            if len(self._topics) < 1024:
                self._topics[topic] = matches  # type: ignore[index]
        if not matches:
            return False
        for condition in self.conditions:
            if not condition.holds(event):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Const:
    value: bool


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Once:
    low: float
    high: float  # math.inf: unbounded
    child: Node


@dataclass(frozen=True, slots=True)
class Since:
    low: float
    high: float
    left: Node  # must hold at every point after the witness
    right: Node  # the witness


@dataclass(frozen=True, slots=True)
class Count:
    window: float
    child: Node
    op: CompareOp
    n: int


Node = Atom | Const | Not | And | Or | Once | Since | Count


def resolve(event: Any, path: tuple[str, ...]) -> Any:
    """A field of an event: a bus event object, or a dict (an event read from a log)."""
    value = event
    for name in path:
        if isinstance(value, dict):
            value = value.get(name)
        else:
            value = getattr(value, name, None)
        if value is None:
            return None
    return value


def topics_of(node: Node) -> set[str]:
    """The topic globs a formula's atoms name: the events it needs."""
    if isinstance(node, Atom):
        return {node.topic}
    if isinstance(node, Const):
        return set()
    if isinstance(node, (Not, Once, Count)):
        return topics_of(node.child)
    if isinstance(node, Since):
        return topics_of(node.left) | topics_of(node.right)
    return set().union(*(topics_of(c) for c in node.children))


# --- tokens --------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>-?[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d)?(?![A-Za-z0-9_]))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op><=|>=|!=|[()\[\],=<>])
    """,
    re.VERBOSE,
)
KEYWORDS = frozenset(
    {"and", "or", "not", "once", "historically", "since", "count", "event", "true", "false", "null", "inf",
     "contains", "in", "matches"}
)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # string, number, name, op, end
    text: str
    position: int


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise FormulaError(f"unexpected character {text[position]!r}", text, position)
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            out.append(_Token(kind, match.group(), position))
        position = match.end()
    out.append(_Token("end", "", len(text)))
    return out


# --- the parser ----------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.index = 0
        self.depth = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def fail(self, message: str, token: _Token | None = None) -> FormulaError:
        token = token or self.token
        return FormulaError(message, self.text, token.position)

    def _found(self) -> str:
        return "the end of the formula" if self.token.kind == "end" else repr(self.token.text)

    def advance(self) -> _Token:
        token = self.token
        self.index += 1
        return token

    def at(self, text: str) -> bool:
        return self.token.kind in ("op", "name") and self.token.text == text

    def expect(self, text: str, what: str | None = None) -> _Token:
        if not self.at(text):
            raise self.fail(f"expected {what or repr(text)}, found {self._found()}")
        return self.advance()

    def formula(self) -> Node:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.fail(f"the formula nests deeper than {_MAX_DEPTH} levels")
        try:
            children = [self.disjunct()]
            while self.at("or"):
                self.advance()
                children.append(self.disjunct())
            return children[0] if len(children) == 1 else Or(tuple(children))
        finally:
            self.depth -= 1

    def disjunct(self) -> Node:
        children = [self.conjunct()]
        while self.at("and"):
            self.advance()
            children.append(self.conjunct())
        return children[0] if len(children) == 1 else And(tuple(children))

    def conjunct(self) -> Node:
        left = self.unary()
        if self.at("since"):
            self.advance()
            low, high = self.interval() if self.at("[") else (0.0, math.inf)
            right = self.unary()
            if self.at("since"):
                raise self.fail("'since' does not chain: put parentheses around one of them")
            return Since(low, high, left, right)
        return left

    def unary(self) -> Node:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.fail(f"the formula nests deeper than {_MAX_DEPTH} levels")
        try:
            return self._unary()
        finally:
            self.depth -= 1

    def _unary(self) -> Node:
        token = self.token
        if self.at("not"):
            self.advance()
            return Not(self.unary())
        if self.at("once") or self.at("historically"):
            self.advance()
            low, high = self.interval() if self.at("[") else (0.0, math.inf)
            child = self.unary()
            if token.text == "once":
                return Once(low, high, child)
            return Not(Once(low, high, Not(child)))
        if self.at("count"):
            self.advance()
            if not self.at("["):
                raise self.fail(f"count needs a window such as [1h], found {self._found()}")
            window = self.window()
            child = self.unary()
            if self.token.kind != "op" or self.token.text not in ("<", "<=", ">", ">=", "=", "!="):
                raise self.fail(f"expected a comparison (<, <=, >, >=, =, !=) after count's formula, found {self._found()}")
            op = self.advance().text
            number = self.token
            if number.kind != "number" or not re.fullmatch(r"[0-9]+", number.text):
                raise self.fail(f"count compares with a whole number, found {self._found()}")
            self.advance()
            n = int(number.text)
            if n > _MAX_COUNT:
                raise self.fail(f"count compares with at most {_MAX_COUNT} (it keeps that many points)", number)
            return Count(window, child, op, n)  # type: ignore[arg-type]
        if self.at("("):
            self.advance()
            node = self.formula()
            self.expect(")", "')'")
            return node
        if self.at("true") or self.at("false"):
            self.advance()
            return Const(token.text == "true")
        if self.at("event"):
            return self.atom()
        if token.kind == "end":
            raise self.fail("the formula ends too early: expected an event(...), once, historically, count, not or '('")
        raise self.fail(f"expected an event(...), once, historically, count, not or '(', found {self._found()}")

    def atom(self) -> Atom:
        self.advance()
        self.expect("(", "'(' after event")
        topic = self.token
        if topic.kind != "string":
            raise self.fail(f"event's first argument is a topic in double quotes (\"memory.*\"), found {self._found()}")
        self.advance()
        pattern = self._string(topic)
        if not pattern:
            raise self.fail("the topic is empty", topic)
        conditions = []
        while self.at(","):
            self.advance()
            conditions.append(self.condition())
        self.expect(")", "',' or ')'")
        return Atom(pattern, tuple(conditions), re.compile(fnmatch.translate(pattern)))

    def condition(self) -> Condition:
        path = self.token
        if path.kind != "name" or path.text in KEYWORDS:
            raise self.fail(f"expected a field name (such as tags or principal.uid), found {self._found()}")
        self.advance()
        op_token = self.token
        if op_token.kind == "op" and op_token.text in ("=", "!=", "<", "<=", ">", ">="):
            op = self.advance().text
        elif self.at("contains") or self.at("in") or self.at("matches"):
            op = self.advance().text
        else:
            raise self.fail(f"expected =, !=, <, <=, >, >=, contains, in or matches after {path.text}, found {self._found()}")
        value_token = self.token
        value = self.value()
        if op in ("<", "<=", ">", ">=") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise self.fail(f"{op} compares with a number", value_token)
        if op == "in" and not isinstance(value, list):
            raise self.fail("in needs a list such as [\"a\", \"b\"]", value_token)
        if op == "matches" and not isinstance(value, str):
            raise self.fail("matches needs a glob in double quotes", value_token)
        return Condition(tuple(path.text.split(".")), op, value)

    def value(self) -> Any:
        token = self.token
        if token.kind == "string":
            self.advance()
            return self._string(token)
        if token.kind == "number":
            if not re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", token.text):
                raise self.fail("a value is a plain number here, not a duration")
            self.advance()
            return float(token.text) if "." in token.text else int(token.text)
        if self.at("true") or self.at("false") or self.at("null"):
            self.advance()
            return {"true": True, "false": False, "null": None}[token.text]
        if self.at("["):
            self.advance()
            items = [self.value()]
            while self.at(","):
                self.advance()
                items.append(self.value())
            self.expect("]", "',' or ']'")
            return items
        raise self.fail(f"expected a value (\"text\", a number, true, false, null or a list), found {self._found()}")

    def _string(self, token: _Token) -> str:
        try:
            return str(json.loads(token.text))
        except ValueError:
            raise self.fail("not a valid string (use JSON escapes)", token) from None

    def duration(self) -> float:
        token = self.token
        if token.kind != "number":
            raise self.fail(f"expected a duration such as 30s, 10m or 1h, found {self._found()}")
        match = re.fullmatch(r"(-?[0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)?", token.text)
        assert match is not None
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
        if seconds < 0:
            raise self.fail("a duration cannot be negative")
        if seconds > 366 * 86400:
            raise self.fail("a duration is at most 366 days")
        self.advance()
        return seconds

    def interval(self) -> tuple[float, float]:
        self.expect("[")
        first = self.duration()
        if self.at("]"):
            self.advance()
            return 0.0, first
        self.expect(",", "',' or ']'")
        if self.at("inf"):
            self.advance()
            high = math.inf
        else:
            token = self.token
            high = self.duration()
            if high < first:
                raise self.fail("the interval ends before it starts", token)
        self.expect("]", "']'")
        return first, high

    def window(self) -> float:
        self.expect("[")
        token = self.token
        window = self.duration()
        if window <= 0:
            raise self.fail("a window must be longer than 0 s", token)
        self.expect("]", "']' (a count window is one duration)")
        return window


def parse(text: str) -> Node:
    """The syntax tree of ``text``, or :class:`FormulaError` saying where and what is wrong."""
    if len(text) > _MAX_LENGTH:
        raise FormulaError(f"the formula is longer than {_MAX_LENGTH} characters", text[:40] + "...", 0)
    parser = _Parser(text)
    node = parser.formula()
    if parser.token.kind != "end":
        raise parser.fail(f"expected 'and', 'or' or the end of the formula, found {parser._found()}")
    return node
