"""Temporal policy rules in the real daemon: the three examples of the issue, over the socket.

* no remote provider call within a window after a recall of episodes tagged ``health`` (a fake
  OpenAI server on loopback counts what reaches it);
* at most N forgets per window;
* every forget followed by a signed checkpoint within a deadline, else ``policy.alert`` and an
  audit entry.

Windows are short (seconds): the daemon has no clock seam for the bus's event times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from engram.errors import PolicyDenied

pytest.importorskip("engram_openai", reason="make test installs plugins/engram-openai")
from engram_openai.testing import FakeOpenAI
from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e

NO_MODEL = {"ENGRAM_INFERENCE__AUTO_IMPORT": "false"}

HEALTH = """
version = 1
name = "health-stays-home"

[[rule]]
name = "owner-to-openai"
effect = "allow"
principals = ["owner"]
actions = ["infer.*"]
providers = ["openai"]
locality = ["remote"]

[[temporal]]
name = "no-remote-after-health"
description = "health data stays on this machine"
effect = "deny"
when = 'once[0s, 2s] event("memory.recalled", tags contains "health")'
on = { point = "egress", locality = ["remote"] }
"""

FORGETS = """
version = 1

[[temporal]]
name = "forget-rate"
effect = "deny"
when = 'count[1h] event("memory.forgotten", scope = "ids") >= 2'
on = { actions = ["memory.forget"] }
"""

CHECKPOINT = """
version = 1

