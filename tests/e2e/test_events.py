"""events.subscribe over the socket: patterns, priorities, and subscribers that cannot keep up."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from engram.errors import NotFound

from tests.conftest import DaemonProcess, running_daemon

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    """One daemon for the tests that subscribe on their own connections and look only at what
    their own requests caused; the tests that stop the daemon or need other settings make theirs."""
    with running_daemon() as process:
        yield process


def test_request_events_follow_every_request(daemon):
    with daemon.client() as watcher, daemon.client() as worker:
        events = watcher.subscribe(["request.*"])
        assert events.topics == ["request.completed", "request.received"]
        worker.call("system.ping")
        with pytest.raises(Exception):
            worker.call("no.such")
        seen = []
        while len([e for e in seen if e["topic"] == "request.completed"]) < 3:
            seen.append(events.receive(timeout=10))
        completed = [e["data"] for e in seen if e["topic"] == "request.completed"]
        by_method = {c["method"]: c for c in completed}
        assert by_method["system.ping"]["outcome"] == "ok" and by_method["system.ping"]["duration_ms"] >= 0
        assert by_method["no.such"]["outcome"] == "error" and by_method["no.such"]["error_code"] == -32601
        received = [e["data"] for e in seen if e["topic"] == "request.received"]
        assert all(r["principal"]["pid"] > 0 for r in received)


def test_unsubscribe_and_unknown_subscription(daemon):
    with daemon.client() as client:
        events = client.subscribe(["connection.*"])
        result = client.call("events.unsubscribe", {"subscription": events.subscription})
        assert result["subscription"] == events.subscription
        with pytest.raises(NotFound):
            client.call("events.unsubscribe", {"subscription": events.subscription})
        listed = {s["id"] for s in client.call("system.status")["subscriptions"]}
        assert events.subscription not in listed


def test_subscriptions_end_with_their_connection(daemon):
    with daemon.client() as client:
        ours = {client.subscribe(["*"]).subscription, client.subscribe(["request.*"]).subscription}
        assert ours <= {s["id"] for s in client.call("system.status")["subscriptions"]}

    def listed() -> set[str]:
        return {s["id"] for s in daemon.call("system.status")["subscriptions"]}

    deadline = time.monotonic() + 10
    while ours & listed() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ours & listed()


def test_subscriber_learns_the_daemon_is_stopping(make_daemon):
    daemon = make_daemon()  # its own: this test stops it
    with daemon.client() as client:
        events = client.subscribe(["daemon.*"])
        daemon.stop()
        event = events.receive(timeout=10)
        assert event["topic"] == "daemon.stopping" and event["data"]["reason"] == "SIGTERM"


def test_slow_subscriber_lags_and_never_blocks_the_daemon(make_daemon):
    daemon = make_daemon(env={"ENGRAM_SERVER__WRITE_TIMEOUT": "2"})
    slow = daemon.raw()
    reply = slow.request(
        {"jsonrpc": "2.0", "id": 1, "method": "events.subscribe", "params": {"topics": ["request.*"], "queue": 4}}
    )
    sub_id = reply["result"]["subscription"]
    # This client now stops reading. Each request below produces two events for it; the socket
    # buffer fills, its pump blocks on write, its queue overflows, and it is finally dropped.
    started = time.monotonic()
    with daemon.client() as client:
        for _ in range(3000):
            client.call("system.ping")
        elapsed = time.monotonic() - started
        status = client.call("system.status")
    lagging = [s for s in status["subscriptions"] if s["id"] == sub_id]
    assert lagging == [] or lagging[0]["dropped"] > 0
    # The daemon kept answering everyone else meanwhile, far faster than the write timeout.
    assert elapsed < 60
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if any(r.get("event") == "slow reader dropped" for r in daemon.records()):
            break
        time.sleep(0.1)
    records = daemon.records()
    assert any(r.get("event") == "subscriber lagging" and r.get("subscription") == sub_id for r in records)
    assert any(r.get("event") == "slow reader dropped" for r in records)
    slow.close()
    metrics = daemon.call("system.metrics")["text"]
    assert "engram_bus_events_published_total" in metrics


def test_disconnect_policy_closes_the_subscription(make_daemon):
    # This client reads nothing until the pings are done; on a busy machine that takes longer than
    # the default write timeout, which would drop it as a slow reader before its closing notice.
    daemon = make_daemon(env={"ENGRAM_SERVER__WRITE_TIMEOUT": "300"})
    with daemon.raw() as slow:
        reply = slow.request(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "events.subscribe",
                "params": {"topics": ["request.*"], "queue": 2, "overflow": "disconnect"},
            }
        )
        sub_id = reply["result"]["subscription"]
        with daemon.client() as client:
            for _ in range(3000):
                client.call("system.ping")
        # Read what was pushed: some events, then the closing notice.
        closed = None
        deadline = time.monotonic() + 15
        while closed is None and time.monotonic() < deadline:
            message = slow.recv()
            if message.get("method") == "events.closed":
                closed = message["params"]
        assert closed == {"subscription": sub_id, "reason": "overflow", "dropped": closed["dropped"]}
        assert closed["dropped"] >= 1


def test_cli_follows_events(daemon):
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "engram.cli", "events", "--follow", "-n", "2", "--json", "request.completed",
         "--socket", str(daemon.socket)],
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        daemon.call("system.ping")
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2 and all(line["topic"] == "request.completed" for line in lines)
