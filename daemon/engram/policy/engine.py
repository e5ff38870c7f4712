"""Decisions: who may call what, on which namespace, and which provider may see which data.

Every decision follows the same steps for the rules of its point (method, namespace or egress,
see :mod:`engram.policy.model`):

1. collect the rules that match the request (principal, action, resource, conditions);
2. **deny overrides**: if any matching rule denies, the first of them decides: denied;
3. otherwise the first matching allow decides: allowed, with the *union* of the obligations of
   every matching allow;
4. nothing matched: denied by ``default``. Nothing is allowed that no rule allows.

On top of the rules:

* ``builtin:owner-repair`` — the owner (the daemon's uid) and root may always call the methods
  that repair a policy (``policy.*``, ``system.reload``), so no policy can lock them out;
* admin methods (declared owner-only: reload, keys, export, forget-all ...) are allowed to other
  principals only by an allow rule with ``admin = true`` (else ``owner-only`` denies);
* privacy mode adds ``local_only`` to every allow, and an egress to a remote provider is denied
  by ``privacy-mode`` whatever the rules say;
* an egress inherits the decision of the method that causes it: a denied method denies its
  egress, and the method's obligations (``local_only``, ``redact``) bind its egress; a remote
  egress under ``local_only`` is denied by the rule that imposed it;
* an allowed egress then takes a token from every matching ``[[limit]]`` bucket; an empty bucket
  denies it as ``limit:<name>`` with the seconds to wait.

The engine is pure: it publishes nothing and counts nothing (the Policy part does), and the
only state it changes is the limiter's buckets, in :meth:`PolicyEngine.authorize_egress`.
"""

from __future__ import annotations

import fnmatch
import glob
import grp
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from engram.errors import PolicyDenied
from engram.policy.loader import PolicySet
from engram.policy.model import DETECTORS, Effect, Limit, Locality, Point, Rule
from engram.policy.ratelimit import BucketSpec, LimitCheck, RateLimiter
from engram.policy.redact import Redactor
from engram.principal import Principal

__all__ = [
    "AccessRequest",
    "Decision",
    "EgressDecision",
    "PolicyEngine",
    "REPAIR_METHODS",
    "RuleRef",
]

# What the owner and root may always call, so that no policy can lock them out of fixing it.
REPAIR_METHODS = frozenset({"policy.reload", "policy.show", "policy.explain", "policy.privacy", "system.reload"})
BUILTIN_REPAIR = "builtin:owner-repair"
DEFAULT = "default"
OWNER_ONLY = "owner-only"
PRIVACY = "privacy-mode"


@dataclass(frozen=True, slots=True)
class AccessRequest:
    point: Point
    principal: Principal
    action: str  # the RPC method (for an egress: the method that causes it)
    admin: bool = False  # the method is declared owner-only
    namespace: str | None = None
    provider: str | None = None
    locality: Locality | None = None
    model: str | None = None
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RuleRef:
    name: str
    effect: Effect
    policy: str  # the label of the file it comes from


@dataclass(frozen=True)
class Decision:
    point: Point
    effect: Effect
    rule: str  # the rule that decided, or default / owner-only / privacy-mode / limit:<name> / builtin:...
    reason: str
    policy: str | None = None  # the file of the deciding rule (None for built-in outcomes)
    obligations: frozenset[str] = frozenset()
    matched: tuple[RuleRef, ...] = ()
    privacy_mode: bool = False
    evidence: tuple[dict[str, Any], ...] = ()  # a temporal rule's denial: the events that made it true

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"

    @property
    def audit(self) -> bool:
        """Whether the decision belongs in the audit log: every denial, and allows with the audit obligation."""
        return self.effect == "deny" or "audit" in self.obligations

    def denial(self, request: AccessRequest, **extra: Any) -> PolicyDenied:
        """The error a denied request is answered with (-32001)."""
        data: dict[str, Any] = {
            "rule": self.rule,
            "method": request.action,
            "uid": request.principal.uid,
            "point": self.point,
        }
        if self.policy is not None:
            data["policy"] = self.policy
        for name in ("namespace", "provider", "locality"):
            if (value := getattr(request, name)) is not None:
                data[name] = value
        if self.evidence:
            data["events"] = list(self.evidence)
        data.update(extra)
        return PolicyDenied(self.reason, reason="policy_denied", **data)


