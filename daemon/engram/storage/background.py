"""Background work that makes way for foreground requests.

A part's background transaction (sleep consolidation's units of work, written through memory)
may roll back before any statement when a foreground request is waiting, and raise
:class:`GaveWay`; whoever runs the unit waits for the request and runs it again. The exception
lives here, below the parts, because the part that writes (memory) and the part that retries
(sleep) both name it.
"""

from __future__ import annotations

from engram.errors import InternalSignal

__all__ = ["GaveWay"]


class GaveWay(InternalSignal):
    """A background transaction was rolled back to let foreground work have the write lock;
    the caller does the same work again later."""
