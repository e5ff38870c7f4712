"""``GET /v1/events``: the bus followed over HTTP, as server-sent events.

A subscription over HTTP is exactly an ``events.subscribe`` run through the request chain as the
token's principal: the policy decides whether it may subscribe at all, the bus applies the same
audience rule as on the socket (someone other than the owner sees only the events about
themselves), and the request is audited. What differs is the transport: the subscription's
pushes go to the response instead of the socket, and it ends when the client goes away.

A browser's ``EventSource`` cannot send an ``Authorization`` header, and a token in the URL would
end up in histories and logs, so the console reads this stream with ``fetch()`` (docs/console.md).

Bounded all the way: the bus buffers at most ``queue`` events for the subscription (drop-oldest
by default, ``dropped`` in each event counts the losses), and between the subscription's pump and
the response at most ``http.stream_buffer`` events wait; a client that reads slowly makes the
bus drop, never the daemon grow.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import ObjectSendStream
from starlette.datastructures import Headers
from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from engram.bus.methods import CLOSED_NOTIFICATION, EVENT_NOTIFICATION
from engram.errors import InvalidParams, RPCError
from engram.http.connection import HttpConnection
from engram.http.openai import status_of
from engram.principal import Principal
from engram.server.jsonrpc import encode

if TYPE_CHECKING:
    from engram.http.app import GatewayApp

__all__ = ["HEARTBEAT_SECONDS", "EventStream", "event_stream"]

log = structlog.get_logger("engram.http")

HEARTBEAT_SECONDS = 15.0  # a comment line this often: proxies keep the stream, a gone client is noticed
MAX_TOPICS = 32  # as events.subscribe


class StreamConnection(HttpConnection):
    """The connection an HTTP event subscription belongs to: its pushes go to the response, its
    pump runs in the response's task group (it lives as long as the stream)."""

    def __init__(
        self, conn_id: int, principal: Principal, pushes: ObjectSendStream[tuple[str, dict[str, Any]]],
        traceparent: str | None = None,
    ) -> None:
        super().__init__(conn_id, principal, traceparent=traceparent)
        self._pushes = pushes
        self.pumps: list[Callable[[], Awaitable[None]]] = []

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        if method in (EVENT_NOTIFICATION, CLOSED_NOTIFICATION):
            await self._pushes.send((method, params))

    def start_soon(self, func: Callable[[], Awaitable[None]], name: str) -> None:
        self.pumps.append(func)


def _params(request: HttpRequest) -> dict[str, Any]:
    """``topics`` (comma-separated patterns, default every topic), ``queue`` and ``overflow`` from
    the query; events.subscribe's params model validates them in the chain."""
    params: dict[str, Any] = {}
    topics = request.query_params.get("topics")
    if topics is not None:
        patterns = [t.strip() for t in topics.split(",")]
        if not all(patterns):
            raise InvalidParams("topics: an empty pattern (topics=a.*,b.* separates patterns by commas)", field="topics",
                                reason="empty_topic")
        if len(patterns) > MAX_TOPICS:
            raise InvalidParams(f"topics: {len(patterns)} patterns; at most {MAX_TOPICS}", field="topics",
                                reason="too_many_topics")
        params["topics"] = patterns
    queue = request.query_params.get("queue")
    if queue is not None:
        if not queue.isdigit():
            raise InvalidParams("queue: not a whole number of events", field="queue", reason="bad_queue")
        params["queue"] = int(queue)
    overflow = request.query_params.get("overflow")
    if overflow is not None:
        params["overflow"] = overflow
    return params


def _error(error: RPCError) -> Response:
    """Refused before the stream starts (bad params, policy): a status and the error, as
    ``/v1/methods/{method}`` answers."""
    return Response(encode({"error": error.to_wire()}), status_of(error), media_type="application/json")


def _sse(kind: str, payload: Any) -> bytes:
    return f"event: {kind}\n".encode() + b"data: " + encode(payload).rstrip(b"\n") + b"\n\n"


class EventStream(Response):
    """The stream: a ``subscribed`` event (the subscription and the topics it matched), then an
    ``event`` per bus event, and a ``closed`` event if the bus ends it (overflow policy ``disconnect``)."""

    media_type = "text/event-stream"

    def __init__(self, app: GatewayApp, principal: Principal, params: dict[str, Any]) -> None:
        # Not Response.__init__: its headers would carry the content-length of an empty body.
        self.status_code, self.background = 200, None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
                            (b"x-accel-buffering", b"no")]
        self._app, self._principal, self._params = app, principal, params

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app
        pushes_in, pushes_out = anyio.create_memory_object_stream[tuple[str, dict[str, Any]]](app.settings.stream_buffer)
        # The gateway numbers its connections; this one takes the next number.
        conn = StreamConnection(app.connection(self._principal).id, self._principal, pushes_in,
                                Headers(scope=scope).get("traceparent"))
        try:
            try:
                subscribed = await app.call(conn, "events.subscribe", self._params)
            except RPCError as error:
                await _error(error)(scope, receive, send)
                return
            log.info("http event stream opened", subscription=subscribed["subscription"], uid=self._principal.uid,
                     topics=len(subscribed["topics"]))
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": _sse("subscribed", subscribed), "more_body": True})
            sent = 0
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, conn, pushes_in)
                tg.start_soon(self._watch_disconnect, receive, tg.cancel_scope)
                async with pushes_out:
                    while True:
                        with anyio.move_on_after(HEARTBEAT_SECONDS):
                            try:
                                method, params = await pushes_out.receive()
                            except anyio.EndOfStream:  # the subscription ended (the daemon is stopping)
                                break
                            kind = "event" if method == EVENT_NOTIFICATION else "closed"
                            await send({"type": "http.response.body", "body": _sse(kind, params), "more_body": True})
                            sent += 1
                            if kind == "closed":
                                break
                            continue
                        await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
            log.info("http event stream ended", subscription=subscribed["subscription"], sent=sent)
        finally:
            conn.close()  # ends the subscription (bus.unsubscribe), whatever ended the stream

    @staticmethod
    async def _pump(conn: StreamConnection, pushes: ObjectSendStream[tuple[str, dict[str, Any]]]) -> None:
        """The subscription's pump (events.subscribe's), then the end of the stream it feeds."""
        async with pushes:
            for pump in conn.pumps:
                await pump()

    @staticmethod
    async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()


async def event_stream(app: GatewayApp, request: HttpRequest) -> Response:
    principal = app.authenticate(request)
    try:
        params = _params(request)
    except RPCError as error:
        return _error(error)
    return EventStream(app, principal, params)
