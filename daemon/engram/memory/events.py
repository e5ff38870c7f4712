"""Bus events of memory. They carry ids and keyed digests, never text: the audit log records
``memory.*`` events, and what is forgotten must not survive there. A digest is HMAC-SHA256
under the daemon's content key (see :mod:`engram.memory.content_key`), so a short text cannot be
found again from it by trying candidates.

Each fact goes into the audit log once: an event that says nothing an entry does not already
say says ``audit`` false (a property, which subscribers do not see) and the log leaves it out."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engram.bus.events import Event
from engram.principal import Principal

__all__ = [
    "MEMORY_EVENTS",
    "MemoryForgotten",
    "MemoryGraphUpdated",
    "MemoryIndexRebuilt",
    "MemoryRecalled",
    "MemoryRemembered",
]


class MemoryRemembered(Event):
    """Episodes were committed (one event per write request)."""

    topic = "memory.remembered"
    namespace: str
    ids: list[str]
    text_hmac: list[str] = Field(description="Keyed digest (hex) of each episode's text, in the order of ids.")
    origin: Literal["remember", "import", "promotion"]
    principal: Principal | None = None
    task_id: int | None = Field(default=None, description="The request's serial number in the daemon.")


class MemoryForgotten(Event):
    """Episodes were deleted (one event per up to 1000 ids)."""

    topic = "memory.forgotten"
    namespace: str
    ids: list[str]
    text_hmac: list[str] = Field(description="Keyed digest (hex) of each forgotten text, in the order of ids.")
    scope: Literal["ids", "filter", "all", "sleep"] = Field(
        description="What asked: memory.forget by ids, filter or all, or sleep deleting archived episodes after their grace."
    )
    relations: int = Field(default=0, description="Relations deleted with them.")
    concepts: int = Field(default=0, description="Concepts deleted with them (scope all).")
    principal: Principal | None = None
    task_id: int | None = None

    @property
    def audit(self) -> bool:
        """Not for ``sleep``: sleep makes an entry of each batch it deletes (``sleep.forget``:
        namespace, ids, text digests, run) durable before it deletes it."""
        return self.scope != "sleep"


class MemoryRecalled(Event):
    """A recall answered (published only while someone follows it: the temporal rules of a
    policy, a client). The request's own audit entry records the recall, so this one is not."""

    topic = "memory.recalled"
    namespace: str
    ids: list[str] = Field(description="The ids of the episodes returned, best first.")
    tags: list[str] = Field(description="Every tag carried by an episode returned (sorted, once each).")
    principal: Principal | None = None
    task_id: int | None = None

    @property
    def audit(self) -> bool:
        return False


class MemoryGraphUpdated(Event):
    topic = "memory.graph.updated"
    namespace: str
    concepts: list[str] = Field(description="Ids of concepts created.")
    relations: list[str] = Field(description="Ids of relations created.")
    retracted: list[str] = Field(description="Ids of relations retracted.")
    principal: Principal | None = None
    task_id: int | None = None


class MemoryIndexRebuilt(Event):
    """A namespace's vector index was built anew (start-up repair, HNSW conversion, compaction)."""

    topic = "memory.index.rebuilt"
    namespace: str
    kind: str
    vectors: int
    seconds: float
    reason: str


MEMORY_EVENTS: tuple[type[Event], ...] = (
    MemoryRemembered, MemoryForgotten, MemoryRecalled, MemoryGraphUpdated, MemoryIndexRebuilt
)
