"""The HTTP gateway part: its bearer tokens (``token.*``, owner-only) and its listener.

The listener is uvicorn serving a Starlette application (:mod:`engram.http.app`), both from the
lock already (the MCP SDK uses them). uvicorn's ``Server.serve()`` is a coroutine: it runs as one
more task of the daemon's own event loop, under anyio, beside the socket server: no second loop
and no thread, so a request reaches the request chain exactly as a socket request does. The
listening socket is bound here, not by uvicorn, so that an address in use is a clear
:class:`~engram.errors.StartupError` and uvicorn's ``sys.exit`` on a failed bind never runs; and
uvicorn's signal handlers are left out, since the daemon handles SIGTERM itself and stops the
gateway (:meth:`stop_accepting`) as it drains.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import anyio
import structlog
import uvicorn
from anyio.abc import TaskStatus
from prometheus_client import Counter

from engram.errors import InvalidParams, StartupError
from engram.http.api import (
    TokenCreated,
    TokenCreateParams,
    TokenListResult,
    TokenNameParams,
    TokenRevokeResult,
)
from engram.http.app import GatewayApp
from engram.http.protocol import head_timed_protocol
from engram.http.ports import HealthStatus, MetricsText, RequestChain
from engram.http.settings import HttpSettings, parse_listen
from engram.http.tokens import TokenStore
from engram.lifecycle import Health, Part, PartState
from engram.observability.metrics import Metrics
from engram.server.methods import NoParams, RequestContext, rpc

__all__ = ["HttpGateway"]

log = structlog.get_logger("engram.http")

TOKEN_FILE = "http-tokens.json"
# uvicorn's own grace period once stopping; the daemon waits server.drain_timeout at most (drained()).
DRAIN_SECONDS = 60


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The daemon owns its signals (runtime.Daemon._handle_signals); uvicorn's would replace them.
        yield


class HttpGateway(Part):
    """As a part, it holds the tokens (read at start, after the state folder is locked); its
    listener, ``serve()``, runs in the composition root's task group when ``http.listen`` is set.
    The token methods work either way: tokens are made before the gateway is turned on."""

    def __init__(
        self,
        settings: HttpSettings,
        state_dir: Path,
        chain: RequestChain,
        max_json_depth: Callable[[], int],
        health: HealthStatus,
        metrics_text: MetricsText,
        metrics: Metrics,
        owner_uid: int,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__("http")
        self.settings = settings
        self.owner_uid = owner_uid
        self.now = now
        self.tokens = TokenStore(state_dir / TOKEN_FILE)
        self._tokens_lock = anyio.Lock()
        requests = Counter("engram_http_requests", "HTTP gateway requests by endpoint and status.",
                           ["endpoint", "status"], registry=metrics.registry)
        self.app = GatewayApp(settings, self.tokens, chain, max_json_depth, health, metrics_text, requests, now)
        self.listener = PartState.CREATED
        self._server: _EmbeddedServer | None = None
        self._stopped: anyio.Event | None = None  # set once the listener is done (or never started)

    async def setup(self, stack: AsyncExitStack) -> None:
        await anyio.to_thread.run_sync(self.tokens.load)

    def bind(self) -> socket.socket | None:
        """The listening socket of ``http.listen`` (None when unset)."""
        if self.settings.listen is None:
            return None
        host, port = parse_listen(self.settings.listen)  # loopback unless allowed: HttpSettings checked
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the
        # protocol says TCP, and without it each response (headers, then body) waited 40 ms on
        # the peer's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1" if host == "localhost" else host, port))
            sock.listen(1024)
        except OSError as exc:
            sock.close()
            raise StartupError(f"http.listen {self.settings.listen}: cannot listen ({exc.strerror})") from None
        sock.setblocking(False)
        return sock

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._stopped = anyio.Event()
        sock = self.bind()
        if sock is None:
            self.listener = PartState.CLOSED
            self._stopped.set()
            task_status.started()
            return
        config = uvicorn.Config(
            self.app.app(),
            lifespan="off",
            log_config=None,  # structlog is the daemon's logging; uvicorn's own stays quiet
            access_log=False,
            server_header=False,
            limit_concurrency=self.settings.max_connections,
            timeout_keep_alive=max(1, round(self.settings.idle_timeout)),
            timeout_graceful_shutdown=DRAIN_SECONDS,
            h11_max_incomplete_event_size=64 * 1024,  # request line and headers
            http=head_timed_protocol(self.settings.read_timeout),  # h11, and a limit on the request head
        )
        self._server = _EmbeddedServer(config)
        self.listener = PartState.RUNNING
        log.info("http gateway listening", address=self.settings.listen)
        task_status.started()
        try:
            await self._server.serve(sockets=[sock])
        finally:
            self.listener = PartState.CLOSED
            sock.close()
            self._stopped.set()

    async def drained(self, timeout: float) -> None:
        """Wait, ``timeout`` seconds at most, for the listener to finish the requests it has
        (after :meth:`stop_accepting`); what is left is then cancelled with the daemon's tasks."""
        if self._stopped is not None:
            with anyio.move_on_after(timeout):
                await self._stopped.wait()

    def stop_accepting(self) -> None:
        if self._server is not None:
            self.listener = PartState.STOPPING
            self._server.should_exit = True

    async def health(self) -> Health:
        tokens = f"{len(self.tokens.tokens())} tokens"
        if self.state is not PartState.RUNNING:
            return Health(False, f"{self.state.value}; {tokens}")
        if self.settings.listen is None:
            return Health(True, f"listener off (http.listen unset); {tokens}")
        return Health(self.listener is PartState.RUNNING, f"listener {self.listener.value} on {self.settings.listen}; {tokens}")

    # --- tokens -----------------------------------------------------------------------------------

    @rpc("token.create", summary="Make a bearer token of the HTTP gateway for a uid; shown once, kept hashed.",
         owner_only=True)
    async def token_create(self, ctx: RequestContext, params: TokenCreateParams) -> TokenCreated:
        if (params.uid is None) == (not params.owner):
            raise InvalidParams("uid: give exactly one of uid and owner (the user the token acts as)", field="uid")
        uid = self.owner_uid if params.owner else params.uid
        async with self._tokens_lock:
            secret, token = await anyio.to_thread.run_sync(
                self.tokens.create, params.name, uid, params.expires_in, self.now()
            )
        log.info("http token created", name=token.name, uid=token.uid, by=ctx.principal.uid)
        return TokenCreated(token=secret, info=token.info(self.now()))

    @rpc("token.list", summary="The HTTP gateway's tokens: name, uid, created, expiry (never the tokens).",
         owner_only=True, audit=False)
    async def token_list(self, ctx: RequestContext, params: NoParams) -> TokenListResult:
        now = self.now()
        return TokenListResult(tokens=[token.info(now) for token in self.tokens.tokens()])

    @rpc("token.revoke", summary="Revoke an HTTP gateway token; its next request is refused.", owner_only=True)
    async def token_revoke(self, ctx: RequestContext, params: TokenNameParams) -> TokenRevokeResult:
        async with self._tokens_lock:
            token = await anyio.to_thread.run_sync(self.tokens.revoke, params.name)
        log.info("http token revoked", name=token.name, by=ctx.principal.uid)
        return TokenRevokeResult(name=token.name, revoked=True)
