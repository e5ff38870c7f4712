"""Every part migrates its own tables; a database of the single series of old converts in place."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import anyio
import pytest
from engram.errors import StartupError
from engram.storage import SCHEMAS, Database
from engram.storage.schema import LAYOUT, LEGACY, Schema, pending


def _open(path: Path) -> dict[str, int]:
    async def main() -> dict[str, int]:
        async with Database(path) as db:
            return dict(db.versions)

    return anyio.run(main)


def _versions(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT part, version FROM schema_versions"))


def test_each_part_has_its_own_series_and_a_fresh_database_gets_all_of_them(tmp_path: Path) -> None:
    assert [s.part for s in SCHEMAS] == ["base", "audit", "memory", "router", "sleep", "tasks"]
    path = tmp_path / "engram.db"
    expected = {s.part: s.version for s in SCHEMAS}
    assert _open(path) == expected
    assert _versions(path) == expected
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LAYOUT
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert {"meta", "audit_entries", "memory_episodes", "router_weights", "sleep_runs", "tasks_runs"} <= tables


def test_a_database_of_the_single_series_converts_without_running_anything_twice(tmp_path: Path) -> None:
    # Build the database as the old engram left it: the legacy migrations applied in their old
    # order, counted by user_version alone.
    path = tmp_path / "engram.db"
    by_part = {s.part: s for s in SCHEMAS}
    with sqlite3.connect(path) as conn:
        for part, version in LEGACY:
            conn.executescript(by_part[part].migrations[version - 1].sql)
        conn.execute(f"PRAGMA user_version = {len(LEGACY)}")
        created = conn.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()[0]
    versions = _open(path)  # a migration run twice would fail on its CREATE TABLE
    assert versions == {s.part: s.version for s in SCHEMAS}
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()[0] == created
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LAYOUT


def test_a_part_ahead_of_this_engram_is_refused_before_anything_runs(tmp_path: Path) -> None:
    path = tmp_path / "engram.db"
    _open(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_versions SET version = 99 WHERE part = 'memory'")
        conn.execute("DELETE FROM schema_versions WHERE part = 'sleep'")  # would run sleep's again
    with pytest.raises(StartupError, match="'memory' at schema version 99"):
        _open(path)
    assert _versions(path)["memory"] == 99 and "sleep" not in _versions(path)


def test_pending_keeps_the_part_order_and_skips_what_ran() -> None:
    todo = pending(SCHEMAS, {"base": 1, "audit": 1, "memory": 1})
    assert todo[0].label == "memory/0002_archive"
    assert [m.label for m in todo] == [m.label for s in SCHEMAS for m in s.migrations if (s.part, m.version) not in
                                       {("base", 1), ("audit", 1), ("memory", 1)}]


def test_a_gap_in_a_part_series_is_a_packaging_error(tmp_path: Path) -> None:
    package = tmp_path / "gappy"
    package.mkdir()
    (package / "0001_one.sql").write_text("SELECT 1;")
    (package / "0003_three.sql").write_text("SELECT 1;")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(RuntimeError, match="gappy: migration 0002 is missing"):
            Schema.load("gappy", "gappy")
    finally:
        sys.path.remove(str(tmp_path))
