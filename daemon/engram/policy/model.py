"""What a policy file says: pydantic models of the TOML format (schema: ``engram policy schema``).

A policy file is a list of rules, optional rate limits, optional redaction settings and optional
temporal rules (``[[temporal]]``: rules over the event stream, :mod:`engram.policy.temporal`)::

    version = 1
    name = "grant-ada"

    [[rule]]
    name = "ada-memory"
    effect = "allow"
    principals = ["user:ada"]
    actions = ["memory.*"]

Which decision a rule takes part in follows from the resources it names (:attr:`Rule.point`):

* no ``namespaces``/``providers``/``locality``/``models``: **method** decisions (may this
  principal call this RPC method?);
* ``namespaces``: **namespace** decisions (may it read or write this memory namespace?);
* ``providers``, ``locality`` or ``models``: **egress** decisions (may this provider see this
  request's data?).

A rule never speaks for a kind of resource it does not name, so granting ``memory.*`` does not
grant every namespace, and allowing a method does not let its data leave the machine: both need a
rule that names them. Unknown keys are errors everywhere, so a typo cannot silently widen a rule.
"""

from __future__ import annotations

import re
from datetime import datetime, time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from engram.policy.mtl import FormulaError, parse

__all__ = [
    "Conditions",
    "DETECTORS",
    "Detector",
    "Effect",
    "Limit",
    "Locality",
    "Obligation",
    "PolicyFile",
    "Point",
    "PrincipalSpec",
    "Redaction",
    "RedactionPattern",
    "Rule",
    "TemporalGuard",
    "TemporalRule",
    "TimeWindow",
]

Effect = Literal["allow", "deny"]
Locality = Literal["local", "remote"]
Point = Literal["method", "namespace", "egress"]
# redact: payloads pass through the redactor before they leave; local_only: only local targets
# (a remote egress becomes a denial); audit: the decision is marked for the audit log.
Obligation = Literal["redact", "local_only", "audit"]
Detector = Literal["email", "phone", "payment_card", "ip_address", "api_key"]
DETECTORS: tuple[str, ...] = ("email", "phone", "payment_card", "ip_address", "api_key")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_PRINCIPAL = r"^(\*|owner|root|uid:[0-9]+|gid:[0-9]+|user:[^\s:]+|group:[^\s:]+)$"
_PRINCIPAL_RE = re.compile(_PRINCIPAL)
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _principal(value: str) -> str:
    if not _PRINCIPAL_RE.match(value):
        raise ValueError(
            f"{value!r} is not a principal: use '*', 'owner', 'root', 'uid:N', 'gid:N', 'user:NAME' or 'group:NAME'"
        )
    return value


def _glob(value: str) -> str:
    if not value or value != value.strip():
        raise ValueError("a pattern must be a non-empty string without surrounding spaces")
    return value


