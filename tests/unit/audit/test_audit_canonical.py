"""engram.audit.canonical against RFC 8785 (JCS) examples, and its documented extensions."""

from __future__ import annotations

import hashlib
import json
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from engram.audit.canonical import canonical_json, content_hash, format_float

# RFC 8785 appendix B: IEEE 754 bit patterns and their ECMAScript string forms.
NUMBER_VECTORS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "want"), NUMBER_VECTORS)
def test_rfc8785_numbers(bits: str, want: str) -> None:
    value = struct.unpack(">d", bytes.fromhex(bits))[0]
    assert format_float(value) == want
    assert canonical_json(value) == want.encode()


def test_rfc8785_sorting_example() -> None:
    # RFC 8785 §3.2.3: keys sorted by UTF-16 code units (the emoji's surrogates sort before U+FB33).
    data = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys = list(json.loads(canonical_json(data)).keys())
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_rfc8785_structure_example() -> None:
    data = json.loads(
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001], '
        '"string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/", '
        '"literals": [null, true, false]}'
    )
    want = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(data) == want.encode("utf-8")


def test_whitespace_and_nesting() -> None:
    assert canonical_json({"b": [1, {"d": None, "c": True}], "a": "x"}) == b'{"a":"x","b":[1,{"c":true,"d":null}]}'
    assert canonical_json([]) == b"[]" and canonical_json({}) == b"{}"
    assert canonical_json((1, 2)) == b"[1,2]"


def test_extensions_never_fail() -> None:
    assert canonical_json(2**70) == b"1180591620717411303424"
    assert canonical_json("a\ud800b") == b'"a\\ud800b"'
    assert canonical_json(math.nan) == b"NaN"
    assert canonical_json([math.inf, -math.inf]) == b"[Infinity,-Infinity]"
    assert canonical_json("\u2028\x7f") == "\"\u2028\x7f\"".encode()


def test_rejects_non_json() -> None:
    with pytest.raises(TypeError):
        canonical_json({1: "x"})
    with pytest.raises(TypeError):
        canonical_json(object())


def test_content_hash() -> None:
    assert content_hash({"b": 1, "a": [1.0]}) == hashlib.sha256(b'{"a":[1],"b":1}').hexdigest()


def _plain_jcs(value: object) -> str:
    """RFC 8785 written out the plain recursive way, for valid Unicode: what the encoder, which
    takes shortcuts for speed, must agree with."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: key.encode("utf-16-be"))
        return "{" + ",".join(json.dumps(key, ensure_ascii=False) + ":" + _plain_jcs(value[key]) for key in keys) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_plain_jcs(item) for item in value) + "]"
    if isinstance(value, float):
        return format_float(value)
    return json.dumps(value, ensure_ascii=False)  # str, int, bool, None


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=30,
)


@given(_json_values)
def test_agrees_with_the_plain_recursive_definition(value: object) -> None:
    assert canonical_json(value) == _plain_jcs(value).encode()


@given(st.floats())
def test_floats_are_written_alike_as_members_items_and_alone(value: float) -> None:
    alone = format_float(value)
    assert canonical_json(value).decode() == alone
    assert canonical_json([value]).decode() == f"[{alone}]"
    assert canonical_json({"x": value}).decode() == f'{{"x":{alone}}}'


def test_objects_of_the_same_keys_in_another_order_are_sorted_alike() -> None:
    assert canonical_json([{"b": 1, "a": 2}, {"a": 3, "b": 4}, {"b": 5, "a": 6}]) == b'[{"a":2,"b":1},{"a":3,"b":4},{"a":6,"b":5}]'
