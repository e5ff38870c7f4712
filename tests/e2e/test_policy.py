"""Policies end to end: a real engramd, clients under another uid, reloads, explain, the CLI.

Tests run as root and switch a forked child to uid/gid 65534 (nobody) to be "another user"; the
socket is opened to it for the test only, as test_protocol.py does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e

NOBODY = 65534

GRANT = """
version = 1
name = "grant-nobody"

[[rule]]
name = "nobody-status"
effect = "allow"
principals = ["uid:65534"]
actions = ["system.status", "system.reload", "memory.working.*"]

[[rule]]
name = "nobody-team-namespace"
effect = "allow"
principals = ["uid:65534"]
actions = ["memory.*"]
namespaces = ["shared:team"]
"""

ADMIN_GRANT = """
[[rule]]
name = "nobody-may-reload"
effect = "allow"
principals = ["uid:65534"]
actions = ["system.reload"]
admin = true
"""

REMOTE = """
[[rule]]
name = "owner-to-cloud"
effect = "allow"
principals = ["owner"]
actions = ["infer.*"]
providers = ["cloud"]
locality = ["remote"]
obligations = ["redact"]
"""


def engram(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args)  # the commands' output and status are checked, not the process


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("switching uid needs root")


def _connect_as_nobody(socket_path: str) -> Any:
    """In a forked child: become uid/gid 65534 for good, then connect to the daemon."""
    import socket as sock

    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    conn = sock.socket(sock.AF_UNIX, sock.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(socket_path)
    return conn


def _child(socket_path: str, messages: list[dict[str, Any]], queue: Any) -> None:
    try:
        conn = _connect_as_nobody(socket_path)
        replies, buffer = [], b""
        for message in messages:
            conn.sendall(json.dumps(message).encode() + b"\n")
            while b"\n" not in buffer:
                chunk = conn.recv(65536)
                if not chunk:
                    raise EOFError("connection closed")
                buffer += chunk
            line, _, buffer = buffer.partition(b"\n")
            replies.append(json.loads(line))
        queue.put(replies)
    except BaseException as exc:  # noqa: BLE001 - report whatever went wrong to the test
        queue.put(f"{type(exc).__name__}: {exc}")


def as_nobody(daemon: Any, *calls: tuple[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """Send ``calls`` from a child process running as uid/gid 65534; the raw JSON-RPC replies."""
    os.chmod(daemon.socket, 0o666)
    for folder in (daemon.socket.parent, daemon.socket.parent.parent):
        os.chmod(folder, 0o755)
    messages = [{"jsonrpc": "2.0", "id": n, "method": m, **({"params": p} if p is not None else {})} for n, (m, p) in enumerate(calls)]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(str(daemon.socket), messages, queue))
    proc.start()
    replies = queue.get(timeout=20)
    proc.join(10)
    assert isinstance(replies, list), replies
    return replies


def _policy_dir(state_dir: Path) -> Path:
    folder = state_dir.parent / "policy.d"
    folder.mkdir(exist_ok=True)
    return folder


def _env(folder: Path) -> dict[str, str]:
    return {"ENGRAM_POLICY__FILES": json.dumps([str(folder)])}


def test_other_uid_is_refused_by_default_and_allowed_once_granted(make_daemon, state_dir):
    _needs_root()
    folder = _policy_dir(state_dir)
    daemon = make_daemon(env=_env(folder))
    denied, pinged = as_nobody(daemon, ("system.status", None), ("system.ping", None))
    assert denied["error"]["code"] == -32001
    assert denied["error"]["data"] == {
        "reason": "policy_denied", "rule": "default", "method": "system.status", "uid": NOBODY, "point": "method"
    }
    assert "no rule allows uid 65534 to call system.status" in denied["error"]["message"]
    assert pinged["error"]["code"] == -32001  # other uids: nothing at all until granted

    # Install a grant and reload with policy.reload.
    (folder / "grant.toml").write_text(GRANT)
    reloaded = daemon.call("policy.reload")
    assert reloaded["files"] == ["shipped:local-first", str(folder / "grant.toml")] and reloaded["rules"] == 6
    status, reload_refused, own, team, other = as_nobody(
        daemon,
        ("system.status", None),
        ("system.reload", None),
        ("memory.working.list", {"session": "s"}),
        ("memory.working.list", {"session": "s", "namespace": "shared:team"}),
        ("memory.working.list", {"session": "s", "namespace": "uid:0"}),
    )
    assert status["result"]["pid"] == daemon.proc.pid
    # system.reload is an admin method: a grant without admin = true does not reach it.
    assert reload_refused["error"]["code"] == -32001 and reload_refused["error"]["data"]["rule"] == "owner-only"
    assert own["result"]["items"] == [] and team["result"]["items"] == []
    assert other["error"]["code"] == -32001  # the memory part asks the policy: uid:0 is not granted

    # An admin grant, installed with SIGHUP this time.
    (folder / "admin.toml").write_text(ADMIN_GRANT)
    with daemon.client() as client:
        events = client.subscribe(["policy.reloaded"])
        daemon.signal(signal.SIGHUP)
        event = events.receive(timeout=10)
        assert event["data"]["ok"] is True and event["data"]["trigger"] == "reload"
        assert str(folder / "admin.toml") in event["data"]["files"]
    [reload_allowed] = as_nobody(daemon, ("system.reload", None))
    assert "changed" in reload_allowed["result"]


def test_a_broken_policy_on_reload_leaves_the_old_one_in_force(make_daemon, state_dir):
    _needs_root()
    folder = _policy_dir(state_dir)
    (folder / "grant.toml").write_text(GRANT)
    daemon = make_daemon(env=_env(folder))
    assert "result" in as_nobody(daemon, ("system.status", None))[0]
    (folder / "grant.toml").write_text(GRANT.replace('actions = ["system.status"', 'actions = "system.status", ["x"'))
    (folder / "zz-typo.toml").write_text('[[rule]]\nname = "t"\neffect = "allow"\nprincipals = ["uid:65534"]\nactionz = ["*"]\n')
    with daemon.client() as client:
        with pytest.raises(Exception) as info:
            client.call("policy.reload")
        assert info.value.code == -32007 and info.value.reason == "invalid_policy"
        problems = info.value.data["problems"]
        assert [(p["file"], p["line"], p["key"]) for p in problems] == [
            (str(folder / "grant.toml"), 9, None),
            (str(folder / "zz-typo.toml"), 5, "rule[0].actionz"),
        ]
        assert problems[1]["message"] == "unknown key" and problems[0]["message"].startswith("not valid TOML")
        events = client.subscribe(["policy.reloaded"])
        daemon.signal(signal.SIGHUP)
        event = events.receive(timeout=10)
        assert event["data"]["ok"] is False and event["data"]["files"][-1] == str(folder / "grant.toml")
        health = client.call("system.health")
        assert health["status"] == "degraded" and not health["checks"]["policy"]["ok"]
        assert "previous policy stays in force" in health["checks"]["policy"]["detail"]
    assert "result" in as_nobody(daemon, ("system.status", None))[0]  # the old grant still holds


def test_denials_are_decision_events_and_audit_entries(daemon):
    _needs_root()
    with daemon.client() as client:
        events = client.subscribe(["policy.decision"])
        [denied] = as_nobody(daemon, ("memory.stats", None))
        assert denied["error"]["data"]["rule"] == "default"
        event = events.receive(timeout=10)
        assert event["data"]["effect"] == "deny" and event["data"]["audit"] is True
        assert event["data"]["principal"]["uid"] == NOBODY and event["data"]["method"] == "memory.stats"
        deadline = time.monotonic() + 10
        found: list[dict[str, Any]] = []
        while not found and time.monotonic() < deadline:
            entries = client.call("audit.entries", {"start": 0, "limit": 1000})["entries"]
            found = [e["entry"] for e in entries if e["entry"]["kind"] == "policy.decision"]
            time.sleep(0.05)
        assert found, "the denial never reached the audit log"
        assert found[-1]["detail"]["effect"] == "deny" and found[-1]["detail"]["rule"] == "default"
        assert found[-1]["principal"]["uid"] == NOBODY
        # The owner's routine calls are decisions too, but not audit material.
        client.call("system.status")
        allowed = events.receive(timeout=10)
        assert allowed["data"]["effect"] == "allow" and allowed["data"]["audit"] is False


def test_explain_privacy_show_and_check_through_the_cli(make_daemon, state_dir):
    folder = _policy_dir(state_dir)
    (folder / "remote.toml").write_text(REMOTE)
    daemon = make_daemon(env=_env(folder))
    sock = ["--socket", str(daemon.socket)]

    out = engram("policy", "explain", "--uid", str(NOBODY), "system.status", *sock)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("DENY  system.status for uid 65534") and "decided by   default" in out.stdout
    data = json.loads(engram("policy", "explain", "--json", "--uid", str(NOBODY), "system.status", *sock).stdout)
    assert (data["effect"], data["rule"], data["policy"], data["matched"]) == ("deny", "default", None, [])

    payload = json.dumps({"q": "mail ada@example.org, card 4111 1111 1111 1111"})
    remote = ["policy", "explain", "--json", "infer.embed", "--provider", "cloud", "--locality", "remote", "--payload", payload, *sock]
    allowed = json.loads(engram(*remote).stdout)
    assert (allowed["effect"], allowed["rule"], allowed["obligations"]) == ("allow", "owner-to-cloud", ["redact"])
    assert allowed["payload"] == {"q": "mail [REDACTED:email], card [REDACTED:payment_card]"}
    default = json.loads(engram("policy", "explain", "--json", "infer.embed", "--provider", "elsewhere", *sock).stdout)
    assert (default["effect"], default["rule"], default["locality"]) == ("deny", "default", "remote")

    # Privacy mode overrides the allow, and says so; it survives a restart until switched back.
    on = engram("policy", "privacy", "on", *sock)
    assert on.returncode == 0 and on.stdout.strip() == "privacy mode on (override)"
    private = json.loads(engram(*remote).stdout)
    assert (private["effect"], private["rule"], private["payload"]) == ("deny", "privacy-mode", None)
    daemon.stop()
    daemon = make_daemon(env=_env(folder), state=daemon.state_dir)
    assert json.loads(engram(*remote).stdout)["rule"] == "privacy-mode"
    assert engram("policy", "privacy", "default", *sock).stdout.strip() == "privacy mode off (default)"
    assert json.loads(engram(*remote).stdout)["effect"] == "allow"

    shown = engram("policy", "show", *sock)
    assert shown.returncode == 0 and "owner-to-cloud" in shown.stdout and "shipped:local-first" in shown.stdout
    assert json.loads(engram("policy", "show", "--json", *sock).stdout)["files"][1]["document"]["rule"][0]["name"] == "owner-to-cloud"
    assert engram("policy", "reload", *sock).stdout.startswith("policy reloaded: 5 rules")

    bad = folder.parent / "bad.toml"
    bad.write_text('[[rule]]\nname = "b"\neffect = "maybe"\nprincipals = ["*"]\n')
    checked = engram("policy", "check", str(folder / "remote.toml"))
    assert checked.returncode == 0 and "ok (1 rules, 0 limits)" in checked.stdout
    refused = engram("policy", "check", str(bad))
    assert refused.returncode == 2 and f"{bad}:3: rule[0].effect:" in refused.stderr


def test_a_broken_policy_file_stops_the_daemon_from_starting(make_daemon, state_dir):
    folder = _policy_dir(state_dir)
    (folder / "bad.toml").write_text('version = 1\n[[rule]]\nname = "b"\neffect = "allow"\nprincipals = ["*"]\nnamespaces = []\n')
    daemon = make_daemon(env=_env(folder), start=False)
    daemon.spawn()
    assert daemon.wait(timeout=30) == 2
    assert f"{folder}/bad.toml:6 rule[0].namespaces" in daemon.logs()
    assert not daemon.socket.exists()


MEMORY_GRANT = """
[[rule]]
name = "nobody-memory"
effect = "allow"
principals = ["uid:65534"]
actions = ["memory.*"]
"""

FORGET_ALL_GRANT = """
[[rule]]
name = "nobody-may-forget-everything"
effect = "allow"
principals = ["uid:65534"]
actions = ["memory.forget_all", "memory.export"]
admin = true
"""


def test_forget_all_and_export_are_owner_only_until_granted(make_daemon, state_dir):
    _needs_root()
    folder = _policy_dir(state_dir)
    (folder / "memory.toml").write_text(MEMORY_GRANT)
    daemon = make_daemon(env=_env(folder))
    item = {"items": [{"text": "mine", "vector": [1.0, 0.0, 0.0]}]}
    remembered, forget_all, export = as_nobody(
        daemon, ("memory.remember", item), ("memory.forget", {"all": True}), ("memory.export", {})
    )
    assert remembered["result"]["ids"]
    assert forget_all["error"]["code"] == -32001 and forget_all["error"]["data"]["action"] == "memory.forget_all"
    assert export["error"]["code"] == -32001 and export["error"]["data"]["rule"] == "owner-only"
    (folder / "admin.toml").write_text(FORGET_ALL_GRANT)
    daemon.call("policy.reload")
    export, forget_all = as_nobody(daemon, ("memory.export", {}), ("memory.forget", {"all": True}))
    assert [i["text"] for i in export["result"]["items"]] == ["mine"]
    assert forget_all["result"]["forgotten"] == 1


EVENTS_GRANT = """
[[rule]]
name = "nobody-follows-events"
effect = "allow"
principals = ["uid:65534"]
actions = ["events.*", "memory.*"]

