"""Memory's own SQLite connections."""

from __future__ import annotations

from pathlib import Path

import pytest
from engram.memory.db import MemoryDB
from engram.storage import Database
from engram.storage.background import GaveWay


@pytest.fixture
async def db(tmp_path: Path):
    database = Database(tmp_path / "engram.db")
    await database.open()  # the migrations make the memory tables
    memory_db = MemoryDB(tmp_path / "engram.db")
    memory_db.open()
    try:
        yield memory_db
    finally:
        memory_db.close()
        await database.aclose()


async def test_a_background_transaction_skips_the_fsync_and_checkpoints_what_it_wrote(db: MemoryDB) -> None:
    with db.transaction() as conn:
        conn.execute("CREATE TABLE t (x BLOB)")
    before = db.path.stat().st_size
    with db.transaction(background=True) as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        conn.executemany("INSERT INTO t VALUES (randomblob(3000))", [()] * 50)
    # far below SQLite's auto-checkpoint threshold, yet already in the database file: nothing
    # left in the log for a foreground commit to copy
    assert db.path.stat().st_size >= before + 50 * 3000
    with db.write() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again for everyone else
    with pytest.raises(RuntimeError), db.transaction(background=True) as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("rolled back")
    with db.read() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 50
    with db.write() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2


async def test_a_transaction_that_gives_way_rolls_back_and_frees_the_lock(db: MemoryDB) -> None:
    with db.transaction() as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    waiting = []  # a foreground request arrives after the first statement

    with pytest.raises(GaveWay), db.transaction(background=True, give_way=lambda: bool(waiting)) as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        waiting.append(True)
        conn.execute("INSERT INTO t VALUES (2)")
    with db.transaction() as conn:  # the lock is free, and nothing of the unit was kept
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2

    # already waiting at the start (background work that waited its turn long enough): no giving way
    with db.transaction(background=True, give_way=lambda: True) as conn:
        conn.execute("INSERT INTO t VALUES (3)")
    with db.read() as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(3,)]
