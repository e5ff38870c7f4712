"""Traces, logs and metrics of a running daemon, read the way an operator reads them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_each_request_is_a_span_named_after_its_method(make_daemon):
    daemon = make_daemon(env={"ENGRAM_TRACING__EXPORTER": "file"})
    with daemon.client() as client:
        client.call("system.ping")
        with pytest.raises(Exception):
            client.call("events.subscribe", {"topics": ["nope"]})
    assert daemon.stop() == 0  # shutdown flushes the span processor
    path = daemon.state_dir / "traces.jsonl"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    by_name = {span["name"]: span for span in spans}
    ping = by_name["system.ping"]
    assert ping["kind"] == "SpanKind.SERVER"
    assert ping["attributes"]["rpc.system"] == "jsonrpc" and ping["attributes"]["rpc.method"] == "system.ping"
    assert ping["resource"]["attributes"]["service.name"] == "engramd"
    failed = by_name["events.subscribe"]
    assert failed["status"]["status_code"] == "ERROR"
    assert failed["attributes"]["rpc.jsonrpc.error_code"] == -32602
    completed = [r for r in daemon.records() if r.get("event") == "request" and r.get("method") == "system.ping"]
    assert completed and completed[0]["outcome"] == "ok"


def test_logs_are_json_when_not_on_a_terminal(daemon):
    records = daemon.records()
    ready = next(r for r in records if r.get("event") == "ready")
    assert ready["level"] == "info" and ready["socket"] == str(daemon.socket) and "timestamp" in ready


def test_console_logs_on_request(state_dir):
    env = {**os.environ, "ENGRAM_LOG__FORMAT": "console"}
    proc = subprocess.run(
        [sys.executable, "-m", "engram.cli", "serve", "--state-dir", str(state_dir), "--socket", "/proc/no/such.sock"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "cannot start" in proc.stderr and not proc.stderr.lstrip().startswith("{")
