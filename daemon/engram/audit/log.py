"""The AuditLog part: the daemon's writer of the signed audit log.

Started right after the database and before anything that produces entries, it

1. opens the audit tables (its own SQLite connections, see :mod:`.store`), loads or creates the
   signing key (:mod:`.keys`) and checks the stored log against its checkpoints
   (:func:`.verify.verify_log`) from the last size that an earlier start verified (the *verified
   mark*, below); a log that fails is never extended: the daemon refuses to start and says which
   entry or checkpoint is wrong and what to do;
2. records every audited RPC request (:meth:`AuditLog.record_request`, called by the request
   chain's audit layer, :mod:`.layer`, before the answer goes; reads' entries,
   :meth:`AuditLog.enqueue_request`, are queued and committed with the next batch after the
   answer) and every event on the audited bus topics;
3. writes entries by *group commit*: callers enqueue into a bounded queue and wait; one writer
   task takes what is pending (up to ``audit.max_batch``, waiting at most
   ``audit.max_batch_delay_ms`` for a batch to fill), writes it in one transaction in a worker
   thread and, once ``COMMIT`` returned, wakes each caller with its ``seq``. Nothing is
   acknowledged with a ``seq`` before it is durable. Entries nobody waits for (reads', bus
   events') gather for up to ``audit.read_commit_delay_ms`` first, until one that somebody waits
   for arrives, so that a stream of reads costs one commit per window rather than one each;
4. signs a checkpoint every ``audit.checkpoint_every_entries`` entries, every
   ``audit.checkpoint_every_seconds`` while entries arrive, on request, and at shutdown.
   Checkpoints are signed only over committed entries, so none is ever ahead of the log.

The verified mark (``meta`` key ``audit_verified``: the base64 of the compact tree at the size of
the last stored checkpoint a start-up check verified) keeps that check proportional to what is
new: the next start reads only the entries from there on, checks the checkpoints from there on,
and the tree state and nodes added since; the mark itself counts only while a stored checkpoint
of its size signs its root. What was verified before the mark is not read again at start:
changes there are what ``engram audit verify`` (always the whole log) catches.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import deque
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog
from prometheus_client import Counter, Gauge, Histogram

from engram.audit.bundle import ProvenEntries
from engram.audit.checkpoints import sign_checkpoint
from engram.audit.entry import (
    KIND_GAP,
    KIND_KEY_ROTATED,
    Record,
    event_record,
    is_audited,
    principal_dict,
    request_record,
)
from engram.audit.events import (
    AUDITED_TOPICS,
    AuditAppended,
    CheckpointSigned,
    KeyRotated,
)
from engram.audit.export import StateFolderSource
from engram.audit.keyfile import read_signing_key
from engram.audit.keys import AuditKeys
from engram.audit.merkle import CompactTree
from engram.audit.settings import AuditSettings
from engram.audit.store import AuditStore, StoredCheckpoint, StoreError
from engram.audit.verify import VerificationError, verify_log
from engram.bus import EventBus
from engram.bus.bus import OverflowPolicy, Subscription
from engram.errors import Conflict, IntegrityError, NotFound, Overloaded, RPCError, StartupError, Unavailable
from engram.lifecycle import Health, Part, PartState
from engram.observability.metrics import Metrics
from engram.observability.tracing import NO_SPANS, Spans
from engram.signing import Signer

__all__ = ["ORIGIN_PREFIX", "AuditLog", "origin_for"]

log = structlog.get_logger("engram.audit")

ORIGIN_PREFIX = "engram.local/"
INSTALL_ID_KEY = "install_id"
VERIFIED_MARK_KEY = "audit_verified"
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)


def origin_for(install_id: str) -> str:
    """The checkpoint origin of a state folder's log."""
    return ORIGIN_PREFIX + install_id


def new_install_id(key: Signer | None = None) -> str:
    """The install ID of a new log: the one an external key was made for (``engram audit
    keygen`` makes a key before the log exists), else a random one."""
    if key is not None and key.name.startswith(ORIGIN_PREFIX):
        return key.name[len(ORIGIN_PREFIX) :]
    return secrets.token_hex(8)


