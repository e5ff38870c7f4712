"""Foreground activity: the layer of the request chain that counts the requests sleep and tasks give way to.

Consolidation yields to every request in flight and starts on idle when none has come for a
while (:mod:`engram.sleep.service`). It reads two figures, kept here by the request chain: the
foreground requests in flight now, and the monotonic time the last one arrived or finished
(this object is the sleep part's ``Activity``).

Monitoring, event streams (``task.follow`` among them) and sleep's own methods are background: a
dashboard polling ``system.status`` or a client following events must not keep the daemon from
ever sleeping. So is work no client sent (connection 0: a task's steps, memory's extraction): a
task's step must not make sleep, or another task, wait for it.
"""

from __future__ import annotations

import time
from typing import Any

from engram.server.chain import Call, CallNext
from engram.server.methods import Method

__all__ = ["BACKGROUND_PREFIXES", "ForegroundActivity"]

BACKGROUND_PREFIXES = ("system.", "events.", "sleep.", "task.follow")


class ForegroundActivity:
    def __init__(self) -> None:
        self.foreground = 0  # requests in flight now
        self.last_foreground = time.monotonic()  # when the last one arrived or finished

    def passes(self, method: Method) -> bool:
        return method.name.startswith(BACKGROUND_PREFIXES)

    async def __call__(self, call: Call, call_next: CallNext) -> Any:
        if call.connection.id == 0 or call.request.method.startswith(BACKGROUND_PREFIXES):
            return await call_next(call)
        self.foreground += 1
        self.last_foreground = time.monotonic()
        try:
            return await call_next(call)
        finally:
            self.foreground -= 1
            self.last_foreground = time.monotonic()
