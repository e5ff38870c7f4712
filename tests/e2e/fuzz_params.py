"""What the fuzz test sends: params drawn from each method's JSON Schema, and mutations of them.

The schemas are the ones ``engram schemas`` generates into ``schemas/methods/`` (a contract test
keeps them equal to the code), so every method in the method table has one, and a new method is
fuzzed as soon as it exists. For each method the strategy draws either

- **valid params**: what the schema allows (tests/e2e/schema_strategies.py), which must reach
  the method and be answered with a result or the method's own error;
- **a mutation** of valid params: a required field dropped, an unknown field added, one value
  anywhere in the tree replaced with a hostile one (wrong type, integer beyond 64 bits, a number
  no float holds, a lone surrogate, deep nesting, ...), or the params sent by position;
- **params that are not an object** at all.

Values JSON allows but :func:`json.dumps` cannot write (``1e400``) travel as :class:`RawToken`
placeholders that :func:`encode_request` splices into the frame's bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.e2e.schema_strategies import ANY_JSON, from_schema

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "methods"

# server.max_json_depth: nesting beyond it is refused before parsing (-32600), under it the
# params must be parsed and answered like any other value.
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class MethodSchema:
    name: str
    params: dict[str, Any]

    @property
    def required(self) -> list[str]:
        return list(self.params.get("required", []))

    @property
    def properties(self) -> list[str]:
        return sorted(self.params.get("properties", {}))


def method_schemas() -> list[MethodSchema]:
    """Every method's params schema, by name."""
    out = []
    for path in sorted(SCHEMAS.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        out.append(MethodSchema(doc["title"], doc["params"]))
    return out


@dataclass(frozen=True)
class RawToken:
    """A JSON token written into the frame as it is (json.dumps would refuse it or change it)."""

    text: str


class _NoParams:
    def __repr__(self) -> str:
        return "NO_PARAMS"


# The request has no "params" member at all.
NO_PARAMS: Any = _NoParams()


def encode_request(request_id: int, method: str, params: Any, *, ascii_only: bool = True) -> bytes:
    """One request line. RawTokens anywhere in ``params`` become their text (``1e400``). Text
    goes as \\u escapes (``ascii_only``) or as raw UTF-8, where a lone surrogate becomes the
    bytes no UTF-8 decoder accepts (``\\xed\\xa0\\x80``)."""
    tokens: list[str] = []

    def placeholder(value: Any) -> Any:
        if isinstance(value, RawToken):
            tokens.append(value.text)
            return f"\x00raw{len(tokens) - 1}\x00"
        raise TypeError(f"cannot encode {type(value).__name__}")

    frame: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not NO_PARAMS:
        frame["params"] = params
    text = json.dumps(frame, default=placeholder, ensure_ascii=ascii_only)
    for index, token in enumerate(tokens):
        text = text.replace(json.dumps(f"\x00raw{index}\x00"), token, 1)
    return text.encode("utf-8", "surrogatepass") + b"\n"


def nested(depth: int) -> Any:
    value: Any = 0
    for level in range(depth):
        value = [value] if level % 2 else {"n": value}
    return value


# Values that no params model declares for any field, or that sit just past what it declares.
HOSTILE_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    2**64,
    10**100,
    0.5,
    -0.0,
    1e308,
    RawToken("1e400"),
    RawToken("-1e400"),
    RawToken("1e-400"),
    RawToken("123456789012345678901234567890"),
    "",
    " ",
    "\x00",
    "\ud800",
    "a\udfffb",
    "\U0001f600",
    "x" * 70_000,
    [],
    [None],
    [RawToken("1e400")],
    ["\ud800"],
    {},
    {"\ud800": 1},
    {"": None},
    nested(MAX_JSON_DEPTH - 8),  # parsed: the params' own nesting stays under the limit
    nested(MAX_JSON_DEPTH + 8),  # refused before parsing: -32600 too_deep
    list(range(20_000)),
    [0.5] * 20_000,
    {str(key): key for key in range(20_000)},
]

ANY_VALUE = st.sampled_from(HOSTILE_VALUES) | ANY_JSON


def _paths(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every place in a JSON tree a value sits (the root excluded)."""
    out = []
    if isinstance(value, dict):
        for key, item in value.items():
            out.append((*path, key))
            out.extend(_paths(item, (*path, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out.append((*path, index))
            out.extend(_paths(item, (*path, index)))
    return out


def _replaced(tree: Any, path: tuple[str | int, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, dict):
        return {**tree, head: _replaced(tree[head], rest, value)}
    copy = list(tree)
    copy[head] = _replaced(tree[head], rest, value)  # type: ignore[index]
    return copy


@st.composite
def _replace_one_value(draw: st.DrawFn, valid: dict[str, Any]) -> dict[str, Any]:
    paths = _paths(valid)
    if not paths:
        return {draw(st.text(max_size=8)): draw(ANY_VALUE)}
    return _replaced(valid, draw(st.sampled_from(paths)), draw(ANY_VALUE))


@st.composite
def _drop_required(draw: st.DrawFn, valid: dict[str, Any], required: list[str]) -> dict[str, Any]:
    present = [name for name in required if name in valid]
    if not present:
        return valid
    gone = draw(st.sampled_from(present))
    return {key: value for key, value in valid.items() if key != gone}


@st.composite
def _add_unknown(draw: st.DrawFn, valid: dict[str, Any], known: list[str]) -> dict[str, Any]:
    name = draw(st.text(max_size=12).filter(lambda key: key not in known) | st.just("\ud800"))
    return {**valid, name: draw(ANY_VALUE)}


def _by_position(valid: dict[str, Any]) -> st.SearchStrategy[list[Any]]:
    values = list(valid.values())
    return st.just(values) | st.just([*values, None, None, None, None, None, None, None, None, None, None])


NOT_AN_OBJECT = st.sampled_from([NO_PARAMS, None, 0, "params", True, [], ["\ud800"], RawToken("1e400")]) | ANY_JSON


def valid_params(schema: MethodSchema, known_strings: Sequence[str] = ()) -> st.SearchStrategy[dict[str, Any]]:
    """Params the method's schema allows (text is valid Unicode, numbers finite: hostile values
    are the mutations' job), with ``known_strings`` among the text drawn."""
    return from_schema(schema.params, known_strings)


def params_for(schema: MethodSchema, known_strings: Sequence[str] = ()) -> st.SearchStrategy[Any]:
    """Valid params, mutations of them, and params that are not an object."""
    valid = valid_params(schema, known_strings)
    mutated = valid.flatmap(
        lambda params: st.one_of(
            _replace_one_value(params),
            _drop_required(params, schema.required),
            _add_unknown(params, schema.properties),
            _by_position(params),
        )
    )
    return st.one_of(valid, mutated, NOT_AN_OBJECT)


def mentions(params: Any, words: frozenset[str]) -> bool:
    """Whether any string or key in ``params`` is one of ``words``."""
    if isinstance(params, str):
        return params in words
    if isinstance(params, dict):
        return any(key in words or mentions(value, words) for key, value in params.items())
    if isinstance(params, list):
        return any(mentions(item, words) for item in params)
    return False
