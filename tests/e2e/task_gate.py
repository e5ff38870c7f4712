"""What the task executor's end-to-end tests share: a daemon whose generate chain is the ``gate``
provider of tests/fixtures/task_site (a step or a request held in flight until the test creates
the gate file; ``plugin:gate`` is the same gate as an idempotent tool), and polls of task.get."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any
from tests.cli_inproc import run_cli

TASK_SITE = Path(__file__).resolve().parents[1] / "fixtures" / "task_site"
WAIT = 60.0  # seconds any poll waits at most


def gate_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The daemon's environment: the gate provider (files in ``tmp_path``) and ``tasks.*`` settings."""
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TASK_SITE), os.environ.get("PYTHONPATH")])),
        "ENGRAM_PLUGINS__PROVIDERS": json.dumps({"gate": {"gate": str(tmp_path / "gate"), "log": str(tmp_path / "gate.jsonl")}}),
        "ENGRAM_PROVIDERS__CHAINS": json.dumps({"generate": ["gate"]}),
        **{f"ENGRAM_TASKS__{key.upper()}": value for key, value in settings.items()},
    }


def gate_calls(tmp_path: Path) -> list[dict[str, Any]]:
    """Every call the gate saw, in order."""
    path = tmp_path / "gate.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def poll(daemon: Any, task_id: str, until: Any) -> dict[str, Any]:
    """task.get (with outputs) until ``until(result)``, or WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        result = daemon.call("task.get", {"task_id": task_id, "outputs": True})
        if until(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def ended(result: dict[str, Any]) -> bool:
    return result["task"]["state"] in ("done", "failed", "cancelled")


def steps_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["id"]: step for step in result["steps"]}


def ask(question: str, **extra: Any) -> dict[str, Any]:
    """route.ask's params for a question to the gate, with no memory around it."""
    return {"question": question, "k": 0, "remember": False, **extra}


def engram_cli(daemon: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--socket", str(daemon.socket), *args)  # output and status are checked, not the process
