"""The ``tasks`` section of the configuration: the executor's queue, concurrency and limits."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TaskSettings"]


class TaskSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    queue: int = Field(default=64, ge=1, le=10_000, description="Tasks that may wait for a worker; task.submit past it: -32003.")
    concurrency: int = Field(default=2, ge=1, le=64, description="Tasks that run at the same time.")
    step_timeout: float = Field(default=60.0, gt=0, description="Seconds a step may run unless the step sets its own timeout.")
    max_step_timeout: float = Field(default=3600.0, gt=0, description="The largest timeout a step may set.")
    max_steps: int = Field(default=100, ge=1, le=10_000, description="Steps a plan may have at most.")
    max_output_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest output a step may have (canonical JSON bytes); past it the step fails."
    )
    cancel_wait: float = Field(default=10.0, gt=0, description="Seconds task.cancel waits for a running step to stop.")
    retries: int = Field(
        default=2, ge=0, le=10, description="Calls made again after a retryable error (-32003, -32004, -32005), idempotent tools only."
    )
    retry_backoff: float = Field(
        default=0.5, gt=0, description="Seconds before the first retry; doubled for each further one, with jitter."
    )
    breaker_failures: int = Field(
        default=5, ge=1, description="Consecutive retryable failures of a tool that open its circuit breaker."
    )
    breaker_cooldown: float = Field(
        default=30.0, gt=0, description="Seconds an open breaker refuses calls before it lets one probe through."
    )
    heartbeat: float = Field(
        default=5.0, gt=0, le=3600,
        description="Seconds between a running task's task.heartbeat events, and between the watchdog's looks for stuck steps.",
    )
    stuck_grace: float = Field(
        default=10.0, gt=0,
        description="Seconds a step may go on past its time limit (or a cancel) before the watchdog fails it as stuck.",
    )
    yield_max: float = Field(
        default=1.0, ge=0, le=60,
        description="Seconds a task waits at most, before each step, for foreground requests in flight to finish (0: never).",
    )
