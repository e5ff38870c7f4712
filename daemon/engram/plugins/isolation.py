"""The two sides of a plugin's thread boundary.

Daemon to plugin: :class:`IsolatedProvider` is a provider as the daemon holds it (what
``PluginManager.providers()`` hands out). Each of its protocol methods runs the plugin's method on
the plugin's :class:`~engram.plugins.worker.PluginThread`, so every caller — the providers part,
the router, ``route.ask``, the plugin manager's start, stop and health — reaches plugin code only
there. What the daemon reads of a provider (name, locality, capabilities, cost) is read once, on
the plugin's thread, when the provider is built, and kept as plain values.

Plugin to daemon: the daemon's parts that :class:`~engram.plugins.protocol.ProviderContext` hands
to a factory (the inference part) are bound to the daemon's event loop and not thread-safe.
:func:`context_for_plugin_thread` wraps them in :class:`OnDaemonLoop`, which makes every access on
the daemon's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
from collections.abc import Callable
from functools import partial
from pathlib import PurePath
from typing import Any

from engram.plugins.protocol import ProviderContext
from engram.plugins.worker import PluginStream, PluginThread


class IsolatedProvider:
    """The provider protocol, each call made on the plugin's thread (see the module's docstring)."""

    def __init__(self, provider: Any, thread: PluginThread) -> None:
        # Built on the plugin's thread: these attributes may be properties, i.e. plugin code.
        self.name = str(provider.name)
        self.locality = provider.locality
        self.capabilities = frozenset(provider.capabilities)
        self.cost = getattr(provider, "cost", None)
        self._provider = provider
        self._thread = thread

    def __repr__(self) -> str:
        return f"IsolatedProvider({self._provider!r} on thread plugin:{self._thread.name})"

    async def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return await self._thread.call(_call_method, self._provider, method, args, kwargs)

    def _stream(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> PluginStream:
        return self._thread.stream(partial(_call_method, self._provider, method, args, kwargs))

    async def start(self) -> None:
        await self._call("start", (), {})

    async def stop(self) -> None:
        await self._call("stop", (), {})

    async def health(self) -> Any:
        return await self._call("health", (), {})

    async def embed(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("embed", args, kwargs)

    async def classify(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("classify", args, kwargs)

    async def generate(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("generate", args, kwargs)

    async def chat(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("chat", args, kwargs)

    def stream_generate(self, *args: Any, **kwargs: Any) -> PluginStream:
        return self._stream("stream_generate", args, kwargs)

    def stream_chat(self, *args: Any, **kwargs: Any) -> PluginStream:
        return self._stream("stream_chat", args, kwargs)


def _call_method(provider: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return getattr(provider, method)(*args, **kwargs)


# Immutable values: a plugin may hold and read them on any thread.
_PLAIN = (str, bytes, int, float, bool, type(None), PurePath, tuple, frozenset)


def on_daemon_loop(value: Any, loop: asyncio.AbstractEventLoop) -> Any:
    """``value`` as a plugin thread may use it: plain values as they are, objects behind :class:`OnDaemonLoop`."""
    return value if isinstance(value, _PLAIN) else OnDaemonLoop(value, loop)


def context_for_plugin_thread(context: ProviderContext, loop: asyncio.AbstractEventLoop) -> ProviderContext:
    """``context`` with each daemon object in it reachable from a plugin's thread."""
    fields = {f.name: on_daemon_loop(getattr(context, f.name), loop) for f in dataclasses.fields(context)}
    return dataclasses.replace(context, **fields)


class OnDaemonLoop:
    """A daemon object seen from a plugin's thread: every access to it runs on the daemon's loop.

    A coroutine method becomes a coroutine of the caller's loop that awaits the call made on the
    daemon's loop (cancelling it cancels that call); any other method, and reading an attribute,
    runs on the daemon's loop while the plugin's thread waits. An attribute that is itself an
    object comes wrapped the same way; what a call returns is the plugin's to keep, as it is.
    On the daemon's own loop the object is used directly.
    """

    __slots__ = ("_target", "_loop")

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_loop", loop)

    def __repr__(self) -> str:
        return f"OnDaemonLoop({self._target!r})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self._target).__name__} is the daemon's: a plugin reads it, it does not set it")

    def __getattr__(self, name: str) -> Any:
        value = self._run(getattr, self._target, name)
        if inspect.iscoroutinefunction(value):
            return partial(self._await, value)
        if callable(value):
            return partial(self._run, value)
        return on_daemon_loop(value, self._loop)

    def _on_daemon_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:  # no loop in this thread: a plugin's own worker thread
            return False

    def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._on_daemon_loop():
            return fn(*args, **kwargs)
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(fn(*args, **kwargs))
                except Exception as exc:
                    done.set_exception(exc)

        # The daemon's loop never waits on a plugin's thread, so waiting on it here cannot deadlock.
        self._loop.call_soon_threadsafe(run)
        return done.result()

    async def _await(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._on_daemon_loop():
            return await fn(*args, **kwargs)
        future = asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), self._loop)
        return await asyncio.wrap_future(future)
