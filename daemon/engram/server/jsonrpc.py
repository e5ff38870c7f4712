"""JSON-RPC 2.0 message validation and encoding (https://www.jsonrpc.org/specification).

This module knows the protocol and nothing about engram's methods: it turns a frame into
requests (or the error each malformed member deserves) and builds response objects.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from engram.errors import InternalSignal, InvalidRequest, ParseError, RPCError

MAX_BATCH = 1000
META = "_meta"  # the member of params that holds request metadata (deadline_ms, traceparent), not params
DEFAULT_MAX_DEPTH = 64  # server.max_json_depth
# Frames larger than this are parsed, and their params validated, in a worker thread (see
# parse_frame's ``yielding``): work that grows with the frame must not hold other clients.
LARGE_FRAME = 256 * 1024
# Members of any one object. No params model has nearly as many fields, and free JSON holds at
# most 10,000 values (engram.server.methods.FREE_JSON_MAX_VALUES): an object past this is refused
# as the parser meets it, before a million pairs become a dict that holds the interpreter.
MAX_OBJECT_MEMBERS = 10_000
_NO_ID = object()
_MEMBERS = frozenset({"jsonrpc", "id", "method", "params"})  # of a request object, all it may have


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    params: dict[str, Any] | list[Any] | None
    id: Any = _NO_ID  # absent for notifications; may legitimately be null
    large: bool = False  # came in a frame over LARGE_FRAME: validate its params off the event loop
    # params._meta as the client sent it (None: absent), taken out of params; validated by the
    # request chain (engram.server.params.validate_meta).
    meta: Any = None
    # time.monotonic() when the frame was read, what deadline_ms counts from; not part of what a request is.
    received: float = field(default=0.0, compare=False)

    @property
    def is_notification(self) -> bool:
        return self.id is _NO_ID


@dataclass(frozen=True, slots=True)
class Invalid:
    """A member of the frame that is not a valid request; answered with ``error``."""

    error: RPCError
    id: Any = None


Message = Request | Invalid


def with_traceparent(request: Request, traceparent: str | None) -> Request:
    """``request`` with a transport's ``traceparent`` header as its ``_meta.traceparent`` (what an
    HTTP gateway calls for each request it reads), unless the request's own ``_meta`` names one
    or is not an object (then the params layer answers -32602). Validated with the rest of _meta."""
    if traceparent is None or not (request.meta is None or isinstance(request.meta, dict)):
        return request
    meta = request.meta or {}
    if "traceparent" in meta:
        return request
    return replace(request, meta={**meta, "traceparent": traceparent})


def _valid_id(value: Any) -> bool:
    # The spec allows strings, numbers and null; booleans are JSON true/false, not numbers, and
    # 1e400 (valid JSON, read as infinity) is a number no response could echo.
    kind = type(value)
    if kind is str or kind is int or value is None:  # nearly every id: no isinstance walk
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _check(obj: Any, large: bool = False, received: float = 0.0) -> Message:
    if not isinstance(obj, dict):
        return Invalid(InvalidRequest("a request must be a JSON object", reason="not_an_object"))
    request_id = obj.get("id", _NO_ID)
    id_ok = request_id is _NO_ID or _valid_id(request_id)
    reply_id = request_id if id_ok and request_id is not _NO_ID else None
    if obj.get("jsonrpc") != "2.0":
        return Invalid(InvalidRequest('"jsonrpc" must be exactly "2.0"', reason="bad_version"), reply_id)
    if not id_ok:
        return Invalid(InvalidRequest('"id" must be a string, a finite number or null', reason="bad_id"))
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        return Invalid(InvalidRequest('"method" must be a non-empty string', reason="bad_method"), reply_id)
    params = obj.get("params")
    if "params" in obj and not isinstance(params, (dict, list)):
        return Invalid(InvalidRequest('"params" must be an object or an array', reason="bad_params"), reply_id)
    if not obj.keys() <= _MEMBERS:
        extra = sorted(obj.keys() - _MEMBERS)
        return Invalid(InvalidRequest(f"unexpected member(s) {extra} in request", reason="unexpected_member"), reply_id)
    params, meta = split_meta(params)
    return Request(method=method, params=params, id=request_id, large=large, meta=meta, received=received)


def split_meta(params: Any) -> tuple[Any, Any]:
    """``params`` without its ``_meta`` member, and that member (None: absent): request metadata
    for the daemon, not a parameter of the method (the place MCP gives it)."""
    if isinstance(params, dict) and META in params:
        return {name: value for name, value in params.items() if name != META}, params[META]
    return params, None


def method_request(method: str, params: Any, large: bool = False) -> Request:
    """A request for ``method`` that came without a JSON-RPC envelope (the HTTP gateway's
    ``/v1/methods/{method}`` and its OpenAI endpoints), read now: its ``_meta`` taken out of the
    params as from a frame, its deadline counted from this moment."""
    params, meta = split_meta(params)
    return Request(method=method, params=params, id=None, large=large, meta=meta, received=time.monotonic())


class NonFiniteNumber(InternalSignal, ValueError):
    """A NaN or Infinity literal: Python's json reads them, but they are not JSON.

    (A literal too large for a float, 1e400, is valid JSON and reads as infinity: it is refused
    where it stands, as a bad id or as params naming the field; see engram.server.boundary.)"""


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) does not, and neither do we.
    raise NonFiniteNumber(f"{name} is not a JSON value")


# Of a frame, the depth scan keeps only quotes and brackets (every other byte is deleted).
_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b'"[]{}')
_SCAN_CHUNK = 1 << 20  # bytes summed at a time: bounds the scan's memory on a 16 MiB frame


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in a JSON text, brackets inside strings not counted.

    json.loads recurses once per level and fails with RecursionError deep down, so the depth is
    measured first, in linear time, without recursion and without a Python loop per byte (a
    16 MiB frame is scanned in well under a second). On text that is not JSON the answer is
    still at least the depth the parser would reach before it finds the error.
    """
    import numpy as np  # here, not at the top: the client imports this module and must start fast

    data = text.encode("utf-8", "surrogatepass")
    # Once escaped backslashes (pairs, from the left) and then escaped quotes are gone, every
    # quote left opens or closes a string: a bracket is inside one iff an odd number precede it.
    data = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURAL)
    structural = np.frombuffer(data, dtype=np.uint8)
    in_string = depth = deepest = 0
    for start in range(0, len(structural), _SCAN_CHUNK):
        chunk = structural[start : start + _SCAN_CHUNK]
        parity = (np.cumsum(chunk == ord('"'), dtype=np.int64) + in_string) & 1
        outside = parity == 0
        opens = ((chunk == ord("[")) | (chunk == ord("{"))) & outside
        closes = ((chunk == ord("]")) | (chunk == ord("}"))) & outside
        running = np.cumsum(opens.astype(np.int64) - closes) + depth
        deepest = max(deepest, int(running.max()))
        in_string, depth = int(parity[-1]), int(running[-1])
    return deepest


