"""The Policy part: loads the policy files, enforces them, and answers ``policy.*``.

Enforcement points it serves:

* **requests** — :meth:`Policy.method_guard` is the guard of the request chain's policy layer:
  every request is decided before its params are even read; a denial is -32001 with ``data.rule``;
* **memory** — :meth:`Policy.require_namespace` for the namespace a memory method touches;
* **router and providers** — :meth:`Policy.authorize_egress` before each provider call: locality,
  rules, privacy mode, obligations (the payload comes back redacted when it must), limits.

Every decision is counted (``engram_policy_decisions``) and published as ``policy.decision``.

Reload (SIGHUP through :meth:`engram.runtime.Daemon.reload`, or ``policy.reload``) loads every
file again in a worker thread and swaps the engine only when all of them are valid: a broken file
leaves the previous policy in force, and says which file, line and key is wrong.
"""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import structlog
from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from engram.bus import EventBus
from engram.bus.bus import OverflowPolicy, Subscription, SubscriptionClosed
from engram.bus.events import Event
from engram.errors import Conflict, PolicyDenied, StartupError
from engram.lifecycle import Health, Part
from engram.observability.metrics import LoopCounter, Metrics
from engram.observability.tracing import NO_SPANS, Spans
from engram.policy.api import (
    ExplainParams,
    ExplainResult,
    LoadedPolicy,
    MatchedRule,
    PrivacyParams,
    PrivacyResult,
    ReloadResult,
    ShowResult,
    TemporalStatus,
)
from engram.policy.engine import BUILTIN_REPAIR, AccessRequest, Decision, EgressDecision, PolicyEngine, payload_size
from engram.policy.events import PolicyAlert, PolicyDecided, PolicyReloaded, PrivacyModeChanged
from engram.policy.loader import PolicyError, PolicyIssue, PolicySet, load_policy_set
from engram.policy.model import Locality
from engram.policy.ratelimit import RateLimiter
from engram.policy.settings import PolicySettings
from engram.policy.temporal import ALERT_TOPIC, Guarded, TemporalRules, Violation
from engram.principal import Principal
from engram.server.methods import Method, NoParams, RequestContext, rpc

__all__ = ["Policy", "PRIVACY_FILE"]

log = structlog.get_logger("engram.policy")

PRIVACY_FILE = "policy-privacy.json"  # in the state folder: the owner's privacy switch
_READABLE_CACHE = 4096  # namespace answers kept for event filtering (cleared when full)
_DEADLINE_POLL = 1.0  # seconds: obligations opened outside the watcher's own wait are seen this soon


