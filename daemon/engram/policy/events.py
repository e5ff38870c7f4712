"""Bus events of the policy part. Their topics start with ``policy.``, which the audit log records.

``policy.decision`` is published for every decision at every enforcement point. Its ``audit``
field marks the ones that belong in the audit log: every denial, and every allow whose rule
carries the ``audit`` obligation; routine allows (the owner calling ``system.ping``) say
``audit: false``, so a recorder can keep the log to what matters.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engram.bus.events import Event, Priority
from engram.principal import Principal

__all__ = ["POLICY_EVENTS", "PolicyAlert", "PolicyDecided", "PolicyReloaded", "PrivacyModeChanged"]


class PolicyDecided(Event):
    topic = "policy.decision"
    point: Literal["method", "namespace", "egress"] = Field(description="Which enforcement point decided.")
    effect: Literal["allow", "deny"]
    rule: str = Field(description="The rule that decided (or default, owner-only, privacy-mode, limit:<name>, builtin:...).")
    policy: str | None = Field(default=None, description="The file of the deciding rule.")
    reason: str
    principal: Principal
    method: str = Field(description="The RPC method asked for (for egress: the method that causes it).")
    namespace: str | None = None
    provider: str | None = None
    locality: str | None = None
    obligations: list[str] = Field(default_factory=list)
    redactions: dict[str, int] = Field(default_factory=dict, description="Egress: matches redacted, by kind.")
    audit: bool = Field(description="true for denials and decisions with the audit obligation: they belong in the audit log.")
    events: list[dict] = Field(
        default_factory=list, description="A temporal rule's denial: the events that made it true (topic, time, uid, fields tested)."
    )


class PolicyReloaded(Event):
    topic = "policy.reloaded"
    priority = Priority.CONTROL
    ok: bool
    trigger: Literal["start", "reload", "rpc"] = Field(
        description="What loaded the policy: start, reload (SIGHUP or system.reload) or rpc (policy.reload)."
    )
    files: list[str] = Field(default_factory=list, description="Files in force after the reload (the old ones when it failed).")
    rules: int = Field(default=0, description="Rules in force.")
    error: str | None = None
    problems: list[dict] = Field(default_factory=list, description="Each problem: file, line, column, key, message.")


class PrivacyModeChanged(Event):
    topic = "policy.privacy"
    priority = Priority.CONTROL
    enabled: bool = Field(description="Whether privacy mode is on now.")
    source: str = Field(description="What decides it now: override (policy.privacy), config, policy or default.")
    uid: int | None = Field(default=None, description="Who switched it (None: a reload).")


class PolicyAlert(Event):
    """A temporal rule with effect alert held at an event, or an obligation's deadline passed.
    Audited: the audit log records every alert."""

    topic = "policy.alert"
    rule: str = Field(description="The temporal rule.")
    policy: str = Field(description="The file the rule comes from.")
    kind: Literal["formula", "deadline"] = Field(
        description="formula: `when` held at an event; deadline: an obligation was not met in time."
    )
    message: str
    events: list[dict] = Field(
        default_factory=list,
        description="The events that made it true (for a deadline: the one that opened the obligation): topic, time, "
        "uid, and the fields the rule tested.",
    )
    audit: bool = Field(default=True, description="Always true: alerts belong in the audit log.")


POLICY_EVENTS: tuple[type[Event], ...] = (PolicyDecided, PolicyReloaded, PrivacyModeChanged, PolicyAlert)
