"""The lifecycle kit: a part's states, the order of its start and stop, supervised tasks."""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
import pytest

from engram import lifecycle
from engram.lifecycle import Health, Part, PartState


class Recorded(Part):
    """Opens a resource, starts a task, drains at close, and notes the order of it all."""

    def __init__(self, fail_in_setup: bool = False) -> None:
        super().__init__("recorded")
        self.fail_in_setup = fail_in_setup
        self.steps: list[str] = []

    async def setup(self, stack: AsyncExitStack) -> None:
        self.steps.append(f"setup while {self.state}")
        stack.callback(self.steps.append, "release")  # pushed first: runs last
        await self.start_tasks(stack)
        stack.push_async_callback(self._drain)  # pushed after the tasks: runs while they run
        self.start_soon(self._task, name="task")
        if self.fail_in_setup:
            raise RuntimeError("setup failed")

    async def _task(self) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            self.steps.append("task cancelled")

    async def _drain(self) -> None:
        await anyio.sleep(0)
        self.steps.append(f"drain while {self.state}")


async def test_start_and_stop_run_in_order_through_the_states() -> None:
    part = Recorded()
    assert part.state is PartState.CREATED
    async with part:
        assert part.state is PartState.RUNNING
        assert await part.health() == Health(True, "running") and await part.named_checks() == {}
    assert part.state is PartState.CLOSED and not (await part.health()).ok
    assert part.steps == ["setup while starting", "drain while stopping", "task cancelled", "release"]
    await part.aclose()  # closing again does nothing
    assert part.steps[-1] == "release" and part.state is PartState.CLOSED


async def test_a_setup_that_raises_releases_what_it_took_and_the_part_is_failed() -> None:
    part = Recorded(fail_in_setup=True)
    with pytest.raises(RuntimeError, match="setup failed"):
        async with part:
            pytest.fail("a part whose setup raised is not entered")
    assert part.state is PartState.FAILED
    assert part.steps == ["setup while starting", "drain while starting", "task cancelled", "release"]
    await part.aclose()
    assert part.state is PartState.FAILED


async def test_a_part_never_started_closes_as_closed() -> None:
    part = Part("idle")
    await part.aclose()
    assert part.state is PartState.CLOSED


async def test_a_supervised_failure_is_logged_and_ends_only_that_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "RESTART_PAUSE", 0.0)
    runs = {"once": 0, "again": 0}
    survivor = anyio.Event()

    async def once() -> None:
        runs["once"] += 1
        raise RuntimeError("boom")

    async def again() -> None:
        runs["again"] += 1
        if runs["again"] < 3:
            raise RuntimeError("boom")
        survivor.set()

    class Supervised(Part):
        async def setup(self, stack: AsyncExitStack) -> None:
            await self.start_tasks(stack)
            self.spawn(once, "once")
            self.spawn(again, "again", restart=True)

    async with Supervised("test") as part:
        with anyio.fail_after(5):
            await survivor.wait()
        assert part.state is PartState.RUNNING  # the failures did not end the part
    assert runs == {"once": 1, "again": 3}
