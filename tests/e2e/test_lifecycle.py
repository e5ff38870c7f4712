"""The daemon's life: start, readiness, signals, socket ownership, systemd protocols, schema."""

from __future__ import annotations

import grp
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from engram.errors import DaemonUnreachable

from tests.conftest import DaemonProcess, running_daemon

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def running() -> Iterator[DaemonProcess]:
    """One daemon for the tests that look at a running daemon's files or that a second daemon
    is refused beside it (it keeps serving); the tests that signal or stop one make their own."""
    with running_daemon() as process:
        yield process


def test_socket_is_private_from_the_start(running):
    daemon = running
    info = os.stat(daemon.socket)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()
    assert stat.S_IMODE(os.stat(daemon.state_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(daemon.state_dir / "engram.db").st_mode) == 0o600


def test_state_folder_is_private_under_umask_0(make_daemon):
    """Tracing to a file creates the state folder before anything else does; under umask 0 it
    must still be 0700, with every file in it 0600 (the socket too). Installed model files are
    0400 on purpose: read-only, and just as private."""
    daemon = make_daemon(env={"ENGRAM_TRACING__EXPORTER": "file"}, start=False)
    daemon.start(preexec_fn=lambda: os.umask(0))
    daemon.call("system.ping")
    assert daemon.stop() == 0  # shutdown flushes the span file
    assert (daemon.state_dir / "traces.jsonl").exists()
    modes = {}
    for folder, folders, files in os.walk(daemon.state_dir):
        modes[folder] = stat.S_IMODE(os.lstat(folder).st_mode)
        for name in files:
            path = os.path.join(folder, name)
            modes[path] = stat.S_IMODE(os.lstat(path).st_mode)
    wrong = {
        path: oct(mode)
        for path, mode in modes.items()
        if os.path.isdir(path) and mode != 0o700 or not os.path.isdir(path) and mode not in (0o600, 0o400)
    }
    assert not wrong


def test_socket_group_makes_it_0660(make_daemon):
    group = next((g for g in grp.getgrall() if g.gr_gid != os.getegid()), None)
    if group is None:
        pytest.skip("no second group on this machine")
    daemon = make_daemon(env={"ENGRAM_SERVER__SOCKET_GROUP": group.gr_name})
    info = os.stat(daemon.socket)
    assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == group.gr_gid


def test_socket_never_wider_than_0600_while_starting(make_daemon):
    """Watch the path from before the daemon starts until it is ready: never a wider mode."""
    daemon = make_daemon(start=False)
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                seen.add(stat.S_IMODE(os.lstat(daemon.socket).st_mode))
            except FileNotFoundError:
                pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        daemon.start()
    finally:
        stop.set()
        watcher.join()
    seen.add(stat.S_IMODE(os.lstat(daemon.socket).st_mode))  # the watcher may have been starved
    assert seen == {0o600}


def test_sigterm_drains_in_flight_requests(make_daemon, plugin_env):
    daemon = make_daemon(env=plugin_env({"slow": {"health_delay": 1.0}}))
    with daemon.raw() as conn:
        conn.send({"jsonrpc": "2.0", "id": 1, "method": "plugins.list"})
        time.sleep(0.3)  # the request is in flight now
        daemon.signal(signal.SIGTERM)
        reply = conn.recv()
        assert reply["id"] == 1 and reply["result"]["plugins"]
        assert conn.closed_by_peer(timeout=10)
    assert daemon.wait(timeout=15) == 0
    events = [r["event"] for r in daemon.records()]
    assert events.index("stopping") < events.index("stopped")
    assert not daemon.socket.exists()


def test_drain_timeout_cancels_stuck_requests(make_daemon, plugin_env):
    daemon = make_daemon(
        env={
            **plugin_env({"slow": {"health_delay": 30}}),
            "ENGRAM_SERVER__DRAIN_TIMEOUT": "0.5",
            "ENGRAM_PLUGINS__HEALTH_TIMEOUT": "60",
        }
    )
    with daemon.raw() as conn:
        conn.send({"jsonrpc": "2.0", "id": 1, "method": "plugins.list"})
        time.sleep(0.3)
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
    assert any(r.get("event") == "drain timeout: cancelling in-flight requests" for r in daemon.records())


def test_sigint_stops_cleanly(daemon):
    daemon.signal(signal.SIGINT)
    assert daemon.wait(timeout=15) == 0


def test_sighup_reloads_without_dropping_connections(make_daemon, state_dir):
    config = state_dir.parent / "engram.toml"
    config.write_text("[server]\nmax_frame_bytes = 100000\n")
    daemon = make_daemon(args=["--config", str(config)])
    with daemon.client() as client:
        events = client.subscribe(["config.reloaded"])
        config.write_text(
            'event_loop = "asyncio"\n\n[server]\nmax_frame_bytes = 2048\n\n[bus]\nsubscriber_queue = 10\n\n'
            "[storage]\nbusy_timeout = 9\n"
        )
        daemon.signal(signal.SIGHUP)
        event = events.receive(timeout=10)
        assert event["data"]["ok"] is True
        assert event["data"]["changed"] == ["bus.subscriber_queue", "server.max_frame_bytes"]
        assert event["data"]["restart_required"] == ["event_loop", "storage.busy_timeout"]
        # Same connection, new limit in force.
        assert client.call("system.ping")["pong"] is True
    with daemon.raw() as conn:
        reply = conn.request({"jsonrpc": "2.0", "id": 1, "method": "system.ping", "params": {"echo": "x" * 5000}})
        assert reply["error"]["data"]["reason"] == "frame_too_large"


def test_the_event_loop_is_uvloop_unless_asyncio_is_asked_for(make_daemon):
    default, asked = make_daemon(), make_daemon(env={"ENGRAM_EVENT_LOOP": "asyncio"})
    for daemon, loop in ((default, "uvloop"), (asked, "asyncio")):
        with daemon.client() as client:
            assert client.call("system.ping")["pong"] is True
        ready, = [r for r in daemon.records() if r.get("event") == "ready"]
        assert ready["event_loop"] == loop


def test_broken_config_on_reload_keeps_the_old_one(make_daemon, state_dir):
    config = state_dir.parent / "engram.toml"
    config.write_text("[server]\nmax_frame_bytes = 100000\n")
    daemon = make_daemon(args=["--config", str(config)])
    config.write_text("[server]\nmax_frame_bytes = 'lots'\n")
    with daemon.client() as client:
        events = client.subscribe(["config.reloaded"])
        daemon.signal(signal.SIGHUP)
        event = events.receive(timeout=10)
        assert event["data"]["ok"] is False and "server.max_frame_bytes" in event["data"]["error"]
        with pytest.raises(Exception) as info:
            client.call("system.reload")
        assert info.value.code == -32007 and info.value.reason == "invalid_config"
        assert info.value.data["problems"][0]["key"] == "server.max_frame_bytes"
    with daemon.raw() as conn:
        reply = conn.request({"jsonrpc": "2.0", "id": 1, "method": "system.ping", "params": {"echo": "x" * 5000}})
        assert reply["result"]["echo"] == "x" * 5000  # the old limit (100000) still holds


def test_stale_socket_file_is_replaced(make_daemon, state_dir):
    state_dir.mkdir(parents=True, mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(state_dir / "engram.sock"))
    stale.close()  # the file stays; nobody listens: what a killed daemon leaves behind
    daemon = make_daemon()
    assert daemon.call("system.ping")["pong"] is True


def test_second_daemon_on_same_socket_is_refused(make_daemon, running):
    daemon = running
    other_state = daemon.state_dir.parent / "other"
    second = make_daemon(start=False, state=other_state)
    second.args = []
    proc = second.spawn([*second.command()[:-2], "--socket", str(daemon.socket)])
    assert proc.wait(timeout=30) == 2
    assert "another engramd is already listening" in second.logs()
    assert daemon.call("system.ping")["pong"] is True  # the first one keeps its socket


def test_second_daemon_on_same_state_dir_is_refused(make_daemon, running):
    daemon = running
    second = make_daemon(start=False, state=daemon.state_dir)
    proc = second.spawn([*second.command()[:-2], "--socket", str(daemon.state_dir.parent / "b.sock")])
    assert proc.wait(timeout=30) == 2
    assert f"is in use by another engramd (pid {daemon.proc.pid})" in second.logs()


def test_path_that_is_not_a_socket_is_not_clobbered(make_daemon, state_dir):
    state_dir.mkdir(parents=True, mode=0o700)
    (state_dir / "engram.sock").write_text("precious")
    daemon = make_daemon(start=False)
    assert daemon.spawn().wait(timeout=30) == 2
    assert "exists and is not a socket" in daemon.logs()
    assert (state_dir / "engram.sock").read_text() == "precious"


def test_socket_activation_adopts_fd3_and_never_unlinks(make_daemon, state_dir):
    state_dir.mkdir(parents=True, mode=0o700)
    path = state_dir.parent / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    fd = listener.fileno()
    daemon = make_daemon(start=False)
    # Put the socket on fd 3 and set LISTEN_PID to the pid that will exec engramd, as systemd
    # does for a socket unit.
    launcher = (
        "import os, sys\n"
        f"os.dup2({fd}, 3, inheritable=True); os.close({fd})\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='engram.socket')\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n"
    )
    command = [sys.executable, "-c", launcher, *daemon.command()[:-2], "--socket", str(path)]
    daemon.spawn(command, pass_fds=(fd,))
    listener.close()  # only the daemon holds it now
    daemon.wait_ready()
    daemon.socket = path
    status = daemon.call("system.status")
    assert status["socket_activated"] is True
    assert daemon.stop() == 0
    assert path.exists(), "an inherited socket belongs to the service manager and must stay"


def _notify_socket(tmp):
    path = tmp / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    return sock, path


def _messages(sock, until: str) -> list[str]:
    got: list[str] = []
    while not any(until in m for m in got):
        got.append(sock.recv(4096).decode())
    return got


def test_sd_notify_ready_status_stopping(make_daemon, state_dir):
    state_dir.mkdir(parents=True, mode=0o700)
    sock, path = _notify_socket(state_dir.parent)
    daemon = make_daemon(env={"NOTIFY_SOCKET": str(path)})
    ready = _messages(sock, "READY=1")[-1].split("\n")
    assert "READY=1" in ready and f"MAINPID={daemon.proc.pid}" in ready
    assert any(line.startswith("STATUS=serving on ") for line in ready)
    daemon.signal(signal.SIGTERM)
    stopping = _messages(sock, "STOPPING=1")
    assert any("STOPPING=1" in m for m in stopping)
    assert daemon.wait() == 0


def test_sd_notify_watchdog(make_daemon, state_dir):
    state_dir.mkdir(parents=True, mode=0o700)
    sock, path = _notify_socket(state_dir.parent)
    make_daemon(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "100000"})
    pings = 0
    deadline = time.monotonic() + 10
    while pings < 3 and time.monotonic() < deadline:
        if "WATCHDOG=1" in sock.recv(4096).decode():
            pings += 1
    assert pings == 3


