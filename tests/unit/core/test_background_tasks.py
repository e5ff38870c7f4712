"""A part's background tasks: supervised failures, restarts, and a stop that ends everything."""

from __future__ import annotations

import anyio
import pytest

from engram import lifecycle
from engram.lifecycle import BackgroundTasks


async def test_a_supervised_failure_is_logged_and_ends_only_that_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "RESTART_PAUSE", 0.0)
    background = BackgroundTasks("test")
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

    await background.start()
    background.spawn(once, "once")
    background.spawn(again, "again", restart=True)
    with anyio.fail_after(5):
        await survivor.wait()
    await background.stop()
    assert runs == {"once": 1, "again": 3} and not background.running


async def test_stop_cancels_what_still_runs_and_can_be_called_twice() -> None:
    background = BackgroundTasks("test")
    cancelled = anyio.Event()

    async def forever() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    await background.start()
    background.start_soon(forever, name="forever")
    await anyio.sleep(0)
    await background.stop()
    await background.stop()
    assert cancelled.is_set()
