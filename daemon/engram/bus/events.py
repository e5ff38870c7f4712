"""Typed events. Each part declares the event classes it publishes; the bus refuses any other.

An event class names its ``topic`` (dotted, like RPC methods) and its ``priority``: control events
(the daemon's own lifecycle) are delivered ahead of bulk events (per-request traffic), so a
subscriber that is behind still learns at once that the daemon is stopping.
"""

from __future__ import annotations

import time
from enum import IntEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from engram.principal import Principal


class Priority(IntEnum):
    CONTROL = 0
    BULK = 1


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: ClassVar[str]
    priority: ClassVar[Priority] = Priority.BULK

    time: float = Field(default_factory=time.time, description="Unix time the event happened.")

    def wire(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        return {"topic": self.topic, "time": data.pop("time"), "data": data}


# --- events of the daemon itself -------------------------------------------------------------


class DaemonStarted(Event):
    topic = "daemon.started"
    priority = Priority.CONTROL
    version: str
    pid: int
    socket: str


class DaemonStopping(Event):
    topic = "daemon.stopping"
    priority = Priority.CONTROL
    reason: str


class ConfigReloaded(Event):
    topic = "config.reloaded"
    priority = Priority.CONTROL
    ok: bool
    changed: list[str] = Field(default_factory=list)
    restart_required: list[str] = Field(default_factory=list)
    error: str | None = None


class ConnectionOpened(Event):
    topic = "connection.opened"
    connection: int
    principal: Principal


class ConnectionClosed(Event):
    topic = "connection.closed"
    connection: int
    reason: str
    requests: int


class RequestReceived(Event):
    topic = "request.received"
    connection: int
    request: int
    method: str
    principal: Principal


class RequestCompleted(Event):
    topic = "request.completed"
    connection: int
    request: int
    method: str
    outcome: Literal["ok", "error"]
    error_code: int | None = None
    error_reason: str | None = None
    duration_ms: float
    trace_id: str | None = None


class PluginLoaded(Event):
    topic = "plugin.loaded"
    name: str
    version: str | None


class PluginFailed(Event):
    topic = "plugin.failed"
    priority = Priority.CONTROL
    name: str
    stage: str
    error: str


class SubscriberLagging(Event):
    """A subscriber's queue overflowed; ``dropped`` counts what it has missed so far."""

    topic = "bus.subscriber_lagging"
    priority = Priority.CONTROL
    subscription: str
    dropped: int
    policy: str


CORE_EVENTS: tuple[type[Event], ...] = (
    DaemonStarted,
    DaemonStopping,
    ConfigReloaded,
    ConnectionOpened,
    ConnectionClosed,
    RequestReceived,
    RequestCompleted,
    PluginLoaded,
    PluginFailed,
    SubscriberLagging,
)
