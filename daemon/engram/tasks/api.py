"""Params and results of the ``task.*`` RPC methods (the wire contract)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engram.server.methods import FreeJsonObject, Params, Result

__all__ = [
    "StepError",
    "StepOut",
    "ReplayedStepOut",
    "TaskCancelParams",
    "TaskCancelResult",
    "TaskFollowParams",
    "TaskFollowResult",
    "TaskGetParams",
    "TaskGetResult",
    "TaskListParams",
    "TaskListResult",
    "TaskPlanParams",
    "TaskPlanResult",
    "TaskProveParams",
    "TaskProveResult",
    "TaskReplayParams",
    "TaskReplayResult",
    "TaskState",
    "TaskSubmitParams",
    "TaskSubmitResult",
    "TaskSummary",
]

TaskState = Literal["queued", "running", "done", "failed", "cancelled"]
StepState = Literal["pending", "running", "done", "failed", "cancelled", "skipped"]
TaskId = Field(min_length=1, max_length=64, pattern=r"^tk_[0-9a-f]{1,61}$", description="A task id (tk_...).")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskSubmitParams(Params):
    plan: FreeJsonObject | None = Field(
        default=None,
        description='The plan: {"steps": [{"id", "tool", "args", "needs"?, "timeout"?}]} (see docs/tasks.md). '
        "Absent: the planner makes it from the goal.",
    )
    goal: str | None = Field(
        default=None, min_length=1, max_length=4000,
        description="What the task is for, in words. Without a plan the planner plans it (a generate provider the "
        "policy allows must be there, else -32602 no_planner); the planner also replans it after a failed step.",
    )
    namespace: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.:@-]{1,128}$",
        description="Memory namespace filled into the calls of tools that take one and whose args name none.",
    )
    deadline: float | None = Field(
        default=None, gt=0, le=31_536_000, description="Seconds from now within which the task must finish, or it fails."
    )


class TaskPlanParams(Params):
    goal: str = Field(min_length=1, max_length=4000, description="What the plan is for, in words.")
    namespace: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.:@-]{1,128}$",
        description="Memory namespace whose past tasks the planner recalls as examples (default: the caller's).",
    )


class TaskPlanResult(Result):
    plan: dict[str, Any] = Field(description="The plan, valid for task.submit.")
    planned_by: list[str] = Field(description="The provider (or route target) that answered each of the planner's calls.")
    replies: int = Field(description="Replies it took (more than one: invalid replies were asked again).")
    examples: int = Field(description="Past tasks shown to the planner as examples.")


class TaskSubmitResult(Result):
    task_id: str
    state: TaskState


class StepError(_Out):
    code: int = Field(description="The JSON-RPC error code the step's call got (or the executor's: -32004 timeout, ...).")
    message: str
    reason: str = Field(description="data.reason of that error.")
    data: dict[str, Any] = Field(default_factory=dict, description="The rest of the error's data.")


class StepOut(_Out):
    id: str
    tool: str
    state: StepState
    output_hash: str | None = Field(description="SHA-256 (hex) of the output's canonical JSON, once done.")
    output_size: int | None = Field(description="Bytes of that JSON.")
    output: Any = Field(default=None, description="The output itself, when task.get was asked for outputs.")
    error: StepError | None = None
    attempts: int | None = Field(
        default=None, description="Calls of its tool it made (more than one: retried), once done or failed by its call."
    )
    started_at: float | None
    finished_at: float | None
    differs: bool | None = Field(
        default=None,
        description="In a live replay: whether its output differs from the replayed task's step (None: nothing to compare).",
    )


class TaskSummary(_Out):
    task_id: str
    state: TaskState
    namespace: str | None
    steps: int = Field(description="Steps in the plan.")
    steps_done: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    deadline_at: float | None = Field(description="Unix time by which it must finish (None: no deadline).")
    error: StepError | None = Field(description="Why it failed or was cancelled.")
    goal: str | None = Field(default=None, description="The goal it was submitted with.")
    plans: int = Field(
        default=0, description="Plans the planner made for it: 0 the plan came with it (or is not made yet), "
        "1 planned, more: replanned after failed steps."
    )
    replay_of: str | None = Field(default=None, description="A live replay: the task whose plan it runs again.")


class TaskGetParams(Params):
    task_id: str = TaskId
    outputs: bool = Field(default=False, description="Include the outputs of the done steps.")


class TaskGetResult(Result):
    task: TaskSummary
    plan: dict[str, Any] = Field(
        description='The plan as accepted, or as the planner made it (a replan: the steps done and the new ones); '
        '{"steps": []} until a task with a goal is planned.'
    )
    planned_by: list[str] = Field(
        default_factory=list, description="The provider (or route target) that answered each of the planner's calls."
    )
    steps: list[StepOut] = Field(description="The steps in the order they run.")


class TaskListParams(Params):
    states: list[TaskState] | None = Field(default=None, min_length=1, description="Only tasks in one of these states.")
    limit: int = Field(default=50, ge=1, le=1000)


class TaskListResult(Result):
    tasks: list[TaskSummary] = Field(description="Newest first.")


class TaskCancelParams(Params):
    task_id: str = TaskId


class TaskCancelResult(Result):
    task_id: str
    state: TaskState = Field(description="Its state after the cancel: cancelled, or the final state it reached first.")


class TaskProveParams(Params):
    task_id: str = TaskId


class ProofCheckpoint(_Out):
    note: str = Field(description="The signed checkpoint (C2SP tlog-checkpoint signed note).")
    size: int = Field(description="Entries the checkpoint covers.")
    root: str = Field(description="Base64 Merkle root at that size.")
    key_id: str = Field(description="Hex key ID of the key that signed it.")
    time: str = Field(description="When it was signed (RFC 3339, UTC).")


class ProvenStep(_Out):
    step_id: str
    seq: int = Field(description="The seq of the step's task.step audit entry.")
    canonical: str = Field(description="Base64 of the entry's canonical JSON bytes, exactly as hashed.")
    proof: list[str] = Field(description="Base64 RFC 9162 inclusion proof of the entry in the checkpoint's tree.")


class TaskProveResult(Result):
    format: Literal["engram.task-proof/1"]
    task_id: str
    origin: str = Field(description="The audit log's origin line; the checkpoint must name it.")
    checkpoint: ProofCheckpoint
    entries: list[ProvenStep] = Field(description="The task.step entries of the task's done steps, in the order they ran.")


FOLLOW_NOTIFICATION = "task.progress"
MAX_FOLLOW_WAIT = 3600.0


class TaskFollowParams(Params):
    task_id: str = TaskId
    wait: float = Field(
        default=600.0, gt=0, le=MAX_FOLLOW_WAIT,
        description="Seconds to follow at most; then the answer comes with ended false (the task goes on).",
    )


class TaskFollowResult(Result):
    task: TaskSummary
    steps: list[StepOut]
    ended: bool = Field(description="Whether the task had ended when the answer was made.")
    notified: int = Field(description="task.progress notifications sent before the answer.")
    missed: int = Field(description="Events that did not fit the follower's queue and were not sent.")


class TaskReplayParams(Params):
    task_id: str = TaskId
    mode: Literal["recorded", "live"] = Field(
        default="recorded",
        description="recorded: the plan against the recorded outputs, no tool called; live: a new task calls the tools again.",
    )


class ReplayedStepOut(_Out):
    id: str
    tool: str
    outcome: Literal["match", "differs", "not_recorded"]
    reason: str | None = Field(
        description="Why it differs (input_differs, output_differs, unresolved_reference, stored_input_corrupt, "
        "stored_output_corrupt), or the state of a step that recorded no output."
    )
    recorded_input_hash: str | None
    input_hash: str | None = Field(description="SHA-256 of the input the replay built.")
    recorded_output_hash: str | None
    output_hash: str | None = Field(description="SHA-256 of the output the replay got.")


class TaskReplayResult(Result):
    mode: Literal["recorded", "live"]
    task_id: str = Field(description="The task replayed.")
    replay_task_id: str | None = Field(
        default=None, description="live: the new task that runs the plan again (task.get shows each step's differs)."
    )
    matches: bool | None = Field(
        default=None, description="recorded: every step that recorded an output was reproduced, hash for hash."
    )
    steps: list[ReplayedStepOut] = Field(default_factory=list, description="recorded: each step, in execution order.")
