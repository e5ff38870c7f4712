"""The ``tasks`` section of the configuration: the executor's queue, concurrency and limits, the
planner's bounds, and the external MCP servers whose tools plans may call."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["MCP_SERVER_NAME", "McpServerSettings", "TaskPlannerSettings", "TaskSettings"]

MCP_SERVER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""A server's name: it is the ``<server>`` of ``mcp:<server>.<tool>``, so it holds no dot."""


class McpServerSettings(BaseModel):
    """One external MCP server, started as a child process and spoken to over its stdin/stdout."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(
        min_length=1, description="The program and its arguments (argv: no shell, no splitting of strings)."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment variables for the server; it gets only these and HOME, LOGNAME, PATH, SHELL, TERM, USER.",
    )
    cwd: Path | None = Field(default=None, description="The server's working folder (default: the daemon's).")
    timeout: float = Field(default=30.0, gt=0, description="Seconds one tool call may take; past it: -32004 tool_timeout.")
    start_timeout: float = Field(
        default=10.0, gt=0, description="Seconds the server has to answer its initialization and tool listing at each start."
    )
    idempotent: list[str] = Field(
        default_factory=list,
        description="Its tools that may be retried (besides those it annotates readOnlyHint or idempotentHint).",
    )
    locality: Literal["local", "remote"] = Field(
        default="local",
        description="remote: what its tools are given leaves this machine, and each call needs the policy's egress allow.",
    )

    @field_validator("command")
    @classmethod
    def _program_named(cls, command: list[str]) -> list[str]:
        if not command[0]:
            raise ValueError("the program (the first element) must not be empty")
        return command


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
    mcp_servers: dict[str, McpServerSettings] = Field(
        default_factory=dict,
        description="External MCP servers (stdio) by name; their tools are mcp:<server>.<tool> in plans.",
    )

    @field_validator("mcp_servers")
    @classmethod
    def _server_names(cls, servers: dict[str, McpServerSettings]) -> dict[str, McpServerSettings]:
        for name in servers:
            if not MCP_SERVER_NAME.match(name):
                raise ValueError(f"server name {name!r}: 1 to 64 letters, digits, '_' or '-'")
        return servers
    planner: TaskPlannerSettings = Field(
        default_factory=TaskPlannerSettings, description="The planner (task.submit with a goal) and teaching."
    )
