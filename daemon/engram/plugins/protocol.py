"""What a provider is.

A plugin distribution registers a factory in the ``engram.providers`` entry-point group::

    [project.entry-points."engram.providers"]
    ollama = "engram_ollama:OllamaProvider"

The factory is called with the provider's configuration table (``[plugins.providers.<name>]``),
validated first against ``factory.config_model`` when the factory declares one (a pydantic
model), and must return an object implementing :class:`Provider`.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel

ENTRY_POINT_GROUP = "engram.providers"

Locality = Literal["local", "remote"]
CAPABILITIES = frozenset({"embed", "classify", "generate", "chat"})


class ProviderHealth(BaseModel):
    ok: bool
    detail: str = ""


@runtime_checkable
class Provider(Protocol):
    name: str
    locality: Locality  # "remote" means data leaves the machine: policies decide if it may
    capabilities: frozenset[str]

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> ProviderHealth: ...
