"""A plugin's own thread and event loop: where every call into the plugin's code runs.

A provider is third-party code. It may block — ``time.sleep``, a synchronous HTTP client, a model
loaded without ``await`` — inside an ``async def``, or be synchronous outright. On the daemon's
event loop one such call would stall every connection and every timeout, since a timeout is only
noticed when the loop gets control back. So each plugin gets a thread running its own asyncio loop
(under ``anyio.run``: anyio works there as it does anywhere), and the daemon's loop only *waits*
for the outcome of a call, the way it waits for I/O:

* :meth:`PluginThread.call` hands a call to the plugin's loop with ``call_soon_threadsafe``, which
  never blocks however busy that loop is, and awaits its outcome. A timeout or cancellation on the
  daemon's side ends the wait at once; the call is then cancelled on the plugin's loop as soon as
  that loop gets control back, or never made if it had not begun (no late calls pile up behind a
  plugin that blocks).
* :meth:`PluginThread.stream` drives one of the plugin's iterators (async or plain) from a single
  task on the plugin's loop, one chunk per request: an async generator that keeps a cancel scope
  or an ``async with`` open across its ``yield`` stays in the task that entered it.
* Each call (and each stream) runs in the OpenTelemetry context of the daemon-side caller, handed
  over explicitly with the call: the provider-call span current there is current in the plugin's
  task too, so the plugin's HTTP client sends its ``traceparent`` (:func:`engram.plugins.locality.http_client_options`).
* :meth:`PluginThread.close` ends the loop and waits for the thread a bounded time; a thread still
  stuck in plugin code is left behind. It is a daemon thread, so it does not hold up the exit.

anyio's ``BlockingPortal`` does the same hand-over, but submitting to it waits
(``from_thread.run_sync``) until the portal's loop has taken the task: the daemon's loop would wait
on a plugin's loop that may be stuck. The bridges here are asyncio's, as the daemon runs on asyncio
(``anyio.run``'s default backend).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Callable
from typing import Any

import anyio
from opentelemetry import context as otel_context

from engram.errors import InternalSignal

# What the stream pump answers when the plugin's iterator is exhausted, and what the daemon's side
# sends it when it wants no more chunks.
_END = object()
_CLOSE = object()


class PluginThreadStopped(InternalSignal, RuntimeError):
    """A call was made after the plugin's thread ended (stopped, or left behind stuck)."""


