"""``engram sleep now|status``: run consolidation now (with a progress bar) and see what it does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from engram.clitools import EXIT_REMOTE, Output, client_command, errors, fail
from engram.sleep.stage_names import ORDER

__all__ = ["sleep"]


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _report_lines(report: dict[str, Any]) -> None:
    click.echo(f"run {report['run']} ({report['trigger']}): {report['outcome']} in {report['seconds']:.1f} s, "
               f"{report.get('preemptions', 0)} preemptions")
    for stage in report["stages"]:
        where = f" [{stage['namespace']}]" if stage.get("namespace") else ""
        figures = ", ".join(f"{k}={v}" for k, v in stage["figures"].items() if not isinstance(v, dict | list))
        flag = " (rolled back)" if stage.get("rolled_back") else ""
        click.echo(f"  {stage['name']}{where}: {stage['seconds']:.2f} s{flag}  {figures}")
    if report.get("error"):
        click.echo(f"  error: {report['error']}")


def _status_text(status: dict[str, Any]) -> None:
    if status["run"] is not None:
        progress = status.get("progress") or {}
        where = f" [{status['namespace']}]" if status.get("namespace") else ""
        done = f" {progress.get('done')}/{progress.get('total')}" if progress else ""
        click.echo(f"{status['state']}: run {status['run']} ({status['trigger']}) at {status['stage'] or 'start'}{where}{done}, "
                   f"{status['preemptions']} preemptions")
    else:
        click.echo("idle")
    if status.get("next_run"):
        nxt = status["next_run"]
        click.echo(f"next run: {nxt['trigger']} at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(nxt['at']))}")
    if status.get("last_report"):
        click.echo("last run:")
        _report_lines(status["last_report"])


@click.group()
def sleep() -> None:
    """Sleep consolidation: importance, clustering, forgetting, compaction, replay, recalibration."""


@sleep.command()
@click.option("--namespace", default=None, help="Consolidate this namespace only (default: every namespace).")
@click.option("--stage", "stages", multiple=True, type=click.Choice(ORDER), help="Run this stage (repeat; default: all).")
@click.option("--no-wait", is_flag=True, help="Start the run and return at once.")
@click.option("--max-wait", type=float, default=86_400.0, show_default=True, help="Seconds to wait for the run to finish.")
@client_command
def now(namespace: str | None, stages: tuple[str, ...], no_wait: bool, max_wait: float, socket_path: Path | None,
        as_json: bool, timeout: float) -> None:
    """Start a consolidation run now and show its progress until it finishes."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from engram.client import Client

    params = {"namespace": namespace, "stages": list(stages) or None, "wait": False}
    out = Output(as_json)
    with errors(), Client(socket_path, timeout=timeout) as client:
        started = client.call("sleep.run", params)
        run = started["run"]
        if no_wait:
            out.emit(started, lambda d: click.echo(f"run {d['run']} started"))
            return
        report = None
        deadline = time.monotonic() + max_wait
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=_console(), transient=True, disable=as_json) as bar:
            task = bar.add_task(f"run {run}: starting", total=None)
            while time.monotonic() < deadline:
                status = client.call("sleep.status")
                if status["run"] != run:
                    last = status.get("last_report")
                    if last and last["run"] == run:
                        report = last
                    else:
                        found = [r for r in client.call("sleep.reports", {"limit": 20})["reports"] if r["run"] == run]
                        report = found[0] if found else None
                    break
                progress = status.get("progress") or {}
                where = f" [{status['namespace']}]" if status.get("namespace") else ""
                state = " (yielding)" if status["state"] == "yielding" else ""
                bar.update(task, description=f"run {run}: {status['stage'] or 'starting'}{where}{state}",
                           completed=progress.get("done", 0), total=progress.get("total") or None)
                time.sleep(0.25)
    if report is None:
        fail(EXIT_REMOTE, f"run {run} did not finish within {max_wait:g} s (it goes on; see `engram sleep status`)")
    assert report is not None
    out.emit(report, _report_lines)
    if report["outcome"] != "completed":
        raise SystemExit(EXIT_REMOTE)


@sleep.command()
@client_command
def status(socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """What consolidation is doing, its last report and its next planned run."""
    from engram.clitools import call

    Output(as_json).emit(call(socket_path, timeout, "sleep.status"), _status_text)
