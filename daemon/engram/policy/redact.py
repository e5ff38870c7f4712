"""The redact obligation: take personal data and secrets out of what leaves the machine.

Built-in detectors (each replaces a match with ``[REDACTED:<kind>]``):

* ``email`` — addresses such as ``ada@example.org``;
* ``payment_card`` — 13 to 19 digits, optionally grouped by spaces or dashes, that pass the Luhn
  check (so order numbers and timestamps stay);
* ``ip_address`` — IPv4 dotted quads and IPv6 addresses (candidates are confirmed with
  :mod:`ipaddress`, so clock times like ``12:30:45`` stay);
* ``phone`` — international (``+33 6 12 34 56 78``) and national (``(555) 123-4567``) numbers of
  7 to 15 digits;
* ``api_key`` — well-known key and token formats (OpenAI/Anthropic ``sk-``, GitHub ``ghp_``/
  ``github_pat_``, GitLab ``glpat-``, Slack ``xox?-``, AWS ``AKIA``, Google ``AIza``, JWTs),
  ``Bearer`` credentials, ``api_key=``/``token:``/``password=`` style assignments (the value is
  redacted, the name kept) and PEM private key blocks.

Site patterns from policy files (``[[redaction.pattern]]``) run first, then the detectors from the
most specific to the most general, each over the output of the one before: a replacement token
never matches a later detector, so nothing is redacted twice. Strings are redacted wherever they
appear in a JSON payload (object values and array items; object keys are left as they are).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from engram.policy.model import DETECTORS, RedactionPattern

__all__ = ["Redactor", "luhn_valid"]

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,63}(?![\w-])")
_CARD = re.compile(r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.])")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})(?:%[\w.]+)?(?![\w:.])")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,5}"  # +33 6 12 34 56 78
    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}|\d{3} \d{3} \d{4}"  # 555-123-4567
    r"|0\d{1,4}(?:[ .-]\d{2,4}){2,4}"  # 06 12 34 56 78, 020 7946 0958
    r")(?![\w])"
)
_DATE = re.compile(r"\d{1,2}([./-])\d{1,2}\1\d{2,4}|\d{4}([./-])\d{1,2}\2\d{1,2}")
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL)
_TOKENS = re.compile(
    r"(?<![\w-])(?:"
    r"sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}"
    r"|gh[pousr]_[A-Za-z0-9]{36,}"
    r"|github_pat_[A-Za-z0-9_]{22,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r")(?![\w-])"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{16,}")
_ASSIGNED = re.compile(
    r"(?i)\b((?:api[_-]?key|access[_-]?key|secret(?:[_-]?key)?|auth[_-]?token|access[_-]?token|token|password|passwd)"
    r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;]{6,})"
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _token(kind: str) -> str:
    return f"[REDACTED:{kind}]"


_DELETE_DIGITS = str.maketrans("", "", "0123456789")
_TOKEN_HINT = re.compile(r"sk-|gh[pousr]_|github_pat_|glpat-|xox[abprs]-|AKIA|ASIA|AIza|eyJ").search
_BEARER_HINT = re.compile(r"(?i)bearer|basic").search
_ASSIGNED_HINT = re.compile(r"(?i)key|token|secret|passw").search


class _Facts:
    """Cheap facts about a string (C-speed scans) that tell most detectors they need not run."""

    __slots__ = ("digits",)

    def __init__(self, text: str) -> None:
        self.digits = len(text) - len(text.translate(_DELETE_DIGITS))


Gate = Callable[[str, _Facts], bool]


def _always(text: str, facts: _Facts) -> bool:
    return True


@dataclass(frozen=True)
class _Step:
    kind: str
    pattern: re.Pattern[str]
    replace: Callable[[re.Match[str]], str | None]  # None: not a real match, keep the text
    # Whether the pattern can match at all (a necessary condition, never a sufficient one).
    gate: Gate = _always


def _whole(kind: str) -> Callable[[re.Match[str]], str | None]:
    token = _token(kind)
    return lambda match: token


def _card(match: re.Match[str]) -> str | None:
    digits = re.sub(r"[ -]", "", match.group(0))
    return _token("payment_card") if 13 <= len(digits) <= 19 and luhn_valid(digits) else None


def _ipv6(match: re.Match[str]) -> str | None:
    text = match.group(0).split("%", 1)[0]
    if text.count(":") < 2:
        return None
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return None
    return _token("ip_address")


def _phone(match: re.Match[str]) -> str | None:
    text = match.group(0)
    digits = sum(ch.isdigit() for ch in text)
    if not 7 <= digits <= 15 or _DATE.fullmatch(text):
        return None
    return _token("phone")


def _assigned(match: re.Match[str]) -> str | None:
    return match.group(1) + _token("api_key")


_BUILTIN: dict[str, list[_Step]] = {
    "api_key": [
        _Step("api_key", _PEM, _whole("api_key"), lambda t, f: "PRIVATE KEY-----" in t),
        _Step("api_key", _TOKENS, _whole("api_key"), lambda t, f: _TOKEN_HINT(t) is not None),
        _Step("api_key", _BEARER, lambda m: f"{m.group(1)} {_token('api_key')}", lambda t, f: _BEARER_HINT(t) is not None),
        _Step("api_key", _ASSIGNED, _assigned, lambda t, f: _ASSIGNED_HINT(t) is not None),
    ],
    "email": [_Step("email", _EMAIL, _whole("email"), lambda t, f: "@" in t)],
    "payment_card": [_Step("payment_card", _CARD, _card, lambda t, f: f.digits >= 13)],
    "ip_address": [
        _Step("ip_address", _IPV4, _whole("ip_address"), lambda t, f: f.digits >= 4 and "." in t),
        _Step("ip_address", _IPV6, _ipv6, lambda t, f: t.count(":") >= 2),
    ],
    "phone": [_Step("phone", _PHONE, _phone, lambda t, f: f.digits >= 7)],
}
# Most specific first: a card number must not be half-eaten as a phone number, nor an address's
# digits as an IP.
_ORDER = ("api_key", "email", "payment_card", "ip_address", "phone")
assert set(_ORDER) == set(DETECTORS)


class Redactor:
    """Redacts strings and JSON payloads; built once per policy set, used from any thread."""

    def __init__(self, detectors: Iterable[str] = DETECTORS, patterns: Iterable[RedactionPattern] = ()) -> None:
        enabled = set(detectors)
        unknown = enabled - set(DETECTORS)
        if unknown:
            raise ValueError(f"unknown detectors: {sorted(unknown)}")
        self.detectors = [name for name in _ORDER if name in enabled]
        self.patterns = list(patterns)
        steps: list[_Step] = []
        for custom in self.patterns:
            flags = re.IGNORECASE if custom.ignore_case else 0
            replacement = custom.replacement if custom.replacement is not None else _token(custom.name)
            steps.append(_Step(custom.name, re.compile(custom.regex, flags), lambda m, r=replacement: r))
        for name in self.detectors:
            steps += _BUILTIN[name]
        self._steps = steps

    def redact_text(self, text: str, counts: Counter[str] | None = None) -> str:
        # The facts are taken from the text before any replacement; replacements only remove
        # digits and separators, so they stay upper bounds and the gates stay safe.
        facts = _Facts(text)
        for step in self._steps:
            if step.gate(text, facts):
                text = step.pattern.sub(_counting(step, counts), text)
        return text

    def redact(self, payload: Any) -> tuple[Any, dict[str, int]]:
        """The payload with every string redacted, and how many matches of each kind."""
        counts: Counter[str] = Counter()
        return self._walk(payload, counts), dict(counts)

    def _walk(self, value: Any, counts: Counter[str]) -> Any:
        if isinstance(value, str):
            return self.redact_text(value, counts)
        if isinstance(value, dict):
            return {key: self._walk(item, counts) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._walk(item, counts) for item in value]
        return value


def _counting(step: _Step, counts: Counter[str] | None) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        out = step.replace(match)
        if out is None:
            return match.group(0)
        if counts is not None:
            counts[step.kind] += 1
        return out

    return replace
