"""The one SQLite database (WAL) of a state folder, opened through aiosqlite.

Migrations are SQL files named ``NNNN_name.sql`` in ``engram/storage/migrations``. They run in
order at start, each in its own transaction together with the ``PRAGMA user_version`` bump, so a
crash mid-migration leaves the previous version intact. A database whose version is newer than
the newest migration was written by a newer engram: we refuse to touch it rather than guess.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from engram.errors import StartupError

log = structlog.get_logger("engram.storage")

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    migrations = []
    for entry in resources.files("engram.storage.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            migrations.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    migrations.sort(key=lambda m: m.version)
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise RuntimeError(f"migration {expected:04d} is missing (found {migration.version:04d})")
    return migrations


MIGRATIONS = load_migrations()
SCHEMA_VERSION = MIGRATIONS[-1].version if MIGRATIONS else 0


class Database:
    """An async context manager owning the connection; ``aclose()`` is idempotent."""

    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.state = "created"
        self._conn: aiosqlite.Connection | None = None
        self.schema_version = 0

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("database is not open")
        return self._conn

    async def __aenter__(self) -> "Database":
        await self.open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transactions are explicit.
            self._conn = await aiosqlite.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
            await self._conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk before it is acknowledged, which is what "an acknowledged
            # write survives kill -9 and power loss" needs.
            await self._conn.execute("PRAGMA synchronous = FULL")
            await self._conn.execute("PRAGMA foreign_keys = ON")
            await self._migrate()
        except sqlite3.DatabaseError as exc:
            await self.aclose()
            raise StartupError(f"cannot open database {self.path}: {exc}") from None
        except BaseException:
            await self.aclose()
            raise
        self.state = "open"

    async def _migrate(self) -> None:
        conn = self.conn
        async with conn.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise StartupError(
                f"database {self.path} has schema version {current}, newer than this engram knows "
                f"({SCHEMA_VERSION}); it was written by a newer engram. Upgrade engram, or start with "
                "another --state-dir; the database was left untouched."
            )
        for migration in MIGRATIONS[current:]:
            log.info("migrating database", version=migration.version, name=migration.name, path=str(self.path))
            try:
                await conn.executescript(
                    f"BEGIN IMMEDIATE;\n{migration.sql}\nPRAGMA user_version = {migration.version};\nCOMMIT;"
                )
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise StartupError(
                    f"migration {migration.version:04d}_{migration.name} failed: {exc}; "
                    f"the database stays at version {migration.version - 1}"
                ) from None
        self.schema_version = SCHEMA_VERSION

    async def aclose(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            finally:
                self.state = "closed"

    async def health(self) -> tuple[bool, str]:
        try:
            async with self.conn.execute("SELECT 1") as cursor:
                await cursor.fetchone()
        except Exception as exc:  # a health probe reports, it does not raise
            return False, str(exc)
        return True, f"schema version {self.schema_version}"
