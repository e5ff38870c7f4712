"""``engram route ...``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from engram.clitools import (
    EXIT_USAGE,
    Output,
    call,
    client_command,
    fail,
)


@click.group()
def route() -> None:
    """The HRM router: route requests, see its statistics, teach and reset it."""


@route.command("run")
@click.argument("name")
@click.option("--text", help="Text input (embed and generate routes).")
@click.option("--tensor", "tensor_json", help='Tensor input as JSON: {"dtype": "float32", "shape": [1, 4], "data": [...]}.')
@click.option("--mode", type=click.Choice(["fast", "slow", "auto", "cascade"]), help="Override the route's mode.")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Override the threshold in force.")
@click.option("--no-cache", is_flag=True, help="Skip the pattern cache.")
@client_command
def run(name: str, text: str | None, tensor_json: str | None, mode: str | None, threshold: float | None, no_cache: bool,
        socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Route one request through route NAME; prints the path taken, confidence and reason, and
    a generate route's answer."""
    if (text is None) == (tensor_json is None):
        fail(EXIT_USAGE, "give exactly one of --text and --tensor")
    params: dict[str, Any] = {"route": name, "use_cache": not no_cache, "output_format": "list"}
    if text is not None:
        params["text"] = text
    else:
        try:
            params["tensor"] = json.loads(tensor_json or "")
        except json.JSONDecodeError as exc:
            fail(EXIT_USAGE, f"--tensor is not valid JSON: {exc}")
    for key, value in (("mode", mode), ("threshold", threshold)):
        if value is not None:
            params[key] = value
    result = call(socket_path, timeout, "route.run", params)

    def human(r: dict[str, Any]) -> None:
        conf = "-" if r["confidence"] is None else f"{r['confidence']:.3f}"
        click.echo(f"{r['route']}: {r['taken']} ({r['target']}), confidence {conf}, p_slow {r['p_slow']:.3f}")
        click.echo(f"  reason: {r['reason']}")
        if r.get("labels") is not None:
            click.echo(f"  labels: {r['labels']}")
        click.echo(f"  decision: {r['decision']}")
        if r.get("text") is not None:
            click.echo(_answer_lines(r["text"]))

    Output(as_json).emit(result, human)


def _answer_lines(text: str) -> str:
    """A generate route's answer under the decision: one line beside its label, more beneath it,
    indented so that it cannot be mistaken for the lines above."""
    lines = text.splitlines() or [""]
    if len(lines) == 1:
        return f"  answer: {lines[0]}"
    return "\n".join(["  answer:", *(f"    {line}" if line else "" for line in lines)])


@route.command("stats")
@click.option("--route", "name", help="One route (default: all).")
@client_command
def stats(name: str | None, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Counts, escalation rate, agreement rate and latency per route."""
    result = call(socket_path, timeout, "route.stats", {"route": name} if name else {})

    def human(r: dict[str, Any]) -> None:
        if not r["routes"]:
            click.echo("no routes configured (router.routes)")
        for s in r["routes"]:
            agreement = "-" if s["agreement_rate"] is None else f"{s['agreement_rate'] * 100:.1f}%"
            lat = s["latency_ms"]
            latency = f"mean {lat['mean']:.2f} ms, p50 {lat['p50']:.2f}, p99 {lat['p99']:.2f}" if lat else "no requests yet"
            click.echo(f"{s['route']} ({s['mode']}: {s['fast']} -> {s['slow']})")
            click.echo(f"  requests {s['requests']}  cache {s['taken']['cache']}  fast {s['taken']['fast']}  "
                       f"slow {s['taken']['slow']}  errors {s['errors']}")
            click.echo(f"  escalation {s['escalation_rate'] * 100:.1f}%  slow share {s['slow_share'] * 100:.1f}%  "
                       f"agreement {agreement} of {s['both_ran']}")
            click.echo(f"  latency {latency}")
            click.echo(f"  thresholds cascade {s['threshold']:g}, auto {s['auto_threshold']:g}"
                       + (f" (calibrated for {s['calibrated']})" if s["calibrated"] else ""))
            click.echo(f"  learning rate {s['learning_rate']:g}, {s['reverts']} reverts to a stable snapshot")

    Output(as_json).emit(result, human)


@route.command("feedback")
@click.argument("decision")
@click.option("--correct/--wrong", required=True, help="Whether the answer was right.")
@client_command
def feedback(decision: str, correct: bool, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Tell the router whether the answer of DECISION was right."""
    result = call(socket_path, timeout, "route.feedback", {"decision": decision, "correct": correct})
    Output(as_json).emit(result, lambda r: click.echo(
        f"{r['decision']} ({r['route']}): {'learned from' if r['learned'] else 'recorded'}"))


@route.command("reset")
@click.argument("name")
@click.option("--cache", is_flag=True, help="Also drop the route's cached answers.")
@client_command
def reset(name: str, cache: bool, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Return route NAME's assessor to the prior weights and drop calibrated thresholds (owner only)."""
    result = call(socket_path, timeout, "route.reset", {"route": name, "cache": cache})
    Output(as_json).emit(result, lambda r: click.echo(f"{r['route']}: reset ({r['cache_cleared']} cached answers dropped)"))


@route.command("calibrate")
@click.argument("name")
@click.option("--slow-share", type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Target share of slow-path requests.")
@click.option("--agreement", type=click.FloatRange(0, 1, min_open=True), help="Target agreement rate of kept fast answers.")
@client_command
def calibrate(name: str, slow_share: float | None, agreement: float | None, socket_path: Path | None, as_json: bool,
              timeout: float) -> None:
    """Set route NAME's thresholds from its recorded decisions (owner only)."""
    if (slow_share is None) == (agreement is None):
        fail(EXIT_USAGE, "give exactly one of --slow-share and --agreement")
    params: dict[str, Any] = {"route": name}
    params.update({"slow_share": slow_share} if slow_share is not None else {"agreement": agreement})
    result = call(socket_path, timeout, "route.calibrate", params)
    Output(as_json).emit(result, lambda r: click.echo(
        f"{r['route']}: cascade threshold {r['threshold']:g}, auto threshold {r['auto_threshold']:g} "
        f"({r['samples']} decisions; {r['expected_slow_share'] * 100:.1f}% would escalate)"))


@route.command("curve")
@click.argument("name")
@click.option("--points", type=click.IntRange(2, 201), default=21, show_default=True, help="Most thresholds on the curve.")
@client_command
def curve(name: str, points: int, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Route NAME's accuracy-cost curve from its recorded decisions where both targets ran."""
    result = call(socket_path, timeout, "route.curve", {"route": name, "points": points})

    def human(r: dict[str, Any]) -> None:
        click.echo(f"{r['route']}: {r['samples']} decisions where both targets ran; threshold now {r['threshold']:g}")
        for p in r["points"]:
            click.echo(f"  threshold {p['threshold']:<8g} slow share {p['slow_share'] * 100:5.1f}%  accuracy {p['accuracy'] * 100:5.1f}%")

    Output(as_json).emit(result, human)


@route.command("consolidate")
@click.option("--route", "name", help="One route (default: all).")
@client_command
def consolidate(name: str | None, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Fold the assessor's online weights into its slow weights (owner only)."""
    result = call(socket_path, timeout, "route.consolidate", {"route": name} if name else {})
    Output(as_json).emit(result, lambda r: click.echo(f"consolidated: {', '.join(r['routes']) or 'nothing'}"))
