from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from engram.storage import SCHEMAS


def router_db(path: Path) -> sqlite3.Connection:
    """A database with the router's tables (its migrations), as the daemon makes it."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    fresh = conn.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'router_weights'").fetchone()[0] == 0
    if fresh:
        for migration in next(s for s in SCHEMAS if s.part == "router").migrations:
            conn.executescript(migration.sql)
    return conn


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "engram.db"


@pytest.fixture
def open_db(db_path: Path):
    """Open (again) the test database: a restart of the daemon, as far as the router sees."""
    return lambda: router_db(db_path)


@pytest.fixture
def conn(db_path: Path) -> Iterator[sqlite3.Connection]:
    c = router_db(db_path)
    yield c
    c.close()
