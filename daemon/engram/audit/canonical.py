"""Canonical JSON: one byte string per JSON value, so that hashes of JSON mean something.

The rules are those of RFC 8785 (JSON Canonicalization Scheme, JCS):

* objects: members sorted by key, compared as UTF-16 code units (as JCS says; for the ASCII
  keys engram writes this is plain byte order), no duplicate keys (Python dicts have none);
* no whitespace anywhere; output is UTF-8;
* strings: only ``"``, ``\\``, and the control characters U+0000..U+001F are escaped, with the
  short forms ``\\b \\t \\n \\f \\r`` where JSON has them and ``\\u00xx`` (lower-case hex) otherwise;
  everything else, U+2028/U+2029 included, is written as itself;
* numbers: integers in decimal; floats as ECMAScript's ``Number.prototype.toString`` writes them
  (shortest round-trip digits, exponent form below 1e-6 and from 1e21, ``-0`` as ``0``).

Three deliberate extensions, so that hashing whatever a client sent can never fail: integers
beyond ±(2**53 - 1) (outside I-JSON, refused by JCS) are written exactly in decimal; lone
surrogates (not valid Unicode, refused by JCS) are written as ``\\udxxx`` escapes; and the
non-JSON floats Python's json module accepts are written ``NaN``, ``Infinity``, ``-Infinity``.
None of these occurs in what engram itself writes into audit entries.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from decimal import Decimal
from typing import Any

__all__ = ["canonical_json", "content_hash", "format_float"]

_escape_string = json.encoder.py_encode_basestring  # type: ignore[attr-defined]
_c_escape_string = getattr(json.encoder, "c_encode_basestring", None) or _escape_string
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _string(value: str) -> str:
    # json's encoder escapes exactly '"', '\\' and U+0000..U+001F, with the short forms and
    # lower-case \u00xx otherwise: the JCS rules. It leaves lone surrogates raw; escape them.
    out = _c_escape_string(value)
    if not value.isascii() and _LONE_SURROGATE.search(out):
        out = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)
    return out


def format_float(value: float) -> str:
    """ECMAScript Number::toString of a finite double (RFC 8785 §3.2.2.3)."""
    if value == 0:
        return "0"  # -0 too
    text = repr(value)
    if "e" not in text and "n" not in text:  # not exponent form, not nan/inf
        # Python writes plain decimals for 1e-4 <= |x| < 1e16, where ECMAScript does too (with the
        # same shortest digits); only the integral ".0" differs.
        return text.removesuffix(".0")
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    sign = "-" if value < 0 else ""
    # repr gives the shortest digit string that round-trips, which is what ECMAScript uses.
    _, digits_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digits_tuple)).rstrip("0") or "0"
    trailing = len("".join(map(str, digits_tuple))) - len(digits)
    k = len(digits)
    n = int(exponent) + trailing + k  # value = 0.digits × 10^n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        e = n - 1
        mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
        text = f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + text


def _sort_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _sorted_keys(obj: dict) -> list[str]:
    keys = list(obj)
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
        if not key.isascii():
            # Rare: sort by UTF-16 code units as JCS says (differs from code points above U+FFFF).
            return sorted(keys, key=_sort_key)
    keys.sort()
    return keys


# What precedes each member's value, per set of keys (see _members). Bounded: clients' metadata
# can bring any number of shapes; starting afresh costs only the sorting it saved.
_MEMBERS_LIMIT = 4096
_members_by_keys: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}


def _members(obj: dict) -> tuple[tuple[str, str], ...]:
    """Each key of ``obj`` in canonical order, with the text before its value (the ``,`` between
    members, the escaped key and ``:``). Worked out once per set of keys: what engram hashes
    repeats a few shapes (every hit of a recall has the same keys, in the same order)."""
    keys = tuple(obj)
    members = _members_by_keys.get(keys)
    if members is None:
        members = tuple((key, ("," if n else "") + _string(key) + ":") for n, key in enumerate(_sorted_keys(obj)))
        if len(_members_by_keys) >= _MEMBERS_LIMIT:
            _members_by_keys.clear()
        _members_by_keys[keys] = members
    return members


_float_repr = float.__repr__
_int_repr = int.__repr__


def _encode(value: Any, out: list[str]) -> None:
    # The hot path of the audit writer (every request's params and result are hashed), so the
    # common scalars are written inline in the loops over members and items rather than through
    # a call each, which costs more than writing them; anything else recurses.
    append = out.append
    kind = type(value)
    if kind is dict:
        append("{")
        for key, before in _members(value):
            append(before)
            item = value[key]
            kind = type(item)
            if kind is str:
                append(_string(item))
            elif kind is float:
                text = _float_repr(item)
                if "e" in text or "n" in text:  # exponent form, nan, inf
                    text = format_float(item)
                elif text[-2:] == ".0":
                    text = text[:-2] if item else "0"  # -0.0 too
                append(text)
            elif item is None:
                append("null")
            elif item is True:
                append("true")
            elif item is False:
                append("false")
            elif kind is int:
                append(_int_repr(item))
            else:
                _encode(item, out)
        append("}")
    elif kind is list or kind is tuple:
        append("[")
        first = True
        for item in value:
            if first:
                first = False
            else:
                append(",")
            kind = type(item)
            if kind is str:
                append(_string(item))
            elif kind is float:
                append(format_float(item))
            elif kind is int:
                append(_int_repr(item))
            else:
                _encode(item, out)
        append("]")
    elif kind is str:
        append(_string(value))
    elif value is None:
        append("null")
    elif value is True:
        append("true")
    elif value is False:
        append("false")
    elif kind is int:
        append(_int_repr(value))
    elif kind is float:
        append(format_float(value))
    elif isinstance(value, str):
        append(_string(str(value)))
    elif isinstance(value, int):  # IntEnum and other int subclasses: their integer value
        append(int.__repr__(value))
    elif isinstance(value, float):
        append(format_float(float(value)))
    elif isinstance(value, dict):
        _encode(dict(value), out)
    elif isinstance(value, (list, tuple)):
        _encode(list(value), out)
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 bytes of a JSON value (dicts, lists, str, int, float, bool, None)."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")


def content_hash(value: Any) -> str:
    """Hex SHA-256 of the canonical JSON of ``value``: how entries name content they must not hold."""
    return hashlib.sha256(canonical_json(value)).hexdigest()
