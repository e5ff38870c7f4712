"""Background tasks of a part: one task group, entered when the part starts, left when it stops.

A part is an async context manager whose ``__aenter__`` returns once it is ready, so its task
group cannot be an ``async with`` block: it is entered and left by hand, from the same task,
which is what :class:`BackgroundTasks` does once for every part. Tasks started with
:meth:`~BackgroundTasks.spawn` are supervised: a failure is logged (and, for a task that must
keep running, the task restarts after a pause) instead of cancelling the daemon with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import structlog

__all__ = ["RESTART_PAUSE", "BackgroundTasks"]

log = structlog.get_logger("engram.lifecycle")

RESTART_PAUSE = 1.0  # seconds before a failed task that must keep running starts again


class BackgroundTasks:
    def __init__(self, part: str) -> None:
        self.part = part
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def running(self) -> bool:
        return self._tg is not None

    async def start(self) -> None:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg

    def start_soon(self, func: Callable[..., Awaitable[Any]], *args: Any, name: str) -> None:
        """An unsupervised task: its failure ends the part (and is meant to)."""
        assert self._tg is not None, f"{self.part}: background task {name!r} started before the part"
        self._tg.start_soon(func, *args, name=name)

    def spawn(self, func: Callable[[], Awaitable[None]], name: str, *, restart: bool = False) -> None:
        """A supervised task: a failure is logged, and with ``restart`` the task runs again."""

        async def supervised() -> None:
            while True:
                try:
                    await func()
                    return
                except Exception:
                    log.exception("background task failed" + ("; restarting it" if restart else ""), part=self.part, task=name)
                    if not restart:
                        return
                await anyio.sleep(RESTART_PAUSE)

        self.start_soon(supervised, name=name)

    async def stop(self) -> None:
        """Cancel what still runs and wait for it to end. Call from the task that called start
        (a task group is left from where it was entered), outside any shield."""
        if self._tg is None:
            return
        tg, self._tg = self._tg, None
        tg.cancel_scope.cancel()
        await tg.__aexit__(None, None, None)
