"""The event bus's settings section (``[bus]``)."""

from __future__ import annotations

from pydantic import Field

from engram.sections import Section

__all__ = ["BusSettings"]


class BusSettings(Section):
    subscriber_queue: int = Field(
        default=1024, ge=1, le=1_000_000, description="Events buffered per subscriber before its overflow policy applies."
    )
