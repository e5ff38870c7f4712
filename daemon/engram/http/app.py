"""The gateway's endpoints: a Starlette application over the daemon's request chain.

Every endpoint but ``/healthz`` (and ``/metrics`` with ``http.metrics_public``) needs a bearer
token; the token's principal then runs each request through the same chain as the socket's
clients (policy, params validation, audit, metrics, tracing, deadline). Bodies are read with a
size limit and a time limit, and parsed by the socket's parser under the same limits
(:func:`engram.server.jsonrpc.parse_json`).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import structlog
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from engram.errors import InternalError, InternalSignal, InvalidParams, InvalidRequest, PolicyDenied, RPCError
from engram.http import openai
from engram.http.connection import HttpConnection
from engram.http.console_site import ConsoleSite
from engram.http.events import event_stream
from engram.http.ports import HealthStatus, MetricsText, RequestChain
from engram.http.settings import HttpSettings
from engram.http.tokens import TokenStore
from engram.principal import Principal
from engram.server.boundary import check_values
from engram.server.jsonrpc import (
    LARGE_FRAME,
    Invalid,
    Request,
    encode,
    error_response,
    parse_frame,
    parse_json,
    method_request,
    result_response,
    with_traceparent,
)
from engram.server.params import params_error

__all__ = ["GatewayApp"]

log = structlog.get_logger("engram.http")

JSON = "application/json"
Body = TypeVar("Body", bound=BaseModel)
# After a body left unread (too large, too slow) the connection cannot carry another request.
_CLOSE = {"Connection": "close"}


class Refusal(InternalSignal):
    """An answer given before the request reaches the chain (401, 408, 413, 415)."""

    def __init__(self, status: int, error: RPCError, headers: dict[str, str] | None = None) -> None:
        super().__init__(error.message)
        self.status, self.error, self.headers = status, error, headers or {}


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    try:
        content = encode(body)
    except (ValueError, TypeError, RecursionError) as exc:  # a handler bug: NaN or a non-JSON object
        error = InternalError(f"response could not be encoded ({type(exc).__name__})", reason="unencodable_response")
        return Response(encode({"error": error.to_wire()}), 500, media_type=JSON)
    return Response(content, status, headers=headers, media_type=JSON)


def _unauthenticated(message: str, reason: str) -> Refusal:
    challenge = 'Bearer realm="engram"' + ("" if reason == "no_token" else ', error="invalid_token"')
    return Refusal(401, PolicyDenied(message, reason=reason), {"WWW-Authenticate": challenge})


class GatewayApp:
    """The endpoints and what they share: the token store, the request chain, the limits."""

    def __init__(
        self,
        settings: HttpSettings,
        tokens: TokenStore,
        chain: RequestChain,
        max_json_depth: Callable[[], int],
        health: HealthStatus,
        metrics_text: MetricsText,
        requests: Counter,
        now: Callable[[], Any],
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.chain = chain
        self.max_json_depth = max_json_depth
        self.health = health
        self.metrics_text = metrics_text
        self.requests = requests  # engram_http_requests_total{endpoint, status}
        self.now = now
        self._ids = itertools.count(1)
        self.console = ConsoleSite()
        # Requests (batch members included) running at once through the chain from HTTP.
        self.running = anyio.CapacityLimiter(settings.max_connections)
        self.large_bodies = anyio.CapacityLimiter(1)  # large bodies parsed at once, in worker threads

    def app(self) -> Starlette:
        routes = [
            Route("/rpc", self._counted("rpc", self.rpc), methods=["POST"]),
            Route("/v1/methods/{method:str}", self._counted("methods", self.method), methods=["POST"]),
            Route("/v1/models", self._counted("models", self.models), methods=["GET"]),
            Route("/v1/embeddings", self._counted("embeddings", self.embeddings), methods=["POST"]),
            Route("/v1/chat/completions", self._counted("chat", self.chat), methods=["POST"]),
            Route("/metrics", self._counted("metrics", self.metrics), methods=["GET"]),
            Route("/healthz", self._counted("healthz", self.healthz), methods=["GET"]),
            Route("/v1/events", self._counted("events", lambda request: event_stream(self, request)), methods=["GET"]),
            # The web console (docs/console.md): static files only, no token needed to load them.
            Route("/", self._counted("console", self.console.index), methods=["GET"]),
            Route("/console/{name:str}", self._counted("console", self.console.asset), methods=["GET"]),
        ]
        return Starlette(routes=routes)

    def _counted(self, name: str, endpoint: Callable[[HttpRequest], Awaitable[Response]]) -> Callable[[HttpRequest], Awaitable[Response]]:
        counter = self.requests

        async def run(request: HttpRequest) -> Response:
            try:
                response = await endpoint(request)
            except Refusal as refusal:
                log.info("http request refused", endpoint=name, status=refusal.status, reason=refusal.error.reason)
                body = (
                    openai.openai_error(refusal.error) if name in ("models", "embeddings", "chat")
                    else {"jsonrpc": "2.0", "id": None, "error": refusal.error.to_wire()}
                )
                response = _json(refusal.status, body, refusal.headers)
            counter.labels(name, str(response.status_code)).inc()
            return response

        return run

    # --- what every endpoint does first -------------------------------------------------------

    def authenticate(self, request: HttpRequest) -> Principal:
        header = request.headers.get("authorization")
        if header is None:
            raise _unauthenticated("a bearer token is needed (engram token create)", "no_token")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise _unauthenticated("the Authorization header must be 'Bearer TOKEN'", "bad_token")
        token = self.tokens.find(presented.strip())
        if token is None:
            raise _unauthenticated("unknown or revoked token", "bad_token")
        if token.expired(self.now()):
            raise _unauthenticated(f"token {token.name!r} has expired", "token_expired")
        return self.tokens.principal(token)

    async def body(self, request: HttpRequest) -> bytes:
        """The request body, JSON only, at most http.max_body_bytes, within http.read_timeout."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != JSON:
            raise Refusal(415, InvalidRequest(f"the body must be {JSON}, not {media or 'unlabelled'}",
                                              reason="unsupported_media_type"))
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise self._too_large(limit)
        chunks, size = [], 0
        with anyio.move_on_after(self.settings.read_timeout) as timer:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise self._too_large(limit)
                chunks.append(chunk)
        if timer.cancelled_caught:
            raise Refusal(408, InvalidRequest(f"the body took longer than {self.settings.read_timeout} s to arrive",
                                              reason="slow_body"), _CLOSE)
        return b"".join(chunks)

    @staticmethod
    def _too_large(limit: int) -> Refusal:
        return Refusal(413, InvalidRequest(f"body larger than the limit of {limit} bytes", reason="body_too_large", limit=limit),
                       _CLOSE)

    async def parse(self, body: bytes) -> Any:
        if len(body) <= LARGE_FRAME:
            return parse_json(body, self.max_json_depth())
        return await anyio.to_thread.run_sync(parse_json, body, self.max_json_depth(), True, limiter=self.large_bodies)

    def connection(self, principal: Principal, chunks: Any = None, traceparent: str | None = None) -> HttpConnection:
        return HttpConnection(next(self._ids), principal, chunks, traceparent)

    async def call(self, conn: HttpConnection, method: str, params: Any, large: bool = False) -> Any:
        request = with_traceparent(method_request(method, params, large), conn.traceparent)
        async with self.running:
            return await self.chain.dispatch(request, conn.principal, conn)

    # --- engram's own methods -------------------------------------------------------------------

    async def rpc(self, request: HttpRequest) -> Response:
        """JSON-RPC 2.0, single or batch, as on the socket (HTTP status 200 whatever the errors)."""
        principal = self.authenticate(request)
        body = await self.body(request)
        try:
            if len(body) <= LARGE_FRAME:
                messages, is_batch = parse_frame(body, self.max_json_depth())
            else:
                messages, is_batch = await anyio.to_thread.run_sync(
                    parse_frame, body, self.max_json_depth(), True, limiter=self.large_bodies
                )
        except RPCError as error:
            return _json(200, error_response(None, error))
        conn = self.connection(principal, traceparent=request.headers.get("traceparent"))
        responses: list[dict[str, Any] | None] = [None] * len(messages)

        async def answer(index: int, message: Request) -> None:
            async with self.running:
                try:
                    result = await self.chain.dispatch(with_traceparent(message, conn.traceparent), conn.principal, conn)
                    response = result_response(message.id, result)
                except RPCError as error:
                    response = error_response(message.id, error)
            responses[index] = None if message.is_notification else response

        try:
            async with anyio.create_task_group() as members:
                for index, message in enumerate(messages):
                    if isinstance(message, Invalid):
                        responses[index] = error_response(message.id, message.error)
                    else:
                        members.start_soon(answer, index, message)
        finally:
            conn.close()
        answered = [response for response in responses if response is not None]
        if not answered:
            return Response(status_code=204)  # notifications only: nothing to answer
        return _json(200, answered if is_batch else answered[0])

    async def method(self, request: HttpRequest) -> Response:
        """One method, its params as the body; its result, or its error with a mapped status."""
        principal = self.authenticate(request)
        body = await self.body(request)
        name = request.path_params["method"]
        conn = self.connection(principal, traceparent=request.headers.get("traceparent"))
        try:
            params = await self.parse(body) if body.strip() else None
            if params is not None and not isinstance(params, (dict, list)):
                raise InvalidRequest("the body (the params) must be a JSON object or array", reason="bad_params")
            result = await self.call(conn, name, params, large=len(body) > LARGE_FRAME)
        except RPCError as error:
            return _json(openai.status_of(error), {"error": error.to_wire()})
        finally:
            conn.close()
        return _json(200, result)

    # --- OpenAI-compatible ------------------------------------------------------------------------

    async def openai_body(self, request: HttpRequest, model: type[Body]) -> Body:
        raw = await self.parse(await self.body(request))
        if not isinstance(raw, dict):
            raise InvalidRequest("the body must be a JSON object", reason="not_an_object")
        check_values(raw)
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            raise params_error(exc) from None

    async def models(self, request: HttpRequest) -> Response:
        """engram (the chat chain), the embedding models, the running chat providers and the
        routes: each list the caller may read (one the policy refuses it is left out)."""
        principal = self.authenticate(request)
        conn = self.connection(principal, traceparent=request.headers.get("traceparent"))

        async def listed(method: str, key: str) -> list[dict[str, Any]]:
            try:
                return (await self.call(conn, method, None))[key]
            except PolicyDenied:
                return []

        created = int(self.now().timestamp())
        try:
            models = await listed("models.list", "models")
            plugins = await listed("plugins.list", "plugins")
            routes = await listed("route.stats", "routes")
        except RPCError as error:
            return _json(openai.status_of(error), openai.openai_error(error))
        finally:
            conn.close()
        ids = [openai.CHAIN_MODEL]
        ids += [m["name"] for m in models if m["task"] == "embed"]
        ids += [
            f"{openai.PROVIDER_PREFIX}{p['name']}" for p in plugins
            if p.get("kind") == "provider" and p.get("state") == "running" and "chat" in p.get("capabilities", [])
        ]
        ids += [f"{openai.ROUTE_PREFIX}{r['route']}" for r in routes]
        data = [{"id": name, "object": "model", "created": created, "owned_by": "engram"} for name in ids]
        return _json(200, {"object": "list", "data": data})

    async def embeddings(self, request: HttpRequest) -> Response:
        principal = self.authenticate(request)
        conn = self.connection(principal, traceparent=request.headers.get("traceparent"))
        try:
            body = await self.openai_body(request, openai.EmbeddingsBody)
            texts = [body.input] if isinstance(body.input, str) else body.input
            params = {"texts": texts, "output_format": "b64"}
            if body.model != openai.CHAIN_MODEL:
                params["model"] = body.model
            result = await self.call(conn, "infer.embed", params)
            if body.dimensions is not None and body.dimensions != result["dim"]:
                raise InvalidParams(f"dimensions: the model gives {result['dim']}, not {body.dimensions}", field="dimensions")
        except RPCError as error:
            return _json(openai.status_of(error), openai.openai_error(error))
        finally:
            conn.close()
        return _json(200, openai.embeddings_answer(result, body.encoding_format))

    async def chat(self, request: HttpRequest) -> Response:
        principal = self.authenticate(request)
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        try:
            body = await self.openai_body(request, openai.ChatCompletionBody)
            method, params = openai.chat_call(body, completion_id)
        except RPCError as error:
            return _json(openai.status_of(error), openai.openai_error(error))
        created = int(self.now().timestamp())
        if body.stream:
            return ChatStream(self, principal, method, params, completion_id, body.model, created)
        conn = self.connection(principal, traceparent=request.headers.get("traceparent"))
        try:
            result = await self.call(conn, method, params)
        except RPCError as error:
            return _json(openai.status_of(error), openai.openai_error(error))
        finally:
            conn.close()
        return _json(200, openai.chat_completion(completion_id, body.model, method, result, created))

    # --- operations -----------------------------------------------------------------------------

    async def metrics(self, request: HttpRequest) -> Response:
        media = "text/plain; version=0.0.4; charset=utf-8"
        if self.settings.metrics_public:
            return Response(self.metrics_text(), media_type=media)
        conn = self.connection(self.authenticate(request), traceparent=request.headers.get("traceparent"))
        try:
            result = await self.call(conn, "system.metrics", None)  # the policy decides, as for system.metrics
        except RPCError as error:
            return _json(openai.status_of(error), {"error": error.to_wire()})
        finally:
            conn.close()
        return Response(result["text"], media_type=media)

    async def healthz(self, request: HttpRequest) -> Response:
        status = await self.health()
        return _json(200 if status != "failing" else 503, {"status": status})


