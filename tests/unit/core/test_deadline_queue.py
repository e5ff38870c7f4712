"""Deadlines: the earliest-deadline-first queue, and the inference batcher that serves from it."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest
from engram.deadlines import EdfQueue, QueueFull, RequestDeadline
from engram.errors import Timeout
from engram.inference.batching import Batcher


def take_all(queue: EdfQueue[Any]) -> list[Any]:
    items = []
    while True:
        try:
            items.append(queue.get_nowait())
        except anyio.WouldBlock:
            return items


async def test_the_earliest_deadline_goes_first_and_equals_in_order_of_arrival() -> None:
    queue: EdfQueue[str] = EdfQueue(10)
    now = time.monotonic()
    queue.put_nowait("late", now + 5)
    queue.put_nowait("undated", None)  # due 60 s from now
    queue.put_nowait("soon-1", now + 1)
    queue.put_nowait("soonest", now + 0.5)
    queue.put_nowait("soon-2", now + 1)
    assert take_all(queue) == ["soonest", "soon-1", "soon-2", "late", "undated"]


async def test_without_edf_the_queue_is_first_come_first_served() -> None:
    queue: EdfQueue[str] = EdfQueue(10, edf=False)
    now = time.monotonic()
    for name, due in [("late", now + 5), ("undated", None), ("soonest", now + 0.5)]:
        queue.put_nowait(name, due)
    assert take_all(queue) == ["late", "undated", "soonest"]


async def test_an_undated_item_is_due_undated_s_after_it_came_so_it_is_not_starved() -> None:
    queue: EdfQueue[str] = EdfQueue(10, undated_s=2.0)
    now = time.monotonic()
    queue.put_nowait("undated", None)
    queue.put_nowait("due later than it", now + 3)
    queue.put_nowait("due sooner", now + 1)
    assert take_all(queue) == ["due sooner", "undated", "due later than it"]


async def test_the_queue_is_bounded_and_ends_once_closed_and_empty() -> None:
    queue: EdfQueue[int] = EdfQueue(2)
    queue.put_nowait(1)
    queue.put_nowait(2)
    with pytest.raises(QueueFull):
        queue.put_nowait(3)
    queue.close()
    with pytest.raises(anyio.ClosedResourceError):
        queue.put_nowait(4)
    assert await queue.get() == 1  # what was queued can still be taken
    assert queue.drain() == [2]
    with pytest.raises(anyio.EndOfStream):
        await queue.get()


async def test_get_waits_for_an_item_and_close_wakes_it() -> None:
    queue: EdfQueue[int] = EdfQueue(2)
    got: list[Any] = []

    async def take() -> None:
        try:
            got.append(await queue.get())
            got.append(await queue.get())
        except anyio.EndOfStream:
            got.append("end")

    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        await anyio.sleep(0.01)
        queue.put_nowait(7)
        await anyio.sleep(0.01)
        queue.close()
    assert got == [7, "end"]


def test_a_deadline_counts_from_when_the_request_was_read() -> None:
    received = time.monotonic() - 0.2
    assert RequestDeadline.after(100, received).passed()
    later = RequestDeadline.after(10_000, received)
    assert not later.passed() and 9.5 < later.remaining() <= 9.8
    error = later.missed("batcher")
    assert isinstance(error, Timeout) and error.code == -32004
    assert error.data == {"reason": "deadline_missed", "deadline_ms": 10_000, "where": "batcher"}


class Gate:
    """A run_batch whose first call blocks until released, recording every batch."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.started.set()
            self.release.wait(10)
        return [f"ran {item}" for item in items]


