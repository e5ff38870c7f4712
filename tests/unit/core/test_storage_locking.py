import sqlite3
import threading
import time
from pathlib import Path

import pytest

from engram.storage.locking import begin_immediate


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute("PRAGMA journal_mode = WAL")
    return conn


def test_waits_for_the_holder_and_restores_the_busy_timeout(tmp_path: Path) -> None:
    holder, waiter = _connect(tmp_path / "db"), _connect(tmp_path / "db")
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release() -> None:
        time.sleep(0.05)
        holder.execute("COMMIT")
        released.set()

    threading.Thread(target=release).start()
    begin_immediate(waiter, timeout=5.0)
    assert released.is_set()  # it got the lock only once the holder let go
    waiter.execute("INSERT INTO t VALUES (1)")
    waiter.execute("COMMIT")
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_gives_up_after_the_timeout(tmp_path: Path) -> None:
    holder, waiter = _connect(tmp_path / "db"), _connect(tmp_path / "db")
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError) as caught:
        begin_immediate(waiter, timeout=0.05)
    assert caught.value.sqlite_errorcode == sqlite3.SQLITE_BUSY  # SQLite's code, not its wording
    assert not waiter.in_transaction
    holder.execute("ROLLBACK")
    begin_immediate(waiter, timeout=0.05)
    assert waiter.in_transaction
