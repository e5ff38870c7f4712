"""One SQLite connection to the state database, held by one thread at a time.

For parts whose own tables see a row or two per step of background work (sleep's runs and
cursors, the tasks' rows): a pool of readers would cost more than it saves. Each such part opens
its own :class:`OneConnection` on the shared database file and touches only its own tables.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engram.storage.locking import begin_immediate

__all__ = ["OneConnection"]


class OneConnection:
    """``open`` it once; ``read`` and ``transaction`` lend the connection to one thread at a time."""

    def __init__(self, path: Path, busy_timeout: float = 5.0, *, name: str, foreign_keys: bool = False) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._name = name  # whose connection, in the error of a use after close
        self._foreign_keys = foreign_keys
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA synchronous = FULL")
        if self._foreign_keys:
            conn.execute("PRAGMA foreign_keys = ON")
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.close()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise RuntimeError(f"{self._name}'s database connection is closed")
            yield self._conn

    @contextmanager
    def transaction(self, background: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises.

        ``background=True`` is for what a run redoes after a crash anyway (a stage's cursor):
        its commit skips the fsync, and the pages it wrote are checkpointed by it, passively,
        rather than by whichever audited request's commit next pushes the log past SQLite's
        auto-checkpoint threshold."""
        with self.read() as conn:
            if background:
                conn.execute("PRAGMA synchronous = NORMAL")
            try:
                begin_immediate(conn, self.busy_timeout)
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                if background:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                if background:
                    conn.execute("PRAGMA synchronous = FULL")
