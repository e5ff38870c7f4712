"""engram's one exception hierarchy.

Every error the daemon can report to a client is an :class:`RPCError` subclass with a fixed
JSON-RPC error code; the server turns it into the ``error`` member of a response, and the client
turns that member back into the same class (:func:`error_from_wire`). Errors that never cross the
wire (a bad configuration, a daemon that cannot be reached, a damaged file) sit beside it under
:class:`EngramError`, and so does every other exception class engram defines::

    EngramError
    ├── ConfigError                 settings or files are invalid (CLI exit 2, daemon not started)
    ├── StartupError                the daemon cannot start (socket in use, newer schema, ...; exit 2)
    ├── DaemonUnreachable           the client could not reach the socket (CLI exit 3)
    ├── DataError                   stored data or a file is damaged, or not what it claims to be:
    │                               audit log verification, proofs, store, signed notes, model
    │                               signatures and files, the vector index file, import lines
    ├── InternalSignal              control flow inside one part (a unit gave way, a batcher
    │                               closed, a target is down, a frame too large, ...); caught
    │                               there or translated at its boundary, never seen by a client
    └── RPCError                    anything with a JSON-RPC error code (CLI exit 1)
        ├── ParseError              -32700  the frame is not JSON
        ├── InvalidRequest          -32600  not a JSON-RPC 2.0 request (or a frame too large)
        ├── MethodNotFound          -32601
        ├── InvalidParams           -32602  ``data.field`` names the wrong field
        ├── InternalError           -32603
        ├── PolicyDenied            -32001
        ├── NotFound                -32002
        ├── Overloaded              -32003  retry later
        ├── Timeout                 -32004
        ├── Unavailable             -32005  provider down, breaker open, daemon stopping
        ├── IntegrityError          -32006  hash or signature mismatch
        └── Conflict                -32007

``error.data`` always carries a machine-readable ``reason`` (a short snake_case word) so that
programs can branch on it without parsing the human message.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "EngramError",
    "ConfigError",
    "StartupError",
    "DaemonUnreachable",
    "DataError",
    "InternalSignal",
    "RPCError",
    "ParseError",
    "InvalidRequest",
    "MethodNotFound",
    "InvalidParams",
    "InternalError",
    "PolicyDenied",
    "NotFound",
    "Overloaded",
    "Timeout",
    "Unavailable",
    "IntegrityError",
    "Conflict",
    "error_from_wire",
]


class EngramError(Exception):
    """Base of every error engram raises on purpose."""


class ConfigError(EngramError):
    """The configuration (file, environment or flags) is invalid.

    ``problems`` lists ``(key, message)`` pairs, one per invalid setting, so that the CLI can print
    every problem at once instead of making the user fix them one run at a time.
    """

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def __str__(self) -> str:
        if not self.problems:
            return super().__str__()
        lines = [super().__str__()]
        lines += [f"  {key}: {problem}" for key, problem in self.problems]
        return "\n".join(lines)


class StartupError(EngramError):
    """The daemon refuses to start; the message says why and what to do about it."""


class DaemonUnreachable(EngramError):
    """No daemon answered on the socket the client tried (the message names it)."""

    def __init__(self, message: str, socket_path: str) -> None:
        super().__init__(message)
        self.socket_path = socket_path


class DataError(EngramError):
    """Stored data or a file is damaged, or is not what it claims to be; the message says which.

    Subclasses that parsers raise keep :class:`ValueError` as a second base, so that code
    catching what a parser may raise catches them too."""


class InternalSignal(EngramError):
    """Raised and caught within one part to change course (retry, fall back, refuse a frame).

    Never reaches a client or the command line as itself: the part handles it, or translates it
    into an :class:`RPCError` at its boundary."""


class RPCError(EngramError):
    """An error that travels as a JSON-RPC error object."""

    code: ClassVar[int] = -32603
    default_reason: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, reason: str | None = None, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = {"reason": reason or self.default_reason, **data}

    @property
    def reason(self) -> str:
        return str(self.data.get("reason", self.default_reason))

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "data": self.data}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, data={self.data!r})"


class ParseError(RPCError):
    code = -32700
    default_reason = "parse_error"


class InvalidRequest(RPCError):
    code = -32600
    default_reason = "invalid_request"


class MethodNotFound(RPCError):
    code = -32601
    default_reason = "method_not_found"


class InvalidParams(RPCError):
    """Params do not match the method's schema; ``data.field`` is the dotted path of the culprit."""

    code = -32602
    default_reason = "invalid_params"


class InternalError(RPCError):
    code = -32603
    default_reason = "internal_error"


class PolicyDenied(RPCError):
    code = -32001
    default_reason = "policy_denied"


class NotFound(RPCError):
    code = -32002
    default_reason = "not_found"


class Overloaded(RPCError):
    code = -32003
    default_reason = "overloaded"


class Timeout(RPCError):
    code = -32004
    default_reason = "timeout"


class Unavailable(RPCError):
    code = -32005
    default_reason = "unavailable"


class IntegrityError(RPCError):
    code = -32006
    default_reason = "integrity_failure"


class Conflict(RPCError):
    code = -32007
    default_reason = "conflict"


_BY_CODE: dict[int, type[RPCError]] = {
    cls.code: cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        PolicyDenied,
        NotFound,
        Overloaded,
        Timeout,
        Unavailable,
        IntegrityError,
        Conflict,
    )
}


def error_from_wire(error: Any) -> RPCError:
    """Rebuild the exception a JSON-RPC ``error`` object stands for (unknown codes: RPCError)."""
    if not isinstance(error, dict):
        return InternalError(f"malformed error object from daemon: {error!r}", reason="bad_error")
    code = error.get("code")
    message = str(error.get("message", ""))
    data = error.get("data") if isinstance(error.get("data"), dict) else {}
    cls = _BY_CODE.get(code) if isinstance(code, int) else None
    if cls is None:
        exc = RPCError(message, **data)
        exc.code = code if isinstance(code, int) else -32603  # type: ignore[misc]
        return exc
    reason = data.pop("reason", None)
    return cls(message, reason=reason, **data)