[[temporal]]
name = "forget-then-checkpoint"
effect = "alert"
every = 'event("memory.forgotten", scope != "sleep")'
followed_by = 'event("audit.checkpoint")'
within = "1s"
"""


def vec(*values: float) -> list[float]:
    return list(values)


def engram(daemon, *args: str) -> subprocess.CompletedProcess[str]:
    # In-process, with the daemon's environment: the commands' output is checked, not the process.
    return run_cli(*args, "--socket", str(daemon.socket), env=daemon.env)


def test_no_remote_provider_call_soon_after_a_health_recall(make_daemon, tmp_path):
    policy = tmp_path / "health.toml"
    policy.write_text(HEALTH)
    with FakeOpenAI(api_key="sk-test") as server:
        config = {"openai": {"base_url": server.url, "api_key": "sk-test", "model": "gpt-test", "locality": "remote"}}
        daemon = make_daemon(env={
            **NO_MODEL, "ENGRAM_PLUGINS__PROVIDERS": json.dumps(config), "ENGRAM_PLUGINS__DISABLED": '["ollama"]',
            "ENGRAM_POLICY__FILES": json.dumps([str(policy)]),
        })
        with daemon.client() as client:
            client.call("memory.remember", {"items": [
                {"text": "blood pressure 120/80", "vector": vec(1, 0, 0), "tags": ["health"]},
                {"text": "quarterly report", "vector": vec(0, 1, 0), "tags": ["work"]},
            ]})
            # A recall of work episodes only: remote calls go on.
            assert [h["tags"] for h in client.call("memory.recall", {"vector": vec(0, 1, 0), "k": 1})["hits"]] == [["work"]]
            assert client.call("infer.generate", {"prompt": "hello", "provider": "openai"})["provider"] == "openai"
            calls = len(server.requests)

            hits = client.call("memory.recall", {"vector": vec(1, 0, 0), "k": 1})["hits"]
            assert hits[0]["tags"] == ["health"]
            with pytest.raises(PolicyDenied) as denied:
                client.call("infer.generate", {"prompt": "summarise my health", "provider": "openai"})
            data = denied.value.data
            assert data["reason"] == "policy_denied" and data["rule"] == "no-remote-after-health"
            assert data["point"] == "egress" and data["policy"] == str(policy)
            [event] = data["events"]
            assert event["topic"] == "memory.recalled" and event["tags"] == "health" and event["uid"] == os.getuid()
            assert "health data stays on this machine" in denied.value.message
            assert len(server.requests) == calls  # nothing left

            explained = client.call("policy.explain", {"method": "infer.generate", "provider": "openai"})
            assert explained["effect"] == "deny" and explained["rule"] == "no-remote-after-health"
            [status] = explained["temporal"]
            assert status["holds"] is True and status["events"][0]["topic"] == "memory.recalled"
            shown = engram(daemon, "policy", "explain", "infer.generate", "--provider", "openai")
            assert shown.returncode == 0, shown.stderr
            assert "decided by   no-remote-after-health" in shown.stdout
            assert "temporal     no-remote-after-health" in shown.stdout and "HOLDS" in shown.stdout
            assert "memory.recalled" in shown.stdout and '"tags": "health"' in shown.stdout

            time.sleep(2.3)  # the window passes
            assert client.call("infer.generate", {"prompt": "hello again", "provider": "openai"})["provider"] == "openai"
            assert len(server.requests) == calls + 1
            explained = client.call("policy.explain", {"method": "infer.generate", "provider": "openai"})
            assert explained["effect"] == "allow" and explained["temporal"][0]["holds"] is False
        metrics = client_metrics(daemon)
        assert 'engram_policy_temporal_violations_total{effect="deny",rule="no-remote-after-health"} 1.0' in metrics


def client_metrics(daemon) -> str:
    return daemon.call("system.metrics")["text"]


def test_at_most_n_forgets_per_window(make_daemon, tmp_path):
    policy = tmp_path / "forgets.toml"
    policy.write_text(FORGETS)
    daemon = make_daemon(env={**NO_MODEL, "ENGRAM_POLICY__FILES": json.dumps([str(policy)])})
    with daemon.client() as client:
        ids = client.call("memory.remember", {"items": [{"text": f"t{i}", "vector": vec(1, i, 0)} for i in range(4)]})["ids"]
        client.call("memory.forget", {"ids": [ids[0]]})
        client.call("memory.forget", {"ids": [ids[1]]})
        with pytest.raises(PolicyDenied) as denied:
            client.call("memory.forget", {"ids": [ids[2]]})
        data = denied.value.data
        assert data["rule"] == "forget-rate" and data["point"] == "method" and data["method"] == "memory.forget"
        assert [e["topic"] for e in data["events"]] == ["memory.forgotten", "memory.forgotten"]
        assert all(e["scope"] == "ids" for e in data["events"])
        assert len(client.call("memory.get", {"ids": [ids[2]]})["episodes"]) == 1  # still there
        assert client.call("memory.recall", {"vector": vec(1, 3, 0), "k": 1})["hits"]  # other calls go on
        # The owner can always repair the policy, whatever a temporal rule guards.
        assert client.call("policy.reload")["rules"] >= 1
        shown = engram(daemon, "policy", "show")
        assert shown.returncode == 0, shown.stderr
        assert 'deny  forget-rate              temporal: count[1h] event("memory.forgotten", scope = "ids") >= 2  on method:memory.forget' in shown.stdout
        # An unchanged rule keeps its window across a reload.
        with pytest.raises(PolicyDenied):
            client.call("memory.forget", {"ids": [ids[2]]})
        # The refusal is a policy.decision like any other: audited.
        entries = client.call("audit.entries", {"start": 0, "limit": 1000})["entries"]
        decisions = [e["entry"] for e in entries if e["entry"]["kind"] == "policy.decision"]
        [denial, _] = [d["detail"] for d in decisions if d["detail"]["rule"] == "forget-rate"]  # before and after the reload
        assert denial["effect"] == "deny" and [e["topic"] for e in denial["events"]] == ["memory.forgotten"] * 2


def test_a_forget_without_a_checkpoint_in_time_raises_an_audited_alert(make_daemon, tmp_path):
    policy = tmp_path / "checkpoint.toml"
    policy.write_text(CHECKPOINT)
    daemon = make_daemon(env={
        **NO_MODEL, "ENGRAM_POLICY__FILES": json.dumps([str(policy)]),
        "ENGRAM_AUDIT__CHECKPOINT_EVERY_SECONDS": "3600", "ENGRAM_AUDIT__CHECKPOINT_EVERY_ENTRIES": "100000",
    })
    with daemon.client() as client, daemon.client() as watcher:
        alerts = watcher.subscribe(["policy.alert"])
        ids = client.call("memory.remember", {"items": [{"text": f"t{i}", "vector": vec(1, i, 0)} for i in range(2)]})["ids"]
        client.call("memory.forget", {"ids": [ids[0]]})
        client.call("audit.checkpoint", {"fresh": True})  # signed in time: the obligation is met
        time.sleep(1.5)
        client.call("memory.forget", {"ids": [ids[1]]})
        started = time.monotonic()
        alert = alerts.receive(timeout=10)
        assert 0.9 < time.monotonic() - started < 3.0  # at the deadline, by the timer
        data = alert["data"]
        assert data["rule"] == "forget-then-checkpoint" and data["kind"] == "deadline" and data["policy"] == str(policy)
        [opened] = data["events"]
        assert opened["topic"] == "memory.forgotten" and opened["scope"] == "ids"
        # Exactly one: the first forget was followed by its checkpoint.
        with pytest.raises(TimeoutError):
            alerts.receive(timeout=1.5)
        deadline = time.monotonic() + 10
        while True:
            entries = client.call("audit.entries", {"start": 0, "limit": 1000})["entries"]
            recorded = [e["entry"] for e in entries if e["entry"]["kind"] == "policy.alert"]
            if recorded or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        [entry] = recorded
        assert entry["detail"]["rule"] == "forget-then-checkpoint" and entry["detail"]["events"][0]["topic"] == "memory.forgotten"
    assert any(r.get("event") == "temporal rule alert" and r.get("rule") == "forget-then-checkpoint" for r in daemon.records())


def test_a_broken_formula_on_reload_keeps_the_rules_in_force(make_daemon, tmp_path):
    policy = tmp_path / "forgets.toml"
    policy.write_text(FORGETS)
    daemon = make_daemon(env={**NO_MODEL, "ENGRAM_POLICY__FILES": json.dumps([str(policy)])})
    policy.write_text(FORGETS.replace("count[1h]", "count[1h"))
    with daemon.raw() as conn:
        answer = conn.request({"jsonrpc": "2.0", "id": 1, "method": "policy.reload"})
    error = answer["error"]
    assert error["code"] == -32007 and error["data"]["reason"] == "invalid_policy"
    [problem] = error["data"]["problems"]
    assert problem["key"] == "temporal[0].when" and problem["line"] == 7
    assert problem["message"].startswith("rule 'forget-rate': when: column 10: expected ']'")
    with daemon.client() as client:
        ids = client.call("memory.remember", {"items": [{"text": f"t{i}", "vector": vec(1, i, 0)} for i in range(3)]})["ids"]
        client.call("memory.forget", {"ids": [ids[0]]})
        client.call("memory.forget", {"ids": [ids[1]]})
        with pytest.raises(PolicyDenied):
            client.call("memory.forget", {"ids": [ids[2]]})


RECORDED = """
version = 1

