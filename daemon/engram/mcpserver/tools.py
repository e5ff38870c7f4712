"""The MCP tools: their input models (whose JSON Schemas clients see), the daemon method each
forwards to, and the short text a model reads back.

The limits here are the tools' own, sized for a model's context (a recall of 50 hits is already
a lot of text); the daemon still checks its configured limits and answers -32602 past them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema

from engram.tasks.plan import Plan

__all__ = ["TOOLS", "ToolSpec", "input_schema"]

NAMESPACE_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"
NAME_PATTERN = r"^[a-z0-9_.:-]{1,64}$"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_TEXT_CHARS = 64 * 1024  # memory.max_text_bytes by default; the daemon counts UTF-8 bytes
TEXT_PREVIEW = 300  # characters of an episode's text in a tool's text answer


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


_NAMESPACE = Field(
    default=None,
    pattern=NAMESPACE_PATTERN,
    description="Memory namespace (default: the one `engram mcp --namespace` names, else the caller's own).",
)
_SESSION = Field(default=None, min_length=1, max_length=256, description="Session id (a conversation, a task).")


class RememberInput(_Input):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="What to remember, in words.")
    tags: list[str] = Field(
        default_factory=list, max_length=32, description="Tags to find it by later (each 1-64 characters)."
    )
    session: str | None = _SESSION
    kind: str = Field(default="note", pattern=NAME_PATTERN, description="Kind of episode: note, fact, chat, task, ...")
    importance: float = Field(default=0.5, ge=0, le=1, description="How much it matters, 0..1.")
    pinned: bool = Field(default=False, description="Never forget it automatically.")
    namespace: str | None = _NAMESPACE


class RecallInput(_Input):
    query: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="What to recall: a question or keywords.")
    k: int = Field(default=5, ge=1, le=50, description="Most memories to return.")
    session: str | None = Field(default=None, min_length=1, max_length=256, description="Only memories of this session.")
    kinds: list[str] | None = Field(default=None, min_length=1, max_length=16, description="Only memories of these kinds.")
    tags: list[str] | None = Field(default=None, min_length=1, max_length=32, description="Only memories carrying all these tags.")
    time_from: float | str | None = Field(
        default=None, description="Only memories from this time on (Unix seconds or ISO 8601, e.g. 2025-01-31T12:00:00Z)."
    )
    time_to: float | str | None = Field(default=None, description="Only memories up to this time (Unix seconds or ISO 8601).")
    namespace: str | None = _NAMESPACE


class ForgetInput(_Input):
    ids: list[str] = Field(min_length=1, max_length=100, description="Ids of the memories to forget (ep_..., from remember or recall).")
    namespace: str | None = _NAMESPACE


class AskInput(_Input):
    question: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="The question to answer.")
    session: str | None = _SESSION
    k: int | None = Field(default=None, ge=1, le=50, description="Memories recalled as context (default: router.ask.k).")
    namespace: str | None = _NAMESPACE


class GraphQueryInput(_Input):
    concept: str = Field(min_length=1, max_length=256, description="The concept to start from (case-insensitive name).")
    depth: int = Field(default=1, ge=1, le=8, description="Hops to follow (the daemon allows memory.graph.max_depth).")
    direction: Literal["out", "in", "both"] = Field(default="both", description="Follow outgoing, incoming or both relations.")
    types: list[str] | None = Field(default=None, min_length=1, max_length=32, description="Follow only relations of these types.")
    to: str | None = Field(default=None, min_length=1, max_length=256, description="Return the paths to this concept.")
    valid_at: float | str | None = Field(default=None, description="Only facts that held at this time (Unix seconds or ISO 8601).")
    namespace: str | None = _NAMESPACE


class AuditProveInput(_Input):
    seq: int = Field(ge=0, description="The audit entry to prove (the audit_seq another tool returned).")
    size: int | None = Field(
        default=None, ge=1, description="Tree size to prove inclusion in (default: the last checkpoint's, if it covers seq)."
    )


class StatusInput(_Input):
    pass


_GOAL = Field(default=None, min_length=1, max_length=4000, description="What the task is for, in words.")


class PlanInput(_Input):
    goal: str = Field(min_length=1, max_length=4000, description="What the plan is for, in words.")
    namespace: str | None = _NAMESPACE


class ExecuteInput(_Input):
    plan: Plan | None = Field(
        default=None,
        description='The steps to run: each calls one of engram\'s tools (a method name, e.g. "memory.recall") with '
        '"args"; an argument {"$from": "STEP.path.to.field"} takes that value from an earlier step\'s output, and '
        'STEP must be among the step\'s "needs". See docs/tasks.md. Without it, engram plans the goal.'
    )
    goal: str | None = Field(
        default=None, min_length=1, max_length=4000,
        description="What the task is for, in words: engram's planner plans it when no plan is given, and plans the "
        "rest again if a step fails.",
    )
    deadline: float | None = Field(default=None, gt=0, le=31_536_000, description="Seconds within which the task must finish.")
    namespace: str | None = _NAMESPACE


class TaskStatusInput(_Input):
    task_id: str = Field(pattern=r"^tk_[0-9a-f]{1,61}$", description="The task's id, as execute answered it.")
    outputs: bool = Field(default=False, description="Include the outputs of the steps that are done.")


# --- what each tool sends ------------------------------------------------------------------------


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _remember_params(args: RememberInput) -> dict[str, Any]:
    item = _drop_none(args.model_dump(exclude={"namespace"}))
    return _drop_none({"items": [{**item, "source": "mcp"}], "namespace": args.namespace})


def _recall_params(args: RecallInput) -> dict[str, Any]:
    flt = _drop_none(args.model_dump(include={"session", "kinds", "tags", "time_from", "time_to"}))
    return _drop_none({"query": args.query, "k": args.k, "filter": flt or None, "namespace": args.namespace})


def _plain_params(args: BaseModel) -> dict[str, Any]:
    return _drop_none(args.model_dump())


# --- what the model reads back ---------------------------------------------------------------------


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _preview(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TEXT_PREVIEW else text[: TEXT_PREVIEW - 1] + "…"


def _remember_text(result: dict[str, Any]) -> str:
    return f"Remembered as {', '.join(result['ids'])}."


def _recall_text(result: dict[str, Any]) -> str:
    hits = result["hits"]
    if not hits:
        return "No memories match."
    lines = [f"{len(hits)} memor{'y' if len(hits) == 1 else 'ies'}, best first:"]
    for n, hit in enumerate(hits, 1):
        lines.append(f"{n}. [{hit['id']}, {_when(hit['time'])}, score {hit['score']:.2f}] {_preview(hit['text'])}")
    return "\n".join(lines)


def _forget_text(result: dict[str, Any]) -> str:
    n = result["forgotten"]
    return f"Forgot {n} memor{'y' if n == 1 else 'ies'}."


def _ask_text(result: dict[str, Any]) -> str:
    lines = [result["answer"]]
    if result.get("sources"):
        lines.append("")
        lines.append("Sources: " + ", ".join(f"{s['id']} ({s['tier']})" for s in result["sources"]))
    return "\n".join(lines)


def _graph_text(result: dict[str, Any]) -> str:
    concept = result["concept"]
    lines = [f"{concept['name']} ({concept['kind']}): {len(result['neighbours'])} neighbour(s)"]
    relations = {r["id"]: r for r in result["relations"]}
    for n in result["neighbours"]:
        via = ", ".join(relations[r]["type"] for r in n["path"] if r in relations)
        lines.append(f"- {n['concept']['name']} (depth {n['depth']}, weight {n['weight']:.2f}, via {via or '-'})")
    for path in result["paths"]:
        lines.append(f"path: {' -> '.join(path['concepts'])} (weight {path['weight']:.2f})")
    if result["truncated"]:
        lines.append("(more neighbours than the daemon returns at once)")
    return "\n".join(lines)


def _prove_text(result: dict[str, Any]) -> str:
    return (
        f"Audit entry {result['leaf_index']} is in the tree of {result['tree_size']} entries with root {result['root']}; "
        f"inclusion proof of {len(result['proof'])} hash(es), leaf hash {result['leaf_hash']}."
    )


def _execute_params(args: ExecuteInput) -> dict[str, Any]:
    plan = None if args.plan is None else args.plan.model_dump(exclude_none=True)
    return _drop_none({"plan": plan, "goal": args.goal, "deadline": args.deadline, "namespace": args.namespace})


def _plan_text(result: dict[str, Any]) -> str:
    plan = json.dumps(result["plan"], separators=(",", ":"), ensure_ascii=False)
    return (
        f"Plan of {len(result['plan']['steps'])} step(s), made by {', '.join(result['planned_by'])} in "
        f"{result['replies']} reply(ies); execute runs it as it is (pass it as plan):\n{plan}"
    )


def _execute_text(result: dict[str, Any]) -> str:
    return f"Task {result['task_id']} is {result['state']}; task_status tells how it goes."


def _task_status_text(result: dict[str, Any]) -> str:
    task = result["task"]
    lines = [f"Task {task['task_id']}: {task['state']}, {task['steps_done']}/{task['steps']} steps done."]
    for step in result["steps"]:
        line = f"- {step['id']} ({step['tool']}): {step['state']}"
        if step.get("error"):
            line += f", error {step['error']['code']} {step['error']['reason']}: {step['error']['message']}"
        lines.append(line)
    if task.get("error") and not any(step.get("error") for step in result["steps"]):
        lines.append(f"Error {task['error']['code']} {task['error']['reason']}: {task['error']['message']}")
    return "\n".join(lines)


def _status_text(result: dict[str, Any]) -> str:
    parts = ", ".join(f"{p['name']} {p['state']}" for p in result["parts"])
    return f"engramd {result['version']}, pid {result['pid']}, up {result['uptime_s']:.0f} s; parts: {parts}."


# --- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    input: type[BaseModel]
    method: str
    params: Callable[[Any], dict[str, Any]]
    text: Callable[[dict[str, Any]], str]
    read_only: bool
    destructive: bool = False
    namespaced: bool = True  # takes a namespace argument (the server's --namespace fills it)
    generates: bool = False  # waits for a model: `engram mcp --ask-timeout` instead of --timeout


TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec(
            "remember", "Remember", "Store something in engram's long-term memory; answers with its id.",
            RememberInput, "memory.remember", _remember_params, _remember_text, read_only=False,
        ),
        ToolSpec(
            "recall", "Recall", "The memories best matching a question or keywords (meaning and words), best first.",
            RecallInput, "memory.recall", _recall_params, _recall_text, read_only=True,
        ),
        ToolSpec(
            "forget", "Forget", "Forget memories by id, at once and completely.",
            ForgetInput, "memory.forget", _plain_params, _forget_text, read_only=False, destructive=True,
        ),
        ToolSpec(
            "ask", "Ask", "Answer a question with the local model, using recalled memories as context; the exchange is remembered.",
            AskInput, "route.ask", _plain_params, _ask_text, read_only=False, generates=True,
        ),
        ToolSpec(
            "graph_query", "Query the knowledge graph", "A concept's neighbours in the knowledge graph, and paths to another concept.",
            GraphQueryInput, "memory.graph.query", _plain_params, _graph_text, read_only=True,
        ),
        ToolSpec(
            "audit_prove", "Prove an audit entry", "Merkle inclusion proof that an audit entry is in engram's signed, append-only log.",
            AuditProveInput, "audit.prove", _plain_params, _prove_text, read_only=True, namespaced=False,
        ),
        ToolSpec(
            "plan", "Plan a goal", "The plan engram's planner makes for a goal (engram tool calls), without running it.",
            PlanInput, "task.plan", _plain_params, _plan_text, read_only=True, generates=True,
        ),
        ToolSpec(
            "execute", "Run a plan", "Run a plan of engram tool calls (or a goal engram plans) in the background, as a "
            "task that survives restarts; answers with the task's id.",
            ExecuteInput, "task.submit", _execute_params, _execute_text, read_only=False,
        ),
        ToolSpec(
            "task_status", "Task status", "A task's state and each step's (and their outputs, if asked).",
            TaskStatusInput, "task.get", _plain_params, _task_status_text, read_only=True, namespaced=False,
        ),
        ToolSpec(
            "status", "Daemon status", "Version, uptime and parts of the running engram daemon.",
            StatusInput, "system.status", _plain_params, _status_text, read_only=True, namespaced=False,
        ),
    )
}


class _NoFieldTitles(GenerateJsonSchema):
    """Field titles pydantic derives from names ('Time From') only repeat the name to a model."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(schema_generator=_NoFieldTitles)
    schema.pop("title", None)
    schema.setdefault("properties", {})
    return schema


def structured(result: Any) -> dict[str, Any]:
    """Structured content must be a JSON object for clients of protocol versions up to 2025-11-25."""
    return result if isinstance(result, dict) else {"result": json.loads(json.dumps(result))}
