"""Discovers, validates, starts and stops provider plugins and tool plugins.

Providers come from the ``engram.providers`` entry-point group, tools (:mod:`engram.plugins.tools`)
from ``engram.tools``; both follow the rules below.

A plugin that fails at any stage (import, configuration, construction, start) is recorded with
the stage and the error, reported in ``plugins.list``, logged and published as
``plugin.failed``; the daemon carries on without it.

Plugins run in the daemon's process but never on its event loop: each gets a thread with its own
loop (:mod:`engram.plugins.worker`), where its module is imported, its factory called and every
method run — start, stop, health and each capability's calls, ``async`` or plain. The daemon's loop
only awaits the outcome, under the timeout of the caller (``plugins.start_timeout`` for start and
stop, ``plugins.health_timeout``, the providers part's call and stream timeouts), so a plugin that
blocks holds up its own calls, which time out on time, and nothing else. Shutdown waits for a
stuck plugin a bounded time, then leaves its thread behind. What remains shared is the process:
a plugin can still exhaust its memory or crash it.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.metadata as md
import inspect
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import anyio
import structlog
from pydantic import BaseModel, Field, ValidationError

from engram.bus import EventBus
from engram.bus.events import PluginFailed, PluginLoaded
from engram.errors import InternalSignal, InvalidParams
from engram.lifecycle import Health, Part, PartState
from engram.plugins.settings import PluginSettings
from engram.plugins.isolation import IsolatedProvider, context_for_plugin_thread
from engram.plugins.protocol import (
    CAPABILITIES,
    CAPABILITY_METHODS,
    ENTRY_POINT_GROUP,
    CostHint,
    Provider,
    ProviderContext,
    ProviderHealth,
)
from engram.plugins.tools import TOOL_ENTRY_POINT_GROUP, TOOL_PREFIX, ToolContext, ToolInvalid, ToolPlugin, check_tool
from engram.plugins.worker import PluginThread
from engram.principal import Principal
from engram.server.methods import NoParams, RequestContext, Result, rpc

log = structlog.get_logger("engram.plugins")

State = Literal["running", "failed", "disabled", "stopped"]

# How long closing a plugin's thread waits for it to end, after its stop() returned or timed out.
# A thread still busy then is stuck in plugin code: it is left behind (a daemon thread).
THREAD_EXIT_GRACE = 1.0


class PluginInfo(BaseModel):
    name: str = Field(description="Entry-point name; the provider's name in routes and policies, or the tool's (plugin:<name> in plans).")
    kind: Literal["provider", "tool"] = Field(default="provider", description="Entry-point group: engram.providers or engram.tools.")
    entry_point: str = Field(description="module:attribute the entry point refers to.")
    distribution: str | None = None
    version: str | None = None
    state: State
    locality: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    health: ProviderHealth | None = None
    breaker: str | None = Field(default=None, description="Circuit breaker: closed, open or half_open (running providers).")
    cost: CostHint | None = Field(default=None, description="The provider's own cost estimate, when it gives one.")
    error: str | None = Field(default=None, description="Why the plugin is not running (state failed).")
    failed_stage: str | None = Field(default=None, description="import, config, construct, validate or start.")
    description: str | None = Field(default=None, description="What the tool does (running tools).")
    idempotent: bool | None = Field(default=None, description="Whether the tool may be retried (running tools).")


class PluginsListResult(Result):
    plugins: list[PluginInfo]


class PluginFailure(InternalSignal):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass
class _Entry:
    """One entry point of a plugin group, and how loading it went."""

    entry_point: md.EntryPoint
    thread: PluginThread | None = None
    state: State = "stopped"
    error: str | None = None
    stage: str | None = None

    kind: ClassVar[str]  # in log lines: "provider", "tool"

    @property
    def name(self) -> str:
        return self.entry_point.name

    @property
    def label(self) -> str:
        """Its name in events and logs."""
        return self.name

    @property
    def distribution(self) -> md.Distribution | None:
        return getattr(self.entry_point, "dist", None)


@dataclass
class _Plugin(_Entry):
    provider: IsolatedProvider | None = None
    kind: ClassVar[str] = "provider"


class LoadedTool:
    """A running tool plugin: its arguments are validated here, its code runs on its own thread."""

    def __init__(self, tool: ToolPlugin, thread: PluginThread) -> None:
        self.name = TOOL_PREFIX + tool.name
        self.description: str = tool.description
        self.params_schema: dict[str, Any] = tool.params.model_json_schema()  # what the planner shows
        self.idempotent: bool = tool.idempotent
        self._tool = tool
        self._thread = thread

    async def call(self, args: dict[str, Any], principal: Principal) -> Any:
        try:
            params = self._tool.params.model_validate(args)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise InvalidParams(f"{self.name}: {field or 'args'}: {first['msg']}", field=field or None) from exc
        return await self._thread.call(self._tool.call, params, ToolContext(principal))


@dataclass
class _Tool(_Entry):
    tool: LoadedTool | None = None
    kind: ClassVar[str] = "tool"

    @property
    def label(self) -> str:
        return TOOL_PREFIX + self.name  # plugin:<name>, as plans call it


def _check_provider(obj: Any, name: str) -> Provider:
    missing = [attr for attr in ("name", "locality", "capabilities", "start", "stop", "health") if not hasattr(obj, attr)]
    if missing:
        raise PluginFailure("validate", f"{type(obj).__name__} lacks {', '.join(missing)} of the provider protocol")
    if obj.locality not in ("local", "remote"):
        raise PluginFailure("validate", f"locality must be 'local' or 'remote', not {obj.locality!r}")
    unknown = set(obj.capabilities) - CAPABILITIES
    if unknown:
        raise PluginFailure("validate", f"unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
    for capability in obj.capabilities:
        lacking = [m for m in CAPABILITY_METHODS[capability] if not callable(getattr(obj, m, None))]
        if lacking:
            raise PluginFailure("validate", f"capability {capability!r} declared but {', '.join(lacking)} missing")
    return obj


def _accepts_context(factory: Any) -> bool:
    try:
        return "context" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # some callables have no inspectable signature
        return False


def _cost(provider: Any) -> CostHint | None:
    cost = getattr(provider, "cost", None)
    if cost is None:
        return None
    try:
        return cost if isinstance(cost, CostHint) else CostHint.model_validate(cost)
    except ValidationError:
        return None


class BreakerStates(Protocol):
    """The circuit breakers of the providers part, which ``plugins.list`` shows."""

    def state_of(self, provider: str) -> str: ...


class PluginManager(Part):
    """The plugins part: starts every provider plugin it finds, and stops them."""

    def __init__(
        self, settings: PluginSettings, bus: EventBus, context: ProviderContext | None = None, *, breakers: BreakerStates
    ) -> None:
        super().__init__("plugins")
        self._settings = settings
        self._bus = bus
        self._context = context
        self._breakers = breakers
        self._plugins: dict[str, _Plugin] = {}
        self._tools: dict[str, _Tool] = {}

    async def setup(self, stack: AsyncExitStack) -> None:
        stack.push_async_callback(self._stop_all)
        # Plugins run on threads of their own: what the context hands them must be used on this loop.
        context = self._context and context_for_plugin_thread(self._context, asyncio.get_running_loop())
        for entry_point in md.entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name in self._plugins:
                log.error("duplicate provider name; second one ignored", name=entry_point.name, value=entry_point.value)
                continue
            plugin = _Plugin(entry_point)
            self._plugins[plugin.name] = plugin
            if plugin.name in self._settings.disabled:
                plugin.state = "disabled"
                continue
            await self._start(plugin, context)
        for entry_point in md.entry_points(group=TOOL_ENTRY_POINT_GROUP):
            if entry_point.name in self._tools:
                log.error("duplicate tool name; second one ignored", name=entry_point.name, value=entry_point.value)
                continue
            tool = _Tool(entry_point)
            self._tools[tool.name] = tool
            if tool.label in self._settings.disabled:
                tool.state = "disabled"
                continue
            await self._load_tool(tool)

    async def _load_tool(self, tool: _Tool) -> None:
        timeout = self._settings.start_timeout
        tool.thread = thread = PluginThread(tool.label)
        try:
            await thread.start()
            with anyio.fail_after(timeout):  # importing and constructing run plugin code
                tool.tool = LoadedTool(await thread.call(self._construct_tool, tool), thread)
        except TimeoutError:
            await self._fail(tool, "construct", f"loading and construction took longer than {timeout:g} s")
        except PluginFailure as exc:
            await self._fail(tool, exc.stage, str(exc))
        except Exception as exc:  # third-party code may raise anything
            await self._fail(tool, "construct", f"{type(exc).__name__}: {exc}")
        else:
            tool.state = "running"
            dist = tool.distribution
            self._bus.publish(PluginLoaded(name=tool.label, version=dist.version if dist else None))
            log.info("tool loaded", name=tool.name)

    @staticmethod
    def _construct_tool(tool: _Tool) -> ToolPlugin:
        """Import, build and check the tool; runs on the tool's thread."""
        try:
            factory = tool.entry_point.load()
        except Exception as exc:
            raise PluginFailure("import", f"{type(exc).__name__}: {exc}") from exc
        try:
            obj = factory()
        except Exception as exc:
            raise PluginFailure("construct", f"{type(exc).__name__}: {exc}") from exc
        try:
            return check_tool(obj, tool.name)
        except ToolInvalid as exc:
            raise PluginFailure("validate", str(exc)) from exc

    def tools(self) -> dict[str, LoadedTool]:
        """The loaded tool plugins by their name in plans (``plugin:<name>``)."""
        return {t.tool.name: t.tool for t in self._tools.values() if t.state == "running" and t.tool is not None}

    async def _start(self, plugin: _Plugin, context: ProviderContext | None) -> None:
        timeout = self._settings.start_timeout
        plugin.thread = thread = PluginThread(plugin.name)
        stage = "construct"
        try:
            await thread.start()
            with anyio.fail_after(timeout):  # importing and constructing run plugin code too
                plugin.provider = await thread.call(self._construct, plugin, context, thread)
            stage = "start"
            with anyio.fail_after(timeout):
                await plugin.provider.start()
        except TimeoutError:
            what = "start" if stage == "start" else "loading and construction"
            await self._fail(plugin, stage, f"{what} took longer than {timeout:g} s")
        except PluginFailure as exc:
            await self._fail(plugin, exc.stage, str(exc))
        except Exception as exc:  # third-party code may raise anything
            await self._fail(plugin, stage, f"{type(exc).__name__}: {exc}")
        else:
            plugin.state = "running"
            dist = plugin.distribution
            self._bus.publish(PluginLoaded(name=plugin.name, version=dist.version if dist else None))
            log.info("provider started", name=plugin.name, locality=plugin.provider.locality)

    def _construct(self, plugin: _Plugin, context: ProviderContext | None, thread: PluginThread) -> IsolatedProvider:
        """Import, configure, build and check the provider; runs on the plugin's thread."""
        try:
            factory = plugin.entry_point.load()
        except Exception as exc:  # ImportError, SyntaxError, AttributeError, whatever the module does
            raise PluginFailure("import", f"{type(exc).__name__}: {exc}") from exc
        config: Any = self._settings.providers.get(plugin.name, {})
        model = getattr(factory, "config_model", None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            try:
                config = model.model_validate(config)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise PluginFailure(
                    "config", f"plugins.providers.{plugin.name}.{where}: {first['msg']}"
                ) from exc
        try:
            if context is not None and _accepts_context(factory):
                provider = factory(config, context=context)
            else:
                provider = factory(config)
        except Exception as exc:
            raise PluginFailure("construct", f"{type(exc).__name__}: {exc}") from exc
        return IsolatedProvider(_check_provider(provider, plugin.name), thread)

    async def _fail(self, entry: _Entry, stage: str, error: str) -> None:
        entry.state, entry.stage, entry.error = "failed", stage, error
        log.error(f"{entry.kind} failed", name=entry.name, stage=stage, error=error)
        self._bus.publish(PluginFailed(name=entry.label, stage=stage, error=error))
        await self._close_thread(entry)

    async def _close_thread(self, entry: _Entry) -> None:
        thread, entry.thread = entry.thread, None
        if thread is not None and not await thread.close(THREAD_EXIT_GRACE):
            log.error("plugin thread abandoned", name=entry.label,
                      detail=f"still busy in the plugin's code {THREAD_EXIT_GRACE:g} s after it was told to end")

    async def _stop_all(self) -> None:
        # Concurrently: shutdown then waits for the slowest plugin, not for the sum of them.
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as group:
                for plugin in self._plugins.values():
                    group.start_soon(self._stop, plugin)
                for tool in self._tools.values():
                    group.start_soon(self._close_thread, tool)

    async def _stop(self, plugin: _Plugin) -> None:
        if plugin.state == "running" and plugin.provider is not None:
            timeout = self._settings.start_timeout
            try:
                with anyio.fail_after(timeout):
                    await plugin.provider.stop()
            except TimeoutError:
                log.error("provider stop failed", name=plugin.name, error=f"no answer within {timeout:g} s")
            except Exception as exc:
                log.error("provider stop failed", name=plugin.name, error=f"{type(exc).__name__}: {exc}")
            plugin.state = "stopped"
        await self._close_thread(plugin)

    async def health(self) -> Health:
        # A plugin that failed or is unhealthy has a check of its own (plugin:<name>, system.health).
        counts = collections.Counter(plugin.state for plugin in [*self._plugins.values(), *self._tools.values()])
        found = ", ".join(f"{counts[state]} {state}" for state in ("running", "failed", "disabled", "stopped") if counts[state])
        return Health(self.state is PartState.RUNNING, f"plugins: {found or 'none installed'}")

    def providers(self) -> dict[str, Provider]:
        """The running providers, each an :class:`IsolatedProvider`: calls run on the plugin's thread."""
        return {p.name: p.provider for p in self._plugins.values() if p.state == "running" and p.provider}

    async def _health(self, plugin: _Plugin) -> ProviderHealth | None:
        if plugin.state != "running" or plugin.provider is None:
            return None
        try:
            with anyio.fail_after(self._settings.health_timeout):
                health = await plugin.provider.health()
            return health if isinstance(health, ProviderHealth) else ProviderHealth.model_validate(health)
        except TimeoutError:
            return ProviderHealth(ok=False, detail=f"no answer within {self._settings.health_timeout:g} s")
        except Exception as exc:
            return ProviderHealth(ok=False, detail=f"{type(exc).__name__}: {exc}")

    async def infos(self) -> list[PluginInfo]:
        infos = []
        for plugin in self._plugins.values():
            dist = plugin.distribution
            provider = plugin.provider
            infos.append(
                PluginInfo(
                    name=plugin.name,
                    entry_point=plugin.entry_point.value,
                    distribution=dist.metadata["Name"] if dist else None,
                    version=dist.version if dist else None,
                    state=plugin.state,
                    locality=provider.locality if provider else None,
                    capabilities=sorted(provider.capabilities) if provider else [],
                    health=await self._health(plugin),
                    breaker=self._breakers.state_of(plugin.name) if plugin.state == "running" else None,
                    cost=_cost(provider),
                    error=plugin.error,
                    failed_stage=plugin.stage,
                )
            )
        for tool in self._tools.values():
            dist = tool.distribution
            infos.append(
                PluginInfo(
                    name=tool.name, kind="tool", entry_point=tool.entry_point.value,
                    distribution=dist.metadata["Name"] if dist else None, version=dist.version if dist else None,
                    state=tool.state, error=tool.error, failed_stage=tool.stage,
                    description=tool.tool.description if tool.tool else None,
                    idempotent=tool.tool.idempotent if tool.tool else None,
                )
            )
        return infos

    @rpc("plugins.list", summary="Installed plugins, providers and tools: version, locality, capabilities, state, health.")
    async def list_plugins(self, ctx: RequestContext, params: NoParams) -> PluginsListResult:
        return PluginsListResult(plugins=await self.infos())
