"""The composition root: builds the parts, starts them in order, serves, and stops them.

Start order (each part is an :class:`engram.lifecycle.Part`, an async context manager; each is
up before the next starts)::

    state lock -> database -> audit log -> policy -> inference -> memory -> router -> sleep -> plugins -> providers
               -> MCP servers (when tasks.mcp_servers names any) -> tasks -> http (its tokens)
               -> RPC server (binds the socket) -> HTTP listener (when http.listen is set) -> READY=1

Parts are made in the order their needs allow and get what they need as constructor arguments
(no setters afterwards, no contextvars as channels between them). Shutdown runs the other way:
SIGTERM/SIGINT stop the server from accepting, in-flight requests get ``server.drain_timeout``
to finish, then the parts close, shielded from cancellation, and the process exits 0.
"""

from __future__ import annotations

import fcntl
import gc
import os
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from engram import __version__, systemd
from engram.ask.service import Ask
from engram.audit.events import AUDIT_EVENTS
from engram.audit.layer import AuditRecord
from engram.audit.log import AuditLog
from engram.audit.methods import AuditMethods
from engram.bus import EventBus
from engram.bus.events import CORE_EVENTS, ConfigReloaded, DaemonStarted, DaemonStopping
from engram.bus.methods import EventMethods
from engram.config import Settings, load_settings
from engram.errors import ConfigError, Conflict, StartupError
from engram.eventloop import running_loop_name
from engram.http.service import HttpGateway
from engram.inference.arrays import ArrayModels
from engram.inference.events import MODEL_EVENTS
from engram.inference.service import Inference
from engram.lifecycle import Health, Part, PartState
from engram.memory.consolidation import MemoryConsolidation
from engram.memory.embedding import InferenceEmbedder
from engram.memory.events import MEMORY_EVENTS
from engram.memory.extraction.llm import ExtractionGenerator
from engram.memory.service import Memory
from engram.observability.logging import configure_logging
from engram.observability.metrics import Metrics
from engram.observability.tracing import Spans, build_tracer_provider, start_export, tracer
from engram.plugins.manager import PluginInfo, PluginManager
from engram.plugins.protocol import ProviderContext
from engram.plugins.locality import is_loopback
from engram.policy.events import POLICY_EVENTS
from engram.policy.service import Policy
from engram.principal import Principal
from engram.providers.events import PROVIDER_EVENTS
from engram.providers.generation import PromptGenerator
from engram.providers.breaker import Breakers
from engram.providers.service import Providers
from engram.provider_usage import provider_uses
from engram.router.events import ROUTER_EVENTS
from engram.router.novelty import NAMESPACE_PREFIX as NOVELTY_NAMESPACES
from engram.router.service import Router
from engram.server.chain import LayerClock
from engram.server.dispatch import Dispatcher
from engram.server.layers.access import Guards, require_method
from engram.server.layers.deadline import Deadline
from engram.server.layers.errors import translate_errors
from engram.server.layers.events import RequestEvents
from engram.server.layers.metrics import RequestMetrics
from engram.server.layers.params import ParamsValidation
from engram.server.layers.tracing import Tracing
from engram.server.methods import MethodTable, NoClient, RequestContext, collect
from engram.server.server import RPCServer
from engram.sleep.activity import ForegroundActivity
from engram.sleep.events import SLEEP_EVENTS
from engram.sleep.service import Sleep
from engram.storage import Database
from engram.storage.files import PRIVATE_UMASK, make_private_dir
from engram.system import Check, SystemMethods, overall_status
from engram.tasks.events import TASK_EVENTS
from engram.tasks.planner import PLANNER_METHODS, Planner
from engram.tasks.planning import TaskPlanning
from engram.tasks.service import Tasks
from engram.tasks.teaching import Teaching
from engram.tasks.tools import CombinedTools, MethodTools, PluginTools

if TYPE_CHECKING:
    from engram.tasks.mcp_tools import McpTools

log = structlog.get_logger("engram.daemon")

