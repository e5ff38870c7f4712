"""A real memory part and audit log on one SQLite database in a temporary folder, and stage
contexts over them (memory through its consolidation interface, sleep's own tables through
sleep's connection), for the stage tests (the fake clock is the only seam faked; the audit log
is the real one, so its entries can be read back)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engram.audit.events import AUDIT_EVENTS
from engram.audit.log import AuditLog
from engram.audit.settings import AuditSettings
from engram.audit.store import AuditStore
from engram.bus import EventBus
from engram.bus.events import CORE_EVENTS
from engram.memory.consolidation import MemoryConsolidation
from engram.memory.events import MEMORY_EVENTS
from engram.memory.service import Memory
from engram.memory.settings import MemorySettings
from engram.observability.metrics import Metrics
from engram.sleep.db import SleepDB
from engram.sleep.settings import SleepSettings
from engram.sleep.stage import Pacer, StageContext
from engram.storage import Database

NS = "uid:1000"


class Clock:
    """Wall-clock seconds that move only when told."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class StopAfter:
    """A pacer that stops the run at its n-th step, as the runner does when the daemon stops."""

    def __init__(self, n: int) -> None:
        self.n = n

    async def step(self) -> None:
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt  # not an Exception: nothing in the stage may swallow it

    def busy(self) -> bool:
        return False


@dataclass
class Env:
    memory: Memory
    audit: AuditLog | None
    db_path: Path
    clock: Clock
    sleep_db: SleepDB

    def ctx(self, settings: SleepSettings, run_id: int = 1, stage: str = "", saved: dict[str, Any] | None = None,
            pacer: Pacer | None = None, namespace: str = NS) -> StageContext:
        return StageContext(
            run_id=run_id, namespace=namespace, settings=settings, store=MemoryConsolidation(self.memory), db=self.sleep_db,
            audit=self.audit, clock=self.clock, saved=saved, stage=stage, pacer=pacer,
        )

    def audit_entries(self, kind: str) -> list[dict[str, Any]]:
        with AuditStore(self.db_path, readonly=True) as store:
            entries = [json.loads(data) for _, data, _ in store.iter_entries()]
        return [e for e in entries if e["kind"] == kind]

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.memory.db.transaction() as conn:
            return conn.execute(query, args).fetchall()


@asynccontextmanager
async def memory_env(tmp_path: Path, now: float, with_audit: bool = True, **memory_settings: Any) -> AsyncIterator[Env]:
    db_path = tmp_path / "engram.db"
    db = Database(db_path)
    await db.open()
    bus = EventBus((*CORE_EVENTS, *AUDIT_EVENTS, *MEMORY_EVENTS))
    memory_settings.setdefault("extraction", {"enabled": False})  # no spaCy, no graph facts of its own
    memory = Memory(MemorySettings(**memory_settings), tmp_path, db_path, bus, Metrics())
    sleep_db = SleepDB(db_path)
    sleep_db.open()
    try:
        if with_audit:
            async with AuditLog(AuditSettings(), tmp_path, db_path, bus, Metrics()) as audit, memory:
                yield Env(memory, audit, db_path, Clock(now), sleep_db)
        else:
            async with memory:
                yield Env(memory, None, db_path, Clock(now), sleep_db)
    finally:
        sleep_db.close()
        await db.aclose()

