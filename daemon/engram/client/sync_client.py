"""The blocking client: :class:`AsyncClient` run in a private event-loop thread.

Reusing the async client through an anyio blocking portal keeps one implementation of the
protocol; the thread is created on ``connect`` and ends on ``close``. The async client's
connection lives in one long-running portal task (its task group must be entered and left by the
same task); calls are separate portal tasks that only wait for their responses.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal, start_blocking_portal

from engram.client.async_client import AsyncClient, EventStream
from engram.client.sdk import SyncMethods


class Client(SyncMethods):
    """``with Client() as client: client.call("system.status")``, or typed:
    ``client.memory.recall(query="...", k=5)`` (the namespaces of :class:`SyncMethods`, generated)."""

    def __init__(
        self, socket: str | os.PathLike[str] | None = None, *, timeout: float = 30.0, connect_timeout: float = 5.0
    ) -> None:
        self._async = AsyncClient(socket, timeout=timeout, connect_timeout=connect_timeout)
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._holder: Future[None] | None = None
        self._release: anyio.Event | None = None

    @property
    def socket_path(self):
        return self._async.socket_path

    async def _hold_connection(self, *, task_status: TaskStatus[None]) -> None:
        async with self._async:
            self._release = anyio.Event()
            task_status.started()
            await self._release.wait()

    def connect(self) -> None:
        self._portal_cm = start_blocking_portal("asyncio")
        self._portal = self._portal_cm.__enter__()
        try:
            self._holder, _ = self._portal.start_task(self._hold_connection)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._portal_cm is None:
            return
        portal_cm, self._portal_cm = self._portal_cm, None
        try:
            if self._portal is not None and self._release is not None:
                self._portal.call(self._release.set)
                if self._holder is not None:
                    self._holder.result()
        finally:
            self._portal = None
            portal_cm.__exit__(None, None, None)

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _run(self, func, *args):
        if self._portal is None:
            raise RuntimeError("Client is not connected; use 'with Client() as client:' or connect()")
        return self._portal.call(func, *args)

    def call(self, method: str, params: dict[str, Any] | list[Any] | None = None, *, timeout: float | None = None) -> Any:
        return self._run(lambda: self._async.call(method, params, timeout=timeout))

    def notify(self, method: str, params: dict[str, Any] | list[Any] | None = None) -> None:
        self._run(self._async.notify, method, params)

    def batch(self, calls: list[tuple[str, Any]], *, timeout: float | None = None) -> list[Any]:
        return self._run(lambda: self._async.batch(calls, timeout=timeout))

    def subscribe(
        self, topics: list[str] | None = None, *, queue: int | None = None, overflow: str | None = None
    ) -> "SyncEventStream":
        stream = self._run(lambda: self._async.subscribe(topics, queue=queue, overflow=overflow))
        return SyncEventStream(self, stream)


class SyncEventStream:
    def __init__(self, client: Client, stream: EventStream) -> None:
        self._client = client
        self._stream = stream
        self.subscription = stream.subscription
        self.topics = stream.topics

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next event; raises TimeoutError after ``timeout`` s, StopIteration when closed."""
        try:
            return self._client._run(self._stream.receive, timeout)
        except StopAsyncIteration:
            raise StopIteration(self._stream.closed_reason) from None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            try:
                yield self.receive()
            except StopIteration:
                return

    def close(self) -> None:
        self._client._run(self._stream.aclose)

    def __enter__(self) -> SyncEventStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
