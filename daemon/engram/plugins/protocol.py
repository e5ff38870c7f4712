"""What a provider is.

A plugin distribution registers a factory in the ``engram.providers`` entry-point group::

    [project.entry-points."engram.providers"]
    ollama = "engram_ollama:OllamaProvider"

The factory is called with the provider's configuration table (``[plugins.providers.<name>]``),
validated first against ``factory.config_model`` when the factory declares one (a pydantic
model), and must return an object implementing :class:`Provider`. A factory that also accepts a
``context`` keyword argument gets a :class:`ProviderContext`: how the built-in ``onnx`` provider
reaches the daemon's inference part without any global.

Besides the lifecycle below, a provider implements the method of each capability it declares
(the daemon calls them only for declared capabilities, always under a timeout and a circuit
breaker, and only with the payload the policy let through):

* ``embed``    — ``async embed(texts: list[str], *, model: str | None) -> list[list[float]]``
* ``classify`` — ``async classify(texts: list[str], *, labels: list[str], model: str | None) -> list[dict[str, float]]``
* ``generate`` — ``async generate(prompt: str, *, model: str | None, system: str | None, options: dict) -> Completion``
  and ``stream_generate(...)`` with the same arguments: an async iterator of text chunks
* ``chat``     — ``async chat(messages: list[dict], *, model: str | None, options: dict) -> Completion``
  and ``stream_chat(...)``: an async iterator of text chunks

``messages`` are ``{"role": "system"|"user"|"assistant", "content": str}``. A provider may
declare ``cost`` (a :class:`CostHint`) so operators can see what a call costs.

Each plugin's code runs on a thread of its own with its own event loop (see
:mod:`engram.plugins.worker`), never on the daemon's loop. So any method may also be a plain
``def`` (and a streaming method a plain generator): it runs, and may block, on that thread. A
method that blocks holds up only its plugin; the daemon's timeouts on it hold all the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

ENTRY_POINT_GROUP = "engram.providers"

Locality = Literal["local", "remote"]
CAPABILITIES = frozenset({"embed", "classify", "generate", "chat"})

# The method each capability needs; streaming methods are needed for generate and chat too.
CAPABILITY_METHODS: dict[str, tuple[str, ...]] = {
    "embed": ("embed",),
    "classify": ("classify",),
    "generate": ("generate", "stream_generate"),
    "chat": ("chat", "stream_chat"),
}


class ProviderHealth(BaseModel):
    ok: bool
    detail: str = ""


class CostHint(BaseModel):
    """What a call costs, as the provider estimates it (shown in ``plugins.list``)."""

    usd_per_1k_input_tokens: float = Field(default=0.0, ge=0, description="Price of 1000 prompt tokens, USD.")
    usd_per_1k_output_tokens: float = Field(default=0.0, ge=0, description="Price of 1000 generated tokens, USD.")
    typical_latency_ms: float | None = Field(default=None, ge=0, description="Typical time to a full answer.")


class Completion(BaseModel):
    """The answer of ``generate`` or ``chat``; anything else a provider returns is garbage."""

    text: str
    model: str | None = None
    input_tokens: int | None = Field(default=None, ge=0)
    output_tokens: int | None = Field(default=None, ge=0)


@dataclass(frozen=True)
class ProviderContext:
    """Handed to factories that accept ``context=``: the daemon's parts a built-in may use.

    The plugin gets the daemon's objects wrapped (:class:`engram.plugins.isolation.OnDaemonLoop`):
    they belong to the daemon's event loop, and every use of them from the plugin's thread is made
    on that loop.
    """

    inference: Any  # engram.inference.service.Inference
    state_dir: Any  # pathlib.Path


@runtime_checkable
class Provider(Protocol):
    name: str
    locality: Locality  # "remote" means data leaves the machine: policies decide if it may
    capabilities: frozenset[str]

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> ProviderHealth: ...


class Generator(Protocol):
    """The methods of the ``generate`` capability (``chat`` is alike, with messages)."""

    async def generate(self, prompt: str, *, model: str | None, system: str | None, options: dict[str, Any]) -> Completion: ...

    def stream_generate(
        self, prompt: str, *, model: str | None, system: str | None, options: dict[str, Any]
    ) -> AsyncIterator[str]: ...
