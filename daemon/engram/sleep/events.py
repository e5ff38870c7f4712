"""Bus events of sleep consolidation (topics ``sleep.*``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from engram.bus.events import Event

__all__ = ["SLEEP_EVENTS", "SleepFinished", "SleepPreempted", "SleepRolledBack", "SleepStage", "SleepStarted"]


class SleepStarted(Event):
    topic = "sleep.started"
    run: int = Field(description="sleep_runs id of the run.")
    trigger: str = Field(description="manual, idle or schedule.")
    namespaces: list[str] = Field(description="Namespaces the run covers.")
    stages: list[str] = Field(description="Stages it performs, in order.")
    resumes: int | None = Field(default=None, description="The interrupted run whose finished work this run takes over.")


class SleepStage(Event):
    topic = "sleep.stage"
    run: int
    name: str = Field(description="The stage.")
    namespace: str | None = Field(description="The namespace (None for once-per-run stages).")
    seconds: float
    figures: dict[str, Any] = Field(description="The stage's figures, as in the report.")


class SleepRolledBack(Event):
    topic = "sleep.rolled_back"
    run: int
    namespace: str
    stages: list[str] = Field(description="Stages whose changes were undone, in the order undone.")
    reason: str = Field(description="Why: e.g. dream replay found recall worse.")
    figures: dict[str, Any] = Field(default_factory=dict, description="What each rollback undid.")


class SleepFinished(Event):
    topic = "sleep.finished"
    run: int
    outcome: str = Field(description="completed, failed or interrupted.")
    seconds: float
    preemptions: int = Field(description="Times the run yielded to foreground requests.")
    error: str | None = None


class SleepPreempted(Event):
    topic = "sleep.preempted"
    run: int
    preemptions: int = Field(description="Preemptions of this run so far (the event is rate-limited).")
    stage: str | None = None
    namespace: str | None = None


SLEEP_EVENTS: tuple[type[Event], ...] = (SleepStarted, SleepStage, SleepRolledBack, SleepFinished, SleepPreempted)
