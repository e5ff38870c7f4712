"""Which migrations a state folder's database needs: every part's own, forward only.

Each part keeps its tables' migrations in its own package, as ``engram/<part>/migrations/
NNNN_name.sql`` numbered from 0001 per part, and the database records how far each part has come
in ``schema_versions``. The parts migrate in the order of :data:`PARTS` (a part's tables may refer
to those of a part before it: sleep's first migration adds a column to memory's episodes).

Before the parts kept their own migrations there was one series for all of them, counted by
``PRAGMA user_version`` (1 to 6): :data:`LEGACY` says which part's migration each of those was, so
a database of that time is converted in place without running anything twice. Since then
``user_version`` holds :data:`LAYOUT`, and a greater one means a newer engram wrote the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from engram.errors import StartupError

__all__ = ["LAYOUT", "LEGACY", "PARTS", "Migration", "NewerSchema", "Schema", "legacy_versions", "load_schemas", "pending"]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# The parts that keep tables in the database, in the order they migrate, and the package that
# holds each one's migrations. "base" is the state folder's own facts (table ``meta``).
PARTS: tuple[tuple[str, str], ...] = (
    ("base", "engram.storage.migrations"),
    ("audit", "engram.audit.migrations"),
    ("memory", "engram.memory.migrations"),
    ("router", "engram.router.migrations"),
    ("sleep", "engram.sleep.migrations"),
    ("tasks", "engram.tasks.migrations"),
)

# The single series of old, in order: user_version N meant the first N of these had run.
LEGACY: tuple[tuple[str, int], ...] = (
    ("base", 1), ("audit", 1), ("memory", 1), ("router", 1), ("sleep", 1), ("memory", 2),
)

LAYOUT = len(LEGACY) + 1  # user_version of a database whose parts migrate on their own


class NewerSchema(StartupError):
    """The database was written by a newer engram than this one (the message says how)."""


@dataclass(frozen=True)
class Migration:
    part: str
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.part}/{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class Schema:
    """One part's migrations, in order."""

    part: str
    migrations: tuple[Migration, ...]

    @property
    def version(self) -> int:
        return len(self.migrations)

    @classmethod
    def load(cls, part: str, package: str) -> Schema:
        found = []
        for entry in resources.files(package).iterdir():
            match = _NAME.match(entry.name)
            if match:
                found.append(Migration(part, int(match[1]), match[2], entry.read_text(encoding="utf-8")))
        found.sort(key=lambda m: m.version)
        for expected, migration in enumerate(found, start=1):
            if migration.version != expected:
                raise RuntimeError(f"{part}: migration {expected:04d} is missing (found {migration.version:04d})")
        return cls(part, tuple(found))


def load_schemas() -> tuple[Schema, ...]:
    return tuple(Schema.load(part, package) for part, package in PARTS)


def legacy_versions(user_version: int) -> dict[str, int]:
    """Each part's version in a database of the single series at ``user_version``."""
    versions: dict[str, int] = {}
    for part, version in LEGACY[:user_version]:
        versions[part] = version
    return versions


def pending(schemas: tuple[Schema, ...], recorded: dict[str, int]) -> list[Migration]:
    """The migrations still to run, in order; raises :class:`NewerSchema` before any of them if
    a part is ahead of what this engram knows."""
    known = {schema.part: schema for schema in schemas}
    for part, version in recorded.items():
        schema = known.get(part)
        if schema is None or version > schema.version:
            raise NewerSchema(f"part {part!r} at schema version {version}, which this engram does not know")
    return [m for schema in schemas for m in schema.migrations[recorded.get(schema.part, 0):]]
