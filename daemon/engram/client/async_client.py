"""The async client: one connection, many concurrent calls, pushed events.

A reader task owns the receiving side of the socket and hands every response to the call that
waits for its id, and every ``events.event`` notification to its subscription's bounded stream.
Every wait has a timeout; a daemon that goes away fails every pending call with
:class:`DaemonUnreachable`.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import defaultdict, deque
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketStream

from engram.client.sdk import AsyncMethods
from engram.locations import default_socket_candidates
from engram.errors import DaemonUnreachable, EngramError, RPCError, Timeout, error_from_wire
from engram.server.framing import LineReader
from engram.server.jsonrpc import encode

MAX_RESPONSE_BYTES = 1024 * 1024 * 1024  # the daemon is trusted; this only stops runaway memory
EVENT_BUFFER = 4096
_EARLY_LIMIT = 1024


def resolve_socket(socket_path: str | os.PathLike[str] | None = None) -> list[Path]:
    """The socket(s) to try: the one given, else ``$ENGRAM_SOCKET``, else the usual places."""
    if socket_path is not None:
        return [Path(socket_path)]
    if env := os.environ.get("ENGRAM_SOCKET"):
        return [Path(env)]
    return default_socket_candidates()


class _Pending:
    __slots__ = ("done", "message")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.message: Any = None


class EventStream:
    """Events of one subscription; iterate it, and close it (or leave its ``async with``)."""

    def __init__(self, client: AsyncClient, subscription: str, topics: list[str]) -> None:
        self.client = client
        self.subscription = subscription
        self.topics = topics
        self.dropped_locally = 0  # events this client could not buffer (we read too slowly)
        self._send, self._receive = anyio.create_memory_object_stream[dict[str, Any]](EVENT_BUFFER)
        self.closed_reason: str | None = None

    def _deliver(self, event: dict[str, Any]) -> None:
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            self.dropped_locally += 1
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def _end(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        self._send.close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def receive(self, timeout: float | None = None) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            return await self.__anext__()

    async def aclose(self) -> None:
        if self.closed_reason is None:
            self._end("unsubscribed")
            try:
                await self.client.call("events.unsubscribe", {"subscription": self.subscription})
            except EngramError:
                pass  # the connection or the subscription is gone already: nothing to undo

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


class AsyncClient(AsyncMethods):
    """``async with AsyncClient() as client: await client.call("system.ping")``, or typed:
    ``await client.system.ping()`` (the namespaces of :class:`AsyncMethods`, generated)."""

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.candidates = resolve_socket(socket)
        self.socket_path: Path | None = None
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._stream: SocketStream | None = None
        self._reading: AsyncExitStack | None = None  # the read loop's task group, while connected
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._streams: dict[str, EventStream] = {}
        self._early: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self._send_lock = anyio.Lock()
        self._closed_reason: str | None = None

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def connect(self) -> None:
        tried = []
        for path in self.candidates:
            try:
                with anyio.fail_after(self.connect_timeout):
                    self._stream = await anyio.connect_unix(path)
            except TimeoutError:
                tried.append(f"{path} (no answer within {self.connect_timeout:g} s)")
                continue
            except OSError as exc:
                tried.append(f"{path} ({exc.strerror or exc})")
                continue
            self.socket_path = path
            break
        if self._stream is None:
            where = "; ".join(tried)
            raise DaemonUnreachable(f"engramd is not running or not reachable: tried {where}", where)
        reading = AsyncExitStack()
        tasks = await reading.enter_async_context(anyio.create_task_group())
        reading.callback(tasks.cancel_scope.cancel)  # at close: the read loop is cancelled, then awaited
        tasks.start_soon(self._read_loop)
        self._reading = reading

    async def aclose(self) -> None:
        if self._reading is None:
            return
        reading, self._reading = self._reading, None
        try:
            await reading.aclose()
        finally:
            if self._stream is not None:
                await anyio.aclose_forcefully(self._stream)
            self._fail_all("client closed")

    # --- receiving -------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        assert self._stream is not None
        reader = LineReader(self._stream, MAX_RESPONSE_BYTES)
        reason = "the daemon closed the connection"
        try:
            while True:
                line = await reader.read_line(None, 3600.0)
                if line is None:
                    break
                if line.strip():
                    self._on_message(json.loads(line))
        except (ValueError, TimeoutError) as exc:
            reason = f"bad data from the daemon: {exc}"
        finally:
            self._fail_all(reason)

    def _on_message(self, message: Any) -> None:
        if isinstance(message, list):
            for item in message:
                self._on_message(item)
            return
        if not isinstance(message, dict):
            return
        if "method" in message and "id" not in message:
            self._on_notification(message["method"], message.get("params") or {})
            return
        pending = self._pending.pop(message.get("id"), None) if isinstance(message.get("id"), int) else None
        if pending is not None:
            pending.message = message
            pending.done.set()
        elif message.get("id") is None and "error" in message:
            # An error the daemon could not tie to a request (connection refused, frame too
            # large): every waiting call on this connection learns of it.
            for pending in list(self._pending.values()):
                pending.message = message
                pending.done.set()
            self._pending.clear()

    def _on_notification(self, method: str, params: dict[str, Any]) -> None:
        sub_id = params.get("subscription")
        if not isinstance(sub_id, str):
            return
        stream = self._streams.get(sub_id)
        if method == "events.closed":
            if stream is not None:
                stream._end(str(params.get("reason", "closed")))
            return
        if stream is not None:
            stream._deliver(params)
        elif len(self._early[sub_id]) < _EARLY_LIMIT:
            # Events may arrive before the subscribe response that names their subscription.
            self._early[sub_id].append(params)

    def _fail_all(self, reason: str) -> None:
        self._closed_reason = self._closed_reason or reason
        error = {"id": None, "error": {"code": 0, "message": reason, "data": {"reason": "disconnected"}}}
        for pending in self._pending.values():
            pending.message = error
            pending.done.set()
        self._pending.clear()
        for stream in self._streams.values():
            stream._end(reason)

    # --- sending ---------------------------------------------------------------------------

    async def _send(self, message: Any) -> None:
        if self._stream is None or self._closed_reason is not None:
            raise DaemonUnreachable(
                f"not connected to engramd ({self._closed_reason or 'connect() first'})", str(self.socket_path)
            )
        try:
            async with self._send_lock:
                with anyio.fail_after(self.timeout):
                    await self._stream.send(encode(message))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise DaemonUnreachable(f"connection to {self.socket_path} broke: {exc}", str(self.socket_path)) from None

    def _result(self, message: Any) -> Any:
        if "error" in message:
            error = message["error"]
            if isinstance(error, dict) and error.get("code") == 0:
                raise DaemonUnreachable(str(error.get("message")), str(self.socket_path))
            raise error_from_wire(error)
        return message.get("result")

    async def _roundtrip(self, ids: list[int], message: Any, timeout: float | None) -> list[Any]:
        pendings = [self._pending.setdefault(i, _Pending()) for i in ids]
        limit = self.timeout if timeout is None else timeout
        try:
            await self._send(message)
            with anyio.fail_after(limit):
                for pending in pendings:
                    await pending.done.wait()
        except TimeoutError:
            raise Timeout(f"no answer from engramd within {limit:g} s", reason="client_timeout") from None
        finally:
            for i in ids:
                self._pending.pop(i, None)
        return [pending.message for pending in pendings]

    async def call(self, method: str, params: dict[str, Any] | list[Any] | None = None, *, timeout: float | None = None) -> Any:
        """Call ``method``; returns its result or raises the :class:`RPCError` it answered with."""
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        (response,) = await self._roundtrip([request_id], message, timeout)
        return self._result(response)

    async def notify(self, method: str, params: dict[str, Any] | list[Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self._send(message)

    async def batch(
        self, calls: list[tuple[str, dict[str, Any] | list[Any] | None]], *, timeout: float | None = None
    ) -> list[Any]:
        """Send calls as one batch; returns, in order, each result or the RPCError instance."""
        ids = [next(self._ids) for _ in calls]
        message = [
            {"jsonrpc": "2.0", "id": i, "method": method, **({"params": params} if params is not None else {})}
            for i, (method, params) in zip(ids, calls, strict=True)
        ]
        results: list[Any] = []
        for response in await self._roundtrip(ids, message, timeout):
            try:
                results.append(self._result(response))
            except RPCError as exc:
                results.append(exc)
        return results

    async def subscribe(
        self, topics: list[str] | None = None, *, queue: int | None = None, overflow: str | None = None
    ) -> EventStream:
        params: dict[str, Any] = {"topics": topics or ["*"]}
        if queue is not None:
            params["queue"] = queue
        if overflow is not None:
            params["overflow"] = overflow
        result = await self.call("events.subscribe", params)
        stream = EventStream(self, result["subscription"], result["topics"])
        self._streams[stream.subscription] = stream
        for event in self._early.pop(stream.subscription, ()):
            stream._deliver(event)
        return stream
