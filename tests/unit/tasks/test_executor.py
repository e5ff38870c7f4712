"""The executor with tools of the test's own: steps run after their needs with references
filled in, failures and limits end a task with the right error, cancel reaches the call in
flight, a full queue refuses, a task cut short by a stop goes on at its first unfinished step
after the next start, and a client sees only its own tasks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from engram.bus import EventBus
from engram.errors import NotFound, Overloaded
from engram.principal import Principal
from engram.server.methods import RequestContext
from engram.storage import Database
from engram.tasks.api import TaskCancelParams, TaskGetParams, TaskListParams, TaskSubmitParams
from engram.tasks.events import TASK_EVENTS
from engram.tasks.service import Tasks
from engram.tasks.settings import TaskSettings

OWNER = Principal(uid=os.getuid(), gid=os.getgid(), pid=1)
OTHER = Principal(uid=os.getuid() + 4242, gid=os.getgid(), pid=2)


class FakeTools:
    """Records every call; ``held`` tools wait for ``release`` (and note being cancelled)."""

    names = frozenset({"put", "find", "slow", "big", "broken"})

    def __init__(self, held: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[str, dict[str, Any], int]] = []
        self.held = held
        self.release = anyio.Event()
        self.waiting = anyio.Event()
        self.cancelled = 0

    def takes_namespace(self, tool: str) -> bool:
        return tool == "find"

    def idempotent(self, tool: str) -> bool:
        return tool in ("find", "slow")

    async def call(self, tool: str, args: dict[str, Any], principal: Principal) -> Any:
        self.calls.append((tool, args, principal.uid))
        if tool in self.held:
            self.waiting.set()
            try:
                with anyio.fail_after(30):
                    await self.release.wait()
            except anyio.get_cancelled_exc_class():
                self.cancelled += 1
                raise
        if tool == "broken":
            raise NotFound("nothing there", reason="gone", id="x")
        if tool == "big":
            return {"blob": "x" * 4096}
        if tool == "put":
            return {"ids": [f"id-{len(self.calls)}"]}
        return {"hits": [{"id": args.get("id"), "namespace": args.get("namespace")}]}


def _ctx(principal: Principal = OWNER) -> RequestContext:
    return RequestContext(principal=principal, connection=None, request=1)  # type: ignore[arg-type]


async def _database(path: Path) -> None:
    async with Database(path):
        pass


async def _until_ended(tasks: Tasks, task_id: str, principal: Principal = OWNER) -> Any:
    with anyio.fail_after(10):
        while True:
            result = await tasks.get(_ctx(principal), TaskGetParams(task_id=task_id, outputs=True))
            if result.task.state in ("done", "failed", "cancelled"):
                return result
            await anyio.sleep(0.01)


def _settings(**overrides: Any) -> TaskSettings:
    return TaskSettings(**{"max_output_bytes": 1024, **overrides})


PLAN = {"steps": [
    {"id": "a", "tool": "put", "args": {"text": "t"}},
    {"id": "b", "tool": "find", "args": {"id": {"$from": "a.ids.0"}}, "needs": ["a"]},
    {"id": "c", "tool": "find", "args": {"id": "given", "namespace": "own"}, "needs": ["a"]},
]}


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "engram.db"
    await _database(path)
    return path


async def test_steps_run_after_their_needs_with_references_and_the_namespace_filled_in(db):
    tools = FakeTools()
    bus = EventBus(TASK_EVENTS)
    events = bus.subscribe(["task.*"])
    async with Tasks(_settings(), db, tools, bus, owner_uid=OWNER.uid) as tasks:
        submitted = await tasks.submit(_ctx(), TaskSubmitParams(plan=PLAN, namespace="ns1"))
        result = await _until_ended(tasks, submitted.task_id)
    seen = []
    while (event := events.receive_nowait()) is not None:
        seen.append((event.topic, getattr(event, "step", None), event.state, event.uid))
    assert seen == [
        *[("task.step", step, state, OWNER.uid) for step in "abc" for state in ("running", "done")],
        ("task.ended", None, "done", OWNER.uid),
    ]
    assert result.task.state == "done" and result.task.steps_done == 3
    assert tools.calls == [
        ("put", {"text": "t"}, OWNER.uid),
        ("find", {"id": "id-1", "namespace": "ns1"}, OWNER.uid),
        ("find", {"id": "given", "namespace": "own"}, OWNER.uid),  # a namespace of its own stays
    ]
    assert [step.output for step in result.steps] == [
        {"ids": ["id-1"]}, {"hits": [{"id": "id-1", "namespace": "ns1"}]}, {"hits": [{"id": "given", "namespace": "own"}]},
    ]
    assert len({step.output_hash for step in result.steps}) == 3


@pytest.mark.parametrize(
    ("tool", "code", "reason"),
    [("broken", -32002, "gone"), ("big", -32007, "output_too_large")],
)
async def test_a_failed_step_fails_the_task_and_skips_the_rest(db, tool, code, reason):
    tools = FakeTools()
    plan = {"steps": [
        {"id": "a", "tool": "put"},
        {"id": "b", "tool": tool, "needs": ["a"]},
        {"id": "c", "tool": "put", "needs": ["b"]},
    ]}
    async with Tasks(_settings(), db, tools, EventBus(TASK_EVENTS)) as tasks:
        result = await _until_ended(tasks, (await tasks.submit(_ctx(), TaskSubmitParams(plan=plan))).task_id)
    assert result.task.state == "failed"
    assert [step.state for step in result.steps] == ["done", "failed", "skipped"]
    error = result.steps[1].error
    assert (error.code, error.reason) == (code, reason) and result.task.error == error
    assert [call[0] for call in tools.calls] == ["put", tool]


async def test_a_step_past_its_timeout_fails_and_its_call_is_cancelled(db):
    tools = FakeTools(held=frozenset({"slow"}))
    async with Tasks(_settings(), db, tools, EventBus(TASK_EVENTS)) as tasks:
        plan = {"steps": [{"id": "s", "tool": "slow", "timeout": 0.05}]}
        result = await _until_ended(tasks, (await tasks.submit(_ctx(), TaskSubmitParams(plan=plan))).task_id)
    assert result.task.state == "failed" and tools.cancelled == 1
    assert (result.steps[0].error.code, result.steps[0].error.reason) == (-32004, "step_timeout")


async def test_cancel_reaches_the_call_in_flight_and_a_queued_task_never_starts(db):
    tools = FakeTools(held=frozenset({"slow"}))
    bus = EventBus(TASK_EVENTS)
    events = bus.subscribe(["task.ended"])
    async with Tasks(_settings(queue=1, concurrency=1), db, tools, bus) as tasks:
        plan = {"steps": [{"id": "s", "tool": "slow"}, {"id": "t", "tool": "put", "needs": ["s"]}]}
        running = (await tasks.submit(_ctx(), TaskSubmitParams(plan=plan))).task_id
        with anyio.fail_after(10):
            await tools.waiting.wait()
        queued = (await tasks.submit(_ctx(), TaskSubmitParams(plan=plan))).task_id
        with pytest.raises(Overloaded) as caught:
            await tasks.submit(_ctx(), TaskSubmitParams(plan=plan))
        assert caught.value.reason == "queue_full"
        assert (await tasks.cancel(_ctx(), TaskCancelParams(task_id=queued))).state == "cancelled"
        assert (await tasks.cancel(_ctx(), TaskCancelParams(task_id=running))).state == "cancelled"
        ran = await tasks.get(_ctx(), TaskGetParams(task_id=running))
        never = await tasks.get(_ctx(), TaskGetParams(task_id=queued))
        # the worker is free: the queued task was skipped, a new one runs
        tools.release.set()
        after = await _until_ended(tasks, (await tasks.submit(_ctx(), TaskSubmitParams(plan=plan))).task_id)
    assert tools.cancelled == 1
    assert [step.state for step in ran.steps] == ["cancelled", "skipped"] and ran.task.error.reason == "cancelled"
    assert [step.state for step in never.steps] == ["skipped", "skipped"] and never.task.started_at is None
    assert after.task.state == "done"
    assert [call[0] for call in tools.calls] == ["slow", "slow", "put"]
    ended = [(e.task_id, e.state, e.reason) for e in iter(events.receive_nowait, None)]
    assert ended == [(queued, "cancelled", "cancelled"), (running, "cancelled", "cancelled"), (after.task.task_id, "done", None)]


async def test_a_task_cut_short_goes_on_at_its_first_unfinished_step_after_a_restart(db):
    first = FakeTools(held=frozenset({"slow"}))
    plan = {"steps": [
        {"id": "a", "tool": "put"},
        {"id": "s", "tool": "slow", "needs": ["a"]},
        {"id": "b", "tool": "find", "args": {"id": {"$from": "a.ids.0"}}, "needs": ["s"]},
    ]}
    async with Tasks(_settings(), db, first, EventBus(TASK_EVENTS)) as tasks:
        task_id = (await tasks.submit(_ctx(), TaskSubmitParams(plan=plan))).task_id
        with anyio.fail_after(10):
            await first.waiting.wait()
    # the stop cancelled the step in flight without recording the task as cancelled
    assert first.cancelled == 1 and [call[0] for call in first.calls] == ["put", "slow"]

    second = FakeTools()
    async with Tasks(_settings(), db, second, EventBus(TASK_EVENTS)) as tasks:
        result = await _until_ended(tasks, task_id)
    assert result.task.state == "done"
    # a ran once, before the stop; s ran again (it never finished); b used a's stored output
    assert [(tool, args) for tool, args, _ in second.calls] == [("slow", {}), ("find", {"id": "id-1"})]
    assert result.steps[2].output == {"hits": [{"id": "id-1", "namespace": None}]}


async def test_a_client_sees_only_its_own_tasks_and_the_owner_sees_all(db):
    async with Tasks(_settings(), db, FakeTools(), EventBus(TASK_EVENTS), owner_uid=OWNER.uid) as tasks:
        mine = (await tasks.submit(_ctx(OWNER), TaskSubmitParams(plan=PLAN))).task_id
        theirs = (await tasks.submit(_ctx(OTHER), TaskSubmitParams(plan=PLAN))).task_id
        await _until_ended(tasks, mine)
        await _until_ended(tasks, theirs, OTHER)
        with pytest.raises(NotFound):
            await tasks.get(_ctx(OTHER), TaskGetParams(task_id=mine))
        with pytest.raises(NotFound):
            await tasks.cancel(_ctx(OTHER), TaskCancelParams(task_id=mine))
        assert [t.task_id for t in (await tasks.list_tasks(_ctx(OTHER), TaskListParams())).tasks] == [theirs]
        everyone = (await tasks.list_tasks(_ctx(OWNER), TaskListParams(states=["done"]))).tasks
        assert {t.task_id for t in everyone} == {mine, theirs}
        assert (await tasks.get(_ctx(OWNER), TaskGetParams(task_id=theirs))).task.state == "done"
