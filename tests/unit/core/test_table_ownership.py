"""Each part's tables are named in SQL by that part alone (docs/architecture.md, "Rules").

A table belongs to the part whose migrations created it. Every string in engram's code (and every
migration) that names a table must sit in the owner's package; another part reaches that data
through the owner's typed interface, so that changing a part's schema cannot break another part
silently. The state folder's own tables (``meta``, ``schema_versions``: storage's) are every part's.
"""

from __future__ import annotations

import ast
import re
import sqlite3
from pathlib import Path

import anyio
import engram
import engram_bench
from engram.storage import SCHEMAS, Database

ENGRAM = Path(engram.__file__).parent
BENCH = Path(engram_bench.__file__).parent  # the benchmarks own no tables: they name none

# Migrations written before the parts owned their data, which cannot change (they have run on
# people's databases): sleep's first migration added the salience column to memory's episodes,
# and its second hands the journal of memory's changes over to memory.
HISTORY = {
    ("sleep", "0001_sleep.sql"): {"memory_episodes"},
    ("sleep", "0002_journal_to_memory.sql"): {"memory_changes", "memory_checkpoints"},
}


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")} - {"sqlite_sequence"}


def _owners() -> dict[str, str]:
    """Every table -> the part whose migrations created it (the base's: storage's, every part's)."""
    owners = {"schema_versions": "storage"}
    scratch = sqlite3.connect(":memory:")
    for schema in SCHEMAS:
        before = _tables(scratch)
        for migration in schema.migrations:
            scratch.executescript(migration.sql)
        owners.update(dict.fromkeys(_tables(scratch) - before, "storage" if schema.part == "base" else schema.part))
    scratch.close()
    return owners


def _part_of(path: Path) -> str:
    relative = path.relative_to(ENGRAM).parts
    return relative[0] if len(relative) > 1 else relative[0].removesuffix(".py")


def _docstring_ids(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _sql_strings(path: Path) -> list[str]:
    """The string constants of a module that are not docstrings (SQL, among others)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = _docstring_ids(tree)
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_the_owners_are_every_table_of_a_fresh_database(tmp_path: Path) -> None:
    path = tmp_path / "engram.db"

    async def create() -> None:
        async with Database(path):
            pass

    anyio.run(create)
    with sqlite3.connect(path) as conn:
        assert _tables(conn) == set(_owners())


def test_no_part_names_another_parts_tables() -> None:
    owners = _owners()
    assert {"memory_episodes", "audit_entries", "router_weights", "sleep_runs"} <= set(owners)
    named = re.compile(r"\b(" + "|".join(sorted(map(re.escape, owners), key=len, reverse=True)) + r")\b")
    foreign: list[str] = []
    modules = [(path, _part_of(path)) for path in sorted(ENGRAM.rglob("*.py"))]
    modules += [(path, "engram_bench") for path in sorted(BENCH.rglob("*.py"))]
    for path, part in modules:
        for text in _sql_strings(path):
            for table in set(named.findall(text)):
                if owners[table] != part and owners[table] != "storage":
                    foreign.append(f"{path} names {table} ({owners[table]}'s)")
    for schema in SCHEMAS:
        part = "storage" if schema.part == "base" else schema.part
        for migration in schema.migrations:
            file = f"{migration.version:04d}_{migration.name}.sql"
            allowed = HISTORY.get((schema.part, file), set())
            for table in set(named.findall(migration.sql)) - allowed:
                if owners[table] not in (part, "storage"):
                    foreign.append(f"{schema.part}/migrations/{file} names {table} ({owners[table]}'s)")
    assert foreign == []
