"""Taking SQLite's write lock promptly.

Every part that writes (audit log, memory, router cache, sleep) has its own connection to the one
database file, so writers queue for SQLite's single write lock. SQLite's built-in busy handler
sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between attempts: a waiter can wake up to
100 ms after the lock was freed, which is longer than most of our transactions hold it. An
audited request (every ``memory.recall``) waits for its audit entry to commit, so that backoff
showed up directly in foreground latency whenever a background writer (sleep consolidation, index
maintenance) held the lock. :func:`begin_immediate` polls about every millisecond instead.
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["begin_immediate"]

_POLL_MS = 1


def begin_immediate(conn: sqlite3.Connection, timeout: float) -> None:
    """``BEGIN IMMEDIATE`` on ``conn``, retrying about every millisecond for up to ``timeout`` s.

    Raises the last ``sqlite3.OperationalError`` ("database is locked") when the lock stays taken
    for longer than ``timeout``. The connection's own busy timeout is restored either way.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")  # the common case: the lock is free
        return
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
            raise
    previous = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    deadline = time.monotonic() + timeout
    conn.execute(f"PRAGMA busy_timeout = {_POLL_MS}")
    try:
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
    finally:
        conn.execute(f"PRAGMA busy_timeout = {previous}")
