"""Sleep's own SQLite connection, for its own tables (``sleep/migrations/``): the runs and their
reports (``sleep_runs``), the stages a run finished (``sleep_stage_done``) and the stages'
resume cursors (``sleep_cursors``).

One connection for everything, held by one thread at a time: sleep writes a row or two per stage
and per cursor, in worker threads. Memory's data, and the journal and checkpoints that commit
with memory's changes, are memory's (:mod:`engram.sleep.ports`); this connection never touches
them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engram.storage.locking import begin_immediate

__all__ = ["SleepDB"]


class SleepDB:
    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA synchronous = FULL")
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.close()

    @contextmanager
    def _held(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("sleep's database connection is closed")
            yield self._conn

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._held() as conn:
            yield conn

    @contextmanager
    def transaction(self, background: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises.

        ``background=True`` is for what a run redoes after a crash anyway (a stage's cursor):
        its commit skips the fsync, and the pages it wrote are checkpointed by it, passively,
        rather than by whichever audited request's commit next pushes the log past SQLite's
        auto-checkpoint threshold."""
        with self._held() as conn:
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

    # --- what the stages read and write ----------------------------------------------------------------

    def save_cursor(self, run: int, namespace: str, stage: str, cursor: dict[str, Any]) -> None:
        """Keep a stage's resume cursor for a run and namespace (one short transaction)."""
        text = json.dumps(cursor, separators=(",", ":"))
        with self.transaction(background=True) as conn:
            conn.execute(
                "INSERT INTO sleep_cursors (run, namespace, stage, cursor) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (run, namespace, stage) DO UPDATE SET cursor = excluded.cursor",
                (run, namespace, stage, text),
            )

    def cursor(self, run: int, namespace: str, stage: str) -> dict[str, Any] | None:
        with self.read() as conn:
            row = conn.execute(
                "SELECT cursor FROM sleep_cursors WHERE run = ? AND namespace = ? AND stage = ?", (run, namespace, stage)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def last_completed_start(self, other_than: int) -> float | None:
        """When the latest completed run other than ``other_than`` started (None: there is none)."""
        with self.read() as conn:
            row = conn.execute(
                "SELECT max(started_at) FROM sleep_runs WHERE outcome = 'completed' AND id != ?", (other_than,)
            ).fetchone()
        return row[0] if row else None