class ChatStream(Response):
    """A streamed chat answer as server-sent events: one ``chat.completion.chunk`` per
    ``infer.chunk`` the provider pushes, a last chunk with ``finish_reason``, then ``[DONE]``.

    The headers wait for the first chunk or the end: a request refused before any text (policy,
    no provider) is answered with its status and an error body, not a stream. An error after text
    was sent ends the stream with an ``error`` event. A client that goes away cancels the call."""

    media_type = "text/event-stream"

    def __init__(self, app: GatewayApp, principal: Principal, method: str, params: dict[str, Any],
                 completion_id: str, model: str, created: int) -> None:
        # Not Response.__init__: its headers would carry the content-length of an empty body.
        self.status_code, self.background = 200, None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store")]
        self._app, self._principal, self._method, self._params = app, principal, method, params
        self._id, self._model, self._created = completion_id, model, created

    def _event(self, payload: Any) -> bytes:
        return b"data: " + encode(payload).rstrip(b"\n") + b"\n\n"

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self._event(openai.chat_chunk(self._id, self._model, self._created, delta, finish))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app
        chunks_in, chunks_out = anyio.create_memory_object_stream[dict[str, Any]](app.settings.stream_buffer)
        conn = app.connection(self._principal, chunks_in, Headers(scope=scope).get("traceparent"))
        outcome: dict[str, Any] = {}

        async def run_call() -> None:
            async with chunks_in:
                try:
                    outcome["result"] = await app.call(conn, self._method, self._params)
                except RPCError as error:
                    outcome["error"] = error

        disconnected = False

        async def watch_disconnect(scope_to_cancel: anyio.CancelScope) -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            scope_to_cancel.cancel()

        started = False
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_call)
                tg.start_soon(watch_disconnect, tg.cancel_scope)
                async with chunks_out:
                    async for chunk in chunks_out:
                        if not started:
                            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                            await send({"type": "http.response.body", "body": self._chunk({"role": "assistant", "content": ""}), "more_body": True})
                            started = True
                        await send({"type": "http.response.body", "body": self._chunk({"content": chunk["text"]}), "more_body": True})
                tg.cancel_scope.cancel()  # the call is done: stop watching for a disconnect
            if disconnected:
                return  # the call was cancelled with it; there is no one to answer
            error = outcome.get("error")
            if error is not None and not started:
                await _json(openai.status_of(error), openai.openai_error(error))(scope, receive, send)
                return
            if not started:  # an answer with no chunks (a cached route.ask answer): one chunk with all of it
                await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                text, _ = openai.answer_of(self._method, outcome["result"])
                await send({"type": "http.response.body", "body": self._chunk({"role": "assistant", "content": text}), "more_body": True})
            tail = self._event(openai.openai_error(error)) if error is not None else self._chunk({}, "stop")
            await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False})
        finally:
            conn.close()
