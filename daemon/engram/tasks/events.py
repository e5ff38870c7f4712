"""Bus events of the task executor (topics ``task.*``): a task's progress as it happens, and a
heartbeat every ``tasks.heartbeat`` seconds while it runs.

Each names the uid that submitted the task, so a subscriber who is not the daemon's owner sees
the progress of their own tasks only (:mod:`engram.bus.audience`). ``mcp.server`` tells when an
MCP server whose tools plans call (``tasks.mcp_servers``) came up or went down; it names no uid,
so only the owner sees it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engram.bus.events import Event

__all__ = ["TASK_EVENTS", "McpServerChanged", "TaskEnded", "TaskHeartbeat", "TaskPlanned", "TaskStep"]


class TaskStep(Event):
    topic = "task.step"
    task_id: str
    uid: int = Field(description="The uid that submitted the task.")
    step: str = Field(description="The step's id.")
    tool: str
    state: Literal["running", "done", "failed", "cancelled"] = Field(description="The state the step entered.")
    output_hash: str | None = Field(default=None, description="SHA-256 of its output, once done.")
    reason: str | None = Field(default=None, description="data.reason of the error that failed or cancelled it.")
    attempts: int | None = Field(default=None, description="Calls of the tool it took, once done or failed.")


class TaskPlanned(Event):
    topic = "task.planned"
    task_id: str
    uid: int = Field(description="The uid that submitted the task.")
    plans: int = Field(description="Plans the planner has made for the task: 1 the first, more after failed steps.")
    steps: int = Field(description="New steps the plan brought.")
    kept: int = Field(description="Steps done before, kept (a replan).")
    replies: int = Field(description="Replies it took (more than one: invalid replies were asked again).")
    provider: str | None = Field(default=None, description="The provider (or route target) that answered last.")
    examples: int = Field(description="Past tasks shown to the planner as examples.")


class TaskEnded(Event):
    topic = "task.ended"
    task_id: str
    uid: int = Field(description="The uid that submitted the task.")
    state: Literal["done", "failed", "cancelled"]
    reason: str | None = Field(default=None, description="data.reason of the error that ended it (None: done).")


class TaskHeartbeat(Event):
    topic = "task.heartbeat"
    task_id: str
    uid: int = Field(description="The uid that submitted the task.")
    step: str | None = Field(description="The step in flight (None: between steps).")
    elapsed: float = Field(description="Seconds the step has run.")


class McpServerChanged(Event):
    topic = "mcp.server"
    server: str = Field(description="The server's name in tasks.mcp_servers.")
    state: Literal["running", "down"] = Field(description="running: started and its tools listed; down: not running.")
    tools: int = Field(description="Tools of its last listing (kept while it is down).")
    starts: int = Field(description="Times it has been started and listed its tools.")
    error: str | None = Field(default=None, description="Why it is down: the start that failed, or its exit.")
    restart_in_s: float | None = Field(default=None, description="Seconds until it is started again, when down.")


TASK_EVENTS: tuple[type[Event], ...] = (TaskPlanned, TaskStep, TaskEnded, TaskHeartbeat, McpServerChanged)