async def run_behind_a_busy_batch(edf: bool, deadlines: dict[str, RequestDeadline | None]) -> tuple[Gate, dict[str, Any]]:
    """Item ``first`` runs alone and holds the batcher; the others queue behind it (in the
    dict's order), one row per batch; then the gate opens."""
    gate = Gate()
    b = Batcher("m", gate, max_batch=1, max_delay_s=0.0, queue_size=16, limiter=anyio.CapacityLimiter(1), edf=edf)
    outcomes: dict[str, Any] = {}

    async def submit(name: str, deadline: RequestDeadline | None) -> None:
        try:
            outcomes[name] = await b.submit(name, 1, deadline)
        except Timeout as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(b.run)
        tg.start_soon(submit, "first", None)
        while not gate.started.is_set():
            await anyio.sleep(0.001)
        for name, deadline in deadlines.items():
            tg.start_soon(submit, name, deadline)
            await anyio.sleep(0.002)
        while b.depth < len(deadlines):
            await anyio.sleep(0.001)
        return_at = max((d.expires for d in deadlines.values() if d is not None and d.ms < 1000), default=0)
        while time.monotonic() < return_at:  # the tight deadlines pass while the batcher is busy
            await anyio.sleep(0.005)
        gate.release.set()
        while len(outcomes) < len(deadlines) + 1:
            await anyio.sleep(0.001)
        b.close()
    return gate, outcomes


def soon(ms: int) -> RequestDeadline:
    return RequestDeadline.after(ms, time.monotonic())


async def test_the_batcher_serves_the_earliest_deadline_first() -> None:
    gate, outcomes = await run_behind_a_busy_batch(
        True, {"undated": None, "loose": soon(5000), "tight": soon(3000), "tighter": soon(2000)}
    )
    assert [batch for batch in gate.batches] == [["first"], ["tighter"], ["tight"], ["loose"], ["undated"]]
    assert outcomes["tighter"] == "ran tighter"


async def test_without_edf_the_batcher_serves_in_order_of_arrival() -> None:
    gate, _ = await run_behind_a_busy_batch(
        False, {"undated": None, "loose": soon(5000), "tight": soon(3000), "tighter": soon(2000)}
    )
    assert [batch for batch in gate.batches] == [["first"], ["undated"], ["loose"], ["tight"], ["tighter"]]


async def test_an_item_whose_deadline_passed_while_queued_is_answered_and_never_run() -> None:
    gate, outcomes = await run_behind_a_busy_batch(True, {"expires": soon(30), "waits": soon(5000)})
    missed = outcomes["expires"]
    assert isinstance(missed, Timeout) and missed.data == {"reason": "deadline_missed", "deadline_ms": 30, "where": "batcher"}
    assert gate.batches == [["first"], ["waits"]]  # "expires" never ran
    assert outcomes["waits"] == "ran waits"


async def test_an_item_already_past_its_deadline_is_not_queued() -> None:
    b = Batcher("m", Gate(), max_batch=1, max_delay_s=0.0, queue_size=4, limiter=anyio.CapacityLimiter(1))
    past = RequestDeadline.after(1, time.monotonic() - 1)
    with pytest.raises(Timeout) as caught:
        await b.submit("x", 1, past)
    assert caught.value.reason == "deadline_missed" and b.depth == 0


async def test_while_it_waits_its_deadline_says_so_and_once_run_it_does_not() -> None:
    gate = Gate()
    b = Batcher("m", gate, max_batch=1, max_delay_s=0.0, queue_size=4, limiter=anyio.CapacityLimiter(1))
    waiting, running = soon(5000), soon(5000)
    async with anyio.create_task_group() as tg:
        tg.start_soon(b.run)
        tg.start_soon(b.submit, "first", 1, running)
        while not gate.started.is_set():
            await anyio.sleep(0.001)
        tg.start_soon(b.submit, "second", 1, waiting)
        while b.depth < 1:
            await anyio.sleep(0.001)
        assert running.waiting_in is None  # its batch is running
        assert waiting.waiting_in == "batcher"
        gate.release.set()
        while len(gate.batches) < 2:
            await anyio.sleep(0.001)
        b.close()
    assert waiting.waiting_in is None
