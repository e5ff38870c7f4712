"""Text generation for in-process callers (the router's provider targets, ``route.ask``).

A caller brings a prompt and system prompt of its own and the data tags the policy's egress rules
see; the call goes down the Providers part's ``generate`` chain (or to the one provider named)
exactly like ``infer.generate``'s: breakers, the policy's egress decision and the payload it
returns (redacted when a rule obliges it), the call timeout, fallback. A provider may report a
``score`` with its completion, its confidence in the answer, which the router's cascade reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engram.plugins.protocol import Completion
from engram.providers.service import Providers
from engram.server.methods import RequestContext

__all__ = ["Generated", "PromptGenerator", "checked_completion"]


@dataclass(frozen=True)
class Generated:
    text: str
    provider: str
    score: float | None = None  # the provider's confidence in [0, 1], when it reports one


def checked_completion(raw: Any) -> tuple[Completion, float | None]:
    """The provider's Completion and the score it reports (a ``score`` key or attribute in [0, 1]), if any."""
    score = raw.get("score") if isinstance(raw, dict) else getattr(raw, "score", None)
    completion = raw if isinstance(raw, Completion) else Completion.model_validate(raw)
    if isinstance(score, int | float) and not isinstance(score, bool) and 0.0 <= float(score) <= 1.0:
        return completion, float(score)
    return completion, None


class PromptGenerator:
    def __init__(self, providers: Providers) -> None:
        self._providers = providers

    @property
    def max_prompt_chars(self) -> int:
        """The most characters of prompt and system prompt together (providers.max_prompt_chars)."""
        return self._providers.settings.max_prompt_chars

    async def generate(self, ctx: RequestContext, prompt: str, system: str | None, tags: Sequence[str],
                       provider: str | None = None) -> Generated:
        """The text ``provider`` (None: the first of the generate chain that answers) writes."""
        providers = self._providers
        names = providers.chain("generate", provider)  # -32005 no_provider when none is named or configured

        def invoke(plugin: Any, sent: dict[str, Any]) -> Any:
            return plugin.generate(sent["prompt"], model=None, system=sent.get("system"), options={})

        name, (completion, score), _, _ = await providers.call(
            ctx, "generate", names, model=None, tags=list(tags), payload={"prompt": prompt, "system": system},
            invoke=invoke, check=checked_completion,
        )
        return Generated(completion.text, name, score)

    async def stream(self, ctx: RequestContext, prompt: str, system: str | None, tags: Sequence[str],
                     emit: Callable[[str, str, int], Awaitable[None]]) -> Generated:
        """As :meth:`generate` down the chain, each chunk handed to ``emit(provider, text, index)`` as it comes."""
        providers = self._providers
        names = providers.chain("generate", None)

        def open_stream(plugin: Any, sent: dict[str, Any]) -> AsyncIterator[Any]:
            return plugin.stream_generate(sent["prompt"], model=None, system=sent.get("system"), options={})

        name, text, _, _, _ = await providers.stream(
            ctx, "generate", names, model=None, tags=list(tags), payload={"prompt": prompt, "system": system},
            open_stream=open_stream, emit=emit,
        )
        return Generated(text, name)