[[temporal]]
name = "forget-rate"
effect = "deny"
when = 'count[1h] event("memory.forgotten", scope = "ids") >= 2'
on = { actions = ["memory.forget"] }

[[temporal]]
name = "health-recall"
effect = "alert"
when = 'event("memory.recalled", tags contains "health")'
"""


def test_rules_test_runs_over_a_stream_recorded_with_engram_events(make_daemon, tmp_path):
    """The documented way: record with `engram events --follow --json`, then check rules offline."""
    import signal

    daemon = make_daemon(env=NO_MODEL)  # no temporal rule in force: every forget goes through
    recorder = subprocess.Popen(
        [sys.executable, "-m", "engram.cli", "events", "--follow", "--json", "memory.*", "policy.decision",
         "--socket", str(daemon.socket)],
        stdout=subprocess.PIPE, text=True, env=daemon.env,
        # SIGINT ends the recording, as Ctrl-C does; a runner started in the background by a
        # shell ignores it, and a child would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the recorder follows
            if any("policy.decision" in s["topics"] for s in daemon.call("system.status")["subscriptions"]):
                break
            time.sleep(0.05)
        with daemon.client() as client:
            ids = client.call("memory.remember", {"items": [
                {"text": "pulse 60", "vector": vec(1, 0, 0), "tags": ["health"]},
                *({"text": f"t{i}", "vector": vec(0, 1, i)} for i in range(3)),
            ]})["ids"]
            client.call("memory.recall", {"vector": vec(1, 0, 0), "k": 1})
            for episode in ids[1:]:
                client.call("memory.forget", {"ids": [episode]})
        time.sleep(0.5)
    finally:
        recorder.send_signal(signal.SIGINT)
        out, _ = recorder.communicate(timeout=20)
    log = tmp_path / "events.jsonl"
    log.write_text(out)
    assert '"memory.recalled"' in out and out.count('"memory.forgotten"') == 3
    rules = tmp_path / "rules.toml"
    rules.write_text(RECORDED)
    checked = subprocess.run(
        [sys.executable, "-m", "engram.cli", "policy", "rules", "test", str(rules), "--events", str(log), "--json"],
        capture_output=True, text=True, timeout=60, env=daemon.env,
    )
    assert checked.returncode == 1, checked.stderr
    report = {rule["name"]: rule for rule in json.loads(checked.stdout)["rules"]}
    [denied] = report["forget-rate"]["violations"]  # the third forget would have been refused
    assert [e["topic"] for e in denied["events"]] == ["memory.forgotten", "memory.forgotten"]
    [alert] = report["health-recall"]["violations"]
    assert alert["events"][0]["tags"] == "health"
