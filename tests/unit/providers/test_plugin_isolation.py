"""A plugin's thread: calls made there, timeouts that hold while it blocks, streams, a stuck thread
left behind, and daemon objects that a plugin reaches only on the daemon's loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from engram.plugins.isolation import IsolatedProvider, OnDaemonLoop, context_for_plugin_thread
from engram.plugins.protocol import ProviderContext
from engram.plugins.worker import PluginThread


@pytest.fixture
async def plugin_thread() -> AsyncIterator[PluginThread]:
    thread = PluginThread("test")
    await thread.start()
    yield thread
    await thread.close(grace=5)


async def test_calls_run_on_the_plugins_thread_async_or_not(plugin_thread: PluginThread) -> None:
    async def async_name() -> str:
        await anyio.sleep(0)
        return threading.current_thread().name

    def plain_name() -> str:
        return threading.current_thread().name

    assert await plugin_thread.call(async_name) == "plugin:test"
    assert await plugin_thread.call(plain_name) == "plugin:test"
    with pytest.raises(ZeroDivisionError):
        await plugin_thread.call(lambda: 1 / 0)


async def test_a_timeout_holds_while_the_plugin_blocks_and_cancels_the_call_after(plugin_thread: PluginThread) -> None:
    outcome: list[str] = []

    async def blocks_then_awaits() -> None:
        time.sleep(0.8)  # holds the plugin's loop: the timeout below must not wait for it
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise

    ticks = 0

    async def tick() -> None:  # the daemon's loop, running on while the plugin blocks
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as group:
        group.start_soon(tick)
        started = time.monotonic()
        with pytest.raises(TimeoutError), anyio.fail_after(0.1):
            await plugin_thread.call(blocks_then_awaits)
        waited = time.monotonic() - started
        group.cancel_scope.cancel()
    assert waited < 0.7 and ticks >= 3
    with anyio.fail_after(5):
        while not outcome:  # the plugin's loop gets control back after its sleep: then it is cancelled
            await anyio.sleep(0.02)
    assert outcome == ["cancelled"]


async def test_a_call_given_up_before_the_plugin_got_to_it_is_never_made(plugin_thread: PluginThread) -> None:
    made: list[str] = []
    with anyio.move_on_after(0.05):
        await plugin_thread.call(time.sleep, 0.4)  # holds the plugin's thread past both timeouts
    with pytest.raises(TimeoutError), anyio.fail_after(0.05):
        await plugin_thread.call(made.append, "late")  # queued behind the sleep, then given up
    assert await plugin_thread.call(made.append, "after") is None  # waits for the sleep to end
    assert made == ["after"]


async def test_a_stream_read_times_out_while_the_plugin_blocks(plugin_thread: PluginThread) -> None:
    async def slow_words() -> AsyncIterator[str]:
        time.sleep(0.4)
        yield "late"

    stream = plugin_thread.stream(slow_words)
    started = time.monotonic()
    with pytest.raises(TimeoutError), anyio.fail_after(0.05):
        await stream.__anext__()
    await stream.aclose()
    assert time.monotonic() - started < 0.35
    with pytest.raises(StopAsyncIteration):  # a stream given up half-way is over
        await stream.__anext__()


async def test_streams_stay_in_one_task_and_are_closed_on_the_plugins_thread(plugin_thread: PluginThread) -> None:
    closed: list[str] = []

    async def words() -> AsyncIterator[str]:
        with anyio.CancelScope():  # held across yields: every chunk must come from the same task
            try:
                for word in ("a", "b", "c"):
                    yield word
            finally:
                closed.append(threading.current_thread().name)

    def plain() -> Iterator[str]:
        yield from ("x", "y")

    assert [chunk async for chunk in plugin_thread.stream(words)] == ["a", "b", "c"]
    assert [chunk async for chunk in plugin_thread.stream(plain)] == ["x", "y"]

    stream = plugin_thread.stream(words)
    assert await stream.__anext__() == "a"
    await stream.aclose()  # read no further: the generator is closed where it runs
    with anyio.fail_after(5):
        while len(closed) < 2:
            await anyio.sleep(0.01)
    assert closed == ["plugin:test", "plugin:test"]


async def test_a_stuck_thread_is_left_behind_after_the_grace() -> None:
    thread = PluginThread("stuck")
    await thread.start()
    release = threading.Event()
    with anyio.move_on_after(0.05):
        await thread.call(release.wait)  # blocks the plugin's thread until released
    started = time.monotonic()
    assert await thread.close(grace=0.1) is False
    assert time.monotonic() - started < 1
    release.set()


class _Inference:
    """A stand-in for a daemon part: which thread its methods run on is what matters."""

    state = "running"

    def __init__(self) -> None:
        self.settings = type("Settings", (), {"threads": 2})()

    async def embed(self, texts: list[str]) -> tuple[str, int]:
        await anyio.sleep(0)
        return threading.current_thread().name, len(texts)

    def describe(self) -> str:
        return threading.current_thread().name


async def test_daemon_objects_in_the_context_are_used_on_the_daemons_loop(plugin_thread: PluginThread) -> None:
    context = context_for_plugin_thread(ProviderContext(inference=_Inference(), state_dir=Path("/s")), asyncio.get_running_loop())
    assert isinstance(context.inference, OnDaemonLoop) and context.state_dir == Path("/s")
    daemon_thread = threading.current_thread().name

    async def as_a_plugin_would() -> tuple[object, ...]:
        inference = context.inference
        return inference.state, await inference.embed(["a", "b"]), inference.describe(), inference.settings.threads

    assert await plugin_thread.call(as_a_plugin_would) == ("running", (daemon_thread, 2), daemon_thread, 2)
    with pytest.raises(AttributeError):
        context.inference.state = "stopped"


async def test_an_isolated_provider_reads_its_facts_once_and_calls_through_the_thread(plugin_thread: PluginThread) -> None:
    class Plugin:
        name, locality, capabilities = "p", "local", {"generate"}

        def generate(self, prompt: str, *, model: str | None = None) -> str:
            return f"{prompt} on {threading.current_thread().name}"

        async def stream_generate(self, prompt: str, *, model: str | None = None) -> AsyncIterator[str]:
            yield prompt

    provider = await plugin_thread.call(IsolatedProvider, Plugin(), plugin_thread)
    assert (provider.name, provider.locality, provider.capabilities, provider.cost) == ("p", "local", frozenset({"generate"}), None)
    assert await provider.generate("hi", model=None) == "hi on plugin:test"
    assert [c async for c in provider.stream_generate("hi")] == ["hi"]
