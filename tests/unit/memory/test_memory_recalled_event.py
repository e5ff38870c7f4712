"""memory.recalled: published for a follower only (the temporal policy rules), with the tags of
what was returned, and never an audit entry."""

from __future__ import annotations

from pathlib import Path

from engram.bus import EventBus
from engram.memory.api import RecallParams, RememberParams
from engram.memory.events import MEMORY_EVENTS
from engram.memory.service import Memory
from engram.memory.settings import MemorySettings
from engram.observability.metrics import Metrics
from engram.storage import Database

from tests.unit.memory.conftest import HashEmbedder, ctx


async def test_a_recall_is_published_only_while_followed(tmp_path: Path) -> None:
    db = Database(tmp_path / "engram.db")
    await db.open()
    bus = EventBus(MEMORY_EVENTS)
    memory = Memory(
        MemorySettings(extraction={"enabled": False}), tmp_path, tmp_path / "engram.db", bus, Metrics(), embedder=HashEmbedder(),
        owner_uid=0,
    )
    try:
        async with memory:
            await memory.remember(ctx(), RememberParams.model_validate({"items": [
                {"text": "blood pressure reading", "tags": ["health", "daily"]},
                {"text": "quarterly report draft", "tags": ["work"]},
            ]}))
            published = bus.published
            await memory.recall(ctx(), RecallParams(query="blood pressure", k=2))
            assert bus.published == published  # nobody follows memory.recalled: not even built
            followed = bus.subscribe(["memory.recalled"], 10)
            hits = (await memory.recall(ctx(request=7), RecallParams(query="blood pressure", k=2))).hits
            event = followed.receive_nowait()
            assert event is not None and event.topic == "memory.recalled"
            assert event.ids == [h.id for h in hits] and event.tags == ["daily", "health", "work"]
            assert event.principal.uid == 1000 and event.task_id == 7 and event.audit is False
    finally:
        await db.aclose()