def test_newer_schema_refuses_to_start(make_daemon, state_dir):
    state_dir.mkdir(parents=True, mode=0o700)
    db = sqlite3.connect(state_dir / "engram.db")
    db.execute("PRAGMA user_version = 999")
    db.close()
    daemon = make_daemon(start=False)
    assert daemon.spawn().wait(timeout=30) == 2
    assert "schema version 999, newer than this engram knows" in daemon.logs()
    db = sqlite3.connect(state_dir / "engram.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 999  # untouched
    db.close()


def test_migrations_run_once_and_survive_restart(make_daemon, state_dir):
    daemon = make_daemon()
    assert daemon.stop() == 0
    db = sqlite3.connect(state_dir / "engram.db")
    versions = {f"{part} {version}" for part, version in db.execute("SELECT part, version FROM schema_versions")}
    created = db.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()[0]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    again = make_daemon(state=state_dir)
    detail = again.call("system.health")["checks"]["database"]["detail"]
    assert detail.startswith("schema ") and set(detail.removeprefix("schema ").split(", ")) == versions
    db = sqlite3.connect(state_dir / "engram.db")
    assert db.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()[0] == created
    db.close()


def test_invalid_config_exits_2_and_starts_nothing(make_daemon, state_dir):
    daemon = make_daemon(start=False, env={"ENGRAM_SERVER__MAX_CONNECTIONS": "zero"})
    proc = subprocess.run(daemon.command(), env=daemon.env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "server.max_connections" in proc.stderr and "ENGRAM_SERVER__MAX_CONNECTIONS" in proc.stderr
    assert not state_dir.exists()


def test_client_says_which_socket_it_tried(state_dir):
    from engram.client import Client

    with pytest.raises(DaemonUnreachable) as info:
        Client(state_dir / "nope.sock", timeout=2).connect()
    assert str(state_dir / "nope.sock") in str(info.value)
