"""JSON-RPC 2.0 over the real socket: every core method, and every kind of bad input."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator

import pytest

from engram.errors import InvalidParams, MethodNotFound

from tests.conftest import DaemonProcess, running_daemon

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    """One daemon for the module: these tests each use their own connections and leave the
    daemon as they found it (those that change its settings, its socket's mode or count its
    connections start their own)."""
    with running_daemon() as process:
        yield process


def test_core_methods_answer(daemon):
    with daemon.client() as client:
        assert client.call("system.ping") == {"pong": True, "echo": None}
        status = client.call("system.status")
        assert {p["name"] for p in status["parts"]} >= {"database", "plugins", "server", "bus"}
        assert all(p["state"] == "running" for p in status["parts"])  # one vocabulary for every part
        assert status["connections"] == 1 and status["pid"] == daemon.proc.pid
        health = client.call("system.health")
        assert health["status"] == "ok" and health["checks"]["database"]["ok"]
        assert health["checks"]["server"] == {"ok": True, "detail": "running"}
        assert health["checks"]["plugins"]["ok"] and health["checks"]["providers"]["ok"]
        metrics = client.call("system.metrics")
        assert 'engram_requests_total{method="system.ping",outcome="ok"} 1.0' in metrics["text"]
        running = [p["name"] for p in client.call("plugins.list")["plugins"] if p["state"] == "running"]
        assert running == ["onnx"]  # the built-in provider; plugins/ distributions are disabled in tests
        assert "request.completed" in client.call("events.topics")["topics"]
        reload = client.call("system.reload")
        assert reload["changed"] == [] and reload["restart_required"] == []
        assert reload["audit_seq"] >= 1  # reloads are audited


def test_positional_params_and_ids(daemon):
    with daemon.raw() as conn:
        assert conn.request({"jsonrpc": "2.0", "id": "abc", "method": "system.ping", "params": [42]}) == {
            "jsonrpc": "2.0",
            "id": "abc",
            "result": {"pong": True, "echo": 42},
        }
        reply = conn.request({"jsonrpc": "2.0", "id": None, "method": "system.ping"})
        assert reply["id"] is None and reply["result"]["pong"] is True
        reply = conn.request({"jsonrpc": "2.0", "id": 1.5, "method": "system.ping", "params": [1, 2]})
        assert reply["error"]["code"] == -32602 and reply["error"]["data"]["reason"] == "too_many_params"


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [
        (b"{not json\n", -32700, "parse_error"),
        (b'"a string"\n', -32600, "not_an_object"),
        (b"[]\n", -32600, "empty_batch"),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "system.ping"}\n', -32600, "bad_version"),
        (b'{"id": 1, "method": "system.ping"}\n', -32600, "bad_version"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 5}\n', -32600, "bad_method"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "system.ping", "params": 3}\n', -32600, "bad_params"),
        (b'{"jsonrpc": "2.0", "id": {}, "method": "system.ping"}\n', -32600, "bad_id"),
        (b'{"jsonrpc": "2.0", "id": true, "method": "system.ping"}\n', -32600, "bad_id"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "system.ping", "extra": 1}\n', -32600, "unexpected_member"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "no.such"}\n', -32601, "method_not_found"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "events.subscribe", "params": {"topics": "x"}}\n', -32602, "invalid_params"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "events.subscribe", "params": {"queue": -1}}\n', -32602, "invalid_params"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "system.ping", "params": {"echo": 1, "x": 2}}\n', -32602, "invalid_params"),
        (b'\xff\xfe{"jsonrpc"}\n', -32700, "parse_error"),
    ],
)
def test_bad_requests_get_specific_errors(daemon, frame, code, reason):
    with daemon.raw() as conn:
        reply = conn.request(frame)
        assert reply["jsonrpc"] == "2.0"
        assert reply["error"]["code"] == code, reply
        assert reply["error"]["data"]["reason"] == reason, reply
        # The connection stays usable after every one of them.
        assert conn.request({"jsonrpc": "2.0", "id": 2, "method": "system.ping"})["result"]["pong"] is True


def test_invalid_params_name_the_field(daemon):
    with daemon.client() as client:
        with pytest.raises(InvalidParams) as info:
            client.call("events.subscribe", {"topics": ["request.*", 7]})
        assert info.value.data["field"] == "topics.1"
        with pytest.raises(InvalidParams) as info:
            client.call("events.subscribe", {"topics": ["nothing.matches.this"]})
        assert info.value.reason == "unknown_topic" and "request.completed" in info.value.data["known_topics"]
        with pytest.raises(MethodNotFound):
            client.call("system.nope")


def test_batches(daemon):
    with daemon.raw() as conn:
        conn.send(
            [
                {"jsonrpc": "2.0", "id": 1, "method": "system.ping", "params": {"echo": "a"}},
                {"jsonrpc": "2.0", "method": "system.ping"},  # notification: no answer
                {"jsonrpc": "2.0", "id": 2, "method": "no.such"},
                7,
                {"jsonrpc": "2.0", "id": 3, "method": "system.ping", "params": {"echo": "c"}},
            ]
        )
        replies = conn.recv()
        assert isinstance(replies, list) and len(replies) == 4
        by_id = {r.get("id"): r for r in replies}
        assert by_id[1]["result"]["echo"] == "a" and by_id[3]["result"]["echo"] == "c"
        assert by_id[2]["error"]["code"] == -32601
        assert by_id[None]["error"]["code"] == -32600
        # A batch of notifications only is answered with nothing at all.
        conn.send([{"jsonrpc": "2.0", "method": "system.ping"}, {"jsonrpc": "2.0", "method": "system.ping"}])
        assert conn.request({"jsonrpc": "2.0", "id": 9, "method": "system.ping"})["id"] == 9
    with daemon.client() as client:
        results = client.batch([("system.ping", {"echo": 1}), ("no.such", None)])
        assert results[0]["echo"] == 1 and isinstance(results[1], MethodNotFound)


def test_notification_gets_no_response(daemon):
    with daemon.raw() as conn:
        conn.send({"jsonrpc": "2.0", "method": "system.ping"})
        conn.send({"jsonrpc": "2.0", "method": "no.such"})
        assert conn.request({"jsonrpc": "2.0", "id": 5, "method": "system.ping"})["id"] == 5


def test_oversized_frame_is_refused_and_connection_survives(make_daemon):
    daemon = make_daemon(env={"ENGRAM_SERVER__MAX_FRAME_BYTES": "4096"})
    with daemon.raw() as conn:
        big = {"jsonrpc": "2.0", "id": 1, "method": "system.ping", "params": {"echo": "x" * 100_000}}
        reply = conn.request(big)
        assert reply["id"] is None
        assert reply["error"]["code"] == -32600 and reply["error"]["data"]["reason"] == "frame_too_large"
        assert reply["error"]["data"]["limit"] == 4096
        ok = conn.request({"jsonrpc": "2.0", "id": 2, "method": "system.ping", "params": {"echo": "y" * 1000}})
        assert ok["result"]["echo"] == "y" * 1000
    assert any(r.get("event") == "frame too large" for r in daemon.records())


def test_large_frame_under_the_limit(daemon):
    payload = "z" * (4 * 1024 * 1024)
    with daemon.raw() as conn:
        reply = conn.request({"jsonrpc": "2.0", "id": 1, "method": "system.ping", "params": {"echo": payload}})
        assert reply["result"]["echo"] == payload


def test_silent_client_is_closed_after_idle_timeout(make_daemon):
    daemon = make_daemon(env={"ENGRAM_SERVER__IDLE_TIMEOUT": "0.5"})
    with daemon.raw() as conn:
        assert conn.closed_by_peer(timeout=5)
    assert daemon.call("system.ping")["pong"] is True
    assert any(r.get("event") == "connection closed" and r.get("reason") == "idle_timeout" for r in daemon.records())


def test_trickling_client_is_dropped_after_read_timeout(make_daemon):
    daemon = make_daemon(env={"ENGRAM_SERVER__READ_TIMEOUT": "0.5"})
    with daemon.raw() as conn:
        conn.send(b'{"jsonrpc": "2.0", ')
        assert conn.closed_by_peer(timeout=5)
    assert any(r.get("event") == "slow client dropped" for r in daemon.records())


def test_disconnect_mid_request_leaves_daemon_serving(daemon):
    for _ in range(20):
        conn = daemon.raw()
        conn.send(b'{"jsonrpc": "2.0", "id": 1, "method": "system.st')
        conn.close()
        conn = daemon.raw()
        conn.send({"jsonrpc": "2.0", "id": 1, "method": "system.status"})
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
    assert daemon.call("system.ping")["pong"] is True


def test_half_closed_client_still_gets_its_answer(daemon):
    with daemon.raw() as conn:
        conn.send({"jsonrpc": "2.0", "id": 1, "method": "system.ping", "params": {"echo": "bye"}})
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.recv()["result"]["echo"] == "bye"


def test_a_thousand_connections_at_once(make_daemon):
    daemon = make_daemon()
    conns = [daemon.raw() for _ in range(1000)]
    try:
        for i, conn in enumerate(conns):
            conn.send({"jsonrpc": "2.0", "id": i, "method": "system.ping"})
        for i, conn in enumerate(conns):
            assert conn.recv()["id"] == i
        assert daemon.call("system.status")["connections"] == 1001
    finally:
        for conn in conns:
            conn.close()
    deadline = time.monotonic() + 10
    while daemon.call("system.status")["connections"] > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.call("system.status")["connections"] == 1


def test_connection_limit_answers_overloaded(make_daemon):
    daemon = make_daemon(env={"ENGRAM_SERVER__MAX_CONNECTIONS": "5"})
    conns = [daemon.raw() for _ in range(5)]
    try:
        for conn in conns:  # make sure all five are being served
            assert conn.request({"jsonrpc": "2.0", "id": 1, "method": "system.ping"})["result"]["pong"]
        with daemon.raw() as extra:
            reply = extra.recv()
            assert reply["error"]["code"] == -32003
            assert reply["error"]["data"]["reason"] == "too_many_connections"
            assert extra.closed_by_peer(timeout=5)
    finally:
        for conn in conns:
            conn.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            assert daemon.call("system.ping")["pong"]
            break
        except Exception:
            time.sleep(0.05)
    # At least the one above; the retries just before may have been refused too while the five
    # closed connections were still being torn down.
    metrics = daemon.call("system.metrics")["text"]
    refused = re.search(r"^engram_connections_refused_total (\S+)$", metrics, re.M)
    assert refused and float(refused[1]) >= 1


def test_per_connection_concurrency_limit(make_daemon, plugin_env):
    daemon = make_daemon(
        env={
            **plugin_env({"slow": {"health_delay": 0.5}}),
            "ENGRAM_SERVER__MAX_INFLIGHT_PER_CONNECTION": "2",
        }
    )
    with daemon.raw() as conn:
        conn.send(b"".join(
            json.dumps({"jsonrpc": "2.0", "id": i, "method": "plugins.list"}).encode() + b"\n" for i in range(5)
        ))
        replies = [conn.recv() for _ in range(5)]
    overloaded = [r for r in replies if "error" in r]
    assert len(overloaded) == 3
    assert all(r["error"]["code"] == -32003 and r["error"]["data"]["per_connection_limit"] == 2 for r in overloaded)
    assert sorted(r["id"] for r in replies if "result" in r) == [0, 1]


def test_request_timeout(make_daemon, plugin_env):
    daemon = make_daemon(
        env={**plugin_env({"slow": {"health_delay": 5}}), "ENGRAM_SERVER__REQUEST_TIMEOUT": "0.3",
             "ENGRAM_PLUGINS__HEALTH_TIMEOUT": "10"}
    )
    with daemon.raw() as conn:
        reply = conn.request({"jsonrpc": "2.0", "id": 1, "method": "plugins.list"})
    assert reply["error"]["code"] == -32004 and reply["error"]["data"]["limit_s"] == 0.3


def test_owner_only_methods_refuse_other_uids(make_daemon):
    import os

    if os.geteuid() != 0:
        pytest.skip("switching uid needs root")
    import multiprocessing

    daemon = make_daemon()

    def as_nobody(queue):
        os.setgid(65534)
        os.setuid(65534)
        with daemon.raw() as conn:
            queue.put(conn.request({"jsonrpc": "2.0", "id": 1, "method": "system.reload"}))
            queue.put(conn.request({"jsonrpc": "2.0", "id": 2, "method": "system.ping"}))

    # The socket is 0600 and owned by root: open it to nobody, on a daemon of this test's own.
    os.chmod(daemon.socket, 0o666)
    os.chmod(daemon.socket.parent, 0o755)
    os.chmod(daemon.socket.parent.parent, 0o755)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=as_nobody, args=(queue,))
    proc.start()
    denied, allowed = queue.get(timeout=10), queue.get(timeout=10)
    proc.join(10)
    assert denied["error"]["code"] == -32001 and denied["error"]["data"]["uid"] == 65534
    # The default policy grants other uids nothing at all, not even a ping.
    assert allowed["error"]["code"] == -32001 and allowed["error"]["data"]["rule"] == "default"


def test_hello_names_the_client_for_later_requests(daemon):
    import os

    with daemon.client() as client:
        events = client.subscribe(["request.received"])
        hello = client.call("system.hello", {"client": "test-agent"})
        assert hello["client"] == "test-agent" and hello["uid"] == os.geteuid()
        client.call("system.ping")
        seen = []
        while not any(e["data"]["method"] == "system.ping" for e in seen):
            seen.append(events.receive(timeout=10))
        ping = next(e for e in seen if e["data"]["method"] == "system.ping")
        assert ping["data"]["principal"]["client"] == "test-agent"
        with pytest.raises(InvalidParams):
            client.call("system.hello", {"client": "no spaces allowed"})
