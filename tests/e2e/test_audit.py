"""The signed audit log through the real daemon: audit_seq in responses, proofs, the CLI, offline
verification, tampering, kill -9, key rotation."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from engram.audit.canonical import content_hash
from engram.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from engram.errors import NotFound, RPCError
from engram.signing import Verifier, open_checkpoint

from tests.cli_inproc import run_cli
from tests.conftest import DaemonProcess, running_daemon

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    """One daemon for the tests that only append to its log and read back what they appended
    (each finds its own entries by the seq it was answered); the tests that stop, kill, tamper
    with or restart a daemon make their own."""
    with running_daemon() as process:
        yield process


def engram(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args)  # the commands' output and status are checked, not the process


def b64d(text: str) -> bytes:
    return base64.b64decode(text)


def _size_once_started(client: Any) -> int:
    """The log's size once daemon.started is in it: that event is published at READY and
    recorded from the bus, so a client that connects at once may still see the log without it."""
    deadline = time.monotonic() + 10
    while True:
        page = client.call("audit.entries", {"limit": 100})  # a fresh daemon's log is a few entries
        if any(e["entry"]["kind"] == "daemon.started" for e in page["entries"]) or time.monotonic() > deadline:
            return page["size"]
        time.sleep(0.05)


def test_every_audited_response_carries_a_provable_seq(daemon):
    with daemon.client() as client:
        size_before = _size_once_started(client)
        assert "audit_seq" not in client.call("system.ping")  # introspection is not audited
        assert client.call("audit.entries", {"limit": 1})["size"] == size_before
        result = client.call("plugins.list")
        seq = result["audit_seq"]
        with pytest.raises(NotFound) as denied:
            client.call("events.unsubscribe", {"subscription": "nope"})
        error_seq = denied.value.data["audit_seq"]
        assert error_seq > seq
        checkpoint = client.call("audit.checkpoint")
        keys = client.call("audit.pubkey")
        proof = client.call("audit.prove", {"seq": seq, "size": checkpoint["size"]})
        entry = client.call("audit.entry", {"seq": seq})
        failed = client.call("audit.entry", {"seq": error_seq})
        older = client.call("audit.consistency", {"size1": seq + 1, "size2": checkpoint["size"]})

    # The checkpoint is signed by the daemon's key, the proof leads from the entry to its root.
    cp, _ = open_checkpoint(checkpoint["note"], [Verifier(keys["vkey"])], keys["origin"])
    assert cp.size == checkpoint["size"] > error_seq and b64d(checkpoint["root"]) == cp.root
    data = b64d(entry["canonical"])
    assert leaf_hash(data) == b64d(entry["leaf_hash"]) == b64d(proof["leaf_hash"])
    verify_inclusion(leaf_hash(data), seq, cp.size, [b64d(p) for p in proof["proof"]], cp.root)
    verify_consistency(seq + 1, cp.size, [b64d(p) for p in older["proof"]], b64d(older["root1"]), cp.root)

    # What the entry says, and that its hashes are the client's to check.
    record = entry["entry"]
    assert record["kind"] == "rpc" and record["seq"] == seq and record["principal"]["uid"] == os.geteuid()
    assert record["detail"]["method"] == "plugins.list" and record["detail"]["outcome"] == "ok"
    assert record["input_hash"] == content_hash({})
    assert record["output_hash"] == content_hash({k: v for k, v in result.items() if k != "audit_seq"})
    assert failed["entry"]["detail"]["error_code"] == -32002 and failed["entry"]["output_hash"] is None


def test_proof_parameters_are_checked(daemon):
    with daemon.client() as client:
        seq = client.call("plugins.list")["audit_seq"]
        for params, field in (({"seq": seq, "size": seq}, "size"), ({"seq": 0, "size": 10**9}, "size")):
            with pytest.raises(RPCError) as info:
                client.call("audit.prove", params)
            assert info.value.code == -32602 and info.value.data["field"] == field
        with pytest.raises(NotFound):
            client.call("audit.entry", {"seq": 10**9})
        with pytest.raises(RPCError) as info:
            client.call("audit.consistency", {"size1": 5, "size2": 10**9})
        assert info.value.data["field"] == "size2"


def test_cli_tail_show_prove_export_verify(daemon, tmp_path):
    sock = ["--socket", str(daemon.socket)]
    pub = daemon.state_dir / "keys" / "audit.pub"
    seqs = [daemon.call("plugins.list")["audit_seq"] for _ in range(3)]
    tail = engram("audit", "tail", "-n", "3", *sock)
    assert tail.returncode == 0 and tail.stdout.count("plugins.list ok") == 3
    show = json.loads(engram("audit", "show", str(seqs[0]), "--json", *sock).stdout)
    assert show["entry"]["seq"] == seqs[0]
    prove = engram("audit", "prove", str(seqs[1]), "--pubkey", str(pub), *sock)
    assert prove.returncode == 0, prove.stderr
    assert f"entry {seqs[1]} is in the log" in prove.stdout and "verified" in prove.stdout
    older = engram("audit", "prove", str(seqs[0]), "--size", str(seqs[0] + 1), "--json", *sock)
    assert json.loads(older.stdout)["verified"] is True and json.loads(older.stdout)["consistency"] is not None
    exported = tmp_path / "log.jsonl"
    assert engram("audit", "export", str(exported), *sock).returncode == 0
    verified = engram("audit", "verify", str(exported), "--pubkey", str(pub), "--json")
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] and report["entries"] > seqs[-1] and report["unsigned_tail"] == 0
    note = tmp_path / "checkpoint.txt"
    note.write_text(json.loads(engram("audit", "checkpoint", "--json", *sock).stdout)["note"])
    live = engram("audit", "verify", "--state-dir", str(daemon.state_dir), "--pubkey", str(pub), "--checkpoint", str(note))
    assert live.returncode == 0, live.stderr  # a running daemon's state folder, read-only
    assert engram("audit", "pubkey", *sock).stdout.strip() == pub.read_text().strip()


def _tamper_entry(db: Path, seq: int) -> None:
    conn = sqlite3.connect(db)
    data = conn.execute("SELECT entry FROM audit_entries WHERE seq = ?", (seq,)).fetchone()[0]
    conn.execute("UPDATE audit_entries SET entry = ? WHERE seq = ?", (data.replace(b'"ok"', b'"OK"'), seq))
    conn.commit()
    conn.close()


def test_offline_verify_catches_tampering_and_the_daemon_refuses_to_extend(make_daemon, tmp_path):
    daemon = make_daemon()
    seq = [daemon.call("plugins.list")["audit_seq"] for _ in range(4)][2]
    assert daemon.stop() == 0
    state, pub = daemon.state_dir, daemon.state_dir / "keys" / "audit.pub"
    before = {p.name: p.stat().st_mtime_ns for p in state.iterdir()}
    ok = engram("audit", "verify", "--state-dir", str(state), "--pubkey", str(pub))
    assert ok.returncode == 0, ok.stderr
    assert "ok:" in ok.stdout and "not signed yet" not in ok.stdout  # shutdown signed everything
    assert {p.name: p.stat().st_mtime_ns for p in state.iterdir()} == before  # read-only
    exported = tmp_path / "log.jsonl"
    assert engram("audit", "export", str(exported), "--state-dir", str(state)).returncode == 0

    _tamper_entry(state / "engram.db", seq)
    bad = engram("audit", "verify", "--state-dir", str(state), "--pubkey", str(pub))
    assert bad.returncode == 1 and f"entry {seq}:" in bad.stderr

    lines = exported.read_bytes().splitlines(keepends=True)
    exported.write_bytes(b"".join(lines[:-3] + lines[-2:]))  # one entry removed from the export
    gone = engram("audit", "verify", str(exported), "--pubkey", str(pub))
    assert gone.returncode == 1 and "is missing" in gone.stderr

    refused = make_daemon(start=False, state=state)
    assert refused.spawn().wait(timeout=60) == 2
    logs = refused.logs()
    assert f"entry {seq}" in logs and "will not extend" in logs and "aside" in logs


def test_a_checkpoint_signed_by_another_key_is_reported(make_daemon, tmp_path):
    from engram.audit.checkpoints import sign_checkpoint
    from engram.signing import Signer, generate_signer

    daemon = make_daemon()
    daemon.call("plugins.list")
    origin = daemon.call("audit.pubkey")["origin"]
    assert daemon.stop() == 0
    db = daemon.state_dir / "engram.db"
    conn = sqlite3.connect(db)
    cp_id, size, root = conn.execute("SELECT id, size, root FROM audit_checkpoints ORDER BY id DESC").fetchone()
    forged = sign_checkpoint(origin, size, root, Signer(generate_signer(origin)[0]))
    conn.execute("UPDATE audit_checkpoints SET note = ?, key_id = ?, time = ? WHERE id = ?", (forged.note, forged.key_id, forged.time, cp_id))
    conn.commit()
    conn.close()
    out = engram("audit", "verify", "--state-dir", str(daemon.state_dir), "--pubkey", str(daemon.state_dir / "keys" / "audit.pub"))
    assert out.returncode == 1 and "no valid signature by a trusted key" in out.stderr


def test_kill_9_loses_no_acknowledged_entry(make_daemon):
    daemon = make_daemon(env={"ENGRAM_AUDIT__CHECKPOINT_EVERY_ENTRIES": "25"})
    acknowledged: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def hammer() -> None:
        try:
            with daemon.client() as client:
                while not stop.is_set():
                    seq = client.call("plugins.list")["audit_seq"]
                    with lock:
                        acknowledged.append(seq)
        except Exception:  # noqa: BLE001 - the daemon is killed under our feet
            pass

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    while True:
        with lock:
            if len(acknowledged) >= 200:
                break
        threads[0].join(0.01)
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    stop.set()
    for t in threads:
        t.join(30)

    db = daemon.state_dir / "engram.db"
    again = make_daemon(state=daemon.state_dir)  # the start-up check passes: nothing to refuse
    with again.client() as client:
        for seq in acknowledged:
            entry = client.call("audit.entry", {"seq": seq})["entry"]
            assert entry["kind"] == "rpc" and entry["detail"]["method"] == "plugins.list"
    assert again.stop() == 0
    conn = sqlite3.connect(db)
    entries = conn.execute("SELECT count(*) FROM audit_entries").fetchone()[0]
    biggest = conn.execute("SELECT max(size) FROM audit_checkpoints").fetchone()[0]
    conn.close()
    assert biggest <= entries  # no checkpoint ahead of the log
    out = engram("audit", "verify", "--state-dir", str(daemon.state_dir), "--pubkey", str(daemon.state_dir / "keys" / "audit.pub"))
    assert out.returncode == 0, out.stderr


def test_key_rotation_keeps_old_checkpoints_verifiable(make_daemon, tmp_path):
    daemon = make_daemon()
    sock = ["--socket", str(daemon.socket)]
    keys = daemon.state_dir / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / "audit.key").stat().st_mode) == 0o600
    old_pub = tmp_path / "old.pub"
    old_pub.write_text(engram("audit", "pubkey", *sock).stdout)
    daemon.call("plugins.list")
    daemon.call("audit.checkpoint")
    rotated = json.loads(engram("audit", "rotate-key", "--json", *sock).stdout)
    assert rotated["previous_vkey"] == old_pub.read_text().strip()
    assert stat.S_IMODE((keys / "audit.key").stat().st_mode) == 0o600
    daemon.call("plugins.list")
    listed = daemon.call("audit.pubkey")
    assert listed["vkey"] == rotated["vkey"] and listed["previous"] == [rotated["previous_vkey"]]
    assert daemon.stop() == 0
    new_pub = keys / "audit.pub"
    for pub in (old_pub, new_pub):
        out = engram("audit", "verify", "--state-dir", str(daemon.state_dir), "--pubkey", str(pub), "--json")
        assert out.returncode == 0, out.stderr
        assert len(json.loads(out.stdout)["keys"]) == 2
    restarted = make_daemon(state=daemon.state_dir)
    assert restarted.call("audit.pubkey")["vkey"] == rotated["vkey"]


def test_audit_health_metrics_and_events(daemon):
    with daemon.client() as client:
        stream = client.subscribe(["audit.*"])
        seq = client.call("plugins.list")["audit_seq"]
        event = stream.receive(timeout=10)
        assert event["topic"] == "audit.appended" and event["data"]["first_seq"] <= seq
        health: dict[str, Any] = client.call("system.health")
        assert health["checks"]["audit"]["ok"] is True
        text = client.call("system.metrics")["text"]
    assert "engram_audit_entries_total" in text and "engram_audit_log_size" in text


def test_bench_audit_smoke(daemon):
    out = engram(
        "bench", "audit", "--entries", "40", "--concurrency", "4", "--verify-entries", "300", "--proofs", "10",
        "--socket", str(daemon.socket), "--json",
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    targets = {row["target"] for row in report["append"]}
    assert {"engramd audited", "engramd ping (no audit)", "bare batch=1", "bare batch=256"} <= targets
    assert all(row["errors"] == 0 for row in report["append"])
    # The audited row calls a cheap audited method, compared with an unaudited one on the same daemon.
    cost = report["audit_cost"]
    assert report["audited_method"] == cost["audited_method"] == "policy.privacy"
    assert cost["unaudited_method"] == "system.ping" and cost["throughput_ratio"] > 0
    assert report["verify"]["entries"] == 300 and report["verify"]["seconds"] > 0
    assert len(report["proofs"]) == 6


def test_tail_follow_prints_new_entries(daemon):
    proc = subprocess.Popen(
        [sys.executable, "-m", "engram.cli", "audit", "tail", "-n", "1", "--follow", "--socket", str(daemon.socket)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the last entry so far
        seq = daemon.call("plugins.list")["audit_seq"]
        for _ in range(20):
            line = proc.stdout.readline()
            if line.split()[0] == str(seq):
                assert "plugins.list ok" in line
                break
        else:
            raise AssertionError("tail --follow did not print the new entry")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
