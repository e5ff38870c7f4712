"""What params may not hold, whatever their method, checked once as they come in.

JSON lets a client send text that is not Unicode (``"\\ud800"``: a lone surrogate, which no UTF-8
encoder accepts), numbers no float can hold (``1e400``, read as infinity, which no JSON encoder
writes back) and integers of any size, which SQLite (64-bit INTEGER) cannot bind. Each part
would meet them deep inside its own code, as an internal error; instead the dispatcher checks
every request here, so each such value is -32602 naming its field, in every method alike:

- :func:`check_values` walks the raw params before the method's model sees them: no string and
  no object key anywhere may be invalid Unicode, and no number may be infinite;
- :func:`check_integers` walks the validated params: every integer a params model declares
  (``int``, ``list[int]``, ...) must fit in 64 bits. Free JSON (``Any``, ``JsonValue``: metadata,
  tensor data, which may hold uint64 values) is stored as JSON text, not bound as an integer,
  and is left alone.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, JsonValue

from engram.errors import InvalidParams

# SQLite's INTEGER: a signed 64-bit integer. Larger ones overflow when bound to a statement.
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

Path = tuple[str | int, ...]

# A list of only these is a vector or a tensor row: checked as a whole, and named as a whole.
_NUMBERS = {int, float, bool, type(None)}


def is_unicode(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (it has no lone surrogate)."""
    if text.isascii():  # O(1) in CPython: almost every string is settled here
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(key: str) -> str:
    # A field name quoted back in an error must itself be valid text: surrogates become \udxxx.
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def _all_finite(numbers: list[Any], kinds: set[type]) -> bool:
    if float not in kinds:  # ints are finite, however large (their range is check_integers')
        return True
    if kinds == {float}:
        return all(map(math.isfinite, numbers))  # a float vector: at C speed
    return all(math.isfinite(number) for number in numbers if type(number) is float)


def _invalid_values(value: Any, path: Path) -> Iterator[tuple[str, Path]]:
    """(reason, path) of each string or key that is not Unicode and each infinite number, in
    document order (raw params are at most ``server.max_json_depth`` deep: bounded recursion)."""
    if isinstance(value, str):
        if not is_unicode(value):
            yield "invalid_unicode", path
    elif isinstance(value, float):
        if not math.isfinite(value):
            yield "non_finite_number", path
    elif isinstance(value, dict):
        for key, item in value.items():  # keys of parsed JSON are always strings
            if not is_unicode(key):
                yield "invalid_unicode", (*path, _printable(key))
                return
            yield from _invalid_values(item, (*path, key))
    elif isinstance(value, list):
        kinds = set(map(type, value))
        if kinds <= _NUMBERS:
            if not _all_finite(value, kinds):
                yield "non_finite_number", path
            return
        for index, item in enumerate(value):
            yield from _invalid_values(item, (*path, index))


def _dotted(path: Path) -> str | None:
    return ".".join(str(part) for part in path) or None


_PROBLEMS = {
    "invalid_unicode": "text is not valid Unicode (a lone surrogate, e.g. \\ud800)",
    "non_finite_number": "numbers must be finite (a literal like 1e400 overflows a 64-bit float)",
}


def check_values(params: dict[str, Any]) -> None:
    """Raise InvalidParams naming the first string or key in the raw ``params`` (by name) that is
    not valid Unicode (``invalid_unicode``) or number that is infinite (``non_finite_number``;
    in a list of numbers, the list is named)."""
    for reason, path in _invalid_values(params, ()):
        field = _dotted(path)
        raise InvalidParams(f"{field}: {_PROBLEMS[reason]}", reason=reason, field=field)


def _declares_int(annotation: Any) -> bool:
    """Whether a field's type holds integers it declares: int, int | None, list[int],
    Annotated[int, ...], dict[str, int]; not Any or JsonValue (free JSON)."""
    if annotation is int:
        return True
    origin = typing.get_origin(annotation)
    if origin is None:
        return False
    if origin is typing.Annotated:
        return _declares_int(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, set, frozenset, dict):
        return any(_declares_int(arg) for arg in typing.get_args(annotation) if arg is not Ellipsis)
    return False


def _out_of_range(value: Any, path: Path) -> Iterator[Path]:
    if isinstance(value, int) and not isinstance(value, bool):
        if not INT_MIN <= value <= INT_MAX:
            yield path
    elif isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(value):
            yield from _out_of_range(item, (*path, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _out_of_range(item, (*path, key))


def _may_hold_model(annotation: Any) -> bool:
    """Whether a field's type may hold a model (whose integers are checked in turn): a model, or
    a union, container or Annotated of one. Free JSON and plain classes hold none; a type this
    does not know counts as one that may."""
    if annotation is JsonValue:
        return False
    origin = typing.get_origin(annotation)
    if origin is None:
        return not isinstance(annotation, type) or issubclass(annotation, BaseModel)
    if origin is typing.Literal:
        return False
    if origin is typing.Annotated:
        return _may_hold_model(typing.get_args(annotation)[0])
    return any(_may_hold_model(arg) for arg in typing.get_args(annotation) if arg is not Ellipsis)


@functools.cache
def _fields(model: type[BaseModel]) -> tuple[tuple[str, str, bool], ...]:
    """(attribute, name on the wire, declares integers) of each field that declares integers or
    may hold a model: worked out once per params class, not on every request. The others (text,
    flags, free JSON) are never looked at."""
    return tuple(
        (name, field.alias or name, _declares_int(field.annotation))
        for name, field in model.model_fields.items()
        if _declares_int(field.annotation) or _may_hold_model(field.annotation)
    )


def _declared_ints_out_of_range(model: BaseModel, path: Path) -> Iterator[Path]:
    for name, wire_name, declares_int in _fields(type(model)):
        value = getattr(model, name)
        where = (*path, wire_name)
        if isinstance(value, BaseModel):
            yield from _declared_ints_out_of_range(value, where)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(item, BaseModel) for item in value):
            for index, item in enumerate(value):
                yield from _declared_ints_out_of_range(item, (*where, index))
        elif declares_int:
            yield from _out_of_range(value, where)


def check_integers(params: BaseModel) -> None:
    """Raise InvalidParams (``integer_out_of_range``) naming the first integer the validated
    ``params`` declare that SQLite cannot store."""
    if not _fields(type(params)):  # e.g. system.ping's: nothing to walk
        return
    for path in _declared_ints_out_of_range(params, ()):
        field = _dotted(path)
        raise InvalidParams(
            f"{field}: integer out of the 64-bit range {INT_MIN}..{INT_MAX}", reason="integer_out_of_range", field=field
        )
