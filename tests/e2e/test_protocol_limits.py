"""Server limits under a burst: a maximal batch at zero load, connections beyond the limit,
unparsed frame bytes across connections, and a large frame that must not hold everyone else.

One daemon serves the whole module (starting one costs more than the tests themselves); its
connection limit is low so that a burst beyond it is cheap to make.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import DaemonProcess, RawConnection, running_daemon

pytestmark = pytest.mark.e2e

MAX_CONNECTIONS = 6
MAX_BUFFERED = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    env = {"ENGRAM_SERVER__MAX_CONNECTIONS": str(MAX_CONNECTIONS), "ENGRAM_SERVER__MAX_BUFFERED_BYTES": str(MAX_BUFFERED)}
    with running_daemon(env) as process:
        yield process


def ping(request_id: int) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "system.ping"}).encode() + b"\n"


def alone(daemon: DaemonProcess) -> RawConnection:
    """A connection that the daemon counts as its only one: every earlier test's connection has
    been torn down. It stays open and counts against the limit, which keeps the count exact (a
    connection closed just to ask would still be counted for a moment after)."""
    status = {"jsonrpc": "2.0", "id": "status", "method": "system.status"}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conn = daemon.raw()
        reply = conn.request(status)  # refused (-32003) while the old ones are still counted
        if reply.get("result", {}).get("connections") == 1:
            return conn
        conn.close()
        time.sleep(0.05)
    raise AssertionError("earlier connections still open")


def read_to_eof(conn: RawConnection) -> list[bytes]:
    """Every line the daemon writes before it closes; a reset instead of EOF fails the test."""
    lines = []
    while True:
        chunk = conn.sock.recv(65536)
        if not chunk:
            break
        conn._buffer += chunk
    while b"\n" in conn._buffer:
        line, _, conn._buffer = conn._buffer.partition(b"\n")
        lines.append(line)
    return lines


def test_a_maximal_batch_is_answered_whole_at_zero_load(daemon: DaemonProcess) -> None:
    size = 1000  # the documented maximum, more than server.max_inflight_per_connection (64)
    batch = [{"jsonrpc": "2.0", "id": i, "method": "system.ping", "params": {"echo": i}} for i in range(size)]
    with daemon.raw() as conn:
        replies = conn.request(batch)
        # The connection is still usable afterwards: the batch gave its slots back.
        assert conn.request({"jsonrpc": "2.0", "id": "after", "method": "system.ping"})["result"]["pong"]
    assert len(replies) == size
    errors = [r for r in replies if "error" in r]
    assert errors == []
    assert sorted(r["result"]["echo"] for r in replies) == list(range(size))


def test_a_refused_connection_gets_the_error_line_then_eof(daemon: DaemonProcess) -> None:
    held = [alone(daemon)] + [daemon.raw() for _ in range(MAX_CONNECTIONS - 1)]
    try:
        for i, conn in enumerate(held):  # all of them served, so the limit is reached
            assert conn.request(ping(i))["id"] == i
        with daemon.raw() as extra:
            extra.send(ping(99))  # a request already on its way must not turn the close into a reset
            lines = read_to_eof(extra)
        assert len(lines) == 1
        reply = json.loads(lines[0])
        assert reply["id"] is None and reply["error"]["code"] == -32003
        assert reply["error"]["data"]["reason"] == "too_many_connections"
    finally:
        for conn in held:
            conn.close()


def test_a_burst_beyond_the_limit_refuses_exactly_the_excess(daemon: DaemonProcess) -> None:
    probe = alone(daemon)  # holds one of the slots
    burst = MAX_CONNECTIONS + 10
    conns = []
    try:
        # Connect all before reading any: they reach the daemon's accept queue together.
        for _ in range(burst):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect(str(daemon.socket))
            conns.append(sock)
        for i, sock in enumerate(conns):
            sock.setblocking(True)
            sock.settimeout(10)
            sock.sendall(ping(i))
        refused = served = 0
        for sock in conns:
            reply = json.loads(sock.makefile("rb").readline())
            if "error" in reply:
                assert reply["error"]["code"] == -32003
                assert reply["error"]["data"]["reason"] == "too_many_connections"
                refused += 1
            else:
                served += 1
        free = MAX_CONNECTIONS - 1
        assert (served, refused) == (free, burst - free)
    finally:
        probe.close()
        for sock in conns:
            sock.close()


def padded_ping(size: int) -> tuple[bytes, bytes]:
    """A ping with an unknown parameter of ``size`` bytes: its start, and the end with the newline."""
    return b'{"jsonrpc":"2.0","id":"big","method":"system.ping","params":{"pad":"' + b"a" * size, b'"}}\n'


def test_unparsed_frames_share_one_bound_that_small_requests_never_wait_for(daemon: DaemonProcess) -> None:
    base = alone(daemon)
    start, end = padded_ping(3_700_000)  # two fit in the bound, three do not
    holders = [daemon.raw() for _ in range(2)]
    for holder in holders:  # sendall returns once the daemon has read all but a socket buffer
        holder.send(start)
    third = daemon.raw()
    third.send(start + end)
    refused = third.recv()
    assert refused["error"]["code"] == -32003 and refused["id"] is None
    assert refused["error"]["data"] == {"reason": "buffered_limit", "limit": MAX_BUFFERED}
    assert "result" in base.request(json.loads(ping(1)))  # small frames draw on no budget
    metrics = base.request({"jsonrpc": "2.0", "id": "m", "method": "system.metrics"})["result"]["families"]
    [held] = [f["samples"][0]["value"] for f in metrics if f["name"] == "engram_frames_buffered_bytes"]
    assert 6_000_000 < held <= MAX_BUFFERED
    for holder in holders:
        holder.close()
    deadline = time.monotonic() + 10
    while True:  # the closed connections give back what they held
        third.send(start + end)
        answer = third.recv()
        if answer["error"]["code"] != -32003 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert answer["error"]["code"] == -32602 and answer["error"]["data"]["field"] == "pad"
    for conn in (base, third):
        conn.close()


def test_a_large_frame_is_parsed_while_other_clients_are_served(daemon: DaemonProcess) -> None:
    # 300,000 small values: most of a second of parsing and checking, which on the event loop
    # would leave every other client unanswered until it is done.
    pad = list(range(300_000))
    frame = json.dumps({"jsonrpc": "2.0", "id": "big", "method": "system.ping", "params": {"pad": pad}}).encode() + b"\n"
    big, other = daemon.raw(), daemon.raw()
    big.sock.settimeout(60)
    answered_meanwhile = 0
    big_answered = threading.Event()

    def keep_pinging() -> None:
        nonlocal answered_meanwhile
        while not big_answered.is_set():
            assert "result" in other.request(json.loads(ping(2)))
            answered_meanwhile += 0 if big_answered.is_set() else 1

    assert "result" in other.request(json.loads(ping(3)))
    big.send(frame)
    pinger = threading.Thread(target=keep_pinging)
    pinger.start()
    try:
        answer = big.recv()
    finally:
        big_answered.set()
        pinger.join(10)
    assert answer["error"]["code"] == -32602 and answer["error"]["data"]["field"] == "pad"
    assert answered_meanwhile >= 10, answered_meanwhile
    for conn in (big, other):
        conn.close()