class Policy(Part):
    """The policy part: the rules in force, the privacy switch, the rate limits."""

    def __init__(
        self,
        settings: PolicySettings,
        state_dir: Path,
        bus: EventBus,
        metrics: Metrics,
        *,
        owner_uid: int | None = None,
        method_admin: Callable[[str], bool | None] = lambda name: None,
        provider_locality: Callable[[str], str | None] = lambda name: None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        spans: Spans = NO_SPANS,
    ) -> None:
        super().__init__("policy")
        self.settings = settings
        self._spans = spans
        self.owner_uid = os.geteuid() if owner_uid is None else owner_uid
        self.privacy_path = state_dir / PRIVACY_FILE
        self._bus = bus
        self._method_admin = method_admin
        self._provider_locality = provider_locality
        self._now = now
        self.limiter = RateLimiter(settings.max_buckets, monotonic)
        self.engine: PolicyEngine | None = None
        self.loaded_at = 0.0
        self.override: bool | None = None
        self.reload_problems: list[PolicyIssue] = []
        self._reload_lock: anyio.Lock | None = None
        self._allowed_events: dict[tuple[Any, ...], tuple[Decision, PolicyDecided]] = {}
        self._readable: dict[tuple[Any, ...], bool] = {}  # may_read_namespace, for the policy in force
        self.temporal: TemporalRules | None = None
        self._temporal_sub: Subscription | None = None
        self._watching = False  # the watcher task runs: the subscription may be opened
        r = metrics.registry
        # Counted on every request, always on the event loop (decisions publish on the bus, which
        # lives there): the lock-free counter of the request chain's own metrics.
        self._m_decisions = LoopCounter(
            "engram_policy_decisions", "Policy decisions, by enforcement point and effect.", ["point", "effect"], registry=r
        )
        self._decision_counters = {
            (point, effect): self._m_decisions.labels(point, effect)
            for point in ("method", "namespace", "egress")
            for effect in ("allow", "deny")
        }
        self._m_reloads = Counter("engram_policy_reloads", "Policy loads, by outcome.", ["outcome"], registry=r)
        self._m_redactions = Counter("engram_policy_redactions", "Matches redacted from egress payloads, by kind.", ["kind"], registry=r)
        self._m_limited = Counter("engram_policy_rate_limited", "Egress refused by a limit, by limit.", ["limit"], registry=r)
        self._m_violations = Counter(
            "engram_policy_temporal_violations", "Temporal rules that denied a call or raised an alert, by rule and effect.",
            ["rule", "effect"], registry=r,
        )
        metrics.add_collector(self._collect)

    # --- lifecycle -------------------------------------------------------------------------------

    async def setup(self, stack: AsyncExitStack) -> None:
        self._reload_lock = anyio.Lock()
        self.override = await anyio.to_thread.run_sync(self._read_override)
        try:
            policies = await anyio.to_thread.run_sync(load_policy_set, self.settings)
        except PolicyError as exc:
            self._m_reloads.labels("error").inc()
            raise StartupError(f"cannot start: {exc}\nfix the policy file(s), or check them with `engram policy check FILE`") from None
        self._install(policies)
        stack.callback(self._unsubscribe)  # after the watcher task stopped (pushed before the task group)
        await self.start_tasks(stack)
        self._watching = True
        self._subscribe()
        self.spawn(self._watch, "policy-temporal", restart=True)
        self._bus.publish(PolicyReloaded(ok=True, trigger="start", files=policies.labels, rules=policies.rule_count))
        log.info(
            "policy loaded", files=policies.labels, rules=policies.rule_count, temporal=policies.temporal_count,
            privacy_mode=self.privacy_mode,
        )

    async def health(self) -> Health:
        if self.engine is None:
            return Health(False, self.state.value)
        temporal = f" and {self.engine.policies.temporal_count} temporal rules" if self.engine.policies.temporal_count else ""
        detail = (
            f"{self.engine.policies.rule_count} rules{temporal} from {', '.join(self.engine.policies.labels) or 'no files'}; "
            f"privacy mode {'on' if self.privacy_mode else 'off'}"
        )
        if self.reload_problems:
            return Health(False, f"{detail}; the last reload failed and the previous policy stays in force: {self.reload_problems[0]}")
        return Health(True, detail)

    def _install(self, policies: PolicySet) -> None:
        self.engine = PolicyEngine(
            policies,
            owner_uid=self.owner_uid,
            privacy=lambda: self.privacy_mode,
            is_admin=lambda name: bool(self._method_admin(name)),
            limiter=self.limiter,
            now=self._now,
            cache_size=self.settings.decision_cache,
        )
        self._drain()  # what happened under the old rules is told to them (unchanged ones carry it over)
        self.temporal = TemporalRules(
            policies, owner_uid=self.owner_uid, previous=self.temporal, max_points=self.settings.temporal_max_points
        )
        self._subscribe()
        self.loaded_at = time.time()
        self._readable = {}
        self.reload_problems = []
        self._m_reloads.labels("ok").inc()

    async def reload(self, settings: PolicySettings | None = None, trigger: str = "rpc") -> PolicySet:
        """Load the policy files again; on any problem keep the old policy and raise Conflict."""
        assert self._reload_lock is not None and self.engine is not None
        async with self._reload_lock:
            new_settings = settings or self.settings
            was_private = self.privacy_mode
            try:
                policies = await anyio.to_thread.run_sync(load_policy_set, new_settings)
            except PolicyError as exc:
                self._m_reloads.labels("error").inc()
                self.reload_problems = exc.issues
                problems = [issue.as_dict() for issue in exc.issues]
                log.error("policy reload refused; the previous policy stays in force", problems=[str(i) for i in exc.issues])
                self._bus.publish(
                    PolicyReloaded(
                        ok=False, trigger=trigger, files=self.engine.policies.labels, rules=self.engine.policies.rule_count,
                        error=str(exc), problems=problems,
                    )
                )
                raise Conflict(
                    "policy not reloaded; the previous policy stays in force: " + "; ".join(str(i) for i in exc.issues),
                    reason="invalid_policy",
                    problems=problems,
                ) from None
            self.settings = new_settings
            self.limiter.max_buckets = new_settings.max_buckets
            self._install(policies)
        log.info("policy reloaded", files=policies.labels, rules=policies.rule_count, trigger=trigger)
        self._bus.publish(PolicyReloaded(ok=True, trigger=trigger, files=policies.labels, rules=policies.rule_count))
        if self.privacy_mode != was_private:
            self._privacy_changed(None)
        return policies

    # --- temporal rules: the monitors over the bus ----------------------------------------------

    def _subscribe(self) -> None:
        """Follow the topics the temporal rules in force name (none: no subscription)."""
        patterns = tuple(self.temporal.patterns) if self.temporal is not None else ()
        sub = self._temporal_sub
        if sub is not None and sub.patterns == patterns and sub.maxsize == self.settings.temporal_queue and sub.closed_reason is None:
            return
        if sub is not None:
            self._bus.unsubscribe(sub, "policy reloaded")
            self._temporal_sub = None
        if patterns and self._watching:
            self._temporal_sub = self._bus.subscribe(patterns, self.settings.temporal_queue, OverflowPolicy.DROP_OLDEST)

    def _unsubscribe(self) -> None:
        self._watching = False
        if self._temporal_sub is not None:
            self._bus.unsubscribe(self._temporal_sub, "policy stopped")
            self._temporal_sub = None

    def _observe(self, event: Event) -> None:
        if self.temporal is None or event.topic == ALERT_TOPIC:
            return
        self._alert(self.temporal.observe(event, event.time, event.topic))

    def _drain(self) -> None:
        """Tell the monitors every event published so far, before a decision reads them."""
        sub = self._temporal_sub
        if sub is None:
            return
        while (event := sub.receive_nowait()) is not None:
            self._observe(event)

    def _alert(self, violations: list[Violation]) -> None:
        for violation in violations:
            self._m_violations.labels(violation.rule, "alert").inc()
            log.warning(
                "temporal rule alert", rule=violation.rule, policy=violation.policy, kind=violation.kind,
                message=violation.message, events=violation.events,
            )
            self._bus.publish(
                PolicyAlert(
                    rule=violation.rule, policy=violation.policy, kind=violation.kind, message=violation.message,
                    events=violation.events,
                )
            )

    async def _watch(self) -> None:
        """Feed the monitors from the bus, and raise the alerts of obligations whose deadline passed."""
        while True:
            rules, sub = self.temporal, self._temporal_sub
            deadline = rules.next_deadline() if rules is not None else None
            wait = _DEADLINE_POLL if deadline is None else min(_DEADLINE_POLL, max(0.0, deadline - time.time()) + 0.001)
            if sub is None:
                await anyio.sleep(wait)
            else:
                with anyio.move_on_after(wait):
                    try:
                        self._observe(await sub.receive())
                        self._drain()  # the rest of a burst, without a wake-up each
                    except SubscriptionClosed:
                        pass  # replaced by a reload: the next round takes the new one
            if self.temporal is not None:
                self._alert(self.temporal.expire(time.time()))

    def _temporal_denial(self, call: Guarded, count: bool = True) -> Violation | None:
        rules = self.temporal
        if rules is None or call.point not in rules.guarded_points:
            return None
        self._drain()
        violation = rules.check(call, time.time())
        if violation is not None and count:  # explain (count=False) decides nothing
            self._m_violations.labels(violation.rule, "deny").inc()
        return violation

    @staticmethod
    def _violation_decision(violation: Violation, point: str, privacy: bool) -> Decision:
        return Decision(
            point, "deny", violation.rule, violation.message, violation.policy,  # type: ignore[arg-type]
            privacy_mode=privacy, evidence=tuple(violation.events),
        )

    # --- privacy mode ----------------------------------------------------------------------------

    @property
    def privacy_mode(self) -> bool:
        if self.override is not None:
            return self.override
        return self.settings.privacy_mode or (self.engine is not None and self.engine.policies.privacy_mode)

    @property
    def privacy_source(self) -> str:
        if self.override is not None:
            return "override"
        if self.settings.privacy_mode:
            return "config"
        if self.engine is not None and self.engine.policies.privacy_mode:
            return "policy"
        return "default"

    def _read_override(self) -> bool | None:
        try:
            data = json.loads(self.privacy_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            # Unreadable: err on the side of privacy rather than silently dropping the switch.
            log.error("privacy switch unreadable; privacy mode on until it is set again", path=str(self.privacy_path), error=str(exc))
            return True
        value = data.get("privacy_mode") if isinstance(data, dict) else None
        return value if isinstance(value, bool) else None

    def _write_override(self, value: bool | None) -> None:
        if value is None:
            self.privacy_path.unlink(missing_ok=True)
            return
        tmp = self.privacy_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"privacy_mode": value, "time": time.time()}) + "\n")
        os.replace(tmp, self.privacy_path)

    def _privacy_changed(self, uid: int | None) -> None:
        if self.engine is not None:
            self.engine.forget_cached()
        log.warning("privacy mode changed", privacy_mode=self.privacy_mode, source=self.privacy_source, uid=uid)
        self._bus.publish(PrivacyModeChanged(enabled=self.privacy_mode, source=self.privacy_source, uid=uid))

    # --- decisions (the enforcement points) --------------------------------------------------------

    def _engine(self) -> PolicyEngine:
        if self.engine is None:
            raise PolicyDenied("the policy is not loaded yet", reason="policy_unavailable")
        return self.engine

    def _event(
        self, decision: Decision, request: AccessRequest, redactions: dict[str, int] | None = None
    ) -> PolicyDecided:
        return PolicyDecided.model_construct(
            time=time.time(),
            point=decision.point,
            effect=decision.effect,
            rule=decision.rule,
            policy=decision.policy,
            reason=decision.reason,
            principal=request.principal,
            method=request.action,
            namespace=request.namespace,
            provider=request.provider,
            locality=request.locality,
            obligations=sorted(decision.obligations),
            redactions=redactions or {},
            audit=decision.audit,
            events=list(decision.evidence),
        )

    def _record(self, decision: Decision, request: AccessRequest, redactions: dict[str, int] | None = None) -> None:
        self._decision_counters[(decision.point, decision.effect)].inc()
        self._bus.publish(self._event(decision, request, redactions))
        if not decision.allowed:
            log.info("policy denied", point=decision.point, rule=decision.rule, method=request.action, uid=request.principal.uid)

    async def method_guard(self, principal: Principal, method: Method) -> None:
        """The guard of the request chain (``engram.server.layers.access.Guards``): may
        ``principal`` call ``method``? Raises PolicyDenied if not."""
        if not self._spans.records:  # every request comes here: untraced, it pays for no span
            return self._method_guard(principal, method)
        with self._spans.span("policy.method", {"engram.policy.method": method.name}) as span:
            try:
                self._method_guard(principal, method)
            except PolicyDenied as denied:
                span.set_attribute("engram.policy.effect", "deny")
                span.set_attribute("engram.policy.rule", str(denied.data.get("rule")))
                raise
            span.set_attribute("engram.policy.effect", "allow")

    def _method_guard(self, principal: Principal, method: Method) -> None:
        decision = self._engine().authorize_method(principal, method.name, method.owner_only)
        # Most policies have no temporal rule that denies methods: then nothing is built to ask.
        rules = self.temporal
        if decision.allowed and rules is not None and "method" in rules.guarded_points and decision.rule != BUILTIN_REPAIR:
            violation = self._temporal_denial(Guarded("method", principal, method.name))
            if violation is not None:
                decision = self._violation_decision(violation, "method", decision.privacy_mode)
        if decision.allowed:
            key = ("method", principal.uid, principal.gid, principal.pid, principal.user, principal.client, method.name)
            self._record_allowed(key, decision, lambda: AccessRequest("method", principal, method.name, method.owner_only))
            return
        request = AccessRequest("method", principal, method.name, method.owner_only)
        self._record(decision, request)
        raise decision.denial(request)

    def tool_guard(self, principal: Principal, tool: str) -> None:
        """May ``principal`` use the tool ``tool`` (a plugin's ``plugin:<name>``, an MCP server's
        ``mcp:<server>.<tool>``) in a task's step? Decided at the method point with the tool's name
        as the action, not an admin one: the owner's rule for ``*`` grants it, another principal
        needs a rule naming it. Raises PolicyDenied if not."""
        decision = self._engine().authorize_method(principal, tool, False)
        request = AccessRequest("method", principal, tool, False)
        if decision.allowed:
            violation = self._temporal_denial(Guarded("method", principal, tool))
            if violation is not None:
                decision = self._violation_decision(violation, "method", decision.privacy_mode)
        if decision.allowed:
            key = ("method", principal.uid, principal.gid, principal.pid, principal.user, principal.client, tool)
            self._record_allowed(key, decision, lambda: request)
            return
        self._record(decision, request)
        raise decision.denial(request)

    def _record_allowed(self, key: tuple[Any, ...], decision: Decision, request: Callable[[], AccessRequest]) -> None:
        """:meth:`_record` for an allow, on the hot path of every request: the same client asking
        the same thing (``key``) gets the same (cached) decision; its event is a copy of the last
        one with a new time, which costs half of building it field by field, and is not made at
        all when no subscriber would take it (a routine allow, which the audit log does not
        admit, and nobody following policy.* over the socket)."""
        self._decision_counters[(decision.point, decision.effect)].inc()
        last = self._allowed_events.get(key)
        if last is not None and last[0] is decision:
            if self._bus.wants(last[1].topic, like=last[1]):
                self._bus.publish(last[1].model_copy(update={"time": time.time()}))
            return
        event = self._event(decision, request())
        if len(self._allowed_events) >= 4096:
            self._allowed_events.clear()
        self._allowed_events[key] = (decision, event)
        self._bus.publish(event)

    def authorize_namespace(self, principal: Principal, method: str | None, namespace: str) -> Decision:
        """May ``principal``, calling ``method``, use ``namespace``?"""
        # Outside a request (no method known) only the namespace rules speak, for memory.* as a whole.
        action = method or "memory.*"
        decision = self._engine().authorize_namespace(principal, action, namespace, check_method=method is not None)
        request = lambda: AccessRequest("namespace", principal, action, namespace=namespace)  # noqa: E731
        if decision.allowed:
            key = ("namespace", principal.uid, principal.gid, principal.pid, principal.user, principal.client, action, namespace)
            self._record_allowed(key, decision, request)
        else:
            self._record(decision, request())
        return decision

    def admin_action_allowed(self, principal: Principal, action: str) -> bool:
        """An admin action that is not a method of its own (``memory.forget_all``): decided as an
        owner-only method named after it, so the default keeps it owner-only and a rule with
        ``admin = true`` naming the action grants it. A denial is recorded like any other."""
        request = AccessRequest("method", principal, action, True)
        decision = self._engine().authorize_method(principal, action, True)
        if not decision.allowed:
            self._record(decision, request)
        return decision.allowed

    def namespace_allowed(self, principal: Principal, method: str | None, namespace: str) -> bool:
        """The memory part's namespace check (``NamespacePolicy.allowed``), decided by the policy."""
        return self.authorize_namespace(principal, method, namespace).allowed

    # --- who follows which events (engram.bus.audience.Audience) ---------------------------------

    def sees_all_events(self, principal: Principal) -> bool:
        return self._owner(principal)

    def may_read_namespace(self, principal: Principal, namespace: str) -> bool:
        """Whether ``principal`` may recall from ``namespace``. Asked for every event a subscriber
        might see, so it records no decision and remembers its answers until the next reload."""
        key = (principal.uid, principal.gid, principal.user, principal.client, namespace)
        readable = self._readable.get(key)
        if readable is None:
            if len(self._readable) >= _READABLE_CACHE:
                self._readable.clear()
            readable = self._engine().authorize_namespace(principal, "memory.recall", namespace).allowed
            self._readable[key] = readable
        return readable

    def require_namespace(self, principal: Principal, method: str | None, namespace: str) -> Decision:
        """:meth:`authorize_namespace`, raising PolicyDenied (naming the rule) when denied."""
        decision = self.authorize_namespace(principal, method, namespace)
        if not decision.allowed:
            action = method or "memory.*"
            raise decision.denial(AccessRequest("namespace", principal, action, namespace=namespace))
        return decision

    def locality_of(self, provider: str, declared: Locality | None = None) -> Locality:
        """Remote when the caller or the installed provider says so, or when nobody knows."""
        known = self._provider_locality(provider)
        if declared is None and known is None:
            return "remote"
        return "remote" if "remote" in (declared, known) else "local"

    def preview_egress(
        self, principal: Principal, *, method: str, provider: str, data_tags: Iterable[str] = ()
    ) -> Decision:
        """What the rules would decide for an egress to ``provider`` (its known locality), with
        no limit token taken and nothing recorded: for refusing at once work that no provider
        could be allowed to do (the planner of ``task.submit``)."""
        _, decision = self._engine().decide_egress(
            principal, method=method, provider=provider, locality=self.locality_of(provider), data_tags=data_tags
        )
        return decision

    async def authorize_egress(
        self,
        principal: Principal,
        *,
        method: str | None = None,
        provider: str,
        locality: Locality | None = None,
        model: str | None = None,
        data_tags: Iterable[str] = (),
        payload: Any = None,
    ) -> EgressDecision:
        """For the router and providers, before each call: may this data go to ``provider``?

        ``locality`` is what the caller believes; the installed provider's own declaration is
        checked too, and either saying remote makes it remote (unknown: remote). When allowed,
        ``decision.payload`` is what may be sent (redacted when an obligation says so) and a
        token was taken from each matching limit; when denied, ``decision.error()`` is the
        -32001 to answer with. Never raises for a denial (see :meth:`require_egress`).
        """
        return await self._egress(principal, method, provider, locality, model, data_tags, payload, consume=True)

    async def require_egress(
        self,
        principal: Principal,
        *,
        method: str | None = None,
        provider: str,
        locality: Locality | None = None,
        model: str | None = None,
        data_tags: Iterable[str] = (),
        payload: Any = None,
    ) -> EgressDecision:
        """:meth:`authorize_egress`, raising PolicyDenied when denied."""
        decision = await self._egress(principal, method, provider, locality, model, data_tags, payload, consume=True)
        if not decision.allowed:
            raise decision.error()
        return decision

    async def _egress(
        self,
        principal: Principal,
        method: str | None,
        provider: str,
        declared: Locality | None,
        model: str | None,
        data_tags: Iterable[str],
        payload: Any,
        *,
        consume: bool,
        record: bool = True,
    ) -> EgressDecision:
        attributes = {"engram.policy.provider": provider, "engram.policy.method": method or ""}
        with self._spans.span("policy.egress", attributes) as span:
            result = await self._decide_egress(
                principal, method, provider, declared, model, data_tags, payload, consume=consume, record=record
            )
            span.set_attribute("engram.policy.effect", result.effect)
            span.set_attribute("engram.policy.rule", result.rule or "")
            span.set_attribute("engram.provider.locality", result.locality or "")
            return result

    async def _decide_egress(
        self,
        principal: Principal,
        method: str | None,
        provider: str,
        declared: Locality | None,
        model: str | None,
        data_tags: Iterable[str],
        payload: Any,
        *,
        consume: bool,
        record: bool,
    ) -> EgressDecision:
        engine = self._engine()
        if method is None:
            raise ValueError("an egress decision outside a request needs method=")
        locality = self.locality_of(provider, declared)
        request, decision = engine.decide_egress(
            principal, method=method, provider=provider, locality=locality, model=model, data_tags=data_tags
        )
        if decision.allowed:
            violation = self._temporal_denial(Guarded("egress", principal, method, provider, locality), count=record)
            if violation is not None:
                decision = self._violation_decision(violation, "egress", decision.privacy_mode)
        redact = decision.allowed and "redact" in decision.obligations and payload is not None

        def prepare(payload: Any) -> tuple[Any, dict[str, int], int]:
            redactions: dict[str, int] = {}
            if redact:
                payload, redactions = engine.redactor.redact(payload)
            return payload, redactions, payload_size(payload)

        # Text is measured in O(1); a big text or any structure (serialized to be measured) is
        # redacted and measured in a worker thread, off the event loop.
        small = payload is None or (
            isinstance(payload, (str, bytes)) and len(payload) <= self.settings.inline_redaction_bytes
        )
        if small:
            payload, redactions, size = prepare(payload)
        else:
            payload, redactions, size = await anyio.to_thread.run_sync(prepare, payload)
        result = engine.finish_egress(request, decision, payload, redactions, consume, size)
        if record:
            self._record(result, request, result.redactions)
            for kind, count in result.redactions.items():
                self._m_redactions.labels(kind).inc(count)
            if result.rule.startswith("limit:"):
                self._m_limited.labels(result.rule.removeprefix("limit:")).inc()
        return result

    # --- metrics ---------------------------------------------------------------------------------

    def _collect(self) -> Iterable[Metric]:
        rules = GaugeMetricFamily("engram_policy_rules", "Policy rules in force, by enforcement point.", labels=["point"])
        if self.engine is not None:
            for point, compiled in self.engine.rules.items():
                rules.add_metric([point], len(compiled))
        yield rules
        yield GaugeMetricFamily("engram_policy_privacy_mode", "1 while privacy mode is on.", value=1.0 if self.privacy_mode else 0.0)
        yield GaugeMetricFamily("engram_policy_buckets", "Rate-limit buckets in use.", value=len(self.limiter))
        temporal = self.temporal
        yield GaugeMetricFamily("engram_policy_temporal_rules", "Temporal rules in force.", value=len(temporal) if temporal else 0)
        yield CounterMetricFamily(
            "engram_policy_temporal_evaluations",
            "Temporal rule evaluations: a rule told an event, or consulted before a call.",
            value=temporal.evaluations if temporal else 0,
        )
        yield GaugeMetricFamily(
            "engram_policy_temporal_dropped",
            "Points the temporal monitors dropped because a bound (policy.temporal_max_points) was reached.",
            value=temporal.dropped if temporal else 0,
        )

    # --- RPC methods -----------------------------------------------------------------------------

    def _owner(self, principal: Principal) -> bool:
        return principal.uid in (self.owner_uid, 0)

    @rpc(
        "policy.explain",
        summary="What the policy would decide for a call (method, namespace or egress) and which rule decides.",
        audit=False,
    )
    async def explain(self, ctx: RequestContext, params: ExplainParams) -> ExplainResult:
        caller = ctx.principal
        uid = caller.uid if params.uid is None else params.uid
        if uid != caller.uid and not self._owner(caller):
            raise PolicyDenied(
                "only the owner and root may explain decisions about other uids",
                reason="policy_denied", rule="owner-only", method="policy.explain", uid=caller.uid,
            )
        gid, user = params.gid, params.user
        if uid == caller.uid:
            gid = caller.gid if gid is None else gid
            user = caller.user if user is None else user
        else:
            try:
                entry = pwd.getpwuid(uid)
                gid = entry.pw_gid if gid is None else gid
                user = entry.pw_name if user is None else user
            except KeyError:
                gid = uid if gid is None else gid
        principal = Principal(uid=uid, gid=gid, pid=None, user=user)
        engine = self._engine()
        admin = self._method_admin(params.method)
        extra: dict[str, Any] = {}
        if params.provider is not None:
            decision = await self._egress(
                principal, params.method, params.provider, params.locality, params.model, params.tags, params.payload,
                consume=False, record=False,
            )
            extra = {
                "locality": decision.locality,
                "limits": sorted({s.limit for s in engine.limits_for(principal, params.provider, decision.locality or "remote")}),
                "payload": decision.payload,
                "redactions": decision.redactions,
            }
        elif params.namespace is not None:
            decision = engine.authorize_namespace(principal, params.method, params.namespace)
        else:
            decision = engine.decide(AccessRequest("method", principal, params.method, bool(admin)))
            if decision.allowed and decision.rule != BUILTIN_REPAIR:
                violation = self._temporal_denial(Guarded("method", principal, params.method), count=False)
                if violation is not None:
                    decision = replace(self._violation_decision(violation, "method", decision.privacy_mode), matched=decision.matched)
        extra["temporal"] = self._temporal_statuses(principal, params, decision)
        return ExplainResult(
            point=decision.point,
            effect=decision.effect,
            rule=decision.rule,
            policy=decision.policy,
            reason=decision.reason,
            obligations=sorted(decision.obligations),
            matched=[MatchedRule(name=m.name, effect=m.effect, policy=m.policy) for m in decision.matched],
            privacy_mode=decision.privacy_mode,
            uid=uid,
            gid=gid,
            user=user,
            method_known=admin is not None,
            admin_method=bool(admin),
            **extra,
        )

    def _temporal_statuses(self, principal: Principal, params: ExplainParams, decision: Decision) -> list[TemporalStatus]:
        rules = self.temporal
        if rules is None or params.namespace is not None or decision.rule == BUILTIN_REPAIR:
            return []
        if params.provider is not None:
            locality = self.locality_of(params.provider, params.locality)
            call = Guarded("egress", principal, params.method, params.provider, locality)
        else:
            call = Guarded("method", principal, params.method)
        self._drain()
        return [
            TemporalStatus(
                name=rule.name, policy=rule.policy, description=rule.rule.description, when=rule.rule.when or "",
                holds=violation is not None, events=violation.events if violation is not None else [],
            )
            for rule, violation in rules.statuses(call, time.time())
        ]

    @rpc("policy.reload", summary="Load the policy files again; a broken file leaves the previous policy in force.", owner_only=True)
    async def reload_method(self, ctx: RequestContext, params: NoParams) -> ReloadResult:
        policies = await self.reload(trigger="rpc")
        return ReloadResult(files=policies.labels, rules=policies.rule_count, privacy_mode=self.privacy_mode)

    @rpc("policy.privacy", summary="Switch privacy mode on or off (kept across restarts), or report it.", owner_only=True)
    async def privacy(self, ctx: RequestContext, params: PrivacyParams) -> PrivacyResult:
        if params.mode is not None:
            value = {"on": True, "off": False, "default": None}[params.mode]
            before = self.privacy_mode, self.override
            await anyio.to_thread.run_sync(self._write_override, value)
            self.override = value
            if (self.privacy_mode, self.override) != before:
                self._privacy_changed(ctx.principal.uid)
        return PrivacyResult(
            privacy_mode=self.privacy_mode,
            source=self.privacy_source,
            override=self.override,
            config=self.settings.privacy_mode,
            policy=self.engine is not None and self.engine.policies.privacy_mode,
        )

    @rpc("policy.show", summary="The policy in force: files, rules, limits, redaction, privacy mode.", owner_only=True, audit=False)
    async def show(self, ctx: RequestContext, params: NoParams) -> ShowResult:
        engine = self._engine()
        files = engine.policies.files
        return ShowResult(
            base=self.settings.base,
            files=[LoadedPolicy(label=f.label, path=str(f.path), sha256=f.sha256, document=f.policy) for f in files],
            rules=engine.policies.rule_count,
            limits=len(engine.limits),
            privacy_mode=self.privacy_mode,
            privacy_source=self.privacy_source,
            redaction_detectors=engine.redactor.detectors,
            redaction_patterns=[p.name for p in engine.redactor.patterns],
            loaded_at=self.loaded_at,
            reload_problems=[issue.as_dict() for issue in self.reload_problems],
            buckets=len(self.limiter),
        )
