"""The SQLite database every part keeps its state in, and the runner of the parts' migrations."""

from engram.storage.database import SCHEMAS, Database

__all__ = ["SCHEMAS", "Database"]
