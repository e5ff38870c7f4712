"""Typed events. Each part declares the event classes it publishes; the bus refuses any other.

An event class names its ``topic`` (dotted, like RPC methods) and its ``priority``: control events
(the daemon's own lifecycle) are delivered ahead of bulk events (per-request traffic), so a
subscriber that is behind still learns at once that the daemon is stopping.

Whom an event is about decides who may follow it (see :mod:`engram.bus.audience`). It is read
from the fields every part already names the same way: ``principal`` (or ``uid``) is the client
that caused it, ``namespace`` (or ``namespaces``) the memory it touched. An event with neither is
the owner's business, unless its class says it is ``public`` (the daemon starting and stopping).
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
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    topic: ClassVar[str]
    priority: ClassVar[Priority] = Priority.BULK
    public: ClassVar[bool] = False  # every subscriber may see it, whoever they are

    time: float = Field(default_factory=time.time, description="Unix time the event happened.")

    def subject_uid(self) -> int | None:
        """The uid of the client that caused the event, when one did."""
        principal = getattr(self, "principal", None)
        if isinstance(principal, Principal):
            return principal.uid
        uid = getattr(self, "uid", None)
        return uid if isinstance(uid, int) else None

    def subject_namespaces(self) -> tuple[str, ...]:
        """The memory namespaces the event is about (none for most)."""
        namespace = getattr(self, "namespace", None)
        if isinstance(namespace, str):
            return (namespace,)
        namespaces = getattr(self, "namespaces", None)
        return tuple(namespaces) if isinstance(namespaces, list) else ()

    def wire(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        return {"topic": self.topic, "time": data.pop("time"), "data": data}


# --- events of the daemon itself -------------------------------------------------------------


class DaemonStarted(Event):
    topic = "daemon.started"
    priority = Priority.CONTROL
    public = True
    version: str
    pid: int
    socket: str


class DaemonStopping(Event):
    topic = "daemon.stopping"
    priority = Priority.CONTROL
    public = True
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
    principal: Principal | None = None


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
    principal: Principal | None = None


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
