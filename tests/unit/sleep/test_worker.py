"""The consolidation thread: one thread, a lower OS priority, and no unit left running behind a
cancelled run."""

from __future__ import annotations

import os
import sys
import threading

import anyio
import pytest
from engram.sleep.worker import PRESSURE_LIMIT, RETRY_AFTER, ConsolidationThread, cpu_pressure

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")


def quiet() -> float:
    """CPU pressure of a machine with cores to spare (the test machine's own may be anything)."""
    return 0.0


def whereabouts() -> tuple[str, int, int]:
    """The calling thread's name, scheduling policy and nice value."""
    thread = threading.get_native_id()
    return threading.current_thread().name, os.sched_getscheduler(thread), os.getpriority(os.PRIO_PROCESS, thread)


async def where_units_run(worker: ConsolidationThread) -> tuple[str, int, int]:
    try:
        first = await worker.run(whereabouts)
        assert await worker.run(whereabouts) == first
        idents = {await worker.run(threading.get_ident) for _ in range(3)}
        assert len(idents) == 1 and threading.get_ident() not in idents  # one thread, not the caller's
        return first
    finally:
        await worker.close()


@linux_only
async def test_idle_units_run_in_one_thread_under_sched_idle() -> None:
    caller = whereabouts()
    name, policy, _ = await where_units_run(ConsolidationThread("idle", pressure=quiet))
    assert name.startswith("engram-sleep") and policy == os.SCHED_IDLE
    assert whereabouts() == caller  # the caller's thread is untouched


@linux_only
async def test_low_adds_ten_to_the_daemons_nice_value() -> None:
    _, daemon_policy, daemon_nice = whereabouts()
    _, policy, nice = await where_units_run(ConsolidationThread("low", pressure=quiet))
    assert policy == daemon_policy and nice == min(19, daemon_nice + 10)


@linux_only
async def test_normal_keeps_the_daemons_priority() -> None:
    _, daemon_policy, daemon_nice = whereabouts()
    _, policy, nice = await where_units_run(ConsolidationThread("normal"))
    assert (policy, nice) == (daemon_policy, daemon_nice)


@linux_only
async def test_a_starved_unit_sends_the_next_ones_to_the_daemons_priority_for_a_while() -> None:
    now = [1000.0]
    worker = ConsolidationThread("idle", clock=lambda: now[0], pressure=quiet)

    def starved() -> tuple[str, int, int]:
        now[0] += 1.0  # a second went by, and the thread got next to no CPU: a busy machine
        return whereabouts()

    try:
        first = await worker.run(starved)
        second = await worker.run(whereabouts)
        third = await worker.run(whereabouts)
        now[0] += RETRY_AFTER
        fourth = await worker.run(whereabouts)
    finally:
        await worker.close()
    _, daemon_policy, _ = whereabouts()
    assert first[:2] == ("engram-sleep_0", os.SCHED_IDLE)
    assert second[:2] == third[:2] == ("engram-sleep-plain_0", daemon_policy)
    assert fourth[:2] == ("engram-sleep_0", os.SCHED_IDLE)  # tried again after a while


@linux_only
async def test_units_run_at_the_daemons_priority_while_the_machine_is_short_of_cpu() -> None:
    pressures = [PRESSURE_LIMIT + 5, PRESSURE_LIMIT, PRESSURE_LIMIT - 5, None]
    counted: list[str] = []
    worker = ConsolidationThread("idle", pressure=lambda: pressures.pop(0), count=counted.append)
    try:
        seen = [(await worker.run(whereabouts))[:2] for _ in range(4)]
    finally:
        await worker.close()
    plain = ("engram-sleep-plain_0", whereabouts()[1])
    idle = ("engram-sleep_0", os.SCHED_IDLE)
    assert seen == [plain, plain, idle, idle]  # None: the kernel reports no pressure
    assert counted == ["daemon", "daemon", "lowered", "lowered"]


def test_cpu_pressure_is_read_from_the_kernel() -> None:
    pressure = cpu_pressure()
    if os.path.exists("/proc/pressure/cpu"):
        assert pressure is not None and 0.0 <= pressure <= 100.0
    else:
        assert pressure is None


async def test_a_cancelled_caller_waits_for_its_unit_to_return() -> None:
    release, entered = threading.Event(), threading.Event()
    finished: list[str] = []

    def unit() -> str:
        entered.set()
        release.wait(10)
        finished.append("unit")
        return "done"

    worker = ConsolidationThread("normal")
    try:
        async with anyio.create_task_group() as tg:
            async def caller() -> None:
                with anyio.CancelScope() as scope:
                    tg.start_soon(cancel_when_entered, scope)
                    await worker.run(unit)
                finished.append("caller")

            async def cancel_when_entered(scope: anyio.CancelScope) -> None:
                await anyio.to_thread.run_sync(entered.wait, 10)
                scope.cancel()
                await anyio.sleep(0.05)
                assert finished == []  # cancelled, and still waiting for the unit
                release.set()

            tg.start_soon(caller)
    finally:
        await worker.close()
    assert finished == ["unit", "caller"]


async def test_every_unit_gets_one_openmp_thread() -> None:
    import faiss

    worker = ConsolidationThread("normal")
    try:
        await worker.run(lambda: faiss.omp_set_num_threads(2))  # as memory's index does for its adds
        assert await worker.run(faiss.omp_get_max_threads) == 1
    finally:
        await worker.close()


async def test_close_ends_the_threads() -> None:
    now = [0.0]
    worker = ConsolidationThread("low", clock=lambda: now[0], pressure=quiet)

    def starved() -> None:
        now[0] += 1.0

    await worker.run(starved)
    await worker.run(lambda: None)
    assert {t.name for t in threading.enumerate()} >= {"engram-sleep_0", "engram-sleep-plain_0"}
    await worker.close()
    assert not any(t.name.startswith("engram-sleep") for t in threading.enumerate())
    await worker.close()  # closing twice is harmless
