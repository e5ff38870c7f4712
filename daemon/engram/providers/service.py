"""The Providers part: every provider call goes through here.

For each call, over the chain (the one provider named, or ``providers.chains.<capability>``):

1. skip providers that are not running, lack the capability, or whose breaker is open;
2. ask the policy (:meth:`Policy.authorize_egress`) whether this request's payload may go to the
   provider; a denial skips it (and is the answer when nothing else could be tried); only the
   payload the decision returns (redacted when a rule obliges it) is sent;
3. call it under ``providers.call_timeout`` (streams: ``providers.stream_idle_timeout`` per chunk);
   an exception, a hang or an answer that is not a :class:`Completion` (or text chunks) counts
   as a failure of that provider, feeds its breaker, and the next provider is tried.

Each attempt that reaches a provider runs in a span of its own (``provider.<capability>``, a
client span with the provider, its locality and the outcome), current while the provider works:
its ``traceparent`` goes with the provider's HTTP requests.

A stream falls back only while it has sent nothing: once a chunk reached the client, a failure
ends the call with -32005 (``reason: stream_broken``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractContextManager, aclosing
from typing import Any

import anyio
import structlog
from prometheus_client import Counter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client.core import GaugeMetricFamily, Metric
from pydantic import ValidationError

from engram.bus import EventBus
from engram.errors import InternalSignal, InvalidParams, PolicyDenied, Unavailable
from engram.lifecycle import Health, Part, PartState
from engram.observability.metrics import Metrics
from engram.observability.tracing import NO_SPANS, Spans
from engram.plugins.manager import PluginManager
from engram.plugins.protocol import Completion, Provider
from engram.providers.api import (
    CHUNK_NOTIFICATION,
    Attempt,
    ChatParams,
    CompletionResult,
    GenerateParams,
)
from engram.providers.breaker import Breakers, CircuitBreaker
from engram.providers.events import ProviderCallFailed
from engram.principal import Principal
from engram.providers.settings import ProvidersSettings
from engram.server.methods import RequestContext, rpc

log = structlog.get_logger("engram.providers")

_STATE_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}

# (principal, method, provider, locality, model, tags, payload) -> EgressDecision; Policy.authorize_egress
Authorize = Callable[..., Awaitable[Any]]
# (principal, method=, provider=, data_tags=) -> Decision, no token taken; Policy.preview_egress
Preview = Callable[..., Any]


class _Garbage(InternalSignal):
    """A provider answered something that is not what the protocol says."""


class _ClientGone(InternalSignal):
    """A chunk could not be pushed to the client: its connection is gone."""


class Providers(Part):
    """The providers part: every provider call goes through it; it holds nothing to open or close."""

    def __init__(
        self,
        settings: ProvidersSettings,
        plugins: PluginManager,
        breakers: Breakers,
        authorize: Authorize,
        bus: EventBus,
        metrics: Metrics,
        preview: Preview | None = None,
        spans: Spans = NO_SPANS,
    ) -> None:
        super().__init__("providers")
        self.settings = settings
        self._preview = preview
        self._spans = spans
        self._plugins = plugins
        self._breakers = breakers
        self._authorize = authorize
        self._bus = bus
        self._m_calls = Counter(
            "engram_provider_calls",
            "Provider calls by provider, capability and outcome (ok, error, timeout, garbage, policy_denied, breaker_open).",
            ["provider", "capability", "outcome"],
            registry=metrics.registry,
        )
        metrics.add_collector(self._collect)

    # --- breakers ------------------------------------------------------------------------------

    def breaker(self, name: str) -> CircuitBreaker:
        return self._breakers.of(name)

    async def health(self) -> Health:
        # An open breaker is a provider's trouble, not this part's: shown here, the part stays ok.
        states = {name: self.breaker(name).state for name in self._plugins.providers()}
        tripped = [f"{name} {state}" for name, state in states.items() if state != "closed"]
        return Health(self.state is PartState.RUNNING, f"breakers: {', '.join(tripped) or 'all closed'}")

    def _collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(
            "engram_provider_breaker_state", "Circuit breaker per provider: 0 closed, 1 half-open, 2 open.", labels=["provider"]
        )
        for name in self._plugins.providers():
            gauge.add_metric([name], _STATE_VALUE[self.breaker(name).state])
        yield gauge

    # --- the chain -----------------------------------------------------------------------------

    def chain(self, capability: str, provider: str | None) -> list[str]:
        if provider is not None:
            return [provider]
        names = self.settings.chains.get(capability, [])
        if not names:
            raise Unavailable(
                f"no provider named and providers.chains.{capability} is empty; name a provider or configure a chain",
                reason="no_provider",
                capability=capability,
            )
        return list(names)

    def unready(self, principal: Principal, capability: str, method: str, tags: Sequence[str] = ()) -> str | None:
        """Why no provider of the capability's chain could answer ``method`` for ``principal``
        now (none configured, none running with the capability, the policy allows none); None
        when one could. Decided without calling anything: a provider may still fail when called."""
        names = self.settings.chains.get(capability, [])
        if not names:
            return f"providers.chains.{capability} is empty"
        running = [
            name for name in names
            if (provider := self._plugins.providers().get(name)) is not None and capability in provider.capabilities
        ]
        if not running:
            return f"no provider of providers.chains.{capability} ({', '.join(names)}) is running with {capability}"
        if self._preview is None:
            return None
        denials = []
        for name in running:
            decision = self._preview(principal, method=method, provider=name, data_tags=tags)
            if decision.allowed:
                return None
            denials.append(f"{name}: {decision.reason}")
        return f"the policy allows no provider of providers.chains.{capability} for {method}: {'; '.join(denials)}"

    async def _admit(
        self, ctx: RequestContext, capability: str, name: str, model: str | None, tags: list[str], payload: Any,
        attempts: list[Attempt], denials: list[PolicyDenied],
    ) -> tuple[Provider, CircuitBreaker, Any] | None:
        """The provider, its breaker (a call let through) and the payload to send; None: skipped."""
        provider = self._plugins.providers().get(name)
        if provider is None:
            attempts.append(Attempt(provider=name, outcome="not_running", detail="not installed, disabled or failed"))
            return None
        if capability not in provider.capabilities:
            attempts.append(Attempt(provider=name, outcome="no_capability", detail=f"has {sorted(provider.capabilities)}"))
            return None
        breaker = self.breaker(name)
        if not breaker.allow():
            self._m_calls.labels(name, capability, "breaker_open").inc()
            attempts.append(Attempt(provider=name, outcome="breaker_open", detail=f"after {breaker.failures} failures"))
            return None
        try:
            decision = await self._authorize(
                ctx.principal, method=ctx.method, provider=name, locality=provider.locality, model=model, data_tags=tags,
                payload=payload,
            )
        except BaseException:
            breaker.release()
            raise
        if not decision.allowed:
            breaker.release()
            self._m_calls.labels(name, capability, "policy_denied").inc()
            attempts.append(Attempt(provider=name, outcome="policy_denied", detail=decision.rule))
            denials.append(decision.error())
            return None
        return provider, breaker, decision

    def _failed(self, name: str, capability: str, breaker: CircuitBreaker, kind: str, error: str, attempts: list[Attempt]) -> None:
        self._m_calls.labels(name, capability, kind).inc()
        attempts.append(Attempt(provider=name, outcome=kind, detail=error))  # type: ignore[arg-type]
        log.warning("provider call failed", provider=name, capability=capability, kind=kind, error=error)
        self._bus.publish(ProviderCallFailed(provider=name, capability=capability, kind=kind, error=error))  # type: ignore[arg-type]
        breaker.failure(error)  # after the failure's event: the breaker's change follows it

    def _attempt_span(
        self, capability: str, name: str, provider: Provider, model: str | None, stream: bool = False
    ) -> AbstractContextManager[Span]:
        """The span of one attempt at one provider (admitted by the policy and its breaker)."""
        attributes: dict[str, Any] = {
            "engram.provider": name,
            "engram.provider.locality": provider.locality,
            "engram.provider.capability": capability,
            "engram.provider.stream": stream,
        }
        if model is not None:
            attributes["engram.provider.model"] = model
        return self._spans.span(f"provider.{capability}", attributes, kind=SpanKind.CLIENT)

    @staticmethod
    def _nothing_answered(capability: str, attempts: list[Attempt], denials: list[PolicyDenied]) -> Exception:
        unusable = [a for a in attempts if a.outcome in ("error", "timeout", "garbage", "breaker_open")]
        if denials and not unusable:
            return denials[0]  # only the policy stood in the way: say which rule
        return Unavailable(
            f"no provider could {capability}: "
            + "; ".join(f"{a.provider}: {a.outcome}" + (f" ({a.detail})" if a.detail else "") for a in attempts),
            reason="no_provider",
            capability=capability,
            attempts=[a.model_dump() for a in attempts],
        )

    async def call(
        self,
        ctx: RequestContext,
        capability: str,
        names: list[str],
        *,
        model: str | None,
        tags: list[str],
        payload: Any,
        invoke: Callable[[Provider, Any], Awaitable[Any]],
        check: Callable[[Any], Any],
    ) -> tuple[str, Any, Any, list[Attempt]]:
        """Run ``invoke(provider, allowed_payload)`` down the chain; (provider, checked result, decision, attempts)."""
        attempts: list[Attempt] = []
        denials: list[PolicyDenied] = []
        for name in names:
            admitted = await self._admit(ctx, capability, name, model, tags, payload, attempts, denials)
            if admitted is None:
                continue
            provider, breaker, decision = admitted
            with self._attempt_span(capability, name, provider, model) as span:
                try:
                    with anyio.fail_after(self.settings.call_timeout):
                        raw = await invoke(provider, decision.payload)
                except BaseException as exc:
                    if not isinstance(exc, Exception):  # cancelled (request timeout, client gone): no verdict
                        breaker.release()
                        raise
                    kind = "timeout" if isinstance(exc, TimeoutError) else "error"
                    detail = f"no answer within {self.settings.call_timeout:g} s" if kind == "timeout" else _short(exc)
                    self._failed(name, capability, breaker, kind, detail, attempts)
                    _outcome(span, kind, detail)
                    continue
                try:
                    result = check(raw)
                except (_Garbage, ValidationError, TypeError, ValueError) as exc:
                    self._failed(name, capability, breaker, "garbage", _short(exc), attempts)
                    _outcome(span, "garbage", _short(exc))
                    continue
                _outcome(span, "ok")
            breaker.success()
            self._m_calls.labels(name, capability, "ok").inc()
            attempts.append(Attempt(provider=name, outcome="ok"))
            return name, result, decision, attempts
        raise self._nothing_answered(capability, attempts, denials)

    async def stream(
        self,
        ctx: RequestContext,
        capability: str,
        names: list[str],
        *,
        model: str | None,
        tags: list[str],
        payload: Any,
        open_stream: Callable[[Provider, Any], AsyncIterator[Any]],
        emit: Callable[[str, str, int], Awaitable[None]],
    ) -> tuple[str, str, Any, int, list[Attempt]]:
        """Stream down the chain; each chunk goes to ``emit(provider, text, index)``. (provider, text, decision, chunks, attempts)."""
        attempts: list[Attempt] = []
        denials: list[PolicyDenied] = []
        idle = self.settings.stream_idle_timeout
        for name in names:
            admitted = await self._admit(ctx, capability, name, model, tags, payload, attempts, denials)
            if admitted is None:
                continue
            provider, breaker, decision = admitted
            parts: list[str] = []
            failure: tuple[str, str] | None = None
            with self._attempt_span(capability, name, provider, model, stream=True) as span:
                try:
                    async with aclosing(open_stream(provider, decision.payload)) as chunks:  # type: ignore[type-var]
                        iterator = chunks.__aiter__()
                        while True:
                            try:
                                with anyio.fail_after(idle):
                                    chunk = await iterator.__anext__()
                            except StopAsyncIteration:
                                break
                            if not isinstance(chunk, str):
                                raise _Garbage(f"stream chunk is {type(chunk).__name__}, not text")
                            if chunk:
                                try:
                                    await emit(name, chunk, len(parts))
                                except Exception as exc:  # the client's side, not the provider's
                                    raise _ClientGone(_short(exc)) from exc
                                parts.append(chunk)
                except (_ClientGone, anyio.get_cancelled_exc_class()):
                    breaker.release()  # no verdict on the provider
                    raise
                except TimeoutError:
                    failure = ("timeout", f"no chunk within {idle:g} s")
                except _Garbage as exc:
                    failure = ("garbage", str(exc))
                except Exception as exc:
                    failure = ("error", f"{type(exc).__name__}: {exc}")
                _outcome(span, *(failure or ("ok",)))
                span.set_attribute("engram.provider.chunks", len(parts))
            if failure is None:
                breaker.success()
                self._m_calls.labels(name, capability, "ok").inc()
                attempts.append(Attempt(provider=name, outcome="ok"))
                return name, "".join(parts), decision, len(parts), attempts
            self._failed(name, capability, breaker, failure[0], failure[1], attempts)
            if parts:
                raise Unavailable(
                    f"{name} failed after {len(parts)} chunks were sent: {failure[1]}",
                    reason="stream_broken",
                    provider=name,
                    chunks=len(parts),
                )
        raise self._nothing_answered(capability, attempts, denials)

    # --- RPC -------------------------------------------------------------------------------------

    def _check_size(self, chars: int) -> None:
        if chars > self.settings.max_prompt_chars:
            raise InvalidParams(
                f"prompt of {chars} characters; at most {self.settings.max_prompt_chars} (providers.max_prompt_chars)",
                field="prompt",
            )

    async def _answer(
        self,
        ctx: RequestContext,
        capability: str,
        params: GenerateParams | ChatParams,
        payload: dict[str, Any],
        invoke: Callable[[Provider, dict[str, Any]], Awaitable[Any]],
        open_stream: Callable[[Provider, dict[str, Any]], AsyncIterator[Any]],
    ) -> CompletionResult:
        names = self.chain(capability, params.provider)
        if not params.stream:
            name, completion, decision, attempts = await self.call(
                ctx, capability, names, model=params.model, tags=params.tags, payload=payload, invoke=invoke, check=_completion
            )
            return CompletionResult(
                text=completion.text,
                provider=name,
                model=completion.model or params.model,
                locality=decision.locality or "local",
                redactions=decision.redactions,
                attempts=attempts,
            )
        stream_id = params.stream_id or f"r{ctx.request}"

        async def emit(provider: str, text: str, index: int) -> None:
            await ctx.connection.notify(
                CHUNK_NOTIFICATION, {"stream": stream_id, "provider": provider, "index": index, "text": text}
            )

        name, text, decision, count, attempts = await self.stream(
            ctx, capability, names, model=params.model, tags=params.tags, payload=payload, open_stream=open_stream, emit=emit
        )
        return CompletionResult(
            text=text,
            provider=name,
            model=params.model,
            locality=decision.locality or "local",
            redactions=decision.redactions,
            stream=stream_id,
            chunks=count,
            attempts=attempts,
        )

    @rpc(
        "infer.generate",
        summary="Generate text from a prompt with a provider (or down the generate chain); policy-checked, streams on request.",
        timeout=3600,
    )
    async def generate(self, ctx: RequestContext, params: GenerateParams) -> CompletionResult:
        self._check_size(len(params.prompt) + len(params.system or ""))
        payload = {"prompt": params.prompt, "system": params.system}
        model, options = params.model, params.options

        def invoke(provider: Any, sent: dict[str, Any]) -> Awaitable[Any]:
            return provider.generate(sent["prompt"], model=model, system=sent.get("system"), options=options)

        def open_stream(provider: Any, sent: dict[str, Any]) -> AsyncIterator[Any]:
            return provider.stream_generate(sent["prompt"], model=model, system=sent.get("system"), options=options)

        return await self._answer(ctx, "generate", params, payload, invoke, open_stream)

    @rpc(
        "infer.chat",
        summary="Answer a conversation with a provider (or down the chat chain); policy-checked, streams on request.",
        timeout=3600,
    )
    async def chat(self, ctx: RequestContext, params: ChatParams) -> CompletionResult:
        self._check_size(sum(len(m.content) for m in params.messages))
        payload = {"messages": [m.model_dump() for m in params.messages]}
        model, options = params.model, params.options

        def invoke(provider: Any, sent: dict[str, Any]) -> Awaitable[Any]:
            return provider.chat(sent["messages"], model=model, options=options)

        def open_stream(provider: Any, sent: dict[str, Any]) -> AsyncIterator[Any]:
            return provider.stream_chat(sent["messages"], model=model, options=options)

        return await self._answer(ctx, "chat", params, payload, invoke, open_stream)


def _outcome(span: Span, outcome: str, detail: str | None = None) -> None:
    span.set_attribute("engram.provider.outcome", outcome)
    if detail is not None:
        span.set_status(Status(StatusCode.ERROR, detail))


def _completion(raw: Any) -> Completion:
    if isinstance(raw, Completion):
        return raw
    if isinstance(raw, dict):
        return Completion.model_validate(raw)
    raise _Garbage(f"answered a {type(raw).__name__}, not a Completion")


def _short(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."