def _too_deep(max_depth: int) -> InvalidRequest:
    return InvalidRequest(
        f"arrays and objects nest deeper than the limit of {max_depth} levels", reason="too_deep", max_depth=max_depth
    )


def _decode(frame: bytes) -> str:
    # What json.loads does with bytes (UTF-8, -16 or -32, lone surrogates let through to be
    # refused as params), done here so that the depth scan reads the same text as the parser.
    # detect_encoding is Python code; a frame opening with "{" or "[" and then a byte other than
    # NUL is UTF-8 to it, and that is almost every frame.
    opens_as_utf8 = frame[:1] in (b"{", b"[") and frame[1:2] != b"\x00"
    try:
        return frame.decode("utf-8" if opens_as_utf8 else json.detect_encoding(frame), "surrogatepass")
    except UnicodeDecodeError as exc:
        raise ParseError(f"frame is not valid JSON: {exc}") from None


def _int(text: str) -> int:
    return int(text)


def _float(text: str) -> float:
    return float(text)


class TooManyMembers(InternalSignal, ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_OBJECT_MEMBERS:
        raise TooManyMembers
    return dict(pairs)


# The number hooks are Python functions for one reason: the C parser holds the GIL from the
# first byte to the last, and a thread gives it up only while running Python code. Called for
# every number (and _object for every object), they let the event loop in between, at a small
# cost per value.
_YIELDING_HOOKS: dict[str, Any] = {"parse_int": _int, "parse_float": _float}

# Made once: json.loads and json.dumps build a new decoder or encoder on every call that passes
# options, which costs as much as parsing a small request.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_object)
# An object needs at least 4 bytes per member ('"":0,' less the last comma): a frame shorter than
# this cannot hold one of more than MAX_OBJECT_MEMBERS members, and is parsed without the hook.
_FEW_MEMBERS_BELOW = 4 * MAX_OBJECT_MEMBERS
_SMALL_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_YIELDING_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_object, **_YIELDING_HOOKS)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # ensure_ascii: the default
# _ENCODER's C encoder, made once: JSONEncoder.encode makes a new one on every call, which costs
# as much as encoding a response. Without the circular-reference check (markers None): a cycle,
# which no handler builds, ends in RecursionError, which the connection answers like any value
# that cannot be encoded. None where the interpreter has no C accelerator.
_C_ENCODE = (
    json.encoder.c_make_encoder(
        None, _ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    if json.encoder.c_make_encoder is not None
    else None
)
_JSON_WHITESPACE = " \t\n\r"


def _decode_small(text: str) -> Any:
    """_SMALL_DECODER.decode(text), without its two regular-expression matches for surrounding
    whitespace: the scanner reads a frame that opens with its value and ends with it (or with
    whitespace); anything else goes to decode(), which gives the same value or error as always."""
    try:
        value, end = _SMALL_DECODER.scan_once(text, 0)
    except (StopIteration, ValueError):
        return _SMALL_DECODER.decode(text)
    if end != len(text) and text[end:].strip(_JSON_WHITESPACE):
        return _SMALL_DECODER.decode(text)  # extra data: the error that names it
    return value


def parse_json(data: bytes, max_depth: int = DEFAULT_MAX_DEPTH, yielding: bool = False) -> Any:
    """Parse one JSON text under the frame rules: no NaN or Infinity, nesting at most
    ``max_depth``, objects of at most MAX_OBJECT_MEMBERS members. Raises :class:`ParseError` or
    :class:`InvalidRequest`. The HTTP gateway parses its bodies with it too (a body is not a
    JSON-RPC envelope on every endpoint, but is held to the same limits)."""
    text = _decode(data)
    # Counting opening brackets is cheap and settles almost every frame without the scan.
    if text.count("[") + text.count("{") > max_depth and nesting_depth(text) > max_depth:
        raise _too_deep(max_depth)
    try:
        if yielding:
            return _YIELDING_DECODER.decode(text)
        return _decode_small(text) if len(text) < _FEW_MEMBERS_BELOW else _DECODER.decode(text)
    except NonFiniteNumber as exc:
        raise ParseError(f"frame is not valid JSON: {exc}", reason="non_finite_number") from None
    except TooManyMembers:
        raise InvalidRequest(
            f"an object has more than {MAX_OBJECT_MEMBERS} members", reason="too_many_members", limit=MAX_OBJECT_MEMBERS
        ) from None
    except ValueError as exc:
        raise ParseError(f"frame is not valid JSON: {exc}") from None
    except RecursionError:  # the scan bounds the depth; this is the guard should the stack be short
        raise _too_deep(max_depth) from None


def parse_frame(frame: bytes, max_depth: int = DEFAULT_MAX_DEPTH, yielding: bool = False) -> tuple[list[Message], bool]:
    """Parse one line; returns the messages and whether the frame was a batch.

    Raises :class:`ParseError` when the line is not JSON (NaN and Infinity included), and
    :class:`InvalidRequest` for an empty or oversized batch, an object of more than
    MAX_OBJECT_MEMBERS members, or nesting deeper than ``max_depth`` (all answered with a single error whose id is null). ``yielding`` is for a
    large frame parsed in a worker thread: the parse lets other threads run as it goes.
    """
    received = time.monotonic()  # what the request's deadline_ms counts from
    obj = parse_json(frame, max_depth, yielding)
    large = len(frame) > LARGE_FRAME
    if isinstance(obj, list):
        if not obj:
            raise InvalidRequest("a batch must not be empty", reason="empty_batch")
        if len(obj) > MAX_BATCH:
            raise InvalidRequest(f"a batch may hold at most {MAX_BATCH} requests", reason="batch_too_large")
        return [_check(item, large, received) for item in obj], True
    return [_check(obj, large, received)], False


def echoable_id(value: Any) -> Any:
    """The id to answer with: the request's own, or null when it cannot be written back (what
    the specification prescribes for an id that could not be determined)."""
    return value if _valid_id(value) else None


def result_response(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_response(request_id: Any, error: RPCError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_wire()}


def notification(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def encode(message: Any) -> bytes:
    # ensure_ascii keeps every frame pure ASCII, so no byte inside it can be a newline.
    text = "".join(_C_ENCODE(message, 0)) if _C_ENCODE is not None else _ENCODER.encode(message)
    return text.encode() + b"\n"
