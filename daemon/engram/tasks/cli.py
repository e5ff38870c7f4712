"""``engram task run|plan|status|list|follow|cancel|prove|replay``: submit a plan (or a goal to
plan), see the plan the planner makes, follow a task, see and stop tasks, fetch a finished task's
proof bundle, and replay a finished task."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from engram.clitools import EXIT_REMOTE, EXIT_USAGE, Output, call, client_command, fail, stream_call
from engram.tasks.api import MAX_FOLLOW_WAIT

__all__ = ["task"]

FINAL = ("done", "failed", "cancelled")
EXIT_DIFFERS = 3  # replay: an output differs from the one recorded


def _error_text(error: dict[str, Any] | None) -> str:
    return "" if not error else f"  error {error['code']} ({error['reason']}): {error['message']}"


def _task_lines(result: dict[str, Any]) -> None:
    task = result["task"]
    click.echo(f"{task['task_id']}: {task['state']}, {task['steps_done']}/{task['steps']} steps done{_error_text(task['error'])}")
    for step in result["steps"]:
        digest = f" sha256:{step['output_hash'][:16]} ({step['output_size']} B)" if step["output_hash"] else ""
        differs = {True: "  DIFFERS from the replayed task", False: "  same as the replayed task"}.get(step.get("differs"), "")
        click.echo(f"  {step['id']:<16} {step['tool']:<20} {step['state']}{digest}{differs}{_error_text(step['error'])}")


def _list_lines(result: dict[str, Any]) -> None:
    if not result["tasks"]:
        click.echo("no tasks")
    for task in result["tasks"]:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(task["created_at"]))
        click.echo(f"{task['task_id']}  {task['state']:<9}  {task['steps_done']}/{task['steps']}  {created}")


@click.group()
def task() -> None:
    """Tasks: plans of tool calls (engram's own methods) that the daemon runs in the background."""


@task.command()
@click.argument("plan_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--goal", default=None, help="What the task is for: without PLAN_FILE the daemon's planner plans it.")
@click.option("--namespace", default=None, help="Namespace for the tool calls that name none.")
@click.option("--deadline", type=float, default=None, help="Seconds within which the task must finish.")
@click.option("--follow", is_flag=True, help="Show the steps' progress until the task ends.")
@click.option("--max-wait", type=float, default=MAX_FOLLOW_WAIT, show_default=True,
              help="Seconds --follow waits at most.")
@client_command
def run(plan_file: Path | None, goal: str | None, namespace: str | None, deadline: float | None, follow: bool,
        max_wait: float, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Submit the plan in PLAN_FILE (JSON: {"steps": [...]}; see docs/tasks.md), or a --goal to plan."""

    if plan_file is None and goal is None:
        fail(EXIT_USAGE, "give PLAN_FILE or --goal TEXT")
    plan = None
    if plan_file is not None:
        try:
            plan = json.loads(plan_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            fail(EXIT_USAGE, f"{plan_file}: not a JSON plan: {exc}")
    out = Output(as_json)
    params = {"plan": plan, "goal": goal, "namespace": namespace, "deadline": deadline}
    submitted = call(socket_path, timeout, "task.submit", {k: v for k, v in params.items() if v is not None})
    if not follow:
        out.emit(submitted, lambda d: click.echo(d["task_id"]))
        return
    _follow(submitted["task_id"], max_wait, socket_path, timeout, out)


def _progress(method: str, params: dict[str, Any]) -> None:
    """One task.progress notification (an event: topic, time, data) as a line on stderr."""
    if method != "task.progress":
        return
    topic, data = params.get("topic"), params.get("data") or {}
    if topic == "task.step":
        extra = f" ({data['reason']})" if data.get("reason") else ""
        click.echo(f"  {data['step']:<16} {data['tool']:<20} {data['state']}{extra}", err=True)
    elif topic == "task.planned":
        kind = "planned" if data["plans"] == 1 else f"replanned ({data['kept']} done steps kept)"
        click.echo(f"  {kind}: {data['steps']} steps by {data['provider'] or 'the planner'}", err=True)
    elif topic == "task.heartbeat" and data.get("step"):
        click.echo(f"  {data['step']:<16} still running after {data['elapsed']:.0f} s", err=True)


def _follow(task_id: str, max_wait: float, socket_path: Path | None, timeout: float, out: Output) -> None:
    """Show a task's progress until it ends (task.follow), then its steps; exit 1 unless done."""
    wait = min(max_wait, MAX_FOLLOW_WAIT)
    # Each read waits for the next notification: heartbeats come every tasks.heartbeat seconds
    # while the task runs, none while it is queued, hence the whole wait as the read timeout.
    result = stream_call(socket_path, max(timeout, wait + 30), "task.follow", {"task_id": task_id, "wait": wait},
                         notified=lambda m, p: None if out.as_json else _progress(m, p))
    out.emit(result, _task_lines)
    if not result["ended"]:
        fail(EXIT_REMOTE, f"{task_id} did not end within {wait:g} s (it goes on; see `engram task status {task_id}`)")
    if result["task"]["state"] != "done":
        raise SystemExit(EXIT_REMOTE)


@task.command("plan")
@click.argument("goal")
@click.option("--namespace", default=None, help="Namespace whose past tasks are recalled as examples.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the plan here, ready for `engram task run`.")
@client_command
def plan_goal(goal: str, namespace: str | None, out_file: Path | None, socket_path: Path | None, as_json: bool,
              timeout: float) -> None:
    """The plan the daemon's planner makes for GOAL, without running it."""
    params = {"goal": goal, "namespace": namespace}
    result = call(socket_path, timeout, "task.plan", {k: v for k, v in params.items() if v is not None})
    if out_file is not None:
        out_file.write_text(json.dumps(result["plan"], indent=2) + "\n", encoding="utf-8")
    Output(as_json).emit(result, lambda d: click.echo(json.dumps(d["plan"], indent=2)))


@task.command()
@click.argument("task_id")
@click.option("--outputs", is_flag=True, help="Include the outputs of the done steps (with --json).")
@client_command
def status(task_id: str, outputs: bool, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """A task's state and its steps."""
    Output(as_json).emit(call(socket_path, timeout, "task.get", {"task_id": task_id, "outputs": outputs}), _task_lines)


@task.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(["queued", "running", *FINAL]),
              help="Only tasks in this state (repeat).")
@click.option("--limit", type=int, default=50, show_default=True)
@client_command
def list_tasks(states: tuple[str, ...], limit: int, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Tasks, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if states:
        params["states"] = list(states)
    Output(as_json).emit(call(socket_path, timeout, "task.list", params), _list_lines)


@task.command()
@click.argument("task_id")
@client_command
def cancel(task_id: str, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Stop a task (a running step is cancelled); prints the state it ended in."""
    Output(as_json).emit(
        call(socket_path, timeout, "task.cancel", {"task_id": task_id}), lambda d: click.echo(f"{d['task_id']}: {d['state']}")
    )


@task.command()
@click.argument("task_id")
@click.option("-o", "--output", "out_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the bundle to this file (default: print it).")
@client_command
def prove(task_id: str, out_file: Path | None, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """A finished task's proof bundle (task.prove), to check offline with `engram audit verify-bundle`."""
    bundle = call(socket_path, timeout, "task.prove", {"task_id": task_id})
    bundle.pop("audit_seq", None)
    text = json.dumps(bundle, indent=2) + "\n"
    if out_file is None:
        click.echo(text, nl=False)
        return
    try:
        out_file.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(EXIT_USAGE, f"cannot write {out_file}: {exc.strerror}")
    Output(as_json).emit(
        {"file": str(out_file), "task_id": task_id, "entries": len(bundle["entries"]), "size": bundle["checkpoint"]["size"]},
        lambda d: click.echo(f"wrote the proof of {d['entries']} step entries of {task_id} to {d['file']} "
                             f"(checkpoint of size {d['size']})"),
    )


@task.command("follow")
@click.argument("task_id")
@click.option("--max-wait", type=float, default=MAX_FOLLOW_WAIT, show_default=True, help="Seconds to follow at most.")
@client_command
def follow_task(task_id: str, max_wait: float, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Show a task's steps as they run (stderr) until it ends, then its steps; exit 1 unless done."""
    _follow(task_id, max_wait, socket_path, timeout, Output(as_json))


def _replay_lines(result: dict[str, Any]) -> None:
    verdict = "every recorded step reproduced" if result["matches"] else "NOT reproduced"
    click.echo(f"{result['task_id']}: recorded replay, {verdict}")
    for step in result["steps"]:
        reason = f" ({step['reason']})" if step["reason"] else ""
        digest = f" sha256:{step['output_hash'][:16]}" if step["output_hash"] else ""
        click.echo(f"  {step['id']:<16} {step['tool']:<20} {step['outcome']}{reason}{digest}")


@task.command()
@click.argument("task_id")
@click.option("--live", is_flag=True, help="Call the tools again in a new task, and compare its outputs.")
@click.option("--max-wait", type=float, default=MAX_FOLLOW_WAIT, show_default=True, help="Seconds --live waits at most.")
@client_command
def replay(task_id: str, live: bool, max_wait: float, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Replay a finished task: by default against its recorded outputs (no tool is called), every
    input and output hash reproduced or not; with --live, as a new task whose step outputs are
    compared with the original's. Exit 3 when an output differs."""
    out = Output(as_json)
    result = call(socket_path, timeout, "task.replay", {"task_id": task_id, "mode": "live" if live else "recorded"})
    if not live:
        out.emit(result, _replay_lines)
        if not result["matches"]:
            raise SystemExit(EXIT_DIFFERS)
        return
    replay_id = result["replay_task_id"]
    if not as_json:
        click.echo(f"replaying {task_id} live as {replay_id}", err=True)
    _follow(replay_id, max_wait, socket_path, timeout, out)
    followed = call(socket_path, timeout, "task.get", {"task_id": replay_id})
    if any(step["differs"] for step in followed["steps"]):
        raise SystemExit(EXIT_DIFFERS)
