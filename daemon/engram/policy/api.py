"""Params and results of the ``policy.*`` RPC methods."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from engram.policy.model import PolicyFile
from engram.server.methods import FreeJson, Params, Result

__all__ = [
    "ExplainParams",
    "ExplainResult",
    "LoadedPolicy",
    "MatchedRule",
    "PrivacyParams",
    "PrivacyResult",
    "ReloadResult",
    "ShowResult",
    "TemporalStatus",
]


class ExplainParams(Params):
    method: str = Field(min_length=1, description="The RPC method to decide about (for an egress: the method that causes it).")
    uid: int | None = Field(default=None, ge=0, description="Whose call (default: the caller's uid; other uids: owner and root only).")
    gid: int | None = Field(default=None, ge=0, description="Its primary gid (default: the caller's, or the uid's from the user database).")
    user: str | None = Field(default=None, description="Its user name (default: looked up from the uid).")
    namespace: str | None = Field(default=None, description="Explain the namespace decision for this memory namespace.")
    provider: str | None = Field(default=None, description="Explain the egress decision for this provider.")
    locality: Literal["local", "remote"] | None = Field(
        default=None,
        description="The provider's locality (default: what the installed provider declares; remote when it is unknown).",
    )
    model: str | None = Field(default=None, description="The model at the provider (egress).")
    tags: list[str] = Field(default_factory=list, description="Data tags of the request (egress conditions).")
    payload: FreeJson = Field(default=None, description="A sample payload: the result shows it as it would leave (redacted).")

    @model_validator(mode="after")
    def _one_point(self) -> ExplainParams:
        if self.namespace is not None and self.provider is not None:
            raise ValueError("give namespace or provider, not both: they are separate decisions")
        if self.locality is not None and self.provider is None:
            raise ValueError("locality needs provider")
        return self


class MatchedRule(BaseModel):
    name: str
    effect: Literal["allow", "deny"]
    policy: str = Field(description="The file the rule comes from.")


class TemporalStatus(BaseModel):
    name: str = Field(description="A temporal deny rule that guards this call.")
    policy: str = Field(description="The file the rule comes from.")
    description: str
    when: str = Field(description="Its formula.")
    holds: bool = Field(description="Whether the formula holds now: the call would be refused.")
    events: list[dict] = Field(
        default_factory=list, description="When it holds: the events that made it true (topic, time, uid, the fields tested)."
    )


class ExplainResult(Result):
    point: Literal["method", "namespace", "egress"]
    effect: Literal["allow", "deny"]
    rule: str = Field(description="The rule that decides (or default, owner-only, privacy-mode, limit:<name>, builtin:owner-repair).")
    policy: str | None = Field(description="The file of the deciding rule.")
    reason: str
    obligations: list[str]
    matched: list[MatchedRule] = Field(description="Every rule that matched, in load order.")
    privacy_mode: bool
    uid: int
    gid: int
    user: str | None
    method_known: bool = Field(description="Whether the daemon has this method.")
    admin_method: bool = Field(description="Whether the method is admin (owner-only unless granted with admin = true).")
    locality: Literal["local", "remote"] | None = Field(default=None, description="Egress: the locality decided on.")
    limits: list[str] = Field(default_factory=list, description="Egress: the limits that would take a token.")
    payload: FreeJson = Field(default=None, description="Egress: the sample payload as it would leave.")
    redactions: dict[str, int] = Field(default_factory=dict, description="Egress: matches redacted in the sample, by kind.")
    temporal: list[TemporalStatus] = Field(
        default_factory=list,
        description="The temporal deny rules that guard this call, and what each says now (one that holds decides: deny).",
    )


class LoadedPolicy(BaseModel):
    label: str = Field(description="shipped:<name> for a shipped base policy, else the file's path.")
    path: str
    sha256: str
    document: PolicyFile = Field(description="The file as parsed (the policy file format's schema).")


class ShowResult(Result):
    base: str
    files: list[LoadedPolicy] = Field(description="The policy files in force, in load order.")
    rules: int
    limits: int
    privacy_mode: bool
    privacy_source: str = Field(description="override (policy.privacy), config, policy or default.")
    redaction_detectors: list[str]
    redaction_patterns: list[str]
    loaded_at: float = Field(description="Unix time the policy in force was loaded.")
    reload_problems: list[dict] = Field(
        default_factory=list, description="Problems of the last reload when it failed (the policy shown stayed in force)."
    )
    buckets: int = Field(description="Rate-limit buckets in use.")


class ReloadResult(Result):
    files: list[str]
    rules: int
    privacy_mode: bool


class PrivacyParams(Params):
    mode: Literal["on", "off", "default"] | None = Field(
        default=None,
        description="on/off: switch privacy mode (kept across restarts); default: drop the switch, config and policy "
        "decide again; absent: just report.",
    )


class PrivacyResult(Result):
    privacy_mode: bool
    source: str = Field(description="override, config, policy or default.")
    override: bool | None = Field(description="The owner's switch (None: not set).")
    config: bool = Field(description="policy.privacy_mode from the configuration.")
    policy: bool = Field(description="Whether a loaded policy file turns privacy mode on.")