# Settings that are read once at start; a reload reports them instead of applying them.
RESTART_REQUIRED = (
    "state_dir",
    "socket",
    "event_loop",
    "server.socket_group",
    "storage",
    "plugins",
    "providers",
    "tracing",
    "audit",
    "inference",
    "memory",
    "router",
    "sleep",
    "tasks",
    "http",
)


EXTRACTION_METHOD = "memory.extraction"
"""The name memory's LLM extraction has in egress decisions (it is no RPC method)."""
SPAN_EXPORT_METHOD = "tracing.export"
SPAN_EXPORT_PROVIDER = "otlp"
"""The names spans sent to an OTLP endpoint off this machine have in the egress decision."""


def background_generate(generator: PromptGenerator) -> ExtractionGenerator:
    """Memory's LLM extractor's way to a generate provider: the daemon's own principal, through
    the providers part and so through the policy's egress decision, which sees the work as the
    method ``memory.extraction`` (no request asked for it; a policy names it to allow or refuse it)
    with the episode's tags as data tags."""
    ctx = RequestContext(principal=Principal.from_ids(os.getuid(), os.getgid(), os.getpid()), connection=NoClient(),
                         request=0, method=EXTRACTION_METHOD)

    async def generate(prompt: str, system: str, provider: str, tags: tuple[str, ...]) -> str:
        return (await generator.generate(ctx, prompt, system, tags, provider)).text

    return generate


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "providers":
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class StateLock:
    """An exclusive flock on ``<state>/engramd.lock``: one daemon per state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "engramd.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            make_private_dir(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StartupError(f"cannot use state folder {self.path.parent}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StartupError(
                f"state folder {self.path.parent} is in use by another engramd (pid {holder}); "
                "stop it first or choose another --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the kernel drops the flock with the descriptor
            self._fd = None


class Daemon:
    def __init__(self, settings: Settings, config_file: Path | None = None, overrides: dict[str, Any] | None = None):
        self.settings = settings
        self.config_file = config_file
        self.overrides = overrides or {}
        self.bus = EventBus(CORE_EVENTS, default_queue=settings.bus.subscriber_queue)
        self.metrics = Metrics()
        # Spans to an OTLP endpoint off this machine wait for the policy's egress decision (run()).
        self._otlp_held = settings.tracing.exporter == "otlp" and not is_loopback(settings.tracing.otlp_endpoint)
        self.tracer_provider = build_tracer_provider(settings.tracing, settings.state_dir, not self._otlp_held)
        # The tracer port: each part opens its own child spans of the request's through it.
        spans = Spans(tracer(self.tracer_provider, settings.tracing))
        self.methods = MethodTable()
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.essential_parts = ("database", "server", "audit")
        self.bus.declare(*AUDIT_EVENTS, *POLICY_EVENTS, *MODEL_EVENTS, *MEMORY_EVENTS)
        self.bus.declare(*PROVIDER_EVENTS)
        self.database = Database(settings.database_path, settings.storage.busy_timeout)
        busy = settings.storage.busy_timeout
        self.audit = AuditLog(settings.audit, settings.state_dir, settings.database_path, self.bus, self.metrics, busy,
                              spans=spans)
        self.inference = Inference(settings.inference, settings.state_dir, self.bus, self.metrics, spans=spans)
        # The providers part feeds each provider's breaker, plugins.list shows its state: both hold them.
        breakers = Breakers(settings.providers.breaker, self.bus)
        self.plugins = PluginManager(
            settings.plugins,
            self.bus,
            ProviderContext(inference=self.inference, state_dir=settings.state_dir),
            breakers=breakers,
        )
        plugins = self.plugins
        self.policy = Policy(
            settings.policy,
            settings.state_dir,
            self.bus,
            self.metrics,
            method_admin=lambda name: method.owner_only if (method := self.methods.get(name)) else None,
            provider_locality=lambda name: getattr(plugins.providers().get(name), "locality", None),
            spans=spans,
        )
        # Every provider call: chain, breaker, timeout, and the policy's egress decision first.
        self.providers = Providers(
            settings.providers, self.plugins, breakers, self.policy.authorize_egress, self.bus, self.metrics,
            preview=self.policy.preview_egress, spans=spans,
        )
        # Generate calls of the router's provider:<name> targets, of route.ask and of memory's LLM
        # extractor, through the providers part.
        generator = PromptGenerator(self.providers)
        self.memory = Memory(
            settings.memory,
            settings.state_dir,
            settings.database_path,
            self.bus,
            self.metrics,
            embedder=InferenceEmbedder(self.inference),
            busy_timeout=busy,
            namespace_decider=self.policy,  # who may use which namespace, and forget everything
            generate=background_generate(generator),  # used only with memory.extraction.llm_provider
            spans=spans,
        )
        self.bus.declare(*ROUTER_EVENTS)
        # Model targets run on the inference part; each route's input vectors are kept in memory (novelty).
        self.router = Router(settings.router, settings.database_path, self.bus, self.metrics, ArrayModels(self.inference),
                             busy, novelty_store=self.memory.keyed_vectors, generator=generator)
        # Foreground requests in flight and when the last one came: what sleep gives way to.
        self.activity = ForegroundActivity()
        # The request chain, outermost first; the method's handler comes after the last layer.
        self.dispatcher = Dispatcher(
            self.methods,
            [
                RequestEvents(self.bus),  # request.received first, request.completed last of all
                Tracing(tracer(self.tracer_provider, settings.tracing)),  # the span the rest runs in
                RequestMetrics(self.metrics),
                self.activity,
                AuditRecord(self.audit),  # one entry per audited request, durable before the answer
                translate_errors,  # inside: anything may be raised; outside: RPCErrors only
                require_method,
                # The policy decides every call; its default keeps owner-only methods owner-only
                # and a policy can grant them explicitly.
                Guards([self.policy.method_guard]),
                ParamsValidation(),  # after the guard: a refused caller's params are never read
                Deadline(lambda: self.settings.server, self.metrics),
            ],
            LayerClock(lambda layer: self.metrics.request_layer_seconds.labels(layer).inc)
            if settings.server.layer_timing
            else None,
        )
        # Sleep consolidation: while the daemon is idle (no foreground request for a while),
        # episodes become concepts and unimportant ones go.
        self.bus.declare(*SLEEP_EVENTS)
        # It reaches memory through memory's consolidation interface, and leaves alone the
        # namespaces where the router keeps its novelty vectors.
        self.sleep = Sleep(settings.sleep, MemoryConsolidation(self.memory), settings.database_path, self.router,
                           self.audit, self.bus, self.metrics, activity=self.activity, busy_timeout=busy,
                           skipped_prefixes=(NOVELTY_NAMESPACES,))
        # route.ask: memories as context, then the router (cache, route) or the generate chain.
        self.ask = Ask(settings.router.ask, self.router, self.memory, generator, self.metrics)
        # Tasks: plans whose steps call built-in tools, engram's own methods, through the request
        # chain above as the principal that submitted them (policy, audit and params as for a
        # direct call). Each finished step's provenance goes into the audit log, which proves it.
        self.bus.declare(*TASK_EVENTS)
        # Plugin tools (engram.tools, named plugin:<name>) are called directly, each call decided
        # by the policy as the submitting principal first. So are the tools of the MCP servers of
        # tasks.mcp_servers (mcp:<server>.<tool>), whose part runs them as child processes; a
        # remote server's calls also need the policy's egress decision, as a remote provider's do.
        self.mcp = _mcp_servers(settings, self.policy, self.bus)
        tools = CombinedTools(MethodTools(self.dispatcher.dispatch, self.methods),
                              PluginTools(self.plugins.tools, self.policy.tool_guard), self.mcp)
        # The planner (task.submit with a goal) and teaching call methods through the same chain
        # as the submitting principal: infer.generate or route.run, memory.recall and .remember.
        calls = MethodTools(self.dispatcher.dispatch, self.methods, allowed=PLANNER_METHODS)
        planner_settings = settings.tasks.planner

        def planning(store: Any) -> TaskPlanning:
            planner = Planner(planner_settings, tools, calls, settings.tasks.max_steps, settings.tasks.max_step_timeout)
            return TaskPlanning(planner, Teaching(planner_settings, calls), self.providers, store, self.bus)

        self.tasks = Tasks(settings.tasks, settings.database_path, tools, self.bus, busy, owner_uid=os.getuid(),
                           audit=self.audit, activity=self.activity, planning=planning)
        # Started in this order, stopped in reverse; the server comes last, after all of them.
        self.parts: dict[str, Part] = {
            "database": self.database,
            "audit": self.audit,  # right after the database: it records what every later part does
            "policy": self.policy,  # before anything that serves or sends data: it decides who may
            "inference": self.inference,
            "memory": self.memory,  # after inference: it embeds with the default model
            "router": self.router,  # after inference and memory: it runs models and embeds texts
            "sleep": self.sleep,  # after memory and router: it consolidates them when idle
            "plugins": self.plugins,
            "providers": self.providers,
            **({"mcp": self.mcp} if self.mcp is not None else {}),  # before tasks: its plans call their tools
            "tasks": self.tasks,  # last: its resumed tasks call the methods of every part before it
        }
        self.server = RPCServer(
            settings.socket_path,
            lambda: self.settings.server,
            self.dispatcher,
            self.bus,
            self.metrics,
        )
        # The HTTP gateway (off unless http.listen is set): its requests run through the same
        # chain as the socket's, as the principal of the bearer token presented.
        self.http = HttpGateway(
            settings.http,
            settings.state_dir,
            self.dispatcher,
            max_json_depth=lambda: self.settings.server.max_json_depth,
            health=self.health_status,
            metrics_text=self.metrics.text,
            metrics=self.metrics,
            owner_uid=os.getuid(),
        )
        # A part for its tokens (read once the state folder is locked); its listener starts after
        # the socket server's, in run().
        self.parts["http"] = self.http
        for part in (
            SystemMethods(self),
            EventMethods(self.bus, self.policy),  # the policy decides who sees which events
            AuditMethods(self.audit),
            self.policy,
            self.inference,
            self.memory,
            self.router,
            self.sleep,
            self.ask,
            self.plugins,
            self.providers,
            self.tasks,
            self.http,
        ):
            self.methods.add(collect(part))
        self.metrics.add_collector(self._collect_metrics)
        self._stopping = False
        self._server_done: anyio.Event | None = None  # created in run(): anyio needs the loop

    # --- introspection ---------------------------------------------------------------------

    def part_states(self) -> dict[str, PartState]:
        states = {name: part.state for name, part in self.parts.items()}
        return {**states, "server": self.server.state, "bus": PartState.RUNNING}  # the bus neither starts nor stops

    async def health_checks(self) -> dict[str, Check]:
        checks: dict[str, Check] = {}
        for name, part in self.parts.items():
            checks[name] = _check(await part.health())
            for check, health in (await part.named_checks()).items():
                checks[check] = _check(health)
        checks["server"] = _check(await self.server.health())
        uses = provider_uses(self.settings)
        for info in await self.plugins.infos():
            if info.kind == "tool":
                if info.state == "failed":  # plans cannot call it; the daemon runs on without it
                    checks[f"tool:{info.name}"] = Check(ok=True, detail=f"not loaded, failed at {info.failed_stage}: {info.error}")
                continue
            if (check := _plugin_check(info, uses.get(info.name, []))) is not None:
                checks[f"plugin:{info.name}"] = check
        return checks

    async def health_status(self) -> str:
        """ok, degraded or failing: what system.health says, without the checks (/healthz)."""
        return overall_status(await self.health_checks(), self.essential_parts)

    def _collect_metrics(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily("engram_bus_queue_depth", "Events waiting per subscriber.", labels=["subscription"])
        dropped = CounterMetricFamily(
            "engram_bus_events_dropped", "Events lost to overflow, per subscriber.", labels=["subscription"]
        )
        for sub in self.bus.subscriptions:
            depth.add_metric([sub.id], sub.depth)
            dropped.add_metric([sub.id], sub.dropped)
        yield depth
        yield dropped
        yield CounterMetricFamily("engram_bus_events_published", "Events published on the bus.", value=self.bus.published)
        up = GaugeMetricFamily("engram_part_up", "1 when the part is running.", labels=["part"])
        for name, state in self.part_states().items():
            up.add_metric([name], 1.0 if state is PartState.RUNNING else 0.0)
        yield up
        yield GaugeMetricFamily("engram_uptime_seconds", "Seconds since start.", value=time.monotonic() - self.started_monotonic)
        yield GaugeMetricFamily(
            "engram_frames_buffered_bytes",
            "Unparsed request bytes held beyond each connection's free allowance (server.max_buffered_bytes).",
            value=self.server.frame_budget.used,
        )

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        self._server_done = anyio.Event()
        os.umask(PRIVATE_UMASK)  # already set by the CLI; again for daemons embedded without it
        _raise_fd_limit()
        # Background work (sleep consolidation, index builds) runs Python in worker threads. A
        # thread that wants the interpreter lock gets it from a busy one only after the switch
        # interval, and the event loop needs it at every step of a request: at CPython's 5 ms
        # default a request behind a Python-heavy unit waited several intervals.
        sys.setswitchinterval(_SWITCH_INTERVAL)
        lock = StateLock(self.settings.state_dir)
        lock.acquire()
        try:
            async with AsyncExitStack() as stack:
                for part in self.parts.values():
                    await stack.enter_async_context(part)
                if self._otlp_held:
                    await self._allow_span_export()
                async with anyio.create_task_group() as tg:
                    await tg.start(self._serve)
                    await tg.start(self.http.serve)  # after the socket: both up before READY
                    # Handlers are in place before READY: a SIGTERM right after it must drain, not kill.
                    await tg.start(self._handle_signals)
                    if (interval := systemd.watchdog_interval()) is not None:
                        tg.start_soon(self._watchdog, interval)
                    self._announce_ready()
                    await self._server_done.wait()
                    # The socket is drained; HTTP requests in flight get the same grace period.
                    await self.http.drained(self.settings.server.drain_timeout)
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.tracer_provider.shutdown)
            lock.release()
            log.info("stopped")

    async def _allow_span_export(self) -> None:
        """Spans to an OTLP endpoint that is not loopback leave the machine: the policy's egress
        decision, as for a remote provider (provider ``otlp``, method ``tracing.export``, the
        daemon's own principal), must allow them, or the daemon does not start."""
        endpoint = self.settings.tracing.otlp_endpoint
        decision = await self.policy.authorize_egress(
            Principal.from_ids(os.getuid(), os.getgid(), os.getpid()),
            method=SPAN_EXPORT_METHOD,
            provider=SPAN_EXPORT_PROVIDER,
            locality="remote",
        )
        if not decision.allowed:
            raise StartupError(
                f"tracing.otlp_endpoint {endpoint} is not on this machine and the policy refuses the egress "
                f"(provider {SPAN_EXPORT_PROVIDER!r}, method {SPAN_EXPORT_METHOD!r}): {decision.reason}; "
                "allow it with an egress rule, or export to a collector on loopback"
            )
        start_export(self.tracer_provider, self.settings.tracing, self.settings.state_dir)
        log.info("span export allowed", endpoint=endpoint, rule=decision.rule)

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            await self.server.serve(task_status=task_status)
        finally:
            self._server_done.set()

    def _announce_ready(self) -> None:
        # Everything built during start lives as long as the daemon: move it out of the
        # collector's sight, so full collections (the cause of latency spikes) stay short.
        gc.freeze()
        socket_path = str(self.settings.socket_path)
        self.bus.publish(DaemonStarted(version=__version__, pid=os.getpid(), socket=socket_path))
        systemd.notify("READY=1", f"STATUS=serving on {socket_path}", f"MAINPID={os.getpid()}")
        log.info(
            "ready",
            version=__version__,
            socket=socket_path,
            state_dir=str(self.settings.state_dir),
            activated=self.server.activated,
            methods=len(self.methods),
            event_loop=running_loop_name(),
        )

    async def _watchdog(self, interval: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await anyio.sleep(interval)

    async def _handle_signals(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    try:
                        await self.reload()
                    except Conflict:
                        pass  # already logged and published; the old configuration stays
                    continue
                if self._stopping:
                    log.warning("second stop signal: cancelling in-flight requests now")
                    self.server.cancel()
                    continue
                await self._begin_stop(signal.Signals(signum).name)

    async def _begin_stop(self, reason: str) -> None:
        self._stopping = True
        log.info("stopping", reason=reason, in_flight=self.server.inflight)
        systemd.notify("STOPPING=1", f"STATUS=stopping ({reason})")
        self.bus.publish(DaemonStopping(reason=reason))
        self.http.stop_accepting()
        self.server.stop_accepting()
        with anyio.move_on_after(self.settings.server.drain_timeout) as drain:
            await self._server_done.wait()
        if drain.cancelled_caught:
            log.warning("drain timeout: cancelling in-flight requests", in_flight=self.server.inflight)
            self.server.cancel()

    async def reload(self) -> tuple[list[str], list[str]]:
        """Re-read the configuration; apply what can change live, report what needs a restart."""
        try:
            new = load_settings(self.config_file, **self.overrides)
        except ConfigError as exc:
            log.error("reload refused: invalid configuration; previous configuration stays", error=str(exc))
            self.bus.publish(ConfigReloaded(ok=False, error=str(exc)))
            raise Conflict(
                "configuration not reloaded; the previous configuration stays in force",
                reason="invalid_config",
                problems=[{"key": key, "problem": problem} for key, problem in exc.problems] or [str(exc)],
            ) from None
        old_flat, new_flat = _flatten(self.settings.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
        changed = sorted(key for key in old_flat.keys() | new_flat.keys() if old_flat.get(key) != new_flat.get(key))
        restart = [key for key in changed if any(key == p or key.startswith(p + ".") for p in RESTART_REQUIRED)]
        live = [key for key in changed if key not in restart]
        self.settings = self.settings.model_copy(
            update={
                "server": new.server.model_copy(update={"socket_group": self.settings.server.socket_group}),
                "bus": new.bus,
                "log": new.log,
                "policy": new.policy,
            }
        )
        self.bus.default_queue = self.settings.bus.subscriber_queue
        configure_logging(self.settings.log)
        log.info("configuration reloaded", changed=live, restart_required=restart)
        self.bus.publish(ConfigReloaded(ok=True, changed=live, restart_required=restart))
        await self.policy.reload(new.policy, trigger="reload")  # a broken file: Conflict, the old policy stays
        return live, restart


def _mcp_servers(settings: Settings, policy: Policy, bus: EventBus) -> McpTools | None:
    """The part of the MCP servers that ``tasks.mcp_servers`` names, or None when it names none.
    Imported here: the MCP client costs the daemon's start a noticeable import time, which only a
    configuration that uses it should pay."""
    if not settings.tasks.mcp_servers:
        return None
    from engram.tasks.mcp_tools import McpTools

    return McpTools(settings.tasks.mcp_servers, policy.tool_guard, policy, bus)


def _check(health: Health) -> Check:
    return Check(ok=health.ok, detail=health.detail)


def _plugin_check(info: PluginInfo, uses: list[str]) -> Check | None:
    """The health check of one provider plugin; None for one that is disabled.

    Only a provider that the configuration names (``uses``, see :mod:`engram.provider_usage`)
    can fail its check: a call may reach it. One that nothing names is reported as unused, with
    its state, and passes: an installed plugin that no one calls is no fault of the daemon's.
    """
    if info.state == "failed":
        ok, detail = False, f"failed at {info.failed_stage}: {info.error}"
    elif info.health is not None:
        ok, detail = info.health.ok, f"{info.state}, {'healthy' if info.health.ok else 'unhealthy'}: {info.health.detail}"
    else:
        return None
    if not uses:
        return Check(ok=True, detail=f"unused (no chain, route or plugins.providers table names it); {detail}")
    return Check(ok=ok, detail=f"used by {', '.join(uses)}; {detail}")


_SWITCH_INTERVAL = 0.001  # seconds; measured with engram bench sleep (clustering's Python passes)


def _raise_fd_limit() -> None:
    """Each client is a descriptor; the common soft limit of 1024 is too low for a server."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 65536), hard))
        except (ValueError, OSError):
            pass


async def serve(settings: Settings, config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> None:
    await Daemon(settings, config_file, overrides).run()
