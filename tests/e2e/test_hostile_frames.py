"""Frames an attacker would send: each gets a JSON-RPC error answer and the daemon keeps serving.

Every case goes over raw bytes (no client would send these) to one daemon shared by the module;
after each one, ``system.ping`` must still answer on a fresh connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import DaemonProcess, running_daemon

DEEP = 100_000


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with running_daemon() as process:
        yield process


def request(method: str, params: bytes, request_id: bytes = b"1") -> bytes:
    return b'{"jsonrpc":"2.0","id":' + request_id + b',"method":"' + method.encode() + b'","params":' + params + b"}\n"


def answer(daemon: DaemonProcess, frame: bytes) -> dict:
    """Send one frame, return its answer, and check that the daemon still serves others."""
    with daemon.raw() as conn:
        conn.send(frame)
        reply = conn.recv()
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.logs()[-4000:]
    with daemon.raw() as probe:
        pong = probe.request({"jsonrpc": "2.0", "id": "probe", "method": "system.ping"})
    assert pong["result"]["pong"] is True
    return reply


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"[" * DEEP + b"]" * DEEP + b"\n", id="arrays"),
        pytest.param(b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"\n", id="objects"),
        pytest.param(request("system.ping", b'{"echo":' + b"[" * DEEP + b"]" * DEEP + b"}"), id="in-params"),
        pytest.param(b"[" * DEEP + b"\n", id="unclosed"),
    ],
)
def test_deep_nesting_is_refused_before_parsing(daemon, frame):
    reply = answer(daemon, frame)
    assert reply["id"] is None
    assert reply["error"]["code"] == -32600 and reply["error"]["data"]["reason"] == "too_deep"
    assert reply["error"]["data"]["max_depth"] == 64


def test_nesting_inside_strings_does_not_count(daemon):
    text = b'"' + b"[{" * 1000 + b'\\"]"'
    reply = answer(daemon, request("system.ping", b'{"echo":' + text + b"}"))
    assert reply["result"]["echo"] == "[{" * 1000 + '"]'


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(request("system.ping", b"{}", request_id=b"NaN"), id="id-NaN"),
        pytest.param(request("system.ping", b'{"echo":Infinity}'), id="echo-Infinity"),
        pytest.param(request("system.ping", b'{"echo":[-Infinity]}'), id="echo-minus-Infinity"),
    ],
)
def test_nan_and_infinity_literals_are_parse_errors(daemon, frame):
    reply = answer(daemon, frame)
    assert reply["id"] is None
    assert reply["error"]["code"] == -32700 and reply["error"]["data"]["reason"] == "non_finite_number"


@pytest.mark.parametrize("request_id", [b"1e400", b"-1e400"])
def test_an_id_no_float_can_hold_is_answered_with_a_null_id(daemon, request_id):
    reply = answer(daemon, request("system.ping", b"{}", request_id=request_id))
    assert reply["id"] is None
    assert reply["error"]["code"] == -32600 and reply["error"]["data"]["reason"] == "bad_id"


NON_FINITE, BAD_UNICODE = "non_finite_number", "invalid_unicode"


@pytest.mark.parametrize(
    ("method", "params", "reason", "field"),
    [
        # numbers no float can hold
        pytest.param("system.ping", b'{"echo":-1e400}', NON_FINITE, "echo", id="echo"),
        pytest.param(
            "memory.remember",
            b'{"items":[{"text":"t","metadata":{"big":1e400}}]}',
            NON_FINITE,
            "items.0.metadata.big",
            id="metadata",
        ),
        pytest.param("memory.recall", b'{"vector":[1,1e400,0]}', NON_FINITE, "vector", id="recall-vector"),
        # lone surrogates, in values and keys, however deep
        pytest.param("memory.remember", b'{"items":[{"text":"a\\ud800b"}]}', BAD_UNICODE, "items.0.text", id="remember-text"),
        pytest.param("memory.recall", b'{"query":"\\udfff"}', BAD_UNICODE, "query", id="recall-query"),
        pytest.param(
            "memory.remember",
            b'{"items":[{"text":"t","metadata":{"k\\ud800":1}}]}',
            BAD_UNICODE,
            "items.0.metadata.k\\ud800",
            id="metadata-key",
        ),
        pytest.param(
            "memory.remember",
            b'{"items":[{"text":"t","metadata":{"list":["ok",{"deep":"\\udc00"}]}}]}',
            BAD_UNICODE,
            "items.0.metadata.list.1.deep",
            id="metadata-value",
        ),
        pytest.param("system.ping", b'["\\ud800"]', BAD_UNICODE, "echo", id="positional"),
    ],
)
def test_values_json_allows_but_params_cannot_hold_are_invalid_params_naming_the_field(daemon, method, params, reason, field):
    reply = answer(daemon, request(method, params, request_id=b"5"))
    assert reply["id"] == 5
    error = reply["error"]
    assert error["code"] == -32602 and error["data"]["reason"] == reason, error
    assert error["data"]["field"] == field


def test_raw_utf8_surrogate_bytes_are_invalid_params(daemon):
    # CESU-style bytes for U+D800: json decodes them with surrogatepass, so they reach params.
    reply = answer(daemon, request("memory.recall", b'{"query":"\xed\xa0\x80"}', request_id=b"8"))
    assert reply["id"] == 8
    assert reply["error"]["code"] == -32602 and reply["error"]["data"]["reason"] == "invalid_unicode"
    assert reply["error"]["data"]["field"] == "query"


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        pytest.param("audit.checkpoints", b'{"start":' + str(2**63).encode() + b"}", "start", id="checkpoints-start"),
        pytest.param("audit.checkpoints", b'{"start":' + str(10**30).encode() + b"}", "start", id="checkpoints-huge"),
        pytest.param("audit.entries", b'{"start":' + str(2**64).encode() + b"}", "start", id="entries-start"),
        pytest.param("audit.prove", b'{"seq":0,"size":' + str(2**63).encode() + b"}", "size", id="prove-size"),
    ],
)
def test_integers_beyond_64_bits_are_invalid_params(daemon, method, params, field):
    reply = answer(daemon, request(method, params, request_id=b"9"))
    assert reply["id"] == 9
    error = reply["error"]
    assert error["code"] == -32602 and error["data"]["reason"] == "integer_out_of_range", error
    assert error["data"]["field"] == field


def test_64_bit_integers_are_still_accepted(daemon):
    reply = answer(daemon, request("audit.checkpoints", b'{"start":' + str(2**63 - 1).encode() + b"}"))
    assert reply["result"]["checkpoints"] == []


def test_free_json_may_hold_any_integer(daemon):
    # Free JSON (echo, metadata, tensor data) is stored as JSON text: uint64 values are fine there.
    big = str(2**64 - 1).encode()
    reply = answer(daemon, request("system.ping", b'{"echo":[' + big + b"]}"))
    assert reply["result"]["echo"] == [2**64 - 1]



@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        pytest.param("memory.remember", {"items": [{"text": "t", "metadata": {"v": list(range(20_000))}}]}, "items.0.metadata", id="metadata"),
        pytest.param("system.ping", {"echo": [{"k": 1}] * 6_000}, "echo", id="echo"),
    ],
)
def test_free_json_of_too_many_values_is_refused_before_it_is_validated(daemon, method, params, field):
    reply = answer(daemon, request(method, json.dumps(params).encode(), request_id=b"10"))
    error = reply["error"]
    assert error["code"] == -32602 and error["data"]["field"] == field, error
    assert error["data"]["reason"] == error["data"]["errors"][0]["type"] == "too_many_values"
