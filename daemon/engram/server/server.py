"""The RPC server part: accepts connections on the Unix socket and hands them to connections."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable
from pathlib import Path

import anyio
import structlog
from anyio.abc import TaskStatus

from engram import systemd
from engram.bus import EventBus
from engram.server.settings import ServerSettings
from engram.errors import Overloaded
from engram.lifecycle import Health, PartState
from engram.observability.metrics import Metrics
from engram.server.connection import ClientConnection
from engram.server.dispatch import Dispatcher
from engram.server.framing import FrameBudget
from engram.server.jsonrpc import encode, error_response
from engram.server.listener import bind_private, remove_if_ours
from engram.server.peercred import peer_principal
from engram.server.streams import TransportStream

log = structlog.get_logger("engram.server")

# How long a refused connection may stay open to deliver its error line cleanly, how much of its
# input is read and dropped meanwhile, and how many refused connections may do so at once (beyond
# that, a flood of refusals is closed right after the line, a reset or not).
REFUSAL_LINGER_S = 1.0
REFUSAL_DISCARD_BYTES = 1 << 20
MAX_LINGERING_REFUSALS = 256


async def _discard_input(loop: asyncio.AbstractEventLoop, sock: socket.socket, limit: int) -> None:
    """Read and drop what the peer sends until it closes, ``limit`` bytes at most."""
    left = limit
    while left > 0:
        chunk = await loop.sock_recv(sock, min(left, 65536))
        if not chunk:
            return
        left -= len(chunk)


class RPCServer:
    """Serves in :meth:`serve`, which the composition root runs: ``running`` while it accepts,
    ``stopping`` once it drains, ``closed`` when it has returned."""

    def __init__(
        self,
        socket_path: Path,
        settings: Callable[[], ServerSettings],
        dispatcher: Dispatcher,
        bus: EventBus,
        metrics: Metrics,
        socket_activation: bool = True,
    ) -> None:
        self.socket_path = socket_path
        self.settings = settings
        self.dispatcher = dispatcher
        self.bus = bus
        self.metrics = metrics
        self.socket_activation = socket_activation
        self.activated = False
        self.connections: dict[int, ClientConnection] = {}
        self.open_connections = 0  # accepted and not yet closed, counted from accept on
        self._lingering_refusals = 0
        self.inflight = 0
        self.accepted = 0
        self.state = PartState.CREATED
        self._ids = itertools.count(1)
        self._accept_scope: anyio.CancelScope | None = None  # anyio objects need the event loop
        self.batch_members: anyio.CapacityLimiter  # batch members running at once, all connections
        self.large_frames: anyio.CapacityLimiter  # large frames parsed at once (in worker threads)
        self.frame_budget = FrameBudget(settings().max_buffered_bytes)  # unparsed bytes, all connections
        self._connections_scope: anyio.CancelScope | None = None

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen, report readiness once the socket accepts, serve until drained."""
        inode = None
        inherited = systemd.inherited_socket() if self.socket_activation else None
        if inherited is not None:
            raw = inherited  # socket activation: systemd owns the file, never unlink it
            self.activated = True
        else:
            raw = bind_private(self.socket_path, self.settings().socket_group)
            inode = self.socket_path.lstat().st_ino
        raw.setblocking(False)
        try:
            async with anyio.create_task_group() as connections:
                self._connections_scope = connections.cancel_scope
                self.batch_members = anyio.CapacityLimiter(self.settings().max_inflight)
                self.large_frames = anyio.CapacityLimiter(1)
                self.state = PartState.RUNNING
                self._accept_scope = anyio.CancelScope()
                task_status.started()
                with self._accept_scope:
                    await self._accept_loop(raw, connections)
        finally:
            self.state = PartState.CLOSED
            raw.close()
            if inode is not None:
                remove_if_ours(self.socket_path, inode)

    async def _accept_loop(self, listener: socket.socket, connections: anyio.abc.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.error("accept failed", error=str(exc))
                await anyio.sleep(0.1)
                continue
            # Counted here, not once the connection task runs: a burst of connects is accepted
            # before any of their tasks starts, and would all pass a check made there.
            if self.open_connections >= self.settings().max_connections:
                self.metrics.connections_refused.inc()
                connections.start_soon(self._refuse, sock)
                continue
            self.open_connections += 1
            connections.start_soon(self._serve_connection, sock)

    async def _refuse(self, sock: socket.socket) -> None:
        """Write the -32003 line, then close without a reset.

        A refused client has often sent its first request already, and closing a Unix socket
        with unread input resets the connection: the client may then see the reset instead of
        the error line. So writing is shut down after the line (the client reads EOF next) and
        what the client still sends is read and dropped until it closes, for a moment at most.
        """
        limit = self.settings().max_connections
        log.warning("connection refused: limit reached", limit=limit)
        error = Overloaded(f"too many connections (limit {limit}); retry later", reason="too_many_connections")
        loop = asyncio.get_running_loop()
        self._lingering_refusals += 1
        try:
            with anyio.move_on_after(REFUSAL_LINGER_S):
                await loop.sock_sendall(sock, encode(error_response(None, error)))
                sock.shutdown(socket.SHUT_WR)
                if self._lingering_refusals <= MAX_LINGERING_REFUSALS:
                    await _discard_input(loop, sock, REFUSAL_DISCARD_BYTES)
        except OSError:
            pass  # the client is gone already
        finally:
            self._lingering_refusals -= 1
            sock.close()

    async def _serve_connection(self, sock: socket.socket) -> None:
        try:
            await self._serve_accepted(sock)
        finally:
            self.open_connections -= 1

    async def _serve_accepted(self, sock: socket.socket) -> None:
        try:
            principal = peer_principal(sock)
        except OSError as exc:
            log.error("peer credentials unavailable; connection closed", error=str(exc))
            sock.close()
            return
        stream = await TransportStream.wrap(sock)
        conn = ClientConnection(next(self._ids), stream, principal, self)
        if self.state is PartState.STOPPING:
            conn.stop_reading()
        self.connections[conn.id] = conn
        self.accepted += 1
        self.metrics.connections_accepted.inc()
        self.metrics.connections.set(len(self.connections))
        try:
            await conn.run()
        finally:
            del self.connections[conn.id]
            self.metrics.connections.set(len(self.connections))

    def stop_accepting(self) -> None:
        """Begin draining: close the door, let every connection finish what it has started."""
        self.state = PartState.STOPPING
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        for conn in list(self.connections.values()):
            conn.stop_reading()

    async def health(self) -> Health:
        return Health(self.state is PartState.RUNNING, self.state.value)

    def cancel(self) -> None:
        """The drain grace period is over: cancel whatever still runs."""
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        if self._connections_scope is not None:
            self._connections_scope.cancel()
