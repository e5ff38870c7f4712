"""Fallback chains: order, breakers, timeouts, garbage, policy denials, streams.

The providers are fakes (they are the outside seam); the policy is a stub that allows or denies
by provider name and redacts the way an obligation would, so each test says what it decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from engram.bus import EventBus
from engram.bus.events import CORE_EVENTS
from engram.errors import PolicyDenied, Unavailable
from engram.observability.metrics import Metrics
from engram.plugins.protocol import Completion
from engram.principal import Principal
from engram.providers.api import ChatMessage, ChatParams, GenerateParams
from engram.providers.breaker import Breakers
from engram.providers.events import PROVIDER_EVENTS
from engram.providers.service import Providers
from engram.providers.settings import BreakerSettings, ProvidersSettings
from engram.server.methods import RequestContext


class Fake:
    """A provider that answers, raises, hangs or talks nonsense, as told."""

    locality = "local"
    capabilities = frozenset({"generate", "chat"})

    def __init__(self, name: str, behaviour: str = "ok", locality: str = "local") -> None:
        self.name, self.behaviour, self.locality = name, behaviour, locality
        self.calls: list[Any] = []

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def health(self) -> Any: ...

    async def _act(self) -> None:
        if self.behaviour == "raise":
            raise ConnectionError("refused")
        if self.behaviour == "hang":
            await anyio.sleep(3600)

    async def generate(self, prompt: str, *, model: Any, system: Any, options: Any) -> Any:
        self.calls.append(prompt)
        await self._act()
        if self.behaviour == "garbage":
            return 42
        return Completion(text=f"{self.name}: {prompt}", model="m")

    async def chat(self, messages: list[dict], *, model: Any, options: Any) -> Any:
        self.calls.append(messages)
        await self._act()
        return {"text": f"{self.name} chat"}

    async def stream_generate(self, prompt: str, *, model: Any, system: Any, options: Any):
        self.calls.append(prompt)
        if self.behaviour == "break_midway":
            yield "partial"
            raise ConnectionError("dropped")
        await self._act()
        if self.behaviour == "garbage":
            yield b"bytes"
        for word in prompt.split():
            yield word

    async def stream_chat(self, messages: list[dict], *, model: Any, options: Any):
        yield "chat"


class Plugins:
    def __init__(self, *providers: Fake) -> None:
        self._providers = {p.name: p for p in providers}

    def providers(self) -> dict[str, Fake]:
        return dict(self._providers)


@dataclass
class Decision:
    allowed: bool
    payload: Any = None
    rule: str = "r"
    locality: str = "local"
    redactions: dict = field(default_factory=dict)

    def error(self) -> PolicyDenied:
        return PolicyDenied("egress denied", rule=self.rule)


class Policy:
    def __init__(self, deny: set[str] = frozenset()) -> None:
        self.deny = deny
        self.asked: list[str] = []

    async def authorize(self, principal: Any, *, method: str | None, provider: str, locality: str, model: Any, data_tags: Any, payload: Any) -> Decision:
        self.asked.append(provider)
        if provider in self.deny:
            return Decision(False, rule="default")
        redacted = {**payload, "prompt": payload["prompt"].replace("secret", "[X]")} if "prompt" in payload else payload
        return Decision(True, redacted, locality=locality, redactions={"word": 1} if redacted != payload else {})


class Conn:
    id = 1

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    async def notify(self, method: str, params: dict) -> None:
        self.sent.append((method, params))


def make(*providers: Fake, deny: set[str] = frozenset(), chain: list[str] | None = None, **settings: Any):
    clock = [0.0]
    bus = EventBus(CORE_EVENTS)
    bus.declare(*PROVIDER_EVENTS)
    policy = Policy(deny)
    config = ProvidersSettings(chains={"generate": chain or [p.name for p in providers], "chat": chain or []},
                               breaker=BreakerSettings(failures=2, cooldown=10), **settings)
    breakers = Breakers(config.breaker, bus, clock=lambda: clock[0])
    service = Providers(config, Plugins(*providers), breakers, policy.authorize, bus, Metrics())
    ctx = RequestContext(principal=Principal(uid=1000, gid=1000, pid=1), connection=Conn(), request=7)
    return service, ctx, policy, clock, bus


async def test_first_healthy_provider_answers_and_failures_fall_through():
    a, b, c = Fake("a", "raise"), Fake("b", "garbage"), Fake("c")
    service, ctx, policy, _, _ = make(a, b, c)
    result = await service.generate(ctx, GenerateParams(prompt="hi"))
    assert result.provider == "c" and result.text == "c: hi"
    assert [(x.provider, x.outcome) for x in result.attempts] == [("a", "error"), ("b", "garbage"), ("c", "ok")]
    assert policy.asked == ["a", "b", "c"]  # asked before every call


async def test_hanging_provider_times_out_and_the_next_answers():
    service, ctx, _, _, _ = make(Fake("slow", "hang"), Fake("ok"), call_timeout=0.05)
    result = await service.generate(ctx, GenerateParams(prompt="x"))
    assert result.provider == "ok" and result.attempts[0].outcome == "timeout"


async def test_open_breaker_is_skipped_until_cooldown_then_probed():
    bad, good = Fake("bad", "raise"), Fake("good")
    service, ctx, _, clock, bus = make(bad, good)
    sub = bus.subscribe(["provider.breaker"])
    for _ in range(2):
        await service.generate(ctx, GenerateParams(prompt="x"))
    assert service.breaker("bad").state == "open"
    result = await service.generate(ctx, GenerateParams(prompt="x"))
    assert result.attempts[0].outcome == "breaker_open" and len(bad.calls) == 2
    clock[0] += 10
    bad.behaviour = "ok"
    result = await service.generate(ctx, GenerateParams(prompt="x"))
    assert result.provider == "bad" and service.breaker("bad").state == "closed"
    states = []
    while sub.depth:
        states.append((await sub.__anext__()).state)
    assert states == ["open", "half_open", "closed"]


async def test_policy_denied_provider_is_skipped_and_never_called():
    remote, local = Fake("remote", locality="remote"), Fake("local")
    service, ctx, _, _, _ = make(remote, local, deny={"remote"})
    result = await service.generate(ctx, GenerateParams(prompt="secret plan"))
    assert result.provider == "local" and remote.calls == []
    assert result.attempts[0].outcome == "policy_denied"
    assert local.calls == ["[X] plan"] and result.redactions == {"word": 1}  # only the redacted payload is sent


async def test_only_denials_answer_with_the_policy_error():
    remote = Fake("remote", locality="remote")
    service, ctx, _, _, _ = make(remote, deny={"remote"})
    with pytest.raises(PolicyDenied):
        await service.generate(ctx, GenerateParams(prompt="x", provider="remote"))
    assert remote.calls == []


async def test_nothing_answers_is_unavailable_with_attempts():
    service, ctx, _, _, _ = make(Fake("a", "raise"))
    with pytest.raises(Unavailable) as caught:
        await service.generate(ctx, GenerateParams(prompt="x", provider="missing"))
    assert "missing: not_running" in caught.value.message
    with pytest.raises(Unavailable) as caught:
        await service.generate(ctx, GenerateParams(prompt="x"))
    assert caught.value.data["attempts"][0]["outcome"] == "error"


async def test_stream_pushes_chunks_then_result_and_falls_back_before_the_first_chunk():
    service, ctx, _, _, _ = make(Fake("bad", "garbage"), Fake("good"))
    result = await service.generate(ctx, GenerateParams(prompt="one two", stream=True, stream_id="s1"))
    assert (result.text, result.provider, result.chunks, result.stream) == ("onetwo", "good", 2, "s1")
    assert ctx.connection.sent == [
        ("infer.chunk", {"stream": "s1", "provider": "good", "index": 0, "text": "one"}),
        ("infer.chunk", {"stream": "s1", "provider": "good", "index": 1, "text": "two"}),
    ]


async def test_stream_broken_after_a_chunk_is_an_error():
    service, ctx, _, _, _ = make(Fake("a", "break_midway"), Fake("b"))
    with pytest.raises(Unavailable) as caught:
        await service.generate(ctx, GenerateParams(prompt="x", stream=True))
    assert caught.value.data["reason"] == "stream_broken"
    assert len(ctx.connection.sent) == 1


async def test_chat_accepts_a_dict_completion():
    service, ctx, _, _, _ = make(Fake("a"), chain=["a"])
    result = await service.chat(ctx, ChatParams(messages=[ChatMessage(role="user", content="hi")]))
    assert result.text == "a chat"


async def test_empty_chain_says_how_to_fix_it():
    service, ctx, _, _, _ = make(Fake("a"))
    service.settings.chains["generate"] = []
    with pytest.raises(Unavailable, match="providers.chains.generate"):
        await service.generate(ctx, GenerateParams(prompt="x"))


async def test_a_cancelled_probe_does_not_wedge_the_breaker():
    slow = Fake("slow", "raise")
    service, ctx, _, clock, _ = make(slow)
    for _ in range(2):
        with pytest.raises(Unavailable):
            await service.generate(ctx, GenerateParams(prompt="x"))
    clock[0] += 10
    slow.behaviour = "hang"
    with anyio.move_on_after(0.05):  # the request is cancelled while the half-open probe hangs
        await service.generate(ctx, GenerateParams(prompt="x"))
    assert service.breaker("slow").state == "half_open"
    slow.behaviour = "ok"
    assert (await service.generate(ctx, GenerateParams(prompt="x"))).provider == "slow"
    assert service.breaker("slow").state == "closed"
