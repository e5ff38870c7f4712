"""JSON-RPC 2.0 parsing and encoding, against the examples of the specification."""

from __future__ import annotations

import pytest

from engram.errors import InvalidRequest, ParseError
from engram.server.jsonrpc import MAX_BATCH, Invalid, Request, encode, parse_frame


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
