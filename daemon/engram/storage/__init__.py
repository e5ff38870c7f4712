"""The SQLite database every part keeps its state in, and its forward-only migrations."""

from engram.storage.database import Database, SCHEMA_VERSION

__all__ = ["Database", "SCHEMA_VERSION"]
