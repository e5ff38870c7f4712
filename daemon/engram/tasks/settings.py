"""The ``tasks`` section of the configuration: the executor's queue, concurrency and limits."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TaskPlannerSettings", "TaskSettings"]


class TaskPlannerSettings(BaseModel):
    """The planner: plans made from a goal by a generate provider, and what finished tasks teach."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    attempts: int = Field(
        default=3, ge=1, le=10, description="Replies asked for one plan: a reply that is not a valid plan is asked again with the error."
    )
    replans: int = Field(
        default=2, ge=0, le=10, description="New plans for the rest of a task after a failed step, at most, per task."
    )
    timeout: float = Field(default=120.0, gt=0, le=3600, description="Seconds one generate call of the planner may take.")
    max_prompt_chars: int = Field(
        default=24_000, ge=2000, le=1_000_000,
        description="Characters of prompt the planner writes at most (also bounded by providers.max_prompt_chars).",
    )
    max_reply_chars: int = Field(
        default=32_000, ge=100, le=1_000_000, description="Characters of a reply read at most; a longer one is not a plan."
    )
    observation_chars: int = Field(
        default=1500, ge=100, le=100_000, description="Characters of each done step's output shown when replanning."
    )
    examples: int = Field(
        default=2, ge=0, le=10, description="Past tasks that succeeded, recalled from memory as examples for a plan (0: none)."
    )
    remember: bool = Field(
        default=True, description="Remember each finished task as a memory episode of kind task (its goal, plan and outcome)."
    )
    route: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description="A generate route of router.routes to plan through (route.run); each task's outcome is then "
        "fed back as route.feedback. None: the providers' generate chain (infer.generate).",
    )


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
    planner: TaskPlannerSettings = Field(
        default_factory=TaskPlannerSettings, description="The planner (task.submit with a goal) and teaching."
    )