def _duration(value: Any) -> Any:
    """Seconds as a number, or a string such as "90s", "15m", "1h", "1d"."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration: use seconds (3600) or a number with s, m, h or d (\"1h\")")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


def _clock(value: str) -> str:
    if value == "24:00":
        return value
    try:
        time.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a time of day: use HH:MM (00:00 to 24:00)") from None
    if len(value) != 5:
        raise ValueError(f"{value!r} is not a time of day: use HH:MM (00:00 to 24:00)")
    return value


def _timezone(value: str) -> str:
    if value == "local":
        return value
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}: use 'local', 'UTC' or an IANA name such as 'Europe/Paris'") from None
    return value


def _regex(value: str) -> str:
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    if compiled.match(""):
        raise ValueError("the regular expression matches the empty string, so it would redact everywhere")
    return value


PrincipalSpec = Annotated[
    str,
    AfterValidator(_principal),
    WithJsonSchema({"type": "string", "pattern": _PRINCIPAL}),
]
Glob = Annotated[str, AfterValidator(_glob)]
Duration = Annotated[
    float,
    BeforeValidator(_duration),
    Field(gt=0, le=366 * 86400),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(s|m|h|d)$"},
            ]
        }
    ),
]
Clock = Annotated[str, AfterValidator(_clock), WithJsonSchema({"type": "string", "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$"})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TimeWindow(_Strict):
    """A recurring window of local time; a window whose end is before its start spans midnight."""

    days: list[Day] = Field(default_factory=lambda: list(DAYS), min_length=1, description="Days of the week it applies on.")
    start: Clock = Field(default="00:00", description="Start, HH:MM, inclusive.")
    end: Clock = Field(default="24:00", description="End, HH:MM, exclusive (24:00: end of the day).")
    timezone: Annotated[str, AfterValidator(_timezone)] = Field(
        default="local", description="'local' (the machine's zone), 'UTC' or an IANA zone name."
    )

    def contains(self, now: datetime) -> bool:
        """Whether ``now`` (an aware datetime) falls in the window; the day is the window's own:
        for a window over midnight, the early hours belong to the day before."""
        local = now.astimezone() if self.timezone == "local" else now.astimezone(ZoneInfo(self.timezone))
        minute = local.hour * 60 + local.minute
        start, end = _minutes(self.start), _minutes(self.end)
        day = DAYS[local.weekday()]
        if start <= end:
            return day in self.days and start <= minute < end
        if minute >= start:
            return day in self.days
        return minute < end and DAYS[(local.weekday() - 1) % 7] in self.days


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


class Conditions(_Strict):
    """Extra conditions of a rule; all that are given must hold."""

    tags_any: list[str] | None = Field(
        default=None, min_length=1, description="Matches when the request's data carries at least one of these tags."
    )
    tags_none: list[str] | None = Field(
        default=None, min_length=1, description="Matches only when the request's data carries none of these tags."
    )
    privacy_mode: bool | None = Field(default=None, description="Matches only while privacy mode is on (true) or off (false).")
    time: TimeWindow | None = Field(default=None, description="Matches only inside this time window.")
    clients: list[Glob] | None = Field(
        default=None,
        min_length=1,
        description=(
            "Matches only requests from a client that declared one of these names (globs) with system.hello. "
            "The name is not verified: use it to narrow what a principal may do through a client, "
            "never as the only reason to allow."
        ),
    )


class Rule(_Strict):
    """One rule: who (principals), what (actions), on which resource, when; allow or deny."""

    name: str = Field(pattern=_NAME, description="Unique name; decisions and denials cite it.")
    description: str = Field(default="", description="Why the rule exists (shown by policy.show and explain).")
    effect: Effect = Field(description="allow or deny; a matching deny always wins (deny overrides).")
    principals: list[PrincipalSpec] = Field(
        min_length=1,
        description=(
            "Who it applies to (any of): '*', 'owner' (the daemon's uid), 'root', 'uid:N', 'gid:N' (primary gid), "
            "'user:NAME', 'group:NAME' (primary or supplementary group). All are kernel-verified peer credentials."
        ),
    )
    actions: list[Glob] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        description="RPC method names or glob patterns (fnmatch: *, ?, [..]) such as 'memory.*'.",
    )
    namespaces: list[Glob] | None = Field(
        default=None,
        min_length=1,
        description="Memory namespaces (globs); '{uid}' and '{user}' stand for the caller's. Makes it a namespace rule.",
    )
    providers: list[Glob] | None = Field(
        default=None, min_length=1, description="Provider names (globs). Makes it an egress rule."
    )
    locality: list[Locality] | None = Field(
        default=None, min_length=1, description="Provider localities: local, remote. Makes it an egress rule."
    )
    models: list[Glob] | None = Field(
        default=None, min_length=1, description="Model names at the provider (globs). Makes it an egress rule."
    )
    when: Conditions | None = Field(default=None, description="Conditions: data tags, privacy mode, time window.")
    obligations: list[Obligation] = Field(
        default_factory=list,
        description="What an allow by this rule obliges: redact (payloads are redacted before they leave), "
        "local_only (only local targets), audit (the decision goes to the audit log).",
    )
    admin: bool = Field(
        default=False,
        description="Method rules only: may grant admin (owner-only) methods to principals other than the owner and root.",
    )

    @model_validator(mode="after")
    def _one_kind_of_resource(self) -> Rule:
        egress = self.providers is not None or self.locality is not None or self.models is not None
        if self.namespaces is not None and egress:
            raise ValueError("a rule names either namespaces or providers/locality/models, not both: split it in two")
        if self.admin and (egress or self.namespaces is not None):
            raise ValueError("admin = true only applies to method rules (rules without namespaces or providers)")
        if self.effect == "allow" and self.when is not None and self.when.clients is not None and "*" in self.principals:
            raise ValueError(
                "an allow rule with when.clients must also name verified principals (not '*'): "
                "a client-declared name is not proof of who is asking"
            )
        return self

    @property
    def point(self) -> Point:
        if self.namespaces is not None:
            return "namespace"
        if self.providers is not None or self.locality is not None or self.models is not None:
            return "egress"
        return "method"


class Limit(_Strict):
    """A token bucket per principal (uid) and provider for egress: at most ``calls`` calls and
    ``bytes`` payload bytes per ``period``, with bursts up to ``burst`` calls."""

    name: str = Field(pattern=_NAME, description="Unique name; a refusal cites it as 'limit:<name>'.")
    description: str = Field(default="", description="Why the limit exists.")
    principals: list[PrincipalSpec] = Field(default_factory=lambda: ["*"], min_length=1, description="Who it applies to.")
    providers: list[Glob] = Field(default_factory=lambda: ["*"], min_length=1, description="Provider names (globs).")
    locality: list[Locality] = Field(default_factory=lambda: ["remote"], min_length=1, description="Provider localities.")
    calls: int | None = Field(default=None, ge=1, description="Calls allowed per period.")
    bytes: int | None = Field(default=None, ge=1, description="Payload bytes (after redaction) allowed per period.")
    period: Duration = Field(default=3600.0, description="The period: seconds, or \"30s\", \"15m\", \"1h\", \"1d\".")
    burst: int | None = Field(
        default=None, ge=1, description="Most calls at once (bucket size); default: calls (the whole period's worth)."
    )

    @model_validator(mode="after")
    def _bounded(self) -> Limit:
        if self.calls is None and self.bytes is None:
            raise ValueError("a limit needs calls, bytes or both")
        if self.burst is not None and self.calls is None:
            raise ValueError("burst applies to calls: set calls too")
        return self


class RedactionPattern(_Strict):
    """A pattern of the site's own (employee numbers, project code names, ...)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="Short name; counted in metrics and events.")
    regex: Annotated[str, AfterValidator(_regex)] = Field(description="Python regular expression of what to redact.")
    replacement: str | None = Field(default=None, description="What replaces a match (default: [REDACTED:<name>]).")
    ignore_case: bool = Field(default=False, description="Match case-insensitively.")