[[rule]]
name = "nobody-team-namespace"
effect = "allow"
principals = ["uid:65534"]
actions = ["memory.*"]
namespaces = ["shared:team"]
"""


def _follow_events(socket_path: str, go: Any, queue: Any) -> None:
    """As nobody: subscribe to every topic, wait for ``go``, remember one text in its own
    namespace, and report every event received until that write's own event arrived."""
    try:
        conn = _connect_as_nobody(socket_path)
        lines = conn.makefile("rb")

        def send(request_id: int, method: str, params: dict[str, Any]) -> None:
            conn.sendall(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}).encode() + b"\n")

        send(1, "events.subscribe", {"topics": ["*"]})
        assert "result" in json.loads(lines.readline())
        queue.put("subscribed")
        assert go.wait(20)
        send(2, "memory.remember", {"items": [{"text": "mine"}]})
        events, answered = [], False
        while not (answered and any(e["topic"] == "memory.remembered" and e["data"]["namespace"] == "uid:65534" for e in events)):
            message = json.loads(lines.readline())
            if message.get("id") == 2:
                assert "result" in message, message
                answered = True
            elif message.get("method") == "events.event":
                events.append(message["params"])
        queue.put(events)
    except BaseException as exc:  # noqa: BLE001 - report whatever went wrong to the test
        queue.put(f"{type(exc).__name__}: {exc}")


