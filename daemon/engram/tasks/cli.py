"""``engram task run|plan|status|list|cancel|prove``: submit a plan (or a goal to plan), see the
plan the planner makes, follow a task, see and stop tasks, and fetch a finished task's proof bundle."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from engram.clitools import EXIT_REMOTE, EXIT_USAGE, Output, call, client_command, errors, fail

__all__ = ["task"]

FINAL = ("done", "failed", "cancelled")
POLL_INTERVAL = 0.25  # seconds between task.get calls while following


def _error_text(error: dict[str, Any] | None) -> str:
    return "" if not error else f"  error {error['code']} ({error['reason']}): {error['message']}"


def _task_lines(result: dict[str, Any]) -> None:
    task = result["task"]
    click.echo(f"{task['task_id']}: {task['state']}, {task['steps_done']}/{task['steps']} steps done{_error_text(task['error'])}")
    for step in result["steps"]:
        digest = f" sha256:{step['output_hash'][:16]} ({step['output_size']} B)" if step["output_hash"] else ""
        click.echo(f"  {step['id']:<16} {step['tool']:<20} {step['state']}{digest}{_error_text(step['error'])}")


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
@click.option("--max-wait", type=float, default=86_400.0, show_default=True, help="Seconds --follow waits at most.")
@client_command
def run(plan_file: Path | None, goal: str | None, namespace: str | None, deadline: float | None, follow: bool,
        max_wait: float, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Submit the plan in PLAN_FILE (JSON: {"steps": [...]}; see docs/tasks.md), or a --goal to plan."""
    from engram.client import Client

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
    with errors(), Client(socket_path, timeout=timeout) as client:
        submitted = client.call("task.submit", {k: v for k, v in params.items() if v is not None})
        if not follow:
            out.emit(submitted, lambda d: click.echo(d["task_id"]))
            return
        task_id, shown = submitted["task_id"], ""
        until = time.monotonic() + max_wait
        while True:
            result = client.call("task.get", {"task_id": task_id})
            progress = " ".join(f"{s['id']}:{s['state']}" for s in result["steps"])
            if not as_json and progress != shown:
                click.echo(f"{result['task']['state']}  {progress}", err=True)
                shown = progress
            if result["task"]["state"] in FINAL or time.monotonic() >= until:
                break
            time.sleep(POLL_INTERVAL)
    out.emit(result, _task_lines)
    if result["task"]["state"] not in FINAL:
        fail(EXIT_REMOTE, f"{task_id} did not end within {max_wait:g} s (it goes on; see `engram task status {task_id}`)")
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
