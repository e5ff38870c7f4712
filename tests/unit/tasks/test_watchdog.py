"""The executor's watchdog and heartbeats, with tools that misbehave the way outside code can: a
call that swallows its cancellation and goes on for a while. The watchdog gives such a step up
once it is ``tasks.stuck_grace`` past due, fails its task (``stuck``), and starts a worker in the
place of the one still inside the call, so other tasks run meanwhile; when the call finally
returns, the record the watchdog made stands. While a step runs, task.heartbeat events come."""

from __future__ import annotations

import os
from typing import Any

import anyio
from engram.bus import EventBus
from engram.principal import Principal
from engram.server.methods import RequestContext
from engram.tasks.api import TaskCancelParams, TaskGetParams, TaskGetResult, TaskSubmitParams
from engram.tasks.events import TASK_EVENTS
from engram.tasks.service import Tasks
from engram.tasks.settings import TaskSettings

OWNER = Principal(uid=os.getuid(), gid=os.getgid(), pid=1)


class StubbornTools:
    """``stubborn`` goes on for ``seconds`` whatever cancels it; ``quick`` answers at once."""

    names = frozenset({"stubborn", "quick"})

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.returned = anyio.Event()

    def takes_namespace(self, tool: str) -> bool:
        return False

    def idempotent(self, tool: str) -> bool:
        return False

    async def call(self, tool: str, args: dict[str, Any], principal: Principal) -> Any:
        if tool == "stubborn":
            with anyio.CancelScope(shield=True):  # the cancel reaches it only when this ends
                await anyio.sleep(self.seconds)
            self.returned.set()
        return {"tool": tool}


def _ctx() -> RequestContext:
    return RequestContext(principal=OWNER, connection=None, request=1)  # type: ignore[arg-type]


async def _submit(tasks: Tasks, tool: str, **step: Any) -> str:
    plan = {"steps": [{"id": "s", "tool": tool, **step}]}
    return (await tasks.submit(_ctx(), TaskSubmitParams(plan=plan))).task_id


async def _ended(tasks: Tasks, task_id: str) -> TaskGetResult:
    with anyio.fail_after(10):
        while True:
            result = await tasks.get(_ctx(), TaskGetParams(task_id=task_id))
            if result.task.state in ("done", "failed", "cancelled"):
                return result
            await anyio.sleep(0.01)


async def test_a_stuck_step_is_given_up_and_another_worker_takes_its_place(db):
    tools = StubbornTools(seconds=3.0)
    bus = EventBus(TASK_EVENTS)
    settings = TaskSettings(concurrency=1, heartbeat=0.05, stuck_grace=0.2)
    async with Tasks(settings, db, tools, bus) as tasks:  # type: ignore[arg-type]
        stuck = await _submit(tasks, "stubborn", timeout=0.1)
        result = await _ended(tasks, stuck)
        assert not tools.returned.is_set()  # given up while the call still went on
        error = result.steps[0].error
        assert result.task.state == "failed" and result.steps[0].state == "failed"
        assert (error.code, error.reason) == (-32004, "stuck") and error.data["overdue_s"] >= 0.2
        assert result.task.error.reason == "stuck"

        # the one worker is inside the stubborn call; its replacement runs the next task now
        after = await _ended(tasks, await _submit(tasks, "quick"))
        assert after.task.state == "done" and not tools.returned.is_set()

        with anyio.fail_after(10):
            await tools.returned.wait()
        await anyio.sleep(0.1)  # the first worker comes back from the call: it records nothing
        later = await tasks.get(_ctx(), TaskGetParams(task_id=stuck))
        assert later.task.finished_at == result.task.finished_at and later.steps[0].state == "failed"
        assert later.steps[0].output_hash is None


async def test_a_cancel_that_the_step_does_not_heed_ends_in_stuck_after_the_grace(db):
    tools = StubbornTools(seconds=3.0)
    settings = TaskSettings(concurrency=1, heartbeat=0.05, stuck_grace=0.2, cancel_wait=5.0)
    async with Tasks(settings, db, tools, EventBus(TASK_EVENTS)) as tasks:  # type: ignore[arg-type]
        task_id = await _submit(tasks, "stubborn")  # the default step timeout: 60 s
        with anyio.fail_after(5):
            while (await tasks.get(_ctx(), TaskGetParams(task_id=task_id))).steps[0].state != "running":
                await anyio.sleep(0.01)
        cancelled = await tasks.cancel(_ctx(), TaskCancelParams(task_id=task_id))
        assert cancelled.state == "failed" and not tools.returned.is_set()
        result = await tasks.get(_ctx(), TaskGetParams(task_id=task_id))
        assert result.steps[0].error.reason == "stuck"


async def test_a_running_step_sends_heartbeats(db):
    tools = StubbornTools(seconds=0.5)
    bus = EventBus(TASK_EVENTS)
    beats = bus.subscribe(["task.heartbeat"])
    settings = TaskSettings(heartbeat=0.05, stuck_grace=10.0)
    async with Tasks(settings, db, tools, bus) as tasks:  # type: ignore[arg-type]
        task_id = await _submit(tasks, "stubborn")
        assert (await _ended(tasks, task_id)).task.state == "done"
    seen = []
    while (event := beats.receive_nowait()) is not None:
        seen.append(event)
    assert len(seen) >= 3 and {event.task_id for event in seen} == {task_id}
    # A beat that falls before the step starts or after it ends says so (step None).
    in_step = [event for event in seen if event.step is not None]
    assert {event.step for event in in_step} == {"s"} and len(in_step) >= 3
    assert in_step[-1].elapsed > in_step[0].elapsed >= 0
