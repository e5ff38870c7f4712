"""Params and results of the ``sleep.*`` RPC methods (the wire contract)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engram.server.methods import Params, Result
from engram.sleep.settings import StageName

__all__ = [
    "NextRun",
    "Progress",
    "SleepReport",
    "SleepReportsParams",
    "SleepReportsResult",
    "SleepRunParams",
    "SleepRunResult",
    "SleepStatusParams",
    "SleepStatusResult",
    "StageReport",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageReport(_Model):
    name: str = Field(description="The stage.")
    namespace: str | None = Field(description="The namespace it ran for (None: once-per-run stages).")
    seconds: float = Field(description="Seconds it took (yielding included).")
    figures: dict[str, Any] = Field(description="Its figures (see docs/sleep.md).")
    rolled_back: bool = Field(default=False, description="Its changes were undone because dream replay found recall worse.")


class SleepReport(_Model):
    run: int = Field(description="Run id.")
    trigger: Literal["manual", "idle", "schedule"]
    started_at: float = Field(description="Unix time it started.")
    finished_at: float | None = Field(description="Unix time it ended (None while it runs).")
    seconds: float = Field(description="Seconds it took (so far).")
    outcome: Literal["completed", "failed", "interrupted"] | None = Field(description="None while it runs.")
    stages: list[StageReport] = Field(description="Finished stages, in the order they ran.")
    namespace: str | None = Field(default=None, description="The one namespace asked for, or None: all.")
    preemptions: int = Field(default=0, description="Times it yielded to foreground requests.")
    resumes: int | None = Field(default=None, description="The interrupted run whose finished work it took over.")
    error: str | None = Field(default=None, description="Why it failed.")


class Progress(_Model):
    done: int
    total: int


class NextRun(_Model):
    at: float = Field(description="Unix time of the next planned run.")
    trigger: Literal["idle", "schedule"]


class SleepRunParams(Params):
    namespace: str | None = Field(default=None, description="Consolidate this namespace only (default: every namespace).")
    stages: list[StageName] | None = Field(
        default=None, min_length=1, description="Stages to run, in their fixed order (default: all)."
    )
    wait: bool = Field(default=False, description="Answer when the run has finished, with its report.")


class SleepRunResult(Result):
    run: int = Field(description="Run id.")
    started: bool = Field(description="Always true: a run already going is a -32007 error.")
    report: SleepReport | None = Field(default=None, description="The report, when wait was true.")


class SleepStatusParams(Params):
    pass


class SleepStatusResult(Result):
    state: Literal["idle", "running", "yielding"]
    run: int | None = Field(description="The run going now.")
    trigger: str | None = None
    stage: str | None = Field(description="Its current stage.")
    namespace: str | None = Field(description="The namespace the current stage works on.")
    progress: Progress | None = Field(description="Progress within the current stage.")
    preemptions: int = Field(description="Times the current (or last) run yielded to foreground requests.")
    last_report: SleepReport | None = Field(description="The report of the last finished run.")
    next_run: NextRun | None = Field(description="The next planned run (None when triggers are off).")


class SleepReportsParams(Params):
    limit: int = Field(default=10, ge=1, le=100, description="Most recent reports to return.")


class SleepReportsResult(Result):
    reports: list[SleepReport] = Field(description="Newest first.")
