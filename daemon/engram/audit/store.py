"""The audit log in SQLite: entries, tree state, perfect-subtree nodes, checkpoints.

Blocking code on purpose: the daemon calls it from worker threads (``anyio.to_thread``), the
benchmark calls it in-process without a daemon ("bare"), and ``engram audit verify`` reads a
state folder with it while no daemon runs. The tables come from audit's own migrations
(``audit/migrations/``), which the daemon runs at start.

Two connections: the writer (``PRAGMA synchronous = FULL``: a commit is on disk before
:meth:`AuditStore.append` returns, so an acknowledged entry survives ``kill -9`` and power loss)
and a reader, so that proofs and reads never queue behind a commit (WAL lets readers proceed
while one writer writes). Each connection is used by one thread at a time, under its own lock.

One :meth:`AuditStore.append` call is one transaction: its entries, the perfect-subtree nodes
they complete and the new tree state (size + compact frontier) become durable together or not
at all. The in-memory tree moves forward only after ``COMMIT`` returned.
"""

from __future__ import annotations

import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engram.audit.entry import Record, build_entry
from engram.audit.merkle import (
    CompactTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    subtree_hasher,
)
from engram.errors import DataError
from engram.storage.locking import begin_immediate

__all__ = ["AuditStore", "StoreError", "StoredCheckpoint"]


class StoreError(DataError):
    """The audit tables are missing or unreadable (e.g. a database engram never started on)."""


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    id: int
    size: int
    root: bytes
    note: str
    key_id: str
    time: str


_TABLES = ("audit_entries", "audit_tree", "audit_nodes", "audit_checkpoints")