def test_a_subscriber_other_than_the_owner_sees_only_events_about_itself(make_daemon, state_dir):
    _needs_root()
    folder = _policy_dir(state_dir)
    (folder / "grant.toml").write_text(EVENTS_GRANT)
    daemon = make_daemon(env=_env(folder))
    as_nobody(daemon)  # opens the socket to nobody
    ctx = multiprocessing.get_context("fork")
    go, queue = ctx.Event(), ctx.Queue()
    follower = ctx.Process(target=_follow_events, args=(str(daemon.socket), go, queue))
    follower.start()
    try:
        assert queue.get(timeout=20) == "subscribed"
        with daemon.client() as owner:
            owner.call("memory.remember", {"items": [{"text": "the owner's own note"}]})  # namespace uid:0
            owner.call("memory.remember", {"items": [{"text": "a team note"}], "namespace": "shared:team"})
            owner.call("system.ping")
        go.set()
        events = queue.get(timeout=20)
    finally:
        follower.join(10)
    assert isinstance(events, list), events

    def about(event: dict[str, Any]) -> tuple[int | None, str | None]:
        data = event["data"]
        return (data.get("principal") or {}).get("uid", data.get("uid")), data.get("namespace")

    # The owner's requests, connection and write to its own namespace stay hidden ...
    assert not [e for e in events if about(e)[0] == 0 and about(e)[1] != "shared:team"], events
    remembered = {e["data"]["namespace"]: e["data"] for e in events if e["topic"] == "memory.remembered"}
    assert set(remembered) == {"shared:team", "uid:65534"}  # ... a namespace it may read is its business
    assert {e["topic"] for e in events if about(e)[0] == NOBODY} >= {"request.received", "request.completed"}

    # Texts are named by a digest keyed with the daemon's content key, never a bare SHA-256.
    key = (daemon.state_dir / "keys" / "content.key").read_bytes()
    assert len(key) == 32 and (daemon.state_dir / "keys" / "content.key").stat().st_mode & 0o777 == 0o600
    digest = hashlib.sha256(b"mine").digest()
    assert remembered["uid:65534"]["text_hmac"] == [hmac.new(key, digest, hashlib.sha256).hexdigest()]
    assert digest.hex() not in json.dumps(events)