class Redaction(_Strict):
    """What the redact obligation removes."""

    detectors: list[Detector] = Field(
        default_factory=lambda: list(DETECTORS),
        description="Built-in detectors: email, phone, payment_card (Luhn-checked), ip_address (v4 and v6), "
        "api_key (well-known key and token formats, bearer tokens, key=value secrets, private key blocks).",
    )
    pattern: list[RedactionPattern] = Field(default_factory=list, description="Patterns of the site's own.")


FORMULA_HELP = (
    "A past-time temporal formula over the event stream (grammar: docs/policy.md#temporal-rules), such as "
    "'once[0s,10m] event(\"memory.recalled\", tags contains \"health\")' or 'count[1h] event(\"memory.forgotten\") >= 5'."
)


class TemporalGuard(_Strict):
    """What a temporal deny rule guards: the requests (method point) or provider calls (egress
    point) it is consulted for, before they happen."""

    point: Literal["method", "egress"] = Field(
        default="method", description="method: requests and plugin tools, by action; egress: provider calls."
    )
    actions: list[Glob] = Field(
        default_factory=lambda: ["*"], min_length=1,
        description="RPC methods or plugin:<tool> (globs); for egress, the method that causes the call.",
    )
    principals: list[PrincipalSpec] = Field(default_factory=lambda: ["*"], min_length=1, description="Whose calls it guards.")
    providers: list[Glob] | None = Field(default=None, min_length=1, description="Egress only: provider names (globs).")
    locality: list[Locality] | None = Field(default=None, min_length=1, description="Egress only: provider localities.")

    @model_validator(mode="after")
    def _egress_fields(self) -> TemporalGuard:
        if self.point == "method" and (self.providers is not None or self.locality is not None):
            raise ValueError("providers and locality guard provider calls: set point = \"egress\"")
        return self