@dataclass(frozen=True)
class EgressDecision(Decision):
    """An egress decision, with what may be sent: the payload after the redact obligation."""

    payload: Any = None
    redactions: dict[str, int] = field(default_factory=dict)
    size: int = 0  # bytes of the JSON payload as sent (after redaction)
    retry_after_s: float | None = None
    locality: Locality | None = None
    request: AccessRequest | None = None

    def error(self) -> PolicyDenied:
        """The -32001 to answer the request that caused a denied egress with."""
        assert self.request is not None
        return self.denial(self.request)

    def denial(self, request: AccessRequest, **extra: Any) -> PolicyDenied:
        error = Decision.denial(self, request, **extra)
        if self.retry_after_s is not None:
            error.data["reason"] = "rate_limited"
            error.data["retry_after_s"] = round(self.retry_after_s, 3) if self.retry_after_s != float("inf") else None
        return error


# --- compiled matchers ---------------------------------------------------------------------------


def _globs(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class _Who:
    """The principal being decided about, with its group names looked up only when a rule asks."""

    __slots__ = ("principal", "_groups", "_lookup")

    def __init__(self, principal: Principal, lookup: Callable[[Principal], frozenset[str]]) -> None:
        self.principal = principal
        self._groups: frozenset[str] | None = None
        self._lookup = lookup

    @property
    def groups(self) -> frozenset[str]:
        if self._groups is None:
            self._groups = self._lookup(self.principal)
        return self._groups


def _principal_check(spec: str, owner_uid: int) -> Callable[[_Who], bool]:
    if spec == "*":
        return lambda who: True
    if spec == "owner":
        return lambda who: who.principal.uid == owner_uid
    if spec == "root":
        return lambda who: who.principal.uid == 0
    kind, _, value = spec.partition(":")
    if kind == "uid":
        number = int(value)
        return lambda who: who.principal.uid == number
    if kind == "gid":
        number = int(value)
        return lambda who: who.principal.gid == number
    if kind == "user":
        return lambda who: who.principal.user == value
    if kind == "group":
        return lambda who: value in who.groups
    raise ValueError(f"unknown principal {spec!r}")  # the model's validator makes this unreachable


def _principals(specs: Iterable[str], owner_uid: int) -> Callable[[_Who], bool]:
    checks = [_principal_check(spec, owner_uid) for spec in specs]
    if len(checks) == 1:
        return checks[0]
    return lambda who: any(check(who) for check in checks)


def _namespace_match(patterns: list[str]) -> Callable[[str, Principal], bool]:
    fixed = [p for p in patterns if "{" not in p]
    templated = [p for p in patterns if "{" in p]
    fixed_re = _globs(fixed) if fixed else None

    def match(namespace: str, principal: Principal) -> bool:
        if fixed_re is not None and fixed_re.match(namespace):
            return True
        for pattern in templated:
            if "{user}" in pattern and principal.user is None:
                continue
            expanded = pattern.replace("{uid}", str(principal.uid)).replace("{user}", glob.escape(principal.user or ""))
            if fnmatch.fnmatchcase(namespace, expanded):
                return True
        return False

    return match


class _CompiledRule:
    __slots__ = (
        "rule", "name", "effect", "point", "policy", "ref", "obligations", "admin", "timed",
        "_who", "_actions", "_namespaces", "_providers", "_models", "_locality",
    )

    def __init__(self, rule: Rule, policy: str, owner_uid: int) -> None:
        self.rule = rule
        self.name = rule.name
        self.effect = rule.effect
        self.point: Point = rule.point
        self.policy = policy
        self.ref = RuleRef(rule.name, rule.effect, policy)
        self.obligations = frozenset(rule.obligations)
        self.admin = rule.admin
        self.timed = rule.when is not None and rule.when.time is not None
        self._who = _principals(rule.principals, owner_uid)
        self._actions = _globs(rule.actions)
        self._namespaces = _namespace_match(rule.namespaces) if rule.namespaces else None
        self._providers = _globs(rule.providers) if rule.providers else None
        self._models = _globs(rule.models) if rule.models else None
        self._locality = frozenset(rule.locality) if rule.locality else None

    def matches(self, request: AccessRequest, who: _Who, privacy: bool, now: Callable[[], datetime]) -> bool:
        if not self._actions.match(request.action) or not self._who(who):
            return False
        if self._namespaces is not None and not self._namespaces(request.namespace or "", request.principal):
            return False
        if self._providers is not None and not self._providers.match(request.provider or ""):
            return False
        if self._models is not None and (request.model is None or not self._models.match(request.model)):
            return False
        if self._locality is not None and request.locality not in self._locality:
            return False
        when = self.rule.when
        if when is not None:
            if when.tags_any is not None and not request.tags.intersection(when.tags_any):
                return False
            if when.tags_none is not None and request.tags.intersection(when.tags_none):
                return False
            if when.privacy_mode is not None and when.privacy_mode != privacy:
                return False
            if when.time is not None and not when.time.contains(now()):
                return False
            if when.clients is not None:
                client = request.principal.client
                if client is None or not any(fnmatch.fnmatchcase(client, p) for p in when.clients):
                    return False
        return True


class _CompiledLimit:
    __slots__ = ("limit", "policy", "specs", "_who", "_providers", "_locality")

    def __init__(self, limit: Limit, policy: str, owner_uid: int) -> None:
        self.limit = limit
        self.policy = policy
        self._who = _principals(limit.principals, owner_uid)
        self._providers = _globs(limit.providers)
        self._locality = frozenset(limit.locality)
        specs = []
        if limit.calls is not None:
            specs.append(BucketSpec(limit.name, "calls", float(limit.burst or limit.calls), float(limit.calls), limit.period))
        if limit.bytes is not None:
            specs.append(BucketSpec(limit.name, "bytes", float(limit.bytes), float(limit.bytes), limit.period))
        self.specs = tuple(specs)

    def applies(self, who: _Who, provider: str, locality: str) -> bool:
        return locality in self._locality and bool(self._providers.match(provider)) and self._who(who)


def group_names(principal: Principal) -> frozenset[str]:
    """Names of the principal's primary group and, when it has a user name, its supplementary groups."""
    gids = {principal.gid}
    if principal.user is not None:
        try:
            gids.update(os.getgrouplist(principal.user, principal.gid))
        except OSError:
            pass
    names = set()
    for gid in gids:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            pass
    return frozenset(names)


def _what(request: AccessRequest) -> str:
    who = f"uid {request.principal.uid}"
    if request.point == "namespace":
        return f"{who} to use namespace {request.namespace!r} with {request.action}"
    if request.point == "egress":
        return f"{request.action} of {who} to send data to {request.locality} provider {request.provider!r}"
    return f"{who} to call {request.action}"


def payload_size(payload: Any) -> int:
    if payload is None:
        return 0
    if isinstance(payload, str):
        return len(payload.encode())
    if isinstance(payload, (bytes, bytearray)):
        return len(payload)
    return len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode())


