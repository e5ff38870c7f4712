"""An in-process memory part on a real SQLite database in a temporary folder.

Tests call the part's RPC handlers with a request context, the way the dispatcher does. The
embedder is the one seam faked here (:class:`HashEmbedder`: words hashed into a vector, so texts
sharing words are similar); :class:`engram.memory.embedding.LocalEmbedder` over a real ONNX model
has its own test.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engram.bus import EventBus
from engram.bus.events import Event
from engram.memory.events import MEMORY_EVENTS
from engram.memory.service import Memory
from engram.memory.settings import MemorySettings
from engram.observability.metrics import Metrics
from engram.principal import Principal
from engram.server.methods import RequestContext
from engram.storage import Database


class HashEmbedder:
    """Bag of words, each word hashed to a direction: deterministic and cheap."""

    def __init__(self, dim: int = 32, name: str = "hash") -> None:
        self._dim = dim
        self._name = name
        self.calls = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int | None:
        return self._dim

    async def embed(self, texts: list[str], deadline: object = None) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self._dim), np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
                out[row] += np.random.default_rng(seed).normal(size=self._dim)
            if not out[row].any():
                out[row, 0] = 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


class FakeConnection:
    id = 1
    subscriptions = 0

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        pass

    def on_close(self, callback: Callable[[], None]) -> None:
        pass

    def on_drain(self, pending: Callable[[], int]) -> None:
        pass

    def start_soon(self, func: Any, name: str) -> None:
        pass


def ctx(uid: int = 1000, request: int = 1) -> RequestContext:
    return RequestContext(principal=Principal(uid=uid, gid=uid, pid=4242), connection=FakeConnection(), request=request)


class Recorder:
    """Every memory event published, in order."""

    def __init__(self, bus: EventBus) -> None:
        self.events: list[Event] = []
        original = bus.publish

        def publish(event: Event) -> None:
            self.events.append(event)
            original(event)

        bus.publish = publish  # type: ignore[method-assign]

    def topics(self) -> list[str]:
        return [e.topic for e in self.events]


@pytest.fixture
def make_memory(tmp_path: Path) -> Callable[..., Any]:
    """``async with make_memory(embedder=..., **settings) as (memory, events): ...``; the same
    folder each time, so a second one is a restart."""

    @asynccontextmanager
    async def make(embedder: Any = "hash", owner_uid: int = 0, **settings: Any) -> AsyncIterator[tuple[Memory, Recorder]]:
        # Knowledge extraction only where a test asks for it: it loads spaCy (about a second of
        # CPU) and adds graph facts and events that other tests do not expect.
        settings.setdefault("extraction", {"enabled": False})
        db = Database(tmp_path / "engram.db")
        await db.open()
        bus = EventBus(MEMORY_EVENTS)
        recorder = Recorder(bus)
        memory = Memory(
            MemorySettings(**settings), tmp_path, tmp_path / "engram.db", bus, Metrics(),
            embedder=HashEmbedder() if embedder == "hash" else embedder, owner_uid=owner_uid,
        )
        try:
            async with memory:
                yield memory, recorder
        finally:
            await db.aclose()

    return make
