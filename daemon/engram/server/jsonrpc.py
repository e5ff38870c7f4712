"""JSON-RPC 2.0 message validation and encoding (https://www.jsonrpc.org/specification).

This module knows the protocol and nothing about engram's methods: it turns a frame into
requests (or the error each malformed member deserves) and builds response objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engram.errors import InvalidRequest, ParseError, RPCError

MAX_BATCH = 1000
_NO_ID = object()


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    params: dict[str, Any] | list[Any] | None
    id: Any = _NO_ID  # absent for notifications; may legitimately be null

    @property
    def is_notification(self) -> bool:
        return self.id is _NO_ID


@dataclass(frozen=True, slots=True)
class Invalid:
    """A member of the frame that is not a valid request; answered with ``error``."""

    error: RPCError
    id: Any = None


Message = Request | Invalid


def _valid_id(value: Any) -> bool:
    # The spec allows strings, numbers and null; booleans are JSON true/false, not numbers.
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


def _check(obj: Any) -> Message:
    if not isinstance(obj, dict):
        return Invalid(InvalidRequest("a request must be a JSON object", reason="not_an_object"))
    request_id = obj.get("id", _NO_ID)
    reply_id = request_id if request_id is not _NO_ID and _valid_id(request_id) else None
    if obj.get("jsonrpc") != "2.0":
        return Invalid(InvalidRequest('"jsonrpc" must be exactly "2.0"', reason="bad_version"), reply_id)
    if request_id is not _NO_ID and not _valid_id(request_id):
        return Invalid(InvalidRequest('"id" must be a string, a number or null', reason="bad_id"))
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        return Invalid(InvalidRequest('"method" must be a non-empty string', reason="bad_method"), reply_id)
    params = obj.get("params")
    if "params" in obj and not isinstance(params, (dict, list)):
        return Invalid(InvalidRequest('"params" must be an object or an array', reason="bad_params"), reply_id)
    extra = set(obj) - {"jsonrpc", "id", "method", "params"}
    if extra:
        return Invalid(
            InvalidRequest(f"unexpected member(s) {sorted(extra)} in request", reason="unexpected_member"),
            reply_id,
        )
    return Request(method=method, params=params, id=request_id)


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) does not, and neither do we.
    raise ValueError(f"{name} is not a JSON value")


def parse_frame(frame: bytes) -> tuple[list[Message], bool]:
    """Parse one line; returns the messages and whether the frame was a batch.

    Raises :class:`ParseError` when the line is not JSON and :class:`InvalidRequest` for an empty
    or oversized batch (both answered with a single error whose id is null).
    """
    try:
        obj = json.loads(frame, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ParseError(f"frame is not valid JSON: {exc}") from None
    if isinstance(obj, list):
        if not obj:
            raise InvalidRequest("a batch must not be empty", reason="empty_batch")
        if len(obj) > MAX_BATCH:
            raise InvalidRequest(f"a batch may hold at most {MAX_BATCH} requests", reason="batch_too_large")
        return [_check(item) for item in obj], True
    return [_check(obj)], False


def result_response(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_response(request_id: Any, error: RPCError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_wire()}


def notification(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def encode(message: Any) -> bytes:
    # ensure_ascii keeps every frame pure ASCII, so no byte inside it can be a newline.
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"