def rotation_detail(old: Signer, new: Signer, checkpoint_size: int) -> dict[str, Any]:
    """What an ``audit.key_rotated`` entry says."""
    return {"old_vkey": old.verifier_key(), "new_vkey": new.verifier_key(), "checkpoint_size": checkpoint_size}


@dataclass(slots=True, eq=False)
class _Pending:
    record: Record
    done: anyio.Event | None = None  # None: nobody waits (bus events)
    seq: int | None = None
    error: BaseException | None = None


@dataclass
class _Counters:
    appended: int = 0
    batches: int = 0
    failures: int = 0
    events_lost: int = 0
    checkpoints: int = 0
    last_error: str | None = None
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1024))


class AuditLog(Part):
    """A part; ``append``/``record_request`` work while it is ``running``."""

    def __init__(
        self,
        settings: AuditSettings,
        state_dir: Path,
        database_path: Path,
        bus: EventBus,
        metrics: Metrics,
        busy_timeout: float = 5.0,
        spans: Spans = NO_SPANS,
    ) -> None:
        super().__init__("audit")
        self.settings = settings
        self._spans = spans
        self.state_dir = state_dir
        self.database_path = database_path
        self.origin = ""
        self.keys = AuditKeys(state_dir / "keys", settings.signing_key_file)
        self.store = AuditStore(database_path, busy_timeout=busy_timeout)
        self._bus = bus
        self._topics: list[str] = list(AUDITED_TOPICS)
        self._queue: deque[_Pending] = deque()
        self._waited = 0  # entries in the queue whose callers wait for their seq
        self._wake: anyio.Event | None = None
        self._space: anyio.Event | None = None
        self._closing = False
        self._writer_done: anyio.Event | None = None
        self._checkpoint_lock: anyio.Lock | None = None
        self._checkpoint_running = False
        self._last_checkpoint: StoredCheckpoint | None = None
        self._last_checkpoint_at = time.monotonic()
        self._subscription: Subscription | None = None
        self._dropped_seen = 0
        self._held: Any = None
        self.counters = _Counters()
        r = metrics.registry
        self._m_entries = Counter("engram_audit_entries", "Audit entries made durable, by kind.", ["kind"], registry=r)
        self._m_batch = Histogram("engram_audit_batch_entries", "Entries per group commit.", buckets=_BATCH_BUCKETS, registry=r)
        self._m_commit = Histogram(
            "engram_audit_commit_seconds", "Time to write and commit one batch.", buckets=_COMMIT_BUCKETS, registry=r
        )
        self._m_failures = Counter("engram_audit_append_failures", "Batches that could not be written.", registry=r)
        self._m_refused = Counter("engram_audit_appends_refused", "Appends refused: queue full.", registry=r)
        self._m_lost = Counter("engram_audit_events_lost", "Audited bus events lost to overflow.", registry=r)
        self._m_checkpoints = Counter("engram_audit_checkpoints", "Checkpoints signed.", registry=r)
        self._m_size = Gauge("engram_audit_log_size", "Entries in the audit log.", registry=r)
        self._m_queue = Gauge("engram_audit_queue_depth", "Entries waiting to be written.", registry=r)
        self._m_queue.set_function(lambda: len(self._queue))
        self._m_size.set_function(lambda: self.store.size)

    def watch(self, *patterns: str) -> None:
        """Also record the bus topics matching ``patterns`` (call before the part starts)."""
        if self.state is not PartState.CREATED:
            raise RuntimeError("audited topics are fixed once the audit log runs")
        self._topics.extend(p for p in patterns if p not in self._topics)

    @property
    def topics(self) -> list[str]:
        return list(self._topics)

    @property
    def size(self) -> int:
        return self.store.size

    @property
    def last_checkpoint(self) -> StoredCheckpoint | None:
        return self._last_checkpoint

    # --- lifecycle -------------------------------------------------------------------------

    async def setup(self, stack: AsyncExitStack) -> None:
        self._wake = anyio.Event()
        self._space = anyio.Event()
        self._writer_done = anyio.Event()
        self._checkpoint_lock = anyio.Lock()
        try:
            await anyio.to_thread.run_sync(self._open)
        except BaseException:
            self.store.close()
            raise
        stack.push_async_callback(self._release)  # last: once the tasks have ended
        # admits=is_audited: routine allows (``audit: false``) never reach the queue, so the pump
        # is not woken per request only to drop them.
        self._subscription = self._bus.subscribe(
            self._topics, self.settings.event_queue, OverflowPolicy.DROP_NEWEST, admits=is_audited
        )
        await self.start_tasks(stack)
        stack.push_async_callback(self._finish_writing)  # first: while the writer still runs
        self.start_soon(self._write_loop, name="audit-writer")
        self.start_soon(self._pump_events, name="audit-events")
        self.start_soon(self._checkpoint_timer, name="audit-checkpoints")
        log.info(
            "audit log open",
            origin=self.origin,
            size=self.store.size,
            checkpoints=self.counters.checkpoints,
            vkey=self.keys.current.key_string(),
            key_source=self.keys.source.kind,
        )

    def _open(self) -> None:
        """Blocking start-up work (worker thread): store, origin, keys, full integrity check."""
        try:
            self.store.open()
            source = self.keys.locate()
            external = read_signing_key(source) if source.external else None
            self.origin = origin_for(self.store.meta_setdefault(INSTALL_ID_KEY, new_install_id(external)))
            last = self.store.last_checkpoint()
            if external is not None:
                self.keys.use_external(external, self.origin, last.key_id if last is not None else None)
            elif self.keys.exists():
                self.keys.load(self.origin)
            elif last is not None:
                raise StartupError(
                    f"the audit signing key {self.keys.key_path} is missing, but the audit log in "
                    f"{self.database_path} has signed checkpoints. Restore {self.keys.dir} from a backup; "
                    f"or, to start a new log, stop and move {self.database_path} (with its -wal and -shm "
                    f"files) and {self.keys.dir} aside."
                )
            else:
                self.keys.create(self.origin)
        except StoreError as exc:
            raise StartupError(f"cannot open the audit log: {exc}") from None
        self._check()
        if self.keys.handover is not None:
            self._hand_over()
        self._last_checkpoint = self.store.last_checkpoint()
        self.counters.checkpoints = self.store.checkpoint_count()

    def _verified_mark(self) -> CompactTree | None:
        """The tree an earlier start-up check verified (see the module docstring), if any."""
        stored = self.store.meta(VERIFIED_MARK_KEY)
        if stored is None:
            return None
        try:
            return CompactTree.from_bytes(base64.b64decode(stored, validate=True))
        except ValueError:
            log.warning("the audit log's verified mark is malformed; checking the whole log")
            return None

    def _check(self) -> None:
        mark = self._verified_mark()
        size_hint = self.store.size - (mark.size if mark is not None else 0)
        started = time.monotonic()
        if size_hint >= 100_000:
            log.info("checking the audit log", entries=size_hint)

        def progress(done: int) -> None:
            if size_hint >= 100_000:
                log.info("checking the audit log", done=done, of=size_hint)

        try:
            with self.store.snapshot():
                report = verify_log(
                    StateFolderSource(self.store, self.origin),
                    self.keys.trusted(),
                    origin=self.origin,
                    progress=progress,
                    progress_every=1 << 18,
                    require_checkpoint=False,
                    since=mark,
                )
        except VerificationError as exc:
            db = self.database_path
            raise StartupError(
                f"the audit log in {db} does not match its signed state: {exc}. engram will not extend "
                "a log it cannot vouch for. To investigate, leave the state folder as it is and run "
                f"`engram audit verify --state-dir {self.state_dir} --pubkey {self.keys.pub_path}` or "
                f"`engram audit export --state-dir {self.state_dir} FILE`; to start a new log, move "
                f"{db} (with its -wal and -shm files) and {self.keys.dir} aside, or restore them from a backup."
            ) from None
        if report.mark is not None and report.mark != mark:
            self.store.meta_set(VERIFIED_MARK_KEY, base64.b64encode(report.mark.to_bytes()).decode("ascii"))
        log.info(
            "audit log verified",
            entries=report.entries,
            checked_from=report.verified_from,
            checkpoints=report.checkpoints,
            unsigned_tail=report.unsigned_tail,
            seconds=round(time.monotonic() - started, 3),
        )

    def _hand_over(self) -> None:
        """Hand the log over from the state folder's key to the external one (worker thread, before
        the writer starts): a rotation checkpoint signed by both keys, then the old key deleted,
        then an ``audit.key_rotated`` entry, as :meth:`rotate_key` does within one key source."""
        old, new = self.keys.hand_over()
        size, root = self.store.size, self.store.tree.root()
        signed = sign_checkpoint(self.origin, size, root, new, previous=old)
        self.store.add_checkpoint(size, root, signed.note, signed.key_id, signed.time)
        self.keys.finish_hand_over()
        self.store.append([Record(kind=KIND_KEY_ROTATED, detail=rotation_detail(old, new, size))])

    async def _finish_writing(self) -> None:
        """What was queued and the events still on the bus become entries; the whole log is signed."""
        with anyio.CancelScope(shield=True):
            self._drain_events()
            self._closing = True
            self._kick()
            with anyio.move_on_after(max(self.settings.append_timeout, 5.0)):
                await self._writer_done.wait()  # type: ignore[union-attr]
            try:
                await self._checkpoint()  # at shutdown: the whole log is signed
            except Exception:
                log.exception("final audit checkpoint failed")

    async def _release(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._subscription is not None:
                self._bus.unsubscribe(self._subscription, "audit log closed")
            for pending in self._queue:
                self._finish(pending, error=Unavailable("audit log closed", reason="audit_unavailable"))
            self._queue.clear()
            self._waited = 0
            await anyio.to_thread.run_sync(self.store.close)
            log.info("audit log closed", size=self.store.size)

    async def health(self) -> Health:
        c = self.counters
        last = self._last_checkpoint
        detail = (
            f"{self.store.size} entries, last checkpoint at size {last.size if last else 0}, "
            f"{len(self._queue)} queued, signing key from {self.keys.source.describe()}"
        )
        if self.state is not PartState.RUNNING:
            return Health(False, f"{self.state}; {detail}")
        if c.last_error is not None:
            return Health(False, f"last write failed: {c.last_error}; {detail}")
        return Health(True, detail)

    # --- appending -------------------------------------------------------------------------

    async def append(
        self,
        kind: str,
        principal: Any = None,
        *,
        task_id: Any = None,
        parent_id: Any = None,
        input_hash: str | None = None,
        output_hash: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Record one entry; returns its ``seq`` once it is durable.

        Raises :class:`~engram.errors.Overloaded` when the queue is full and
        :class:`~engram.errors.Unavailable` when the entry could not be made durable in time.
        """
        record = Record(
            kind=kind,
            principal=principal_dict(principal),
            task_id=task_id,
            parent_id=parent_id,
            input_hash=input_hash,
            output_hash=output_hash,
            detail=detail or {},
        )
        return await self.append_record(record)

    async def record_request(
        self,
        *,
        method: str,
        principal: Any,
        request: int,
        params: Any,
        result: Any = None,
        error: RPCError | None = None,
        connection: int | None = None,
    ) -> int:
        """The audit layer's recorder: one ``rpc`` entry per served request (see :mod:`.entry`)."""
        return await self.append_record(_rpc_record(method, principal, request, params, result, error, connection))

    def enqueue_request(
        self,
        *,
        method: str,
        principal: Any,
        request: int,
        params: Any,
        result: Any = None,
        error: RPCError | None = None,
        connection: int | None = None,
    ) -> None:
        """The audit layer's recorder for reads: the ``rpc`` entry is queued and group-committed
        with the next batch, nobody waits for it. Raises as :meth:`append_record` does when it
        cannot even be queued (log not running, queue full)."""
        record = _rpc_record(method, principal, request, params, result, error, connection)
        self._check_room()
        self._enqueue_unwaited(record)

    def _check_room(self) -> None:
        if self.state is not PartState.RUNNING or self._closing:
            raise Unavailable("the audit log is not running; nothing can be recorded", reason="audit_unavailable")
        if len(self._queue) >= self.settings.queue_size:
            self._m_refused.inc()
            raise Overloaded(
                "the audit log's queue is full; retry later", reason="audit_overloaded", queue_size=self.settings.queue_size
            )

    async def append_record(self, record: Record) -> int:
        # The span covers the wait until the entry is durable: the writer commits it with others.
        with self._spans.span("audit.append", {"engram.audit.kind": record.kind}) as span:
            seq = await self._append_record(record)
            span.set_attribute("engram.audit.seq", seq)
            return seq

    async def _append_record(self, record: Record) -> int:
        self._check_room()
        pending = _Pending(record, anyio.Event())
        self._queue.append(pending)
        self._waited += 1
        self._kick()
        limit = self.settings.append_timeout
        with anyio.move_on_after(limit):
            await pending.done.wait()  # type: ignore[union-attr]
        if pending.seq is not None:
            return pending.seq
        if pending.error is None:
            raise Unavailable(f"the audit entry was not confirmed durable within {limit:g} s", reason="audit_timeout")
        if isinstance(pending.error, RPCError):
            raise pending.error
        raise Unavailable(f"the audit entry could not be written: {pending.error}", reason="audit_failed")

    def _enqueue_unwaited(self, record: Record) -> None:
        self._queue.append(_Pending(record))
        # The writer only needs waking when this entry starts a batch or fills one: while it
        # gathers entries nobody waits for, waking it for each of them would cost a task switch
        # per read for nothing.
        if len(self._queue) == 1 or self._batch_full():
            self._kick()

    def _batch_full(self) -> bool:
        """Whether the queue holds a whole batch, or as much as it may hold at all."""
        return len(self._queue) >= min(self.settings.max_batch, self.settings.queue_size)

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _finish(self, pending: _Pending, seq: int | None = None, error: BaseException | None = None) -> None:
        pending.seq, pending.error = seq, error
        if pending.done is not None:
            pending.done.set()

    async def _write_loop(self) -> None:
        try:
            max_batch = self.settings.max_batch
            delay = self.settings.max_batch_delay_ms / 1000
            while True:
                while not self._queue:
                    if self._closing:
                        return
                    self._wake = anyio.Event()
                    await self._wake.wait()
                await self._gather_unwaited()
                if delay and len(self._queue) < max_batch and not self._closing:
                    with anyio.move_on_after(delay):
                        while len(self._queue) < max_batch:
                            self._wake = anyio.Event()
                            await self._wake.wait()
                batch = [self._queue.popleft() for _ in range(min(max_batch, len(self._queue)))]
                self._waited -= sum(pending.done is not None for pending in batch)
                self._signal_space()
                await self._write(batch)
                last = self._last_checkpoint.size if self._last_checkpoint else 0
                if self.store.size - last >= self.settings.checkpoint_every_entries and not self._checkpoint_running:
                    self._checkpoint_running = True
                    self.start_soon(self._checkpoint_task, name="audit-checkpoint")
        finally:
            self._writer_done.set()  # type: ignore[union-attr]

    async def _gather_unwaited(self) -> None:
        """While nobody waits for the queued entries (reads', events'), let more join them for up
        to ``audit.read_commit_delay_ms``: one commit, one thread hop and one fsync for many reads
        instead of one each. An entry someone waits for, a full batch or shutdown ends the wait."""
        window = self.settings.read_commit_delay_ms / 1000
        if not window or self._waited or self._closing or self._batch_full():
            return
        with anyio.move_on_after(window):
            while not (self._waited or self._closing or self._batch_full()):
                self._wake = anyio.Event()
                await self._wake.wait()

    async def _write(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            first = await anyio.to_thread.run_sync(self.store.append, [p.record for p in batch])
        except Exception as exc:  # noqa: BLE001 - disk full, I/O error, a bug: fail these callers, keep serving
            self.counters.failures += 1
            self.counters.last_error = f"{type(exc).__name__}: {exc}"
            self._m_failures.inc()
            log.error("audit batch could not be written", entries=len(batch), error=self.counters.last_error)
            for pending in batch:
                self._finish(pending, error=exc)
            return
        elapsed = time.perf_counter() - started
        self.counters.last_error = None
        self.counters.appended += len(batch)
        self.counters.batches += 1
        self.counters.sizes.append(len(batch))
        self._m_batch.observe(len(batch))
        self._m_commit.observe(elapsed)
        for offset, pending in enumerate(batch):
            self._m_entries.labels(pending.record.kind).inc()
            self._finish(pending, seq=first + offset)
        self._bus.publish(AuditAppended(first_seq=first, count=len(batch), size=self.store.size))

    def _signal_space(self) -> None:
        if self._space is not None:
            self._space.set()
            self._space = anyio.Event()

    # --- bus events ------------------------------------------------------------------------

    def _note_gap(self) -> None:
        sub = self._subscription
        if sub is None or sub.dropped == self._dropped_seen:
            return
        lost = sub.dropped - self._dropped_seen
        self._dropped_seen = sub.dropped
        self.counters.events_lost += lost
        self._m_lost.inc(lost)
        log.warning("audited events lost to overflow", lost=lost)
        self._enqueue_unwaited(Record(kind=KIND_GAP, detail={"lost": lost, "total_lost": sub.dropped}))

    async def _pump_events(self) -> None:
        sub = self._subscription
        assert sub is not None
        while True:
            self._held = await sub.receive()
            self._note_gap()
            # Backpressure instead of loss: the bus queue absorbs bursts while the writer catches up.
            while len(self._queue) >= self.settings.queue_size:
                space = self._space
                assert space is not None
                await space.wait()
            event, self._held = self._held, None
            self._record_event(event)

    def _record_event(self, event: Any) -> None:
        if is_audited(event):
            self._enqueue_unwaited(event_record(event))

    def _drain_events(self) -> None:
        sub = self._subscription
        if sub is None:
            return
        if self._held is not None:  # the pump took it but waited for room in the queue
            event, self._held = self._held, None
            self._record_event(event)
        while (event := sub.receive_nowait()) is not None:
            self._record_event(event)
        self._note_gap()

    # --- checkpoints -----------------------------------------------------------------------

    async def _checkpoint_timer(self) -> None:
        period = self.settings.checkpoint_every_seconds
        while True:
            await anyio.sleep(min(period, 1.0))
            last = self._last_checkpoint
            if time.monotonic() - self._last_checkpoint_at >= period and self.store.size > (last.size if last else 0):
                try:
                    await self._checkpoint()
                except Exception:
                    log.exception("audit checkpoint failed")

    async def _checkpoint_task(self) -> None:
        try:
            await self._checkpoint()
        except Exception:
            log.exception("audit checkpoint failed")
        finally:
            self._checkpoint_running = False

    async def _checkpoint(self) -> StoredCheckpoint | None:
        """Sign and store a checkpoint over everything committed (unless one already covers it)."""
        assert self._checkpoint_lock is not None
        async with self._checkpoint_lock:
            return await self._checkpoint_locked()

    async def _checkpoint_locked(self, rotation: tuple[Signer, Signer] | None = None) -> StoredCheckpoint | None:
        # Only ever called under _checkpoint_lock: checkpoints are stored in size order.
        size = self.store.size
        last = self._last_checkpoint
        if size == 0 or (last is not None and last.size == size and rotation is None):
            return last
        root = self.store.tree.root()
        if rotation is not None:
            old, new = rotation
            signed = sign_checkpoint(self.origin, size, root, new, previous=old)
        else:
            signed = sign_checkpoint(self.origin, size, root, self.keys.signer)  # type: ignore[arg-type]
        stored = await anyio.to_thread.run_sync(
            self.store.add_checkpoint, size, root, signed.note, signed.key_id, signed.time
        )
        self._last_checkpoint = stored
        self._last_checkpoint_at = time.monotonic()
        self.counters.checkpoints += 1
        self._m_checkpoints.inc()
        self._bus.publish(CheckpointSigned(size=size, root=base64.b64encode(root).decode(), key_id=stored.key_id))
        log.debug("audit checkpoint signed", size=size, key_id=stored.key_id)
        return stored

    async def checkpoint(self, fresh: bool = True) -> StoredCheckpoint | None:
        """The latest checkpoint; with ``fresh``, first sign one if the log grew since."""
        if self.state is not PartState.RUNNING:
            raise Unavailable("the audit log is not running", reason="audit_unavailable")
        if fresh:
            return await self._checkpoint()
        return self._last_checkpoint

    async def rotate_key(self) -> tuple[str, str, StoredCheckpoint]:
        """New signing key; the rotation checkpoint is signed by both keys (see :mod:`.verify`)."""
        if self.state is not PartState.RUNNING:
            raise Unavailable("the audit log is not running", reason="audit_unavailable")
        assert self._checkpoint_lock is not None
        if self.keys.source.external:
            raise Conflict(
                f"the audit signing key comes from {self.keys.source.describe()}, which engramd never "
                "writes; to replace it, make a new key with `engram audit keygen` and hand the log over "
                "to it at a restart (docs/audit.md, Keys outside the state folder)",
                reason="audit_key_external",
            )
        if self.store.size == 0:
            raise Unavailable("nothing to sign yet", reason="audit_empty")
        # One critical section: no checkpoint can slip in between the new key and the rotation
        # checkpoint that introduces it.
        async with self._checkpoint_lock:
            old, new = await anyio.to_thread.run_sync(self.keys.rotate)
            stored = await self._checkpoint_locked(rotation=(old, new))
        assert stored is not None
        self._bus.publish(KeyRotated(old_vkey=old.verifier_key(), new_vkey=new.verifier_key(), size=stored.size))
        await self.append(KIND_KEY_ROTATED, detail=rotation_detail(old, new, stored.size))
        return old.verifier_key(), new.verifier_key(), stored

    # --- reading (worker threads) ------------------------------------------------------------

    async def read(self, func: Any, *args: Any) -> Any:
        """Run a blocking read of the store in a worker thread."""
        return await anyio.to_thread.run_sync(func, *args)

    async def prove_entries(self, seqs: list[int]) -> ProvenEntries:
        """The entries at ``seqs`` with their inclusion proofs in the tree of the latest checkpoint,
        signed first if the last one does not cover them all (a proof bundle, :mod:`.bundle`)."""
        size = self.size
        bad = [seq for seq in seqs if not 0 <= seq < size]
        if bad:
            raise NotFound(f"no audit entry {bad[0]}; the log has {size} entries", seq=bad[0], size=size)
        checkpoint = await self.checkpoint(fresh=False)
        if checkpoint is None or any(seq >= checkpoint.size for seq in seqs):
            checkpoint = await self.checkpoint(fresh=True)
        assert checkpoint is not None  # the log holds the entries asked for
        store, tree_size = self.store, checkpoint.size

        def read() -> list[tuple[int, bytes, list[bytes]]]:
            proven = []
            for seq in seqs:
                found = store.entry(seq)
                if found is None:
                    raise LookupError(f"entry {seq} is missing")
                proven.append((seq, found[0], store.inclusion_proof(seq, tree_size)))
            return proven

        try:
            entries = await anyio.to_thread.run_sync(read)
        except LookupError as exc:
            raise IntegrityError(f"the audit tree is incomplete: {exc}", reason="audit_node_missing") from None
        return ProvenEntries(self.origin, checkpoint, entries)


def _rpc_record(method: str, principal: Any, request: int, params: Any, result: Any, error: RPCError | None,
                connection: int | None) -> Record:
    return request_record(
        method=method,
        principal=principal,
        request=request,
        params=params,
        result=result,
        error_code=error.code if error is not None else None,
        error_reason=error.reason if error is not None else None,
        connection=connection,
    )
