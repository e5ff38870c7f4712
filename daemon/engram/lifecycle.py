"""The lifecycle kit the daemon's parts share: one state vocabulary, one health protocol, and a
base class that starts and stops every part the same way.

A part is an async context manager whose ``__aenter__`` returns once it is ready while its
background tasks go on running, so its task group cannot be an ``async with`` block of its own.
:class:`Part` keeps it on an :class:`~contextlib.AsyncExitStack` instead, together with all
else the part acquires on its way up. :meth:`Part.setup` opens what the part holds, pushing each
release onto the stack, and enters the task group with :meth:`Part.start_tasks`; closing the
part unwinds the stack in reverse. So what a part pushes after its tasks started (finishing what
is queued) runs while they still run, then they are cancelled and awaited, then what it pushed
before (closing its database) runs. A setup that raises unwinds the same way, and the part is
``failed``. The stack is entered and left from one task, in the order the composition root nests
the parts, as a task group requires.

Tasks started with :meth:`Part.spawn` are supervised: a failure is logged (and, for a task that
must keep running, the task restarts after a pause) instead of cancelling the daemon with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from enum import StrEnum
from typing import Any, NamedTuple, Protocol, Self

import anyio
import anyio.abc
import structlog

__all__ = ["RESTART_PAUSE", "Health", "Part", "PartState", "ReportsHealth"]

log = structlog.get_logger("engram.lifecycle")

RESTART_PAUSE = 1.0  # seconds before a failed task that must keep running starts again


class PartState(StrEnum):
    """Where a part is in its life, as system.status shows it for each part."""

    CREATED = "created"  # made, not started
    STARTING = "starting"  # opening what it holds
    RUNNING = "running"  # ready: it serves, its background tasks run
    STOPPING = "stopping"  # finishing what is queued, then releasing what it holds
    CLOSED = "closed"  # stopped, or closed without having started
    FAILED = "failed"  # its start raised; what it had acquired was released again


class Health(NamedTuple):
    ok: bool
    detail: str


class ReportsHealth(Protocol):
    """The health protocol: every part answers it (the RPC server too), ``system.health`` asks."""

    state: PartState

    async def health(self) -> Health: ...


class Part:
    """Base of the daemon's long-lived parts: states, the start/stop sequence, background tasks.

    A subclass overrides :meth:`setup` (and :meth:`health`, to say more than its state); a part
    that reports further checks under names of their own overrides :meth:`named_checks`.
    """

    def __init__(self, name: str) -> None:
        self.name = name  # in the logs of its tasks
        self.state = PartState.CREATED
        self._stack: AsyncExitStack | None = None
        self._tasks: anyio.abc.TaskGroup | None = None

    async def setup(self, stack: AsyncExitStack) -> None:
        """Start the part: acquire what it holds, pushing each release onto ``stack``, and start
        its tasks after :meth:`start_tasks`. A part that holds nothing keeps this one."""

    async def open(self) -> None:
        self.state = PartState.STARTING
        try:
            async with AsyncExitStack() as stack:  # a setup that raises unwinds what it pushed
                await self.setup(stack)
                self._stack = stack.pop_all()
        except BaseException:
            self.state = PartState.FAILED
            raise
        self.state = PartState.RUNNING

    async def aclose(self) -> None:
        """Stop the part; a part that is not running is left as it is (one never started: closed).
        Called from the task that opened it, outside any cancel scope entered since."""
        stack, self._stack = self._stack, None
        if stack is None:
            if self.state is PartState.CREATED:
                self.state = PartState.CLOSED
            return
        self.state = PartState.STOPPING
        try:
            await stack.aclose()
        finally:
            self._tasks = None
            self.state = PartState.CLOSED

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def health(self) -> Health:
        return Health(self.state is PartState.RUNNING, self.state.value)

    async def named_checks(self) -> dict[str, Health]:
        """Checks the part reports beside its own, each under its name (none by default)."""
        return {}

    # --- background tasks --------------------------------------------------------------------

    async def start_tasks(self, stack: AsyncExitStack) -> None:
        """Enter the part's task group on ``stack``. At close, what was pushed after this runs
        first, then what still runs is cancelled and awaited, then what was pushed before."""
        self._tasks = await stack.enter_async_context(_task_group())

    def start_soon(self, func: Callable[..., Awaitable[Any]], *args: Any, name: str) -> None:
        """An unsupervised task: its failure ends the part (and is meant to)."""
        assert self._tasks is not None, f"{self.name}: task {name!r} started outside the part's task group"
        self._tasks.start_soon(func, *args, name=name)

    def spawn(self, func: Callable[[], Awaitable[None]], name: str, *, restart: bool = False) -> None:
        """A supervised task: a failure is logged, and with ``restart`` the task runs again."""

        async def supervised() -> None:
            while True:
                try:
                    await func()
                    return
                except Exception:
                    log.exception("background task failed" + ("; restarting it" if restart else ""), part=self.name, task=name)
                    if not restart:
                        return
                await anyio.sleep(RESTART_PAUSE)

        self.start_soon(supervised, name=name)


@asynccontextmanager
async def _task_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    """A task group whose tasks are cancelled when it is left. An error raised meanwhile in the
    part's own code (its setup, a drain at close) goes past the group as it is, rather than out
    of it wrapped in an exception group: a part that cannot start says why in plain words."""
    raised: Exception | None = None
    async with anyio.create_task_group() as tasks:
        try:
            yield tasks
        except Exception as exc:
            raised = exc
        finally:
            tasks.cancel_scope.cancel()
    if raised is not None:
        raise raised