class PluginThread:
    """One plugin's thread and the asyncio loop it runs; ``start`` it before the first call."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop_ready: concurrent.futures.Future[asyncio.AbstractEventLoop] = concurrent.futures.Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None  # set on the plugin's loop: its anyio.run returns
        self._thread = threading.Thread(target=self._run, name=f"plugin:{name}", daemon=True)

    async def start(self) -> None:
        self._thread.start()
        self._loop = await asyncio.wrap_future(self._loop_ready)

    def _run(self) -> None:
        try:
            anyio.run(self._serve, backend="asyncio")
        except BaseException as exc:  # the loop could not even start: the daemon's start() says why
            if not self._loop_ready.done():
                self._loop_ready.set_exception(exc)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self._loop_ready.set_result(asyncio.get_running_loop())
        await self._stop.wait()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed() or not self._thread.is_alive():
            raise PluginThreadStopped(f"plugin {self.name}'s thread is not running")
        return loop

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the plugin's thread, awaited there when it returns an awaitable.

        Cancelling the caller (``anyio.fail_after`` included) returns at once; the call is then
        cancelled on the plugin's loop when that loop next gets control, or never started if it
        had not started yet.
        """
        loop = self._running_loop()
        call = _PluginCall(fn, args, kwargs)
        loop.call_soon_threadsafe(call.start)
        try:
            return await asyncio.wrap_future(call.outcome)
        except BaseException:
            if not call.outcome.done():  # the caller gave up while the call runs
                _cancel_soon(loop, call)
            raise

    def stream(self, open_iterator: Callable[[], Any]) -> PluginStream:
        """The chunks of the iterator ``open_iterator()`` returns, opened and read on the plugin's thread."""
        return PluginStream(self._running_loop(), open_iterator)

    async def close(self, grace: float) -> bool:
        """End the plugin's loop; True once the thread has ended, False if it is still busy after
        ``grace`` seconds (then it is left to itself)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop has already closed
                pass
        if self._thread.ident is not None and self._thread.is_alive():
            await anyio.to_thread.run_sync(self._thread.join, grace)
        return not self._thread.is_alive()


class _PluginCall:
    """One call into a plugin. ``outcome`` is the daemon's to await; the methods run on the plugin's loop."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._task: asyncio.Task[Any] | None = None
        # Made on the daemon's side: the caller's trace context (its current span), for the call.
        # asyncio would run the hand-over callback in a copy of the caller's whole context anyway;
        # taking the trace context by name says what the plugin's side is meant to see.
        self._trace_context = otel_context.get_current()

    def start(self) -> None:
        # A caller that gave up before the plugin's loop got here (it was busy) cancelled the
        # outcome: the call is not made at all, rather than late, for nobody.
        if not self.outcome.set_running_or_notify_cancel():
            return
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(self._settle)

    async def _run(self) -> Any:
        # The task has a context of its own (a copy), so what is attached here ends with it.
        otel_context.attach(self._trace_context)
        result = self._fn(*self._args, **self._kwargs)  # a plain ``def`` method runs (and may block) here
        if inspect.isawaitable(result):
            result = await result
        return result

    def cancel(self) -> None:
        if not self.outcome.cancel() and self._task is not None:  # not pending: it has started
            self._task.cancel()

    def _settle(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            # Cancelled on the daemon's behalf (then nobody awaits this any more) or by the plugin itself.
            self.outcome.set_exception(RuntimeError("the call was cancelled in the plugin"))
        elif (exc := task.exception()) is not None:
            self.outcome.set_exception(exc)
        else:
            self.outcome.set_result(task.result())


def _cancel_soon(loop: asyncio.AbstractEventLoop, call: _PluginCall) -> None:
    try:
        loop.call_soon_threadsafe(call.cancel)
    except RuntimeError:  # the plugin's loop has closed: nothing of the call is left to cancel
        pass


class PluginStream:
    """The daemon's side of a plugin's stream, an async iterator: each ``__anext__`` asks the pump
    on the plugin's loop for one chunk, so the plugin produces no faster than the daemon reads.

    ``aclose`` tells the pump to close the plugin's iterator and does not wait for it. A read given
    up half-way (timeout, cancellation) cancels the pump: the iterator cannot be resumed after it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, open_iterator: Callable[[], Any]) -> None:
        self._loop = loop
        self._open = open_iterator
        self._requests: asyncio.Queue[Any] = asyncio.Queue()  # used on the plugin's loop only
        self._pump: _PluginCall | None = None
        self._done = False

    def __aiter__(self) -> PluginStream:
        return self

    def _send(self, request: Any) -> None:
        self._loop.call_soon_threadsafe(self._requests.put_nowait, request)

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        if self._pump is None:
            self._pump = _PluginCall(_pump, (self._open, self._requests), {})
            self._loop.call_soon_threadsafe(self._pump.start)
        reply: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._send(reply)
        try:
            chunk = await asyncio.wrap_future(reply)
        except BaseException as exc:
            self._done = True
            if not isinstance(exc, Exception):  # given up half-way: no later read can follow this one
                _cancel_soon(self._loop, self._pump)
            raise
        if chunk is _END:
            self._done = True
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        if self._pump is not None and not self._pump.outcome.done():
            try:
                self._send(_CLOSE)
            except RuntimeError:  # the plugin's loop has closed, and the iterator with it
                pass
        self._done = True


async def _pump(open_iterator: Callable[[], Any], requests: asyncio.Queue[Any]) -> None:
    """On the plugin's loop: open the iterator on the first request, then one chunk per request."""
    iterator: Any = None
    try:
        while True:
            reply = await requests.get()
            if reply is _CLOSE or not reply.set_running_or_notify_cancel():
                return
            try:
                if iterator is None:
                    iterator = open_iterator()
                    if inspect.isawaitable(iterator):  # an ``async def`` that returns an iterator
                        iterator = await iterator
                chunk = await _next_chunk(iterator)
            except Exception as exc:
                reply.set_exception(exc)
                return
            reply.set_result(chunk)
            if chunk is _END:
                return
    finally:
        await _close_iterator(iterator)


async def _next_chunk(iterator: Any) -> Any:
    if hasattr(iterator, "__anext__"):
        try:
            return await iterator.__anext__()
        except StopAsyncIteration:
            return _END
    return next(iterator, _END)  # a plain iterator or generator (may block: this is its thread)


async def _close_iterator(iterator: Any) -> None:
    try:
        if hasattr(iterator, "aclose"):
            await iterator.aclose()
        elif hasattr(iterator, "close"):
            iterator.close()
    except Exception:  # the stream's outcome is settled: a failing close changes nothing for the daemon
        pass
