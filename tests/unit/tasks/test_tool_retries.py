"""Retries and circuit breakers of the executor's tool calls, with a tool that fails a given
number of times: an idempotent tool is called again after a retryable error, with growing
pauses; a tool that is not idempotent, or an error that is not retryable, ends the step at the
first call; a tool's breaker opens after its failures in a row, fails steps at once while open,
and lets one probe through after its cool-down. Pauses and the breaker's clock are fakes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
from engram.bus import EventBus
from engram.errors import NotFound, RPCError, Unavailable
from engram.principal import Principal
from engram.server.methods import Method, MethodTable, Params, RequestContext
from engram.tasks.api import TaskGetParams, TaskSubmitParams
from engram.tasks.events import TASK_EVENTS
from engram.tasks.service import Tasks
from engram.tasks.settings import TaskSettings
from engram.tasks.tools import MethodTools
from pydantic import BaseModel

OWNER = Principal(uid=os.getuid(), gid=os.getgid(), pid=1)


class FlakyTools:
    """``read`` is idempotent, ``write`` is not; each fails with ``error`` while ``failures`` last.
    ``hang`` never answers."""

    names = frozenset({"read", "write", "hang"})

    def __init__(self, failures: int, error: RPCError | None = None) -> None:
        self.failures = failures
        self.error = error or Unavailable("down for now", reason="provider_down")
        self.calls = 0

    def takes_namespace(self, tool: str) -> bool:
        return False

    def idempotent(self, tool: str) -> bool:
        return tool == "read"

    async def call(self, tool: str, args: dict[str, Any], principal: Principal) -> Any:
        self.calls += 1
        if tool == "hang":
            await anyio.Event().wait()
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        return {"calls": self.calls}


class Pauses:
    """Records the retry pauses instead of waiting them out."""

    def __init__(self) -> None:
        self.taken: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.taken.append(seconds)


def _ctx() -> RequestContext:
    return RequestContext(principal=OWNER, connection=None, request=1)  # type: ignore[arg-type]


async def _run(tasks: Tasks, tool: str) -> Any:
    submitted = await tasks.submit(_ctx(), TaskSubmitParams(plan={"steps": [{"id": "s", "tool": tool}]}))
    with anyio.fail_after(10):
        while True:
            result = await tasks.get(_ctx(), TaskGetParams(task_id=submitted.task_id, outputs=True))
            if result.task.state in ("done", "failed", "cancelled"):
                return result
            await anyio.sleep(0.01)


def _tasks(db: Path, tools: FlakyTools, bus: EventBus | None = None, pauses: Pauses | None = None,
           clock: list[float] | None = None, **settings: Any) -> Tasks:
    now = clock if clock is not None else [0.0]
    return Tasks(TaskSettings(**settings), db, tools, bus or EventBus(TASK_EVENTS),  # type: ignore[arg-type]
                 clock=lambda: now[0], sleep=pauses or Pauses(), jitter=lambda: 0.0)


async def test_an_idempotent_tool_is_retried_with_growing_pauses_and_succeeds(db):
    tools, pauses = FlakyTools(failures=2), Pauses()
    bus = EventBus(TASK_EVENTS)
    events = bus.subscribe(["task.step"])
    async with _tasks(db, tools, bus, pauses, retries=2, retry_backoff=1.0) as tasks:
        result = await _run(tasks, "read")
    assert result.task.state == "done" and result.steps[0].output == {"calls": 3}
    assert result.steps[0].attempts == 3
    assert tools.calls == 3
    assert pauses.taken == [0.5, 1.0]  # backoff 1 s then 2 s, jitter 0: half of each
    seen = []
    while (event := events.receive_nowait()) is not None:
        seen.append((event.state, event.attempts))
    assert seen == [("running", None), ("done", 3)]


async def test_retries_end_when_they_are_used_up_and_the_error_says_how_many_calls(db):
    tools = FlakyTools(failures=10)
    async with _tasks(db, tools, retries=2, retry_backoff=0.01) as tasks:
        result = await _run(tasks, "read")
    error = result.steps[0].error
    assert result.task.state == "failed" and tools.calls == 3
    assert (error.code, error.reason, error.data["attempts"]) == (-32005, "provider_down", 3)
    assert result.steps[0].attempts == 3


async def test_a_tool_that_is_not_idempotent_is_called_once(db):
    tools, pauses = FlakyTools(failures=1), Pauses()
    async with _tasks(db, tools, pauses=pauses, retries=2) as tasks:
        result = await _run(tasks, "write")
    assert result.task.state == "failed" and tools.calls == 1 and pauses.taken == []
    assert result.steps[0].error.data["attempts"] == result.steps[0].attempts == 1


async def test_an_error_that_is_not_retryable_is_not_retried(db):
    tools = FlakyTools(failures=1, error=NotFound("no such episode", reason="unknown_id"))
    async with _tasks(db, tools, retries=2) as tasks:
        result = await _run(tasks, "read")
    error = result.steps[0].error
    assert tools.calls == 1 and (error.code, error.reason) == (-32002, "unknown_id")


async def test_no_retry_is_started_that_the_step_timeout_would_cut_short(db):
    tools, pauses = FlakyTools(failures=1), Pauses()
    async with _tasks(db, tools, pauses=pauses, retries=2, retry_backoff=600.0, step_timeout=5.0) as tasks:
        result = await _run(tasks, "read")
    assert tools.calls == 1 and pauses.taken == []
    assert result.steps[0].error.reason == "provider_down"  # the tool's error, not a step timeout


async def test_the_breaker_opens_after_failures_in_a_row_fails_fast_then_lets_one_probe_through(db):
    tools, clock = FlakyTools(failures=3), [100.0]
    async with _tasks(db, tools, clock=clock, retries=0, breaker_failures=3, breaker_cooldown=30.0) as tasks:
        for _ in range(3):
            assert (await _run(tasks, "read")).steps[0].error.reason == "provider_down"
        assert tasks.breaker("read").state == "open"
        refused = await _run(tasks, "read")
        error = refused.steps[0].error
        assert (error.code, error.reason, error.data["tool"]) == (-32005, "breaker_open", "read")
        assert tools.calls == 3 and refused.steps[0].attempts == 0  # refused without a call
        clock[0] += 30.0
        assert tasks.breaker("read").state == "half_open"
        probe = await _run(tasks, "read")
        assert probe.task.state == "done" and tools.calls == 4
        assert tasks.breaker("read").state == "closed"


async def test_a_failed_probe_opens_the_breaker_again(db):
    tools, clock = FlakyTools(failures=3), [0.0]
    async with _tasks(db, tools, clock=clock, retries=0, breaker_failures=2, breaker_cooldown=10.0) as tasks:
        for _ in range(2):
            await _run(tasks, "read")
        clock[0] += 10.0
        assert (await _run(tasks, "read")).steps[0].error.reason == "provider_down"  # the probe failed
        assert tasks.breaker("read").state == "open" and tools.calls == 3
        assert (await _run(tasks, "read")).steps[0].error.reason == "breaker_open"


async def test_errors_that_are_not_retryable_leave_the_breaker_closed(db):
    tools = FlakyTools(failures=5, error=NotFound("no such episode", reason="unknown_id"))
    async with _tasks(db, tools, retries=0, breaker_failures=2) as tasks:
        for _ in range(3):
            await _run(tasks, "read")
    assert tasks.breaker("read").state == "closed" and tools.calls == 3


async def test_a_step_timeout_counts_as_a_failure_of_the_tool(db):
    tools = FlakyTools(failures=0)
    async with _tasks(db, tools, retries=0, breaker_failures=1, step_timeout=0.05) as tasks:
        assert (await _run(tasks, "hang")).steps[0].error.reason == "step_timeout"
        assert tasks.breaker("hang").state == "open"
        assert (await _run(tasks, "hang")).steps[0].error.reason == "breaker_open"
    assert tools.calls == 1


def test_built_in_reads_and_memory_remember_are_idempotent_other_methods_are_not():
    async def handler(*args: Any) -> None:
        return None

    table = MethodTable()
    table.add([
        Method(name=name, handler=handler, params=Params, result=BaseModel, summary=name, read_only=read_only)
        for name, read_only in [("memory.recall", True), ("memory.remember", False), ("route.ask", False)]
    ])
    tools = MethodTools(lambda *args: handler(), table)  # type: ignore[arg-type]
    assert [tools.idempotent(name) for name in ("memory.recall", "memory.remember", "route.ask", "infer.embed")] == [
        True, True, False, False,
    ]
