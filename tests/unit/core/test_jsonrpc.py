"""JSON-RPC 2.0 parsing and encoding, against the examples of the specification."""

from __future__ import annotations

import json
import time

import pytest

from engram.errors import InvalidRequest, ParseError
from engram.server.jsonrpc import (
    DEFAULT_MAX_DEPTH,
    MAX_BATCH,
    MAX_OBJECT_MEMBERS,
    Invalid,
    Request,
    echoable_id,
    encode,
    nesting_depth,
    parse_frame,
)


def test_request_and_notification():
    (req,), batch = parse_frame(b'{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}')
    assert not batch and req == Request("subtract", [42, 23], 1) and not req.is_notification
    (note,), _ = parse_frame(b'{"jsonrpc": "2.0", "method": "update", "params": [1, 2, 3]}')
    assert note.is_notification
    (null_id,), _ = parse_frame(b'{"jsonrpc": "2.0", "method": "m", "id": null}')
    assert not null_id.is_notification and null_id.id is None


def test_parse_errors():
    with pytest.raises(ParseError):
        parse_frame(b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    with pytest.raises(InvalidRequest):
        parse_frame(b"[]")
    with pytest.raises(InvalidRequest) as info:
        parse_frame(b"[" + b",".join([b"1"] * (MAX_BATCH + 1)) + b"]")
    assert info.value.reason == "batch_too_large"


def test_invalid_batch_members_each_get_an_error():
    messages, batch = parse_frame(b"[1,2,3]")
    assert batch and all(isinstance(m, Invalid) and m.error.reason == "not_an_object" for m in messages)
    messages, _ = parse_frame(
        b'[{"jsonrpc": "2.0", "method": "sum", "id": "1"}, {"foo": "boo"}, {"jsonrpc": "2.0", "method": 1, "id": 5}]'
    )
    assert isinstance(messages[0], Request)
    assert isinstance(messages[1], Invalid) and messages[1].id is None
    assert isinstance(messages[2], Invalid) and messages[2].id == 5


def test_encoding_is_one_ascii_line():
    line = encode({"jsonrpc": "2.0", "id": 1, "result": "line\nbreak é"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    with pytest.raises(ValueError):
        encode({"result": float("nan")})


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_constants_are_parse_errors(constant):
    with pytest.raises(ParseError):
        parse_frame(b'{"jsonrpc": "2.0", "id": 1, "method": "m", "params": [' + constant + b"]}")


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("", 0),
        ("1", 0),
        ("[]", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('["[[[{{{"]', 1),  # brackets inside strings do not count
        ('["\\"[[[", []]', 2),  # nor after an escaped quote
        ('["\\\\", []]', 2),  # an escaped backslash does not escape the quote after it
        ('["\\\\\\"[", []]', 2),
        ('[["unterminated [[[[', 2),  # the parser stops at the string: its brackets are never reached
        ("]]][[", 0),  # the parser fails at the first bracket
        ("[" * 100_000, 100_000),
        ('{"a":' * 1000 + "1" + "}" * 1000, 1000),
    ],
)
def test_nesting_depth(text, depth):
    assert nesting_depth(text) == depth


def test_nesting_depth_agrees_with_the_parser_on_escapes_and_non_ascii():
    value = {"k[": ["\\", '"', "é[", {"x": ["]"]}], "\U0001f600": [[[]]]}
    for ensure_ascii in (True, False):
        assert nesting_depth(json.dumps(value, ensure_ascii=ensure_ascii)) == 4


def test_nesting_depth_is_linear_on_hostile_input():
    # Unbalanced quotes and escapes are where a regex would backtrack; this must stay fast.
    started = time.perf_counter()
    for text in ('"' + '\\"' * 500_000 + "\\", "[" * 1_000_000, '"' * 1_000_000, "[]," * 500_000):
        nesting_depth(text)
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    "frame", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000, b"[" * 100_000]
)
def test_too_deep_frames_are_refused_before_parsing(frame):
    with pytest.raises(InvalidRequest) as info:
        parse_frame(frame)
    assert info.value.reason == "too_deep" and info.value.data["max_depth"] == DEFAULT_MAX_DEPTH


@pytest.mark.parametrize("yielding", [False, True])
def test_an_object_of_too_many_members_is_refused_whether_the_frame_is_small_or_large(yielding):
    members = {f"k{i}": i for i in range(MAX_OBJECT_MEMBERS + 1)}
    frame = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"echo": members}}).encode()
    with pytest.raises(InvalidRequest) as info:
        parse_frame(frame, yielding=yielding)
    assert info.value.reason == "too_many_members" and info.value.data["limit"] == MAX_OBJECT_MEMBERS
    members.popitem()
    (message,), _ = parse_frame(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "m", "params": members}).encode(), yielding=yielding)
    assert message.params == members


def test_depth_limit_is_the_callers():
    request = b'{"jsonrpc": "2.0", "method": "m", "params": {"a": [[1]]}}'  # 4 levels
    (message,), _ = parse_frame(request, max_depth=4)
    assert isinstance(message, Request)
    with pytest.raises(InvalidRequest):
        parse_frame(request, max_depth=3)
    # Brackets inside strings neither count against the limit nor trip the quick count.
    (message,), _ = parse_frame(b'{"jsonrpc": "2.0", "method": "m", "params": ["' + b"[" * 100 + b'"]}', max_depth=8)
    assert isinstance(message, Request)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_constants_are_parse_errors_with_a_reason(constant):
    with pytest.raises(ParseError) as info:
        parse_frame(b'{"jsonrpc": "2.0", "id": ' + constant + b', "method": "m"}')
    assert info.value.reason == "non_finite_number"


@pytest.mark.parametrize("number", [b"1e400", b"-1e400"])
def test_an_id_no_float_can_hold_is_a_bad_id_answered_with_null(number):
    (message,), _ = parse_frame(b'{"jsonrpc": "2.0", "id": ' + number + b', "method": "m"}')
    assert isinstance(message, Invalid) and message.error.reason == "bad_id" and message.id is None
    (message,), _ = parse_frame(b'{"jsonrpc": "1.0", "id": ' + number + b', "method": "m"}')
    assert isinstance(message, Invalid) and message.id is None


def test_large_finite_numbers_are_kept():
    frame = b'{"jsonrpc": "2.0", "id": 1e308, "method": "m", "params": [123456789012345678901234567890]}'
    (message,), _ = parse_frame(frame)
    assert message.id == 1e308 and message.params == [123456789012345678901234567890]


def test_echoable_id():
    assert echoable_id(7) == 7 and echoable_id("a\ud800") == "a\ud800" and echoable_id(None) is None
    assert echoable_id(float("inf")) is None and echoable_id(float("nan")) is None
    assert echoable_id(True) is None and echoable_id({"a": 1}) is None