class AuditStore:
    """The audit tables of one database file. ``readonly`` opens it with ``mode=ro`` and never
    writes (``engram audit verify`` / ``export`` on a state folder)."""

    def __init__(self, path: Path, *, readonly: bool = False, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.busy_timeout = busy_timeout
        self.tree = CompactTree()
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._wlock = threading.Lock()
        self._rlock = threading.RLock()
        self._subtree = subtree_hasher(self._perfect_hash)

    # --- lifecycle -------------------------------------------------------------------------

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        if readonly:
            if not self.path.is_file():
                raise StoreError(f"{self.path} does not exist")
            uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
            if not Path(f"{self.path}-wal").exists():
                # No daemon has it open (a clean shutdown removes the -wal file): everything is in
                # the main file. mode=ro alone would still create -wal and -shm files beside it;
                # immutable reads the same bytes and touches nothing.
                uri += "&immutable=1"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout)
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        return conn

    def open(self) -> AuditStore:
        try:
            self._reader = self._connect(readonly=True) if self.readonly else self._connect(readonly=False)
            names = {row[0] for row in self._reader.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
            missing = [t for t in _TABLES if t not in names]
            if missing:
                raise StoreError(f"{self.path} has no audit log (tables {', '.join(missing)} missing)")
            if not self.readonly:
                self._writer = self._connect(readonly=False)
            stored = self.tree_state()
            self.tree = stored if stored is not None else CompactTree()
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"cannot read the audit log in {self.path}: {exc}") from None
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for name in ("_writer", "_reader"):
            conn = getattr(self, name)
            if conn is not None:
                setattr(self, name, None)
                conn.close()

    def __enter__(self) -> AuditStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def reader(self) -> sqlite3.Connection:
        if self._reader is None:
            raise StoreError("audit store is not open")
        return self._reader

    @property
    def size(self) -> int:
        """Entries committed (through this store)."""
        return self.tree.size

    # --- meta ------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        with self._rlock:
            row = self.reader.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_setdefault(self, key: str, value: str) -> str:
        """The stored value of ``key``, storing ``value`` first if there is none."""
        with self._wlock:
            conn = self._require_writer()
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, value))
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0])

    def meta_set(self, key: str, value: str) -> None:
        with self._wlock:
            self._require_writer().execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value)
            )

    # --- writing ---------------------------------------------------------------------------

    def _require_writer(self) -> sqlite3.Connection:
        if self._writer is None:
            raise StoreError("audit store is read-only or not open")
        return self._writer

    def append(self, records: Sequence[Record]) -> int:
        """Write ``records`` as the next entries in ONE transaction; returns the first ``seq``.

        Canonical encoding, content hashes and Merkle hashing happen here, in the caller's
        (worker) thread. Raises on any failure, after rolling back: nothing was appended.
        """
        if not records:
            return self.tree.size
        tree = self.tree.copy()
        first = tree.size
        rows = []
        nodes: list[tuple[int, int, bytes]] = []

        def keep_node(level: int, index: int, digest: bytes) -> None:
            if level:  # level 0 is the leaf hash, stored with its entry
                nodes.append((level, index, digest))

        for offset, record in enumerate(records):
            data = build_entry(first + offset, record)
            digest = leaf_hash(data)
            rows.append((first + offset, data, digest))
            tree.append(digest, keep_node)
        with self._wlock:
            conn = self._require_writer()
            begin_immediate(conn, self.busy_timeout)
            try:
                conn.executemany("INSERT INTO audit_entries (seq, entry, leaf_hash) VALUES (?, ?, ?)", rows)
                conn.executemany("INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
                conn.execute(
                    "INSERT INTO audit_tree (id, size, frontier) VALUES (1, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET size = excluded.size, frontier = excluded.frontier",
                    (tree.size, tree.to_bytes()),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self.tree = tree
        return first

    def add_checkpoint(self, size: int, root: bytes, note: str, key_id: str, time: str) -> StoredCheckpoint:
        with self._wlock:
            conn = self._require_writer()
            cursor = conn.execute(
                "INSERT INTO audit_checkpoints (size, root, note, key_id, time) VALUES (?, ?, ?, ?, ?)",
                (size, root, note, key_id, time),
            )
            return StoredCheckpoint(int(cursor.lastrowid or 0), size, root, note, key_id, time)

    # --- reading ---------------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside this block see one consistent state of the database."""
        with self._rlock:
            conn = self.reader
            conn.execute("BEGIN")
            try:
                yield
            finally:
                conn.execute("COMMIT")

    def tree_state(self) -> CompactTree | None:
        """The stored size and frontier (``None`` when nothing was ever appended)."""
        with self._rlock:
            row = self.reader.execute("SELECT size, frontier FROM audit_tree WHERE id = 1").fetchone()
        if row is None:
            return None
        tree = CompactTree.from_bytes(bytes(row[1]))
        if tree.size != row[0]:
            raise ValueError(f"stored tree size {row[0]} disagrees with its frontier (size {tree.size})")
        return tree

    def count_entries(self) -> int:
        with self._rlock:
            row = self.reader.execute("SELECT count(*) FROM audit_entries").fetchone()
        return int(row[0])

    def entry(self, seq: int) -> tuple[bytes, bytes] | None:
        """``(canonical bytes, leaf hash)`` of the entry at ``seq``."""
        with self._rlock:
            row = self.reader.execute("SELECT entry, leaf_hash FROM audit_entries WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    def entries(self, start: int, limit: int) -> list[tuple[int, bytes, bytes]]:
        with self._rlock:
            rows = self.reader.execute(
                "SELECT seq, entry, leaf_hash FROM audit_entries WHERE seq >= ? ORDER BY seq LIMIT ?", (start, limit)
            ).fetchall()
        return [(int(seq), bytes(data), bytes(leaf)) for seq, data, leaf in rows]

    def iter_entries(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes, bytes]]:
        """Every stored entry from ``start`` in ``seq`` order (use inside :meth:`snapshot`)."""
        conn = self.reader
        if end is None:
            cursor = conn.execute("SELECT seq, entry, leaf_hash FROM audit_entries WHERE seq >= ? ORDER BY seq", (start,))
        else:
            cursor = conn.execute(
                "SELECT seq, entry, leaf_hash FROM audit_entries WHERE seq >= ? AND seq < ? ORDER BY seq", (start, end)
            )
        return cursor  # rows one by one straight from SQLite: no Python frame per row

    def iter_leaf_hashes(self, batch: int = 16384) -> Iterator[bytes]:
        cursor = self.reader.execute("SELECT leaf_hash FROM audit_entries ORDER BY seq")
        while rows := cursor.fetchmany(batch):
            for (digest,) in rows:
                yield digest

    def iter_nodes(self, level: int, batch: int = 16384) -> Iterator[tuple[int, bytes]]:
        cursor = self.reader.execute("SELECT idx, hash FROM audit_nodes WHERE level = ? ORDER BY idx", (level,))
        while rows := cursor.fetchmany(batch):
            yield from rows

    def nodes_between(self, level: int, start: int, end: int) -> list[tuple[int, bytes]]:
        """Stored ``(idx, hash)`` of ``level`` with ``start <= idx < end``, in order (one range scan)."""
        return self.reader.execute(
            "SELECT idx, hash FROM audit_nodes WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx", (level, start, end)
        ).fetchall()

    def first_node_from(self, level: int, start: int) -> int | None:
        row = self.reader.execute(
            "SELECT idx FROM audit_nodes WHERE level = ? AND idx >= ? ORDER BY idx LIMIT 1", (level, start)
        ).fetchone()
        return None if row is None else int(row[0])

    def max_node_level(self) -> int:
        with self._rlock:
            row = self.reader.execute("SELECT max(level) FROM audit_nodes").fetchone()
        return int(row[0] or 0)

    def checkpoints(self, start: int = 0, limit: int | None = None) -> list[StoredCheckpoint]:
        """Checkpoints in the order they were signed; ``start`` skips that many."""
        with self._rlock:
            rows = self.reader.execute(
                "SELECT id, size, root, note, key_id, time FROM audit_checkpoints ORDER BY id LIMIT ? OFFSET ?",
                (-1 if limit is None else limit, start),
            ).fetchall()
        return [StoredCheckpoint(int(i), int(s), bytes(r), str(n), str(k), str(t)) for i, s, r, n, k, t in rows]

    def last_checkpoint(self) -> StoredCheckpoint | None:
        with self._rlock:
            row = self.reader.execute(
                "SELECT id, size, root, note, key_id, time FROM audit_checkpoints ORDER BY id DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        i, s, r, n, k, t = row
        return StoredCheckpoint(int(i), int(s), bytes(r), str(n), str(k), str(t))

    def checkpoint_count(self) -> int:
        with self._rlock:
            return int(self.reader.execute("SELECT count(*) FROM audit_checkpoints").fetchone()[0])

    # --- proofs ----------------------------------------------------------------------------

    def _perfect_hash(self, level: int, index: int) -> bytes:
        conn = self.reader
        if level == 0:
            row = conn.execute("SELECT leaf_hash FROM audit_entries WHERE seq = ?", (index,)).fetchone()
        else:
            row = conn.execute("SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", (level, index)).fetchone()
        if row is None:
            raise LookupError(f"audit node (level {level}, index {index}) is missing")
        return bytes(row[0])

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.tree.size:
            raise ValueError(f"tree size {size} is beyond the log ({self.tree.size} entries)")

    def root(self, size: int) -> bytes:
        """Merkle root of the first ``size`` entries (``size`` at most the committed size)."""
        self._check_size(size)
        if size == self.tree.size:
            return self.tree.root()
        with self._rlock:
            return self._subtree(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        self._check_size(size)
        with self._rlock:
            return inclusion_proof(index, size, self._subtree)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        self._check_size(size2)
        with self._rlock:
            return consistency_proof(size1, size2, self._subtree)
