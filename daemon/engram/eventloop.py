"""The event loop engramd runs on (the ``event_loop`` setting).

``auto`` (the default) runs anyio's asyncio backend on uvloop, libuv's implementation of the
asyncio loop, where it is installed (a dependency on every platform but Windows), and on Python's
own loop elsewhere; ``uvloop`` insists on it; ``asyncio`` is Python's loop, for comparison or
when a problem is suspected in the other. Nothing above the loop changes: task groups, cancel
scopes, transports and subprocesses are the same API on both.

Why: the loop, its transports and its timers are C in uvloop. On the quiet 2-core machine, with
the load generator and the daemon on a CPU each, a ping cost the daemon 33–34.5 µs of CPU on
uvloop against 36–40 µs on asyncio's loop (``engram bench rpc``'s method, runs in turn).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from engram.errors import StartupError

EventLoop = Literal["auto", "uvloop", "asyncio"]

__all__ = ["EventLoop", "backend_options", "running_loop_name"]


def backend_options(choice: EventLoop) -> dict[str, Any]:
    """anyio.run's ``backend_options`` for ``choice``; raises StartupError when ``uvloop`` is
    asked for and cannot be imported."""
    if choice == "asyncio":
        return {}
    try:
        import uvloop  # noqa: F401 - only whether it imports
    except ImportError:
        if choice == "uvloop":
            raise StartupError('event_loop = "uvloop", but uvloop is not installed (pip install uvloop)') from None
        return {}
    return {"use_uvloop": True}


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the loop the caller runs on (for logs and status)."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
