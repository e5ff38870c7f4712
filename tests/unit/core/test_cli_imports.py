"""The ``engram`` command starts fast: the client and the CLI import none of the heavy libraries
(or the settings tree) until a command that needs them runs, and ``--help`` still lists every
command with its short help.

Each check runs in a fresh interpreter, since this one has imported everything already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import click
import pytest

from engram.cli import PART_COMMANDS, main

HEAVY_PACKAGES = {"faiss", "onnxruntime", "ml_dtypes", "numpy", "onnx", "pydantic_settings"}

COMMANDS = {
    "ask", "audit", "bench", "call", "chat", "config", "events", "generate", "health", "mcp", "memory", "metrics",
    "models", "ping", "plugins", "policy", "reload", "route", "schemas", "serve", "sleep", "status", "task", "token",
}
BENCHMARKS = {"audit", "cli", "extract", "frames", "http", "infer", "memory", "policy", "providers", "recall", "route", "rpc", "sequence", "sleep", "startup", "tasks"}
# What engram-bench (benchmarks/, installed by make test) adds to `engram bench` and `engram models`.
CONTRIBUTED = {group: {p.name: p.value for p in entry_points(group=f"engram.cli.{group}")} for group in ("bench", "models")}

# Listing the commands (engram --help, engram bench --help, engram models --help) imports every
# part's cli module, and engram-bench's.
LIST_EVERY_COMMAND = """
import contextlib, io
from engram.cli import main
for args in (["--help"], ["bench", "--help"], ["models", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(args)
"""


def heavy_modules_after(code: str) -> list[str]:
    """The heavy modules (and settings modules) that running ``code`` in a new interpreter loads."""
    report = "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code + report], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [
        name for name in json.loads(out.stdout.splitlines()[-1])
        if name.partition(".")[0] in HEAVY_PACKAGES
        or name == "engram.config"
        or (name.startswith("engram.") and name.endswith(".settings"))
    ]


@pytest.mark.parametrize(
    "code", ["import engram.client", "import engram.cli", LIST_EVERY_COMMAND], ids=["client", "cli", "help"]
)
def test_starting_imports_nothing_heavy(code: str) -> None:
    assert heavy_modules_after(code) == []


def listed_commands(*args: str) -> dict[str, str]:
    """Command name -> short help, as ``engram ARGS --help`` prints them."""
    out = subprocess.run(
        [sys.executable, "-m", "engram.cli", *args, "--help"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200"},  # wide enough that no short help wraps
    )
    assert out.returncode == 0, out.stderr
    section = out.stdout.split("\nCommands:\n", 1)[1]
    return dict(line.strip().split(None, 1) for line in section.splitlines() if line.strip())


def test_help_lists_every_command_with_its_short_help() -> None:
    top = listed_commands()
    assert set(top) == COMMANDS
    assert all(top.values())
    bench = listed_commands("bench")
    assert set(bench) == BENCHMARKS
    assert all(bench.values())


@pytest.mark.parametrize(
    "group, table", [("engram", PART_COMMANDS), ("bench", CONTRIBUTED["bench"]), ("models", CONTRIBUTED["models"])]
)
def test_every_lazy_command_resolves_to_a_command_of_that_name(group: str, table: dict[str, str]) -> None:
    assert table, f"nothing declares a command of {group}: is engram-bench installed?"
    ctx = click.Context(main)
    owner = main if group == "engram" else main.get_command(ctx, group)
    for name in table:
        command = owner.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name, table[name]


def test_the_daemon_loads_no_tracing_sdk_when_spans_go_nowhere() -> None:
    """``engram serve`` imports the runtime; with the default ``tracing.exporter = "none"`` the
    OpenTelemetry SDK (its exporters and batch processor) stays unimported until spans are wanted,
    and so does the OTLP exporter with its protobuf messages (only ``exporter = "otlp"`` needs it)."""
    code = (
        "import sys\nfrom pathlib import Path\nfrom engram.observability.settings import TracingSettings\n"
        "from engram.observability.tracing import build_tracer_provider, tracer\nimport engram.runtime\n"
        "settings = TracingSettings()\nprovider = build_tracer_provider(settings, Path('.'))\n"
        "tracer(provider, settings).start_span('x').end()\nprovider.shutdown()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter', "
        "'opentelemetry.proto'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "[]"
