"""The periods of time a query names, so that recall can prefer what happened then.

"What did Melanie paint in July 2023?", "what did I cook yesterday?": the words "July 2023" and
"yesterday" are not in the episode that answers, but its time is. :func:`named_periods` reads
the query for

- a day: ``13 October 2023``, ``October 13, 2023``, ``2023-10-13``, ``13 October`` (any year);
- a month: ``July 2023``, ``in July`` (any year);
- a year: ``in 2023``, ``during 2022``;
- a day or span relative to ``now``: ``today``, ``yesterday``, ``this week|month|year``,
  ``last week|month|year``, ``three days ago``, ``2 years ago``;

and :func:`in_periods` says which episode times fall in one (recall's ``period`` part). Dates are
read in the daemon's local time zone, as the person asking means them. A day is taken one day
wide on each side (a chat on the 14th says "yesterday" about the 13th); an "N units ago" spans
half a unit either side. A bare month name counts only capitalised and, for "May", only after a
preposition ("in May"), so that the verbs "may" and "march" are not read as months.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
from numpy.typing import NDArray

__all__ = ["AnyYear", "Period", "in_periods", "named_periods", "spans"]

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Period:
    """Seconds since the epoch, ``start`` included, ``end`` not."""

    start: float
    end: float


@dataclass(frozen=True, slots=True)
class AnyYear:
    """A month, or a day of a month, in whichever year ("in July", "on 13 October")."""

    month: int
    day: int | None = None


Named = Period | AnyYear

_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_MONTH_OF = {name: n for n, name in enumerate(_MONTHS, 1)} | {name[:3]: n for n, name in enumerate(_MONTHS, 1)}
_MONTH = r"(?P<month>" + "|".join(sorted(_MONTH_OF, key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"
_YEAR = r"(?P<year>(?:19|20)\d\d)"
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
            "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
_UNIT = {"day": 1.0, "week": 7.0, "month": 30.44, "year": 365.25}  # in days

_PATTERNS = [  # most specific first; a match's characters are not read again
    ("iso", re.compile(r"\b(?P<year>(?:19|20)\d\d)-(?P<month>[01]\d)-(?P<day>[0-3]\d)\b")),
    ("day", re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH}(?:,?\s+{_YEAR})?\b", re.I)),
    ("day", re.compile(rf"\b{_MONTH}\s+{_DAY}(?!\d)(?:,?\s+{_YEAR})?\b", re.I)),
    ("month", re.compile(rf"\b{_MONTH},?\s+{_YEAR}\b", re.I)),
    ("bare_month", re.compile(rf"\b(?P<prep>(?i:in|during|of|on|since|until|by|from|to|before|after))?\s*(?P<name>[A-Z][a-z]+)\b")),
    ("year", re.compile(rf"\b(?:in|during|throughout)\s+{_YEAR}\b", re.I)),
    ("ago", re.compile(r"\b(?P<n>\d{1,3}|an?|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\s+"
                       r"(?P<unit>day|week|month|year)s?\s+ago\b", re.I)),
    ("relative", re.compile(r"\b(?P<which>today|yesterday|(?:this|last)\s+(?:week|month|year))\b", re.I)),
]


def named_periods(text: str, now: float) -> list[Named]:
    """The periods ``text`` names (see the module's docstring), relative ones against ``now``."""
    found: list[Named] = []
    taken = [False] * len(text)
    for kind, pattern in _PATTERNS:
        for match in pattern.finditer(text):
            if any(taken[match.start() : match.end()]):
                continue
            period = _read(kind, match, now)
            if period is not None:
                found.append(period)
                taken[match.start() : match.end()] = [True] * (match.end() - match.start())
    return found


def _read(kind: str, match: re.Match[str], now: float) -> Named | None:
    groups = match.groupdict()
    if kind in ("iso", "day", "month"):
        month = int(groups["month"]) if kind == "iso" else _MONTH_OF[groups["month"].lower()]
        day = int(groups["day"]) if groups.get("day") else None
        year = int(groups["year"]) if groups.get("year") else None
        if day is not None and not 1 <= day <= 31 or not 1 <= month <= 12:
            return None
        if year is None:
            return AnyYear(month, day)
        if day is None:
            return _span(date(year, month, 1), _next_month(date(year, month, 1)))
        try:
            named = date(year, month, day)
        except ValueError:  # 31 February
            return None
        return _span(named - timedelta(days=1), named + timedelta(days=2))
    if kind == "bare_month":
        name = groups["name"].lower()
        if name not in _MONTHS or name == "may" and not groups["prep"]:
            return None
        return AnyYear(_MONTH_OF[name])
    if kind == "year":
        year = int(groups["year"])
        return _span(date(year, 1, 1), date(year + 1, 1, 1))
    if kind == "ago":
        count = groups["n"].lower()
        n = int(count) if count.isdigit() else _NUMBERS[count]
        unit = _UNIT[groups["unit"].lower()] * DAY
        return Period(now - (n + 0.5) * unit, now - (n - 0.5) * unit)
    today = datetime.fromtimestamp(now).date()
    which = " ".join(groups["which"].lower().split())
    if which in ("today", "yesterday"):
        day = today - timedelta(days=1 if which == "yesterday" else 0)
        return _span(day, day + timedelta(days=1))
    this, unit = which.split()
    if unit == "week":
        start = today - timedelta(days=today.weekday())
        start = start - timedelta(days=7) if this == "last" else start
        return _span(start, start + timedelta(days=7))
    if unit == "month":
        start = today.replace(day=1)
        if this == "last":
            start = (start - timedelta(days=1)).replace(day=1)
        return _span(start, _next_month(start))
    year = today.year - (1 if this == "last" else 0)
    return _span(date(year, 1, 1), date(year + 1, 1, 1))


def _next_month(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def _span(start: date, end: date) -> Period:
    """Local midnight of ``start`` to local midnight of ``end``."""
    midnight = datetime.min.time()
    return Period(datetime.combine(start, midnight).timestamp(), datetime.combine(end, midnight).timestamp())


def in_periods(times: NDArray[np.float64], periods: list[Named]) -> NDArray[np.float64]:
    """1.0 for each time inside one of ``periods``, else 0.0."""
    inside = np.zeros(len(times), dtype=bool)
    if not len(times) or not periods:
        return inside.astype(np.float64)
    for span in spans(periods, float(times.min()), float(times.max())):
        inside |= (times >= span.start) & (times < span.end)
    return inside.astype(np.float64)


def spans(periods: list[Named], first: float, last: float) -> list[Period]:
    """``periods`` as spans of time; a month or day of any year becomes one span in each year from
    that of ``first`` to that of ``last``."""
    years = range(datetime.fromtimestamp(first).year, datetime.fromtimestamp(last).year + 1)
    return [span for period in periods for span in _spans(period, years)]


def _spans(period: Named, years: range) -> list[Period]:
    if isinstance(period, Period):
        return [period]
    spans = []
    for year in years:
        if period.day is None:
            spans.append(_span(date(year, period.month, 1), _next_month(date(year, period.month, 1))))
            continue
        try:
            named = date(year, period.month, period.day)
        except ValueError:  # 29 February of a common year
            continue
        spans.append(_span(named - timedelta(days=1), named + timedelta(days=2)))
    return spans
