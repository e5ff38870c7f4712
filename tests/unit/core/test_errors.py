"""Errors cross the wire and come back as the same class, with their data."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import engram
from engram import errors


@pytest.mark.parametrize("cls", [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.RPCError) and c is not errors.RPCError])
def test_round_trip_every_code(cls):
    original = cls("something specific", reason="why_not", field="a.b")
    back = errors.error_from_wire(original.to_wire())
    assert type(back) is cls and back.code == cls.code
    assert back.message == "something specific" and back.reason == "why_not" and back.data["field"] == "a.b"


def test_codes_are_the_documented_ones():
    assert {c.code for c in errors._BY_CODE.values()} == {
        -32700, -32600, -32601, -32602, -32603, -32001, -32002, -32003, -32004, -32005, -32006, -32007,
    }


def test_unknown_code_and_malformed_error():
    exc = errors.error_from_wire({"code": -32099, "message": "custom", "data": {"reason": "x"}})
    assert type(exc) is errors.RPCError and exc.code == -32099 and exc.reason == "x"
    assert isinstance(errors.error_from_wire("junk"), errors.InternalError)


def test_config_error_lists_every_problem():
    exc = errors.ConfigError("invalid configuration:", [("a.b", "bad"), ("c", "worse")])
    assert str(exc) == "invalid configuration:\n  a.b: bad\n  c: worse"


def test_public_api_is_importable():
    for name in engram.__all__:
        assert getattr(engram, name) is not None


def test_every_exception_engram_defines_is_an_engram_error():
    """One hierarchy: a class that raises past its module can always be caught as EngramError."""
    outside = []
    for module in pkgutil.walk_packages(engram.__path__, "engram."):
        namespace = vars(importlib.import_module(module.name))
        for name, obj in namespace.items():
            if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == module.name:
                if not issubclass(obj, errors.EngramError):
                    outside.append(f"{module.name}.{name}")
    assert outside == []


def test_parser_errors_stay_value_errors_and_timeouts_stay_timeouts():
    """Callers catch these by their builtin base too (json hooks, the client's read loop)."""
    from engram.server.framing import IdleTimeout, SlowFrame
    from engram.server.jsonrpc import NonFiniteNumber
    from engram.signing import NoteError

    assert issubclass(NoteError, errors.DataError) and issubclass(NoteError, ValueError)
    assert issubclass(NonFiniteNumber, errors.InternalSignal) and issubclass(NonFiniteNumber, ValueError)
    assert all(issubclass(cls, TimeoutError) and issubclass(cls, errors.InternalSignal) for cls in (IdleTimeout, SlowFrame))
