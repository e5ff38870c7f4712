"""params._meta: taken out of params where the frame is parsed, validated once into the request's deadline."""

from __future__ import annotations

import time

import pytest
from engram.errors import InvalidParams
from engram.server.jsonrpc import Request, parse_frame
from engram.server.params import validate_meta


def test_meta_is_taken_out_of_params_and_the_frame_time_kept() -> None:
    before = time.monotonic()
    (request,), _ = parse_frame(b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":1,"_meta":{"deadline_ms":5}}}')
    assert isinstance(request, Request)
    assert request.params == {"a": 1} and request.meta == {"deadline_ms": 5}
    assert before <= request.received <= time.monotonic()


def test_without_meta_params_are_as_sent() -> None:
    messages, _ = parse_frame(b'[{"jsonrpc":"2.0","id":1,"method":"m","params":[1,{"_meta":2}]},'
                              b'{"jsonrpc":"2.0","id":2,"method":"m","params":{"meta":{}}}]')
    positional, named = messages
    assert positional.params == [1, {"_meta": 2}] and positional.meta is None  # type: ignore[union-attr]
    assert named.params == {"meta": {}} and named.meta is None  # type: ignore[union-attr]
    (null,), _ = parse_frame(b'{"jsonrpc":"2.0","id":3,"method":"m","params":{"_meta":null}}')
    assert null.params == {} and null.meta is None  # type: ignore[union-attr]  # null: no metadata


def test_a_deadline_counts_from_the_time_the_frame_was_read() -> None:
    received = time.monotonic() - 1.0
    deadline = validate_meta({"deadline_ms": 1500}, received)
    assert deadline is not None and deadline.ms == 1500 and deadline.expires == pytest.approx(received + 1.5)
    assert validate_meta({}, received) is None and validate_meta({"deadline_ms": None}, received) is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"deadline_ms": 0}, "_meta.deadline_ms"),
        ({"deadline_ms": -1}, "_meta.deadline_ms"),
        ({"deadline_ms": 2.5}, "_meta.deadline_ms"),
        ({"deadline_ms": "10"}, "_meta.deadline_ms"),
        ({"deadline_ms": False}, "_meta.deadline_ms"),
        ({"deadline_ms": 86_400_001}, "_meta.deadline_ms"),
        ({"traceparent": "00-x"}, "_meta.traceparent"),
        ([], "_meta"),
        ("soon", "_meta"),
    ],
)
def test_bad_meta_is_invalid_params_naming_the_field(raw: object, field: str) -> None:
    with pytest.raises(InvalidParams) as caught:
        validate_meta(raw, time.monotonic())
    assert caught.value.data["field"] == field and caught.value.reason == "invalid_params"
