"""Memory's own SQLite connections to the daemon's database: one writer and a few readers.

Blocking code on purpose, called from worker threads. The daemon's shared aiosqlite connection
would interleave our BEGIN ... COMMIT with other parts' statements, and every statement would
cost a thread hop; a dedicated writer makes one ``remember`` batch one transaction in one thread
call, and WAL lets the readers run while it commits.

The writer runs with ``synchronous = FULL`` (a commit is on disk before it returns: an
acknowledged write survives ``kill -9`` and power loss) and ``secure_delete = ON`` (freed pages
are overwritten, so forgotten text does not linger in the file). The tables come from the
part's migrations (``memory/migrations/``), applied before this part starts.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engram.memory.textkey import SQL_FUNCTION, text_key
from engram.storage.background import GaveWay
from engram.storage.locking import begin_immediate

__all__ = ["MemoryDB", "json_rows"]

_WRITER_CACHE = -32768  # SQLite page cache per connection, negative: KiB (32 MB)
_READER_CACHE = -8192  # 8 MB per reader: a recall's pages, the b-tree's upper levels


def json_rows(rows: Sequence[Any]) -> str:
    """Rows as one JSON array, for a statement that reads them with ``json_each(?)``.

    Consolidation writes many rows per transaction with single set-based statements fed this way
    rather than with ``executemany`` or a statement per row. Each statement — and each row that
    ``executemany`` binds — hands the interpreter lock back while SQLite works, then waits to
    take it again; while a request is being served the event loop holds it for up to the switch
    interval each time. A transaction of hundreds of statements then held SQLite's write lock
    ten times as long as its work took (about 5 ms instead of 0.5 ms for 100 links), and the
    request's own audit entry waited for that lock. (JSON numbers reach SQLite exactly: Python
    writes the shortest repr that reads back as the same double.)"""
    return json.dumps(rows, separators=(",", ":"))


class _GivingWay:
    """The writer inside a transaction that gives way: before each statement it asks whether
    foreground work is waiting, and if so raises :class:`GaveWay` (the transaction then rolls
    back, which frees the lock at once)."""

    def __init__(self, conn: sqlite3.Connection, give_way: Callable[[], bool]) -> None:
        self._conn = conn
        self._give_way = give_way

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        if self._give_way():
            raise GaveWay
        return self._conn.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any) -> sqlite3.Cursor:
        if self._give_way():
            raise GaveWay
        return self._conn.executemany(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class MemoryDB:
    def __init__(self, path: Path, busy_timeout: float = 5.0, readers: int = 3) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._writer: sqlite3.Connection | None = None
        self._wlock = threading.Lock()
        self._readers: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._all_readers: list[sqlite3.Connection] = []
        self._reader_count = readers

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        # No memory-mapped reads: recall reads scattered rows, and each page fault on a mapping
        # maps the 64 KB around it (the kernel's fault-around), so every connection's mapping grew
        # towards the whole file (the 100k-episode table is 210 MB, ~250 MB of RSS after a few
        # hundred recalls, once per connection). Reads go through SQLite's page cache instead,
        # bounded: the writer's (which also batches a commit's pages) and the readers' smaller one.
        conn.execute(f"PRAGMA cache_size = {_WRITER_CACHE}")
        conn.execute("PRAGMA mmap_size = 0")
        # Statements that fill in or restore episodes' text_key compute it where the text is.
        conn.create_function(SQL_FUNCTION, 1, text_key, deterministic=True)
        return conn

    def open(self) -> None:
        writer = self._connect()
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("PRAGMA synchronous = FULL")
        found = writer.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'memory_episodes'").fetchone()[0]
        if not found:
            writer.close()
            raise RuntimeError(f"{self.path} has no memory tables (memory's migrations have not run)")
        self._writer = writer
        for _ in range(self._reader_count):
            reader = self._connect()
            reader.execute("PRAGMA query_only = ON")
            reader.execute(f"PRAGMA cache_size = {_READER_CACHE}")
            self._all_readers.append(reader)
            self._readers.put(reader)

    def close(self) -> None:
        with self._wlock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        while self._all_readers:
            self._all_readers.pop().close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """The writer, held exclusively; the caller issues BEGIN IMMEDIATE ... COMMIT."""
        with self._wlock:
            if self._writer is None:
                raise RuntimeError("memory database is closed")
            yield self._writer

    @contextmanager
    def transaction(self, background: bool = False,
                    give_way: Callable[[], bool] | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises.

        ``background=True`` is for work that redoes itself after a crash (sleep consolidation's
        units: the change and its resume cursor commit together). Every audited request waits
        for SQLite's write lock, so such a transaction keeps out of its way twice over: its
        commit skips the fsync (``synchronous = NORMAL``: WAL keeps the file consistent, and a
        power cut can only lose the last of these commits, which the work then redoes), and the
        pages it wrote are checkpointed by it, passively, rather than by whichever foreground
        commit next pushes the log past SQLite's auto-checkpoint threshold.

        ``give_way`` (background work only) is asked before each statement whether foreground
        work is waiting; when it says so the transaction rolls back and :class:`GaveWay` is
        raised. A request then waits for at most one statement of background work, not for a
        whole transaction: each statement hands the interpreter lock back and waits to retake
        it, so while the event loop is busy serving that very request a transaction of a few
        statements held the write lock several milliseconds, however little SQLite had to do.
        When foreground work is already waiting at the start (background work that has waited
        its turn long enough), the transaction runs to the end."""
        with self.write() as conn:
            if background:
                conn.execute("PRAGMA synchronous = NORMAL")
            try:
                begin_immediate(conn, self.busy_timeout)
                try:
                    if give_way is not None and not give_way():
                        yield _GivingWay(conn, give_way)  # type: ignore[misc]
                    else:
                        yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                if background:
                    conn.execute("PRAGMA synchronous = FULL")
        if background:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Copy what the log holds into the database file, without waiting for anyone (a reader
        connection can do it, so memory's writer stays free)."""
        with self.read() as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A reader connection for the block (waits for a free one)."""
        conn = self._readers.get(timeout=max(self.busy_timeout, 1.0) * 6)
        try:
            yield conn
        finally:
            self._readers.put(conn)