# --- the engine ------------------------------------------------------------------------------------


class PolicyEngine:
    """Decisions over one loaded :class:`PolicySet`. A reload builds a new engine (sharing the limiter)."""

    def __init__(
        self,
        policies: PolicySet,
        *,
        owner_uid: int | None = None,
        privacy: Callable[[], bool] = lambda: False,
        is_admin: Callable[[str], bool] = lambda method: False,
        limiter: RateLimiter | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        groups: Callable[[Principal], frozenset[str]] = group_names,
        cache_size: int = 4096,
    ) -> None:
        self.policies = policies
        self.owner_uid = os.geteuid() if owner_uid is None else owner_uid
        self.privacy = privacy
        self.is_admin = is_admin
        self.limiter = limiter if limiter is not None else RateLimiter()  # (an empty limiter is falsy)
        self.now = now
        self._groups_of = groups
        self._group_cache: dict[tuple[int, int, str | None], frozenset[str]] = {}
        self.rules: dict[Point, list[_CompiledRule]] = {"method": [], "namespace": [], "egress": []}
        self.limits: list[_CompiledLimit] = []
        detectors: set[str] = set()
        patterns = []
        redaction_given = False
        for file in policies.files:
            for rule in file.policy.rules:
                compiled = _CompiledRule(rule, file.label, self.owner_uid)
                self.rules[compiled.point].append(compiled)
            self.limits += [_CompiledLimit(limit, file.label, self.owner_uid) for limit in file.policy.limits]
            if file.policy.redaction is not None:
                redaction_given = True
                detectors.update(file.policy.redaction.detectors)
                patterns += file.policy.redaction.pattern
        self.redactor = Redactor(detectors if redaction_given else DETECTORS, patterns)
        self.limiter.retain(spec for limit in self.limits for spec in limit.specs)
        # Method decisions repeat on every request: remember them unless a time window makes
        # them change by themselves.
        self._cache_size = 0 if any(rule.timed for rule in self.rules["method"]) else cache_size
        self._cache: dict[tuple[Any, ...], Decision] = {}
        # Namespace decisions repeat on every memory request (recall asks for each namespace it
        # reads): the same, under the namespace rules' own time windows.
        self._namespace_cache_size = 0 if any(rule.timed for rule in self.rules["namespace"]) else cache_size
        self._namespace_cache: dict[tuple[Any, ...], Decision] = {}

    # --- helpers -------------------------------------------------------------------------------

    def is_owner(self, principal: Principal) -> bool:
        return principal.uid in (self.owner_uid, 0)

    def _lookup_groups(self, principal: Principal) -> frozenset[str]:
        key = (principal.uid, principal.gid, principal.user)
        names = self._group_cache.get(key)
        if names is None:
            if len(self._group_cache) >= 4096:
                self._group_cache.clear()
            names = self._group_cache[key] = self._groups_of(principal)
        return names

    def forget_cached(self) -> None:
        """Drop remembered method and namespace decisions (privacy mode changed)."""
        self._cache.clear()
        self._namespace_cache.clear()

    # --- the generic decision --------------------------------------------------------------------

    def decide(self, request: AccessRequest) -> Decision:
        privacy = self.privacy()
        if request.point == "method" and request.action in REPAIR_METHODS and self.is_owner(request.principal):
            return Decision(
                "method", "allow", BUILTIN_REPAIR, "the owner and root may always repair the policy", None,
                frozenset({"local_only"}) if privacy else frozenset(), (), privacy,
            )
        who = _Who(request.principal, self._lookup_groups)
        matched = [rule for rule in self.rules[request.point] if rule.matches(request, who, privacy, self.now)]
        refs = tuple(rule.ref for rule in matched)
        denies = [rule for rule in matched if rule.effect == "deny"]
        if denies:
            first = denies[0]
            reason = f"rule {first.name!r} denies {_what(request)}"
            if first.rule.description:
                reason += f" ({first.rule.description})"
            obligations = frozenset().union(*(rule.obligations for rule in denies))
            return Decision(request.point, "deny", first.name, reason, first.policy, obligations, refs, privacy)
        allows = [rule for rule in matched if rule.effect == "allow"]
        if request.point == "method" and request.admin and not self.is_owner(request.principal):
            admin_allows = [rule for rule in allows if rule.admin]
            if allows and not admin_allows:
                reason = (
                    f"{request.action} is an admin method: only the owner (uid {self.owner_uid}) and root may call it, "
                    f"unless an allow rule with admin = true grants it (rule {allows[0].name!r} does not)"
                )
                return Decision("method", "deny", OWNER_ONLY, reason, None, frozenset(), refs, privacy)
            allows = admin_allows
        if not allows:
            return Decision(request.point, "deny", DEFAULT, f"no rule allows {_what(request)}", None, frozenset(), refs, privacy)
        obligations = frozenset().union(*(rule.obligations for rule in allows))
        if privacy:
            obligations |= {"local_only"}
        first = allows[0]
        return Decision(
            request.point, "allow", first.name, f"rule {first.name!r} allows {_what(request)}", first.policy,
            obligations, refs, privacy,
        )

    # --- the three enforcement points -----------------------------------------------------------

    def authorize_method(self, principal: Principal, method: str, admin: bool | None = None) -> Decision:
        admin = self.is_admin(method) if admin is None else admin
        if self._cache_size:
            key = (principal.uid, principal.gid, principal.user, principal.client, method, admin, self.privacy())
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            decision = self.decide(AccessRequest("method", principal, method, admin))
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = decision
            return decision
        return self.decide(AccessRequest("method", principal, method, admin))

    def authorize_namespace(self, principal: Principal, method: str, namespace: str, check_method: bool = True) -> Decision:
        """May ``principal``, calling ``method``, read or write memory ``namespace``?

        A method the principal may not call gets no namespace either (the request chain refuses it
        first anyway; this keeps explain truthful)."""
        method_decision = self.authorize_method(principal, method) if check_method else None
        if method_decision is not None and not method_decision.allowed:
            reason = f"{method} itself is not allowed, so neither is a namespace for it: {method_decision.reason}"
            return replace(method_decision, point="namespace", reason=reason)
        if not self._namespace_cache_size:
            return self.decide(AccessRequest("namespace", principal, method, namespace=namespace))
        key = (principal.uid, principal.gid, principal.user, principal.client, method, namespace, self.privacy())
        decision = self._namespace_cache.get(key)
        if decision is None:
            decision = self.decide(AccessRequest("namespace", principal, method, namespace=namespace))
            if len(self._namespace_cache) >= self._namespace_cache_size:
                self._namespace_cache.clear()
            self._namespace_cache[key] = decision
        return decision

    def decide_egress(
        self,
        principal: Principal,
        *,
        method: str,
        provider: str,
        locality: Locality,
        model: str | None = None,
        data_tags: Iterable[str] = (),
    ) -> tuple[AccessRequest, Decision]:
        """The rule-based part of an egress decision (no limits taken, nothing redacted)."""
        request = AccessRequest(
            "egress", principal, method, namespace=None, provider=provider, locality=locality, model=model,
            tags=frozenset(data_tags),
        )
        method_decision = self.authorize_method(principal, method)
        privacy = self.privacy()
        if not method_decision.allowed:
            reason = f"{method} itself is not allowed, so neither is its egress: {method_decision.reason}"
            return request, replace(method_decision, point="egress", reason=reason)
        if privacy and locality == "remote":
            reason = f"privacy mode is on: nothing goes to remote provider {provider!r}, whatever the rules say"
            return request, Decision("egress", "deny", PRIVACY, reason, None, frozenset(), (), privacy)
        decision = self.decide(request)
        if not decision.allowed:
            return request, decision
        obligations = decision.obligations | method_decision.obligations
        if locality == "remote" and "local_only" in obligations:
            source = self._local_only_source(request, method_decision)
            reason = f"rule {source[0]!r} obliges local_only, so remote provider {provider!r} is refused"
            return request, Decision("egress", "deny", source[0], reason, source[1], obligations, decision.matched, privacy)
        return request, replace(decision, obligations=obligations)

    def _local_only_source(self, request: AccessRequest, method_decision: Decision) -> tuple[str, str | None]:
        who = _Who(request.principal, self._lookup_groups)
        privacy = self.privacy()
        for rule in self.rules["egress"]:
            if rule.effect == "allow" and "local_only" in rule.obligations and rule.matches(request, who, privacy, self.now):
                return rule.name, rule.policy
        method_request = AccessRequest("method", request.principal, request.action, self.is_admin(request.action))
        for rule in self.rules["method"]:
            if rule.effect == "allow" and "local_only" in rule.obligations and rule.matches(method_request, who, privacy, self.now):
                return rule.name, rule.policy
        return method_decision.rule, method_decision.policy

    def limits_for(self, principal: Principal, provider: str, locality: Locality) -> list[BucketSpec]:
        who = _Who(principal, self._lookup_groups)
        return [spec for limit in self.limits if limit.applies(who, provider, locality) for spec in limit.specs]

    def finish_egress(
        self,
        request: AccessRequest,
        decision: Decision,
        payload: Any,
        redactions: dict[str, int],
        consume: bool = True,
        size: int | None = None,
    ) -> EgressDecision:
        """Apply the limits to an allowed egress whose payload is already redacted as obliged."""
        size = payload_size(payload) if size is None else size
        base = EgressDecision(**_fields(decision), payload=None, locality=request.locality, request=request)
        if not decision.allowed:
            return base
        specs = self.limits_for(request.principal, request.provider or "", request.locality or "remote")
        check = self.limiter.acquire(specs, request.principal.uid, request.provider or "", size) if consume and specs else LimitCheck(True)
        if not check.ok:
            wait = check.retry_after_s
            per = "payload bytes" if check.dimension == "bytes" else "calls"
            reason = f"limit {check.limit!r} on {per} to provider {request.provider!r} is used up"
            reason += f"; retry in {wait:.1f} s" if wait is not None and wait != float("inf") else "; this payload is larger than the whole budget"
            return replace(base, effect="deny", rule=f"limit:{check.limit}", reason=reason, retry_after_s=wait)
        return replace(base, payload=payload, redactions=redactions, size=size)

    def authorize_egress(
        self,
        principal: Principal,
        *,
        method: str,
        provider: str,
        locality: Locality,
        model: str | None = None,
        data_tags: Iterable[str] = (),
        payload: Any = None,
        consume: bool = True,
    ) -> EgressDecision:
        """May ``method``, called by ``principal``, send ``payload`` to ``provider``? If so, what exactly.

        The returned payload is what may be sent: redacted when an obligation says so. A denied
        egress carries no payload. ``consume=False`` decides without taking limit tokens (explain).
        """
        request, decision = self.decide_egress(
            principal, method=method, provider=provider, locality=locality, model=model, data_tags=data_tags
        )
        redactions: dict[str, int] = {}
        if decision.allowed and "redact" in decision.obligations and payload is not None:
            payload, redactions = self.redactor.redact(payload)
        return self.finish_egress(request, decision, payload, redactions, consume)


def _fields(decision: Decision) -> dict[str, Any]:
    return {
        "point": decision.point,
        "effect": decision.effect,
        "rule": decision.rule,
        "reason": decision.reason,
        "policy": decision.policy,
        "obligations": decision.obligations,
        "matched": decision.matched,
        "privacy_mode": decision.privacy_mode,
        "evidence": decision.evidence,
    }
