"""The Sleep part in process: one run at a time, yielding to foreground work, the report and its
events, dream replay's rollback, recovery of a run cut short, the schedule."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import threading
import time
from typing import Any, ClassVar

import anyio
import numpy as np
import pytest
from engram.bus import EventBus
from engram.bus.events import CORE_EVENTS
from engram.errors import Conflict
from engram.memory.api import RememberParams
from engram.memory.consolidation import MemoryConsolidation
from engram.memory.events import MEMORY_EVENTS
from engram.memory.service import Memory
from engram.memory.settings import MemorySettings
from engram.observability.metrics import Metrics
from engram.sleep import stages as stage_registry
from engram.sleep.events import SLEEP_EVENTS
from engram.sleep.service import Sleep
from engram.sleep.settings import SleepSettings
from engram.sleep.stage import StageContext
from engram.storage import Database

from tests.unit.memory.conftest import ctx as rpc_ctx

DIM = 8


class Activity:
    def __init__(self) -> None:
        self.foreground = 0
        self.last_foreground = time.monotonic() - 3600


class Events:
    def __init__(self, bus: EventBus) -> None:
        self.seen: list[Any] = []
        original = bus.publish

        def publish(event: Any) -> None:
            self.seen.append(event)
            original(event)

        bus.publish = publish  # type: ignore[method-assign]

    def topics(self) -> list[str]:
        return [e.topic for e in self.seen]


async def with_sleep(tmp_path, settings: dict[str, Any], body) -> None:
    db = Database(tmp_path / "engram.db")
    await db.open()
    bus = EventBus((*CORE_EVENTS, *MEMORY_EVENTS, *SLEEP_EVENTS))
    events = Events(bus)
    memory = Memory(MemorySettings(extraction={"enabled": False}), tmp_path, tmp_path / "engram.db", bus, Metrics(), embedder=None)
    try:
        async with memory:
            rng = np.random.default_rng(0)
            vecs = rng.normal(size=(40, DIM))
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            await memory.remember(rpc_ctx(), RememberParams.model_validate(
                {"items": [{"text": f"item {i}", "vector": v.tolist()} for i, v in enumerate(vecs)]}))
            sleep = Sleep(SleepSettings.model_validate({"enabled": False, **settings}), MemoryConsolidation(memory),
                          tmp_path / "engram.db", None, None, bus, Metrics(), activity=Activity())
            async with sleep:
                await body(sleep, memory, events)
    finally:
        await db.aclose()


async def wait_until(predicate, what: str) -> None:
    with anyio.fail_after(20, shield=False):
        while not predicate():
            await anyio.sleep(0.01)


async def test_a_run_waits_while_foreground_requests_are_in_flight(tmp_path):
    async def body(sleep: Sleep, memory, events) -> None:
        sleep.activity.foreground = 1  # a request is being served
        run = await sleep.start("manual", stages=["importance"])
        with pytest.raises(Conflict) as caught:
            await sleep.start("manual")
        assert caught.value.data == {"reason": "sleep_running", "run": run.id}
        await wait_until(lambda: sleep.status().state == "yielding", "the run to yield")
        await anyio.sleep(0.3)
        status = sleep.status()
        assert status.state == "yielding" and (status.progress is None or status.progress.done == 0)  # no work meanwhile
        sleep.activity.foreground = 0
        sleep.activity.last_foreground = time.monotonic() - 3600
        await run.done.wait()
        status = sleep.status()
        assert status.state == "idle" and status.last_report.outcome == "completed"
        assert status.preemptions >= 1
        assert "sleep.preempted" in events.topics()

    await with_sleep(tmp_path, {"importance": {"batch": 5}, "max_yield": 600}, body)


async def test_a_steady_stream_of_requests_slows_a_run_but_does_not_starve_it(tmp_path):
    async def body(sleep: Sleep, memory, events) -> None:
        sleep.activity.foreground = 1  # never idle
        run = await sleep.start("manual", stages=["importance"])
        await run.done.wait()
        assert sleep.status().last_report.outcome == "completed" and run.preemptions >= 8

    await with_sleep(tmp_path, {"importance": {"batch": 5}, "max_yield": 0.01}, body)


class WorseReplay:
    """A replay stage that always finds recall worse."""

    name: ClassVar[str] = "replay"
    snapshots = 0

    @classmethod
    async def snapshot(cls, ctx: StageContext) -> dict[str, Any]:
        cls.snapshots += 1
        return {}

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        return {"worse": True, "drop": 0.5}

    async def rollback(self, ctx: StageContext) -> dict[str, Any]:
        return {}


async def test_worse_replay_rolls_back_importance_and_clustering(tmp_path, monkeypatch):
    monkeypatch.setitem(stage_registry.REGISTRY, "replay", WorseReplay)

    async def body(sleep: Sleep, memory, events) -> None:
        run = await sleep.start("manual", stages=["importance", "clustering", "replay"])
        await run.done.wait()
        report = sleep.status().last_report
        assert report.outcome == "completed"
        flags = {(s.name, s.rolled_back) for s in report.stages}
        assert flags == {("importance", True), ("clustering", True), ("replay", False)}
        assert WorseReplay.snapshots == 1
        with memory.db.read() as conn:
            assert conn.execute("SELECT count(*) FROM memory_episodes WHERE salience IS NOT NULL").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM memory_concepts").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM memory_changes").fetchone()[0] == 0
        rolled = [e for e in events.seen if e.topic == "sleep.rolled_back"]
        assert len(rolled) == 1 and rolled[0].stages == ["clustering", "importance"]

    await with_sleep(tmp_path, {"clustering": {"min_cohesion": -1.0}}, body)


class WhereaboutsStage:
    """Records the thread and scheduling policy its units run with."""

    name: ClassVar[str] = "recalibration"
    seen: ClassVar[list[tuple[str, int]]] = []

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        for _ in range(2):
            self.seen.append(await ctx.thread(
                lambda: (threading.current_thread().name, os.sched_getscheduler(threading.get_native_id()))))
        return {}

    async def rollback(self, ctx: StageContext) -> dict[str, Any]:
        return {}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
async def test_a_runs_units_go_to_a_thread_of_its_own_at_idle_priority(tmp_path, monkeypatch):
    monkeypatch.setitem(stage_registry.REGISTRY, "recalibration", WhereaboutsStage)

    async def body(sleep: Sleep, memory, events) -> None:
        run = await sleep.start("manual", stages=["recalibration"])
        await run.done.wait()
        assert sleep.status().last_report.outcome == "completed"
        # at idle priority, or at the daemon's where a busy machine starved the idle thread
        assert WhereaboutsStage.seen and set(WhereaboutsStage.seen) <= {
            ("engram-sleep_0", os.SCHED_IDLE), ("engram-sleep-plain_0", os.sched_getscheduler(0))}
        assert not any(t.name.startswith("engram-sleep") for t in threading.enumerate())  # ended with the run
        units = {s.labels["thread"]: s.value for m in sleep.m_units.collect() for s in m.samples if s.name.endswith("_total")}
        assert sum(units.values()) == 2 and set(units) <= {"lowered", "daemon"}

    await with_sleep(tmp_path, {}, body)


async def test_a_run_cut_short_is_marked_interrupted_and_resumed(tmp_path):
    async def first(sleep: Sleep, memory, events) -> None:
        # what a killed process leaves behind: a run without an outcome, one finished stage, a cursor
        with memory.db.transaction() as conn:
            conn.execute("INSERT INTO sleep_runs (id, trigger, stages, started_at, report) VALUES (7, 'idle', ?, 1.0, ?)",
                         (json.dumps(["importance", "compaction"]), json.dumps({"run": 7, "trigger": "idle", "started_at": 1.0,
                                                                               "finished_at": None, "seconds": 0, "outcome": None,
                                                                               "stages": []})))
            conn.execute("INSERT INTO sleep_stage_done (run, namespace, stage, seconds, figures, done_at) "
                         "VALUES (7, 'uid:1000', 'importance', 1.5, '{\"scored\": 40}', 2.0)")

    await with_sleep(tmp_path, {}, first)

    async def second(sleep: Sleep, memory, events) -> None:
        last = sleep.status().last_report
        assert last.run == 7 and last.outcome == "interrupted"
        run = await sleep.start("manual", stages=["importance", "compaction"])
        await run.done.wait()
        report = sleep.status().last_report
        assert report.resumes == 7 and report.outcome == "completed"
        assert [(s.name, s.figures.get("scored")) for s in report.stages] == [("importance", 40), ("compaction", None)]
        reports = sleep._reports(5)
        assert [r["run"] for r in reports] == [run.id, 7]

    await with_sleep(tmp_path, {}, second)


async def test_the_schedule_names_the_next_local_time(tmp_path):
    async def body(sleep: Sleep, memory, events) -> None:
        base = dt.datetime(2030, 1, 1, 12, 0).astimezone().timestamp()
        assert sleep._schedule_after(base) == dt.datetime(2030, 1, 2, 3, 0).astimezone().timestamp()
        assert sleep._schedule_after(base - 12 * 3600 + 60) == dt.datetime(2030, 1, 1, 3, 0).astimezone().timestamp()

    await with_sleep(tmp_path, {"schedule": ["03:00"]}, body)


def test_schedule_times_are_checked():
    with pytest.raises(ValueError):
        SleepSettings.model_validate({"schedule": ["25:00"]})
