"""The ``system.*`` methods: is the daemon there, how is it, what does it count, reload it."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from engram import __version__
from engram.config import config_file_from_env
from engram.lifecycle import PartState
from engram.server.methods import FreeJson, NoParams, Params, RequestContext, Result, rpc

if TYPE_CHECKING:
    from engram.runtime import Daemon


class PingParams(Params):
    echo: FreeJson = Field(default=None, description="Any JSON value (at most 10,000 values), returned unchanged.")


class PingResult(Result):
    pong: bool = True
    echo: FreeJson = None


class HelloParams(Params):
    client: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="The client's name for itself (e.g. 'my-agent'); unverified.",
    )


class HelloResult(Result):
    uid: int
    gid: int
    pid: int | None
    user: str | None
    client: str


class PartStatus(Result):
    name: str
    state: PartState = Field(
        description="created, starting, running (up), stopping (finishing what it holds), closed, or failed (its start failed)."
    )


class SubscriptionStatus(Result):
    id: str
    topics: list[str]
    depth: int
    delivered: int
    dropped: int
    overflow: str


class StatusResult(Result):
    version: str
    pid: int
    uid: int
    started_at: float
    uptime_s: float
    state_dir: str
    socket: str
    socket_activated: bool
    parts: list[PartStatus]
    connections: int
    connections_accepted: int
    requests_in_flight: int
    events_published: int
    subscriptions: list[SubscriptionStatus]


def overall_status(checks: dict[str, Check], essential: tuple[str, ...]) -> Literal["ok", "degraded", "failing"]:
    """ok when every check passes; failing when an essential part's fails; degraded otherwise."""
    failing = [name for name, check in checks.items() if not check.ok]
    if not failing:
        return "ok"
    if any(name in essential for name in failing):
        return "failing"
    return "degraded"


class Check(Result):
    ok: bool
    detail: str = ""


class HealthResult(Result):
    status: Literal["ok", "degraded", "failing"]
    checks: dict[str, Check]


class ConfigResult(Result):
    config_file: str | None = Field(description="The TOML file the daemon read (null: none).")
    settings: dict[str, Any] = Field(
        description="The configuration in force (file, the daemon's ENGRAM_* environment and flags), secrets redacted."
    )
    redacted: list[str] = Field(description="Keys whose values were withheld as secrets (shown as '<redacted>').")


class MetricsResult(Result):
    text: str = Field(description="Prometheus text exposition format.")
    families: list[dict[str, Any]]


class ReloadResult(Result):
    changed: list[str] = Field(description="Settings whose new values are in force now.")
    restart_required: list[str] = Field(description="Changed settings that take effect at the next start.")


class SystemMethods:
    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    @rpc("system.ping", summary="Check that the daemon answers; echoes any JSON value back.", audit=False, instant=True)
    async def ping(self, ctx: RequestContext, params: PingParams) -> PingResult | dict[str, Any]:
        # PingResult as it would dump: sent as it is, with no model to build and dump again.
        return {"pong": True, "echo": params.echo}

    @rpc(
        "system.hello",
        summary="Name this client (unverified) for logs, events and policy conditions; returns the principal.",
        audit=False,
        instant=True,
    )
    async def hello(self, ctx: RequestContext, params: HelloParams) -> HelloResult:
        principal = ctx.connection.declare_client(params.client)
        return HelloResult(
            uid=principal.uid, gid=principal.gid, pid=principal.pid, user=principal.user, client=params.client
        )

    @rpc("system.status", summary="Version, uptime, parts and their state, connections, queue depths.", audit=False)
    async def status(self, ctx: RequestContext, params: NoParams) -> StatusResult:
        d = self._daemon
        server = d.server
        return StatusResult(
            version=__version__,
            pid=os.getpid(),
            uid=os.geteuid(),
            started_at=d.started_at,
            uptime_s=round(time.monotonic() - d.started_monotonic, 3),
            state_dir=str(d.settings.state_dir),
            socket=str(d.settings.socket_path),
            socket_activated=server.activated,
            parts=[PartStatus(name=name, state=state) for name, state in d.part_states().items()],
            connections=len(server.connections),
            connections_accepted=server.accepted,
            requests_in_flight=server.inflight,
            events_published=d.bus.published,
            subscriptions=[
                SubscriptionStatus(
                    id=s.id,
                    topics=list(s.patterns),
                    depth=s.depth,
                    delivered=s.delivered,
                    dropped=s.dropped,
                    overflow=s.overflow.value,
                )
                for s in d.bus.subscriptions
            ],
        )

    @rpc("system.health", summary="Whether each part works; 'degraded' names what does not.", audit=False)
    async def health(self, ctx: RequestContext, params: NoParams) -> HealthResult:
        checks = await self._daemon.health_checks()
        return HealthResult(status=overall_status(checks, self._daemon.essential_parts), checks=checks)

    @rpc(
        "system.config",
        summary="The configuration in force in this daemon, secrets redacted (what engram config show prints).",
        owner_only=True,
        audit=False,
    )
    async def config(self, ctx: RequestContext, params: NoParams) -> ConfigResult:
        # Paths, provider endpoints and what is left of their tables after redaction describe
        # the whole installation: an admin method, like policy.show.
        d = self._daemon
        settings, redacted = d.settings.redacted_dict()
        # The file a reload reads: the one given at start, else $ENGRAM_CONFIG (load_settings).
        path = d.config_file or config_file_from_env()
        return ConfigResult(
            config_file=os.path.abspath(path) if path is not None else None, settings=settings, redacted=redacted
        )

    @rpc(
        "system.metrics",
        summary="Counters, gauges and latency histograms, in Prometheus text format too.",
        audit=False,
    )
    async def metrics(self, ctx: RequestContext, params: NoParams) -> MetricsResult:
        metrics = self._daemon.metrics
        return MetricsResult(text=metrics.text(), families=metrics.snapshot())

    @rpc(
        "system.reload",
        summary="Re-read the configuration (as SIGHUP does); an invalid file leaves the old one in force.",
        owner_only=True,
    )
    async def reload(self, ctx: RequestContext, params: NoParams) -> ReloadResult:
        changed, restart_required = await self._daemon.reload()
        return ReloadResult(changed=changed, restart_required=restart_required)