def _formula(value: str, info: ValidationInfo) -> str:
    try:
        parse(value)
    except FormulaError as exc:
        name = info.data.get("name")
        who = f"rule {name!r}: " if name else ""
        raise ValueError(f"{who}{info.field_name}: {exc}") from None
    return value


class TemporalRule(_Strict):
    """A rule over what happened before: a formula that denies guarded actions while it holds, or
    raises an alert when it holds at an event; or an obligation that every event of one kind is
    followed by one of another within a time, else an alert."""

    name: str = Field(pattern=_NAME, description="Unique name (rules and temporal rules share names); denials and alerts cite it.")
    description: str = Field(default="", description="Why the rule exists (shown in denials, alerts and explain).")
    effect: Literal["deny", "alert"] = Field(
        description="deny: guarded actions are refused while `when` holds; alert: policy.alert (and an audit entry) "
        "when `when` holds at an event, or when an obligation's deadline passes."
    )
    when: str | None = Field(default=None, max_length=4096, description=FORMULA_HELP)
    on: TemporalGuard | None = Field(default=None, description="deny rules: what they guard.")
    every: str | None = Field(
        default=None, max_length=4096, description="Obligation form: each point where this formula holds opens an obligation..."
    )
    followed_by: str | None = Field(
        default=None, max_length=4096, description="... that a later point where this formula holds closes ..."
    )
    within: Duration | None = Field(default=None, description="... within this time (\"60s\"), else an alert.")

    _check_formulas = field_validator("when", "every", "followed_by")(_formula)

    @model_validator(mode="after")
    def _one_form(self) -> TemporalRule:
        response = (self.every, self.followed_by, self.within)
        if self.when is not None:
            if any(part is not None for part in response):
                raise ValueError("a temporal rule has either when, or every/followed_by/within, not both")
        elif any(part is None for part in response):
            raise ValueError("a temporal rule needs when, or all of every, followed_by and within")
        if self.effect == "deny":
            if self.when is None:
                raise ValueError("an obligation (every/followed_by/within) is checked after the fact: its effect is alert")
            if self.on is None:
                raise ValueError("a deny rule needs on: what it guards (on = { actions = [\"memory.forget\"] })")
        elif self.on is not None:
            raise ValueError("on only applies to deny rules: an alert rule guards nothing")
        return self


class PolicyFile(_Strict):
    """One policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    version: Literal[1] = Field(default=1, description="Format version of the file.")
    name: str | None = Field(default=None, pattern=_NAME, description="The policy's name (default: the file's stem).")
    description: str = Field(default="", description="What the policy is for.")
    privacy_mode: bool | None = Field(
        default=None, description="true: privacy mode is on while this file is loaded (unless the owner switched it off)."
    )
    rules: list[Rule] = Field(default_factory=list, alias="rule", description="The rules ([[rule]] tables).")
    limits: list[Limit] = Field(default_factory=list, alias="limit", description="Egress rate limits ([[limit]] tables).")
    redaction: Redaction | None = Field(default=None, description="What the redact obligation removes.")
    temporal: list[TemporalRule] = Field(
        default_factory=list, description="Rules over the event stream ([[temporal]] tables): deny or alert."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> PolicyFile:
        for kind, items in (("rule", [*self.rules, *self.temporal]), ("limit", self.limits)):
            seen: set[str] = set()
            for item in items:
                if item.name in seen:
                    raise ValueError(f"two {kind}s are named {item.name!r}; names must be unique")
                seen.add(item.name)
        return self
