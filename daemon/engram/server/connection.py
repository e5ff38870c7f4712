"""One client connection: read frames, run requests concurrently, write responses in order of
completion, push notifications, and enforce the per-connection limits and timeouts.

Task structure (all under the server's connection task group)::

    connection scope          cancelled to abort (slow reader, daemon gone)
    └── pushes task group     notification pumps (event subscriptions); cancelled last
        └── requests group    one task per accepted request (or batch); waited for on close
            read loop         this task; stops at end of stream, idle timeout or drain
                              (one timer for its reads: LineReader.timer); runs the
                              instant methods (Method.instant) itself
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskGroup

from engram.bus.events import ConnectionClosed, ConnectionOpened
from engram.errors import InternalError, InvalidRequest, Overloaded, RPCError
from engram.principal import Principal
from engram.server.framing import BudgetExhausted, FrameTooLarge, IdleTimeout, LineReader, SlowFrame
from engram.server.jsonrpc import (
    LARGE_FRAME,
    Invalid,
    Message,
    Request,
    echoable_id,
    encode,
    error_response,
    parse_frame,
    result_response,
)
from engram.server.streams import TransportStream

if TYPE_CHECKING:
    from engram.server.server import RPCServer

log = structlog.get_logger("engram.server")

PUSH_FLUSH_TIMEOUT = 1.0


class ClientConnection:
    def __init__(self, conn_id: int, stream: TransportStream, principal: Principal, server: RPCServer) -> None:
        self.id = conn_id
        self.principal = principal
        self._stream = stream
        self._server = server
        self._scope = anyio.CancelScope()
        self._read_scope = anyio.CancelScope()
        self._pushes: TaskGroup | None = None
        self._close_callbacks: list[Callable[[], None]] = []
        self._pending_pushes: list[Callable[[], int]] = []
        self._sending = 0  # writes under way; a flush waits for them too
        self.inflight = 0
        # Members of this connection's batches running at once; sized from the settings per batch.
        self._batch_members = anyio.CapacityLimiter(server.settings().max_inflight_per_connection)
        self.requests = 0
        self.subscriptions = 0  # maintained by subscribers, keeps an idle connection open
        self.close_reason = "client_closed"

    # --- what handlers see (engram.server.methods.Connection) -----------------------------

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def on_close(self, callback: Callable[[], None]) -> None:
        self._close_callbacks.append(callback)

    def declare_client(self, name: str) -> Principal:
        """The client names itself (unverified); later requests on this connection carry it."""
        self.principal = self.principal.model_copy(update={"client": name})
        return self.principal

    def on_drain(self, pending: Callable[[], int]) -> None:
        self._pending_pushes.append(pending)

    def start_soon(self, func: Callable[[], Awaitable[None]], name: str) -> None:
        assert self._pushes is not None
        self._pushes.start_soon(func, name=name)

    # --- lifecycle -------------------------------------------------------------------------

    def stop_reading(self) -> None:
        """Drain: take no new requests; the ones in flight finish and are answered."""
        self.close_reason = "daemon_stopping"
        self._read_scope.cancel()

    def abort(self, reason: str) -> None:
        self.close_reason = reason
        self._scope.cancel()

    async def run(self) -> None:
        bus = self._server.bus
        bus.publish(ConnectionOpened(connection=self.id, principal=self.principal))
        log.debug("connection opened", connection=self.id, uid=self.principal.uid, pid=self.principal.pid)
        try:
            with self._scope:
                async with anyio.create_task_group() as pushes:
                    self._pushes = pushes
                    async with anyio.create_task_group() as requests:
                        with self._read_scope:
                            await self._read_loop(requests)
                    await self._flush_pushes()
                    pushes.cancel_scope.cancel()
        except Exception:
            # Last resort: whatever escapes here would end the server's task group, and with it
            # the daemon, for every client. A bug seen by one connection closes that one only.
            log.exception("connection failed; closing it", connection=self.id)
            self.close_reason = "internal_error"
        finally:
            for callback in self._close_callbacks:
                callback()
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
            bus.publish(
                ConnectionClosed(
                    connection=self.id, reason=self.close_reason, requests=self.requests, principal=self.principal
                )
            )
            log.debug("connection closed", connection=self.id, reason=self.close_reason, requests=self.requests)

    async def _flush_pushes(self) -> None:
        """Give queued notifications (e.g. daemon.stopping) a moment to reach the client."""
        with anyio.move_on_after(PUSH_FLUSH_TIMEOUT):
            while self._sending or any(pending() for pending in self._pending_pushes):
                await anyio.sleep(0.005)

    async def _read_loop(self, requests: TaskGroup) -> None:
        reader = LineReader(self._stream, self._server.settings().max_frame_bytes, self._server.frame_budget)
        self.on_close(reader.close)
        while True:
            try:
                with reader.timer():  # one idle/read timer for all the reads until one expires
                    await self._read_frames(reader, requests)
                return  # end of stream, or a drain
            except IdleTimeout:
                if self.inflight or self.subscriptions:
                    continue
                self.close_reason = "idle_timeout"
                return
            except SlowFrame:
                log.warning("slow client dropped", connection=self.id, read_timeout=self._server.settings().read_timeout)
                self.close_reason = "slow_client"
                return

    async def _read_frames(self, reader: LineReader, requests: TaskGroup) -> None:
        settings = self._server.settings
        budget = self._server.frame_budget
        while True:
            limits = settings()
            reader.max_bytes = limits.max_frame_bytes  # reloadable
            budget.limit = limits.max_buffered_bytes
            try:
                line = await reader.read_line(limits.idle_timeout, limits.read_timeout)
            except BudgetExhausted as exc:
                self._server.metrics.frames_rejected.labels("buffered_limit").inc()
                log.warning("frame dropped: buffered frame bytes at the limit", connection=self.id, limit=exc.limit)
                busy = Overloaded(
                    "the daemon holds as many unparsed request bytes as it may; retry later",
                    reason="buffered_limit",
                    limit=exc.limit,
                )
                await self._send(error_response(None, busy))
                continue
            except FrameTooLarge as exc:
                self._server.metrics.frames_rejected.labels("frame_too_large").inc()
                log.warning("frame too large", connection=self.id, limit=exc.limit)
                error = InvalidRequest(
                    f"frame larger than the limit of {exc.limit} bytes", reason="frame_too_large", limit=exc.limit
                )
                await self._send(error_response(None, error))
                continue
            if line is None:
                return
            if line.strip():
                await self._on_frame(line, requests)

    # --- requests --------------------------------------------------------------------------

    async def _parse_large(self, line: bytes) -> tuple[list[Message], bool]:
        # A large frame takes long to parse: in a worker thread, one at a time for the whole
        # daemon, parsing in a way that lets the event loop run (see parse_frame's yielding).
        depth = self._server.settings().max_json_depth
        return await anyio.to_thread.run_sync(parse_frame, line, depth, True, limiter=self._server.large_frames)

    async def _on_frame(self, line: bytes, requests: TaskGroup) -> None:
        try:
            if len(line) <= LARGE_FRAME:
                messages, is_batch = parse_frame(line, self._server.settings().max_json_depth)
            else:
                messages, is_batch = await self._parse_large(line)
        except RPCError as error:
            self._server.metrics.frames_rejected.labels(error.reason).inc()
            log.info("bad frame", connection=self.id, reason=error.reason, error=error.message)
            await self._send(error_response(None, error))
            return
        if is_batch:
            admitted = self._admit_batch(messages)
            requests.start_soon(self._run_batch, messages, admitted, name=f"conn-{self.id}-batch")
            return
        message = messages[0]
        if not self._admit(message):
            # Refused outright: answer inline, which also slows down a client that floods us.
            if isinstance(message, Invalid):
                await self._send(error_response(message.id, message.error))
            elif not message.is_notification:
                await self._send(error_response(message.id, self._overloaded()))
            return
        if self._server.dispatcher.runs_inline(message):
            # Answered before the next frame is read: a task of its own would cost more than
            # the method, which never waits.
            await self._run_single(message)
        else:
            requests.start_soon(self._run_single, message, name=f"conn-{self.id}-frame")

    def _admit(self, message: Message) -> bool:
        if not isinstance(message, Request):
            return False
        if not self._take_slot():
            log.info("request refused: overloaded", connection=self.id, method=message.method)
            return False
        self.requests += 1
        return True

    def _admit_batch(self, messages: list[Message]) -> bool:
        """A batch takes one in-flight slot however many members it has (they queue inside it)."""
        members = sum(isinstance(message, Request) for message in messages)
        if not members:
            return True  # only invalid members: answered without running anything
        if not self._take_slot():
            log.info("batch refused: overloaded", connection=self.id, members=members)
            return False
        self.requests += members
        return True

    def _take_slot(self) -> bool:
        limits = self._server.settings()
        if self.inflight >= limits.max_inflight_per_connection or self._server.inflight >= limits.max_inflight:
            return False
        self.inflight += 1
        self._server.inflight += 1
        return True

    def _release_slot(self) -> None:
        self.inflight -= 1
        self._server.inflight -= 1

    def _overloaded(self) -> Overloaded:
        limits = self._server.settings()
        return Overloaded(
            "too many requests in flight; retry later",
            per_connection_limit=limits.max_inflight_per_connection,
            global_limit=limits.max_inflight,
        )

    async def _answer(self, request: Request) -> dict[str, Any] | None:
        """Dispatch one admitted request; its response, or None for a notification."""
        try:
            response = result_response(request.id, await self._server.dispatcher.dispatch(request, self.principal, self))
        except RPCError as error:
            response = error_response(request.id, error)
        return None if request.is_notification else response

    async def _run_single(self, request: Request) -> None:
        try:
            response = await self._answer(request)
        finally:
            self._release_slot()
        if response is not None:
            await self._send(response)

    async def _run_batch(self, messages: list[Message], admitted: bool) -> None:
        """Run a batch's members concurrently, but no more at once than a connection may run
        (``server.max_inflight_per_connection``, shared by this connection's batches) nor than
        the daemon may (``server.max_inflight``, shared by every batch): a batch of the largest
        size is served, not refused for its size, and cannot multiply the daemon's work."""
        responses: list[dict[str, Any] | None] = [None] * len(messages)
        limits = self._server.settings()
        self._batch_members.total_tokens = limits.max_inflight_per_connection  # reloadable
        daemon_members = self._server.batch_members
        daemon_members.total_tokens = limits.max_inflight

        async def run_member(index: int, request: Request) -> None:
            async with self._batch_members, daemon_members:
                responses[index] = await self._answer(request)

        try:
            async with anyio.create_task_group() as members:
                for index, message in enumerate(messages):
                    if isinstance(message, Invalid):
                        responses[index] = error_response(message.id, message.error)
                    elif not admitted:
                        if not message.is_notification:
                            responses[index] = error_response(message.id, self._overloaded())
                    else:
                        members.start_soon(run_member, index, message)
        finally:
            if admitted and any(isinstance(message, Request) for message in messages):
                self._release_slot()
        answered = [response for response in responses if response is not None]
        if answered:
            await self._send(answered)

    def _encode(self, message: Any) -> bytes:
        """The frame of a response (or batch of them); one that cannot be encoded (NaN or a
        non-JSON object in a result: a handler bug) becomes an error the client can still read."""
        try:
            return encode(message)
        except (ValueError, TypeError, RecursionError) as exc:
            if isinstance(message, list):  # a batch: only the members that fail become errors
                return b"[" + b",".join(self._encode(member).rstrip(b"\n") for member in message) + b"]\n"
            log.error("unencodable response", connection=self.id, error=str(exc))
            request_id = echoable_id(message.get("id")) if isinstance(message, dict) else None
            error = InternalError(f"response could not be encoded ({type(exc).__name__})", reason="unencodable_response")
            return encode(error_response(request_id, error))

    async def _send(self, message: Any) -> None:
        data = self._encode(message)
        self._sending += 1
        try:
            # write() queues the whole frame at once, so concurrent responses never interleave
            # and need no lock; only a client that stops reading makes us wait, and only then
            # does the write timeout apply.
            if self._stream.write(data):
                with anyio.fail_after(self._server.settings().write_timeout):
                    await self._stream.drain()
        except TimeoutError:
            log.warning("slow reader dropped", connection=self.id)
            self.abort("slow_reader")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            self.abort("client_gone")
        finally:
            self._sending -= 1
