"""The one SQLite database (WAL) of a state folder, opened through aiosqlite.

Opening it brings every part's tables up to date (see :mod:`engram.storage.schema`): each
migration runs in its own transaction together with its part's ``schema_versions`` row, so a crash
mid-migration leaves the previous version intact. A database that a newer engram wrote is refused
before anything is touched, rather than guessed at.
"""

from __future__ import annotations

import sqlite3
from contextlib import AsyncExitStack
from pathlib import Path

import aiosqlite
import structlog

from engram.errors import StartupError
from engram.lifecycle import Health, Part
from engram.storage.schema import LAYOUT, NewerSchema, Schema, legacy_versions, load_schemas, pending

log = structlog.get_logger("engram.storage")

SCHEMAS: tuple[Schema, ...] = load_schemas()

_VERSIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_versions (part TEXT PRIMARY KEY, version INTEGER NOT NULL) STRICT"
)


class Database(Part):
    """The connection, as a part: open while it runs; ``aclose()`` is idempotent."""

    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        super().__init__("database")
        self.path = path
        self.busy_timeout = busy_timeout
        self._conn: aiosqlite.Connection | None = None
        self.versions: dict[str, int] = {}  # each part's schema version, once open

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("database is not open")
        return self._conn

    async def setup(self, stack: AsyncExitStack) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transactions are explicit.
            self._conn = await aiosqlite.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
            stack.push_async_callback(self._close)
            await self._conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk before it is acknowledged, which is what "an acknowledged
            # write survives kill -9 and power loss" needs.
            await self._conn.execute("PRAGMA synchronous = FULL")
            await self._conn.execute("PRAGMA foreign_keys = ON")
            await self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StartupError(f"cannot open database {self.path}: {exc}") from None

    async def _migrate(self) -> None:
        conn = self.conn
        user_version = await self._one("PRAGMA user_version")
        if user_version > LAYOUT:
            raise StartupError(
                f"database {self.path} has schema version {user_version}, newer than this engram knows "
                f"({LAYOUT}); it was written by a newer engram. Upgrade engram, or start with "
                "another --state-dir; the database was left untouched."
            )
        if user_version < LAYOUT:  # new, or of the single series of old: record each part's version
            recorded = legacy_versions(user_version)
            rows = ", ".join(f"('{part}', {version})" for part, version in recorded.items())
            await conn.executescript(
                f"BEGIN IMMEDIATE;\n{_VERSIONS_TABLE};\n"
                + (f"INSERT INTO schema_versions (part, version) VALUES {rows};\n" if rows else "")
                + f"PRAGMA user_version = {LAYOUT};\nCOMMIT;"
            )
        async with conn.execute("SELECT part, version FROM schema_versions") as cursor:
            recorded = {str(part): int(version) for part, version in await cursor.fetchall()}
        try:
            to_run = pending(SCHEMAS, recorded)
        except NewerSchema as exc:
            raise StartupError(
                f"database {self.path}: {exc}; it was written by a newer engram. Upgrade engram, or "
                "start with another --state-dir; the database was left untouched."
            ) from None
        for migration in to_run:
            log.info("migrating database", migration=migration.label, path=str(self.path))
            try:
                await conn.executescript(
                    f"BEGIN IMMEDIATE;\n{migration.sql}\n"
                    f"INSERT INTO schema_versions (part, version) VALUES ('{migration.part}', {migration.version}) "
                    "ON CONFLICT (part) DO UPDATE SET version = excluded.version;\nCOMMIT;"
                )
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise StartupError(
                    f"migration {migration.label} failed: {exc}; "
                    f"{migration.part} stays at version {migration.version - 1}"
                ) from None
        self.versions = {schema.part: schema.version for schema in SCHEMAS}

    async def _one(self, sql: str) -> int:
        async with self.conn.execute(sql) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def health(self) -> Health:
        try:
            async with self.conn.execute("SELECT 1") as cursor:
                await cursor.fetchone()
        except Exception as exc:  # a health probe reports, it does not raise
            return Health(False, str(exc))
        return Health(True, "schema " + ", ".join(f"{part} {version}" for part, version in self.versions.items()))
