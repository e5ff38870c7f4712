"""Where consolidation's units of work run: a thread of their own, at a lower OS priority.

A unit (a batch of SQL, a numpy pass, a few FAISS searches) is blocking work, so it runs off the
event loop. Yielding between units keeps consolidation out of a request's way only until a
request arrives in the middle of one. The unit then runs on beside the request, and on a small
machine a request's thread that wakes up often waits for the kernel to take a core from it: a
normal thread, or one of a high nice value, keeps its time slice. Under ``engram bench sleep``'s
recall load, an unrelated nice-19 process doing consolidation-like numpy work at half of one core
raised the recall p99 from about 6 to 9.7 ms, as much as a consolidation did; the same process
under ``SCHED_IDLE`` left it at 5.6 ms. The kernel hands a core to a woken normal thread at once
when it runs only idle-policy work, and counts such a core as free when it places a woken thread.

``sleep.priority`` chooses:

* ``idle`` (the default): ``SCHED_IDLE``; the thread runs on the time nothing else wants.
* ``low``: nice + 10.
* ``normal``: the daemon's own priority.

An idle-policy thread gets almost nothing while other programs keep every core busy. The run
would stall, and the daemon with it whenever that thread is preempted while it holds the
interpreter lock (it keeps the lock until the kernel runs it again). So while the machine is
short of CPU (Linux's CPU pressure: some runnable thread waited for a core during a quarter or
more of the last 10 s), and for 30 s after a unit that got less than a tenth of a core over half
a second or more, units run in a second thread at the daemon's priority.

Both are per thread on Linux (the thread's own id). Elsewhere those calls would change the whole
process, so the thread keeps the daemon's priority and says so once in the log. A thread may
lower its own priority without privilege, and this one never raises it again.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import anyio
import structlog

from engram.sleep.settings import Priority
from engram.sleep.stage import on_one_openmp_thread

__all__ = [
    "PRESSURE_LIMIT",
    "RETRY_AFTER",
    "STARVED_AFTER",
    "STARVED_SHARE",
    "ConsolidationThread",
    "cpu_pressure",
    "lower_thread_priority",
]
_PRESSURE = Path("/proc/pressure/cpu")

log = structlog.get_logger("engram.sleep")

T = TypeVar("T")
_LOW_NICE = 10  # added to the daemon's nice value for "low"
PRESSURE_LIMIT = 25.0  # % of the last 10 s in which some runnable thread waited for a core
STARVED_SHARE = 0.1  # of one core: a unit that got less than this over ...
STARVED_AFTER = 0.5  # ... at least this many seconds starved
RETRY_AFTER = 30.0  # seconds of units at the daemon's priority after a starved one


def lower_thread_priority(priority: Priority) -> str | None:
    """Lower the calling thread's OS priority to ``priority``; what it is now, in words, or None
    where a thread's priority cannot be set apart from its process's."""
    if priority == "normal":
        return "normal"
    if not sys.platform.startswith("linux"):
        return None
    thread = threading.get_native_id()
    if priority == "idle":
        os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    nice = min(19, os.getpriority(os.PRIO_PROCESS, thread) + _LOW_NICE)
    os.setpriority(os.PRIO_PROCESS, thread, nice)
    return f"nice {nice}"


def cpu_pressure() -> float | None:
    """Linux's CPU pressure: the share (%) of the last 10 s in which some runnable thread waited
    for a core; None where the kernel does not report it."""
    try:
        some = _PRESSURE.read_text().split("\n", 1)[0]  # "some avg10=1.23 avg60=0.50 avg300=0.20 total=..."
        return float(some.split()[1].partition("=")[2])
    except (OSError, IndexError, ValueError):
        return None


class ConsolidationThread:
    """Runs consolidation's units one after another in a thread at ``priority``; while the
    machine is short of CPU, in a second one at the daemon's priority.

    An idle-policy thread gets almost nothing while other programs keep every core busy: the run
    would stall, and the daemon with it whenever that thread is preempted holding the interpreter
    lock. So a unit goes to the daemon's priority while the kernel's CPU pressure
    (:func:`cpu_pressure`) is at least :data:`PRESSURE_LIMIT`, and for :data:`RETRY_AFTER`
    seconds after a unit that got less than :data:`STARVED_SHARE` of a core over at least
    :data:`STARVED_AFTER` seconds (which also covers kernels that report no pressure)."""

    def __init__(self, priority: Priority, clock: Callable[[], float] = time.monotonic,
                 pressure: Callable[[], float | None] = cpu_pressure,
                 count: Callable[[str], None] | None = None) -> None:
        self._priority: Priority = priority
        self._clock = clock
        self._pressure = pressure
        self._count = count  # called with "lowered" or "daemon" for every unit, by the thread it ran in
        self._lowered: ThreadPoolExecutor | None = None
        self._plain: ThreadPoolExecutor | None = None
        self._plain_until = 0.0  # units go to the plain thread until then (the lowered one starved)

    def _prepare(self) -> None:
        try:
            now = lower_thread_priority(self._priority)
        except OSError as exc:
            log.warning("consolidation runs at the daemon's priority", wanted=self._priority, reason=str(exc))
            return
        if now is None:
            log.info("consolidation runs at the daemon's priority", wanted=self._priority,
                     reason=f"no per-thread priority on {sys.platform}")
        else:
            log.debug("consolidation thread started", priority=now)

    def _executor(self, lowered: bool) -> ThreadPoolExecutor:
        if lowered:
            if self._lowered is None:
                self._lowered = ThreadPoolExecutor(1, thread_name_prefix="engram-sleep", initializer=self._prepare)
            return self._lowered
        if self._plain is None:
            self._plain = ThreadPoolExecutor(1, thread_name_prefix="engram-sleep-plain")
        return self._plain

    async def run(self, func: Callable[[], T]) -> T:
        """``func()`` in a consolidation thread, FAISS on one OpenMP thread. A cancellation
        waits for it to return (and is raised at the next checkpoint), as with
        :func:`anyio.to_thread.run_sync`: a unit is never left running behind the run."""
        lowered = self._priority != "normal" and self._clock() >= self._plain_until and not self._short_of_cpu()
        started = self._clock()
        with anyio.CancelScope(shield=True):
            result, cpu = await asyncio.wrap_future(self._executor(lowered).submit(_timed, func))
        wall = self._clock() - started
        if self._count is not None:
            self._count("lowered" if lowered else "daemon")
        if lowered and wall >= STARVED_AFTER and cpu < STARVED_SHARE * wall:
            self._plain_until = self._clock() + RETRY_AFTER
            log.info("consolidation thread starved; at the daemon's priority for a while", priority=self._priority,
                     cpu_seconds=round(cpu, 3), wall_seconds=round(wall, 3), seconds=RETRY_AFTER)
        return result

    def _short_of_cpu(self) -> bool:
        pressure = self._pressure()
        return pressure is not None and pressure >= PRESSURE_LIMIT

    async def close(self) -> None:
        """Wait for the threads to finish their unit (if any) and end."""
        executors = [e for e in (self._lowered, self._plain) if e is not None]
        self._lowered = self._plain = None
        with anyio.CancelScope(shield=True):
            for executor in executors:
                await anyio.to_thread.run_sync(executor.shutdown)


def _timed(func: Callable[[], T]) -> tuple[T, float]:
    """``func()`` on one OpenMP thread, and the CPU seconds this thread spent on it."""
    began = time.thread_time()
    result = on_one_openmp_thread(func)
    return result, time.thread_time() - began
