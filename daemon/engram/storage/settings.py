"""The database's settings section (``[storage]``)."""

from __future__ import annotations

from pydantic import Field

from engram.sections import PositiveSeconds, Section

__all__ = ["StorageSettings"]


class StorageSettings(Section):
    busy_timeout: PositiveSeconds = Field(
        default=5.0, description="Seconds SQLite waits for a lock held by another connection."
    )
