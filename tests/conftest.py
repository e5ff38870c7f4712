"""Shared test support: a real ``engramd`` process on a temporary state folder.

End-to-end tests talk to the daemon the way users do: over its Unix socket, with the real client
or with raw bytes when the point is to send what no client would.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from engram.client import Client

# make test runs two workers per core, each starting daemons: thread pools sized for the whole
# machine, and pool threads that spin while they wait for work, would take turns burning the
# cores the other workers need. Results do not depend on either.
for _pool in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_pool, "1")
# Knowledge extraction loads spaCy (about a second of CPU) in every daemon that is given text, the
# benchmarks' daemons included, and adds graph facts other tests do not expect: only the tests of
# extraction turn it on (tests/e2e/test_memory_extraction.py).
os.environ.setdefault("ENGRAM_MEMORY__EXTRACTION__ENABLED", "false")
# Every daemon on a fresh state folder would make the default embedder's int8 variant in the
# background (a child process, seconds of CPU): only the tests of that turn it on
# (tests/e2e/test_fast_variant.py).
os.environ.setdefault("ENGRAM_INFERENCE__MAKE_FAST_VARIANT", "false")

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SITE = REPO / "tests" / "fixtures" / "plugin_site"
ENGRAMD = [sys.executable, "-m", "engram.cli", "serve"]
_LOG_SERIAL = itertools.count(1)


def short_tempdir(prefix: str = "eg-") -> Path:
    """A folder whose socket paths stay under the 104-byte sun_path limit."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class DaemonProcess:
    """One engramd subprocess. ``start()`` returns once the socket accepts connections."""

    def __init__(self, state_dir: Path, env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.state_dir = state_dir
        self.socket = state_dir / "engram.sock"
        self.log_path = state_dir.parent / f"{state_dir.name}-{next(_LOG_SERIAL)}.log"
        self.env = {
            **os.environ,
            "ENGRAM_LOG__FORMAT": "json",
            "ENGRAM_LOG__LEVEL": "debug",
            "PYTHONUNBUFFERED": "1",
            # The plugin distributions of plugins/ may be installed in this environment: they load
            # only in the tests that ask for them (an absent Ollama would make every daemon degraded).
            "ENGRAM_PLUGINS__DISABLED": '["ollama", "openai"]',
            "ENGRAM_INFERENCE__THREADS__SPIN": "false",  # see the thread pools above
            **(env or {}),
        }
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [*ENGRAMD, "--state-dir", str(self.state_dir), "--socket", str(self.socket), *self.args]

    def spawn(self, command: list[str] | None = None, **popen: Any) -> subprocess.Popen[bytes]:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            command or self.command(), env=self.env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **popen
        )
        return self.proc

    def start(self, timeout: float = 30.0, **popen: Any) -> DaemonProcess:
        self.spawn(**popen)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"engramd exited with {self.proc.returncode}:\n{self.logs()}")
            if any(rec.get("event") == "ready" for rec in self.records()):
                return
            time.sleep(0.02)
        raise AssertionError(f"engramd not ready after {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.socket, timeout=timeout)

    def call(self, method: str, params: Any = None) -> Any:
        with self.client() as client:
            return client.call(method, params)

    def raw(self) -> RawConnection:
        return RawConnection(self.socket)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"engramd did not stop on SIGTERM within {timeout} s:\n{self.logs()}")


class RawConnection:
    """Bytes on the socket, for what no well-behaved client would send."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self._buffer = b""

    def send(self, data: bytes | dict | list) -> None:
        if not isinstance(data, bytes):
            data = json.dumps(data).encode() + b"\n"
        self.sock.sendall(data)

    def recv_line(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; buffered {self._buffer[:200]!r}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def recv(self) -> Any:
        return json.loads(self.recv_line())

    def request(self, message: dict | list | bytes) -> Any:
        self.send(message)
        return self.recv()

    def closed_by_peer(self, timeout: float = 10.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@pytest.fixture
def state_dir() -> Iterator[Path]:
    base = short_tempdir()
    try:
        yield base / "state"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_daemon(state_dir: Path) -> Iterator[Any]:
    """Factory: ``make_daemon(env={...}, args=[...], start=True)``; every daemon is stopped after."""
    started: list[DaemonProcess] = []

    def make(env: dict[str, str] | None = None, args: list[str] | None = None, start: bool = True, state: Path | None = None) -> DaemonProcess:
        default = state_dir if not started else state_dir.parent / f"state{len(started)}"
        daemon = DaemonProcess(state or default, env, args)
        started.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()


@pytest.fixture
def daemon(make_daemon: Any) -> DaemonProcess:
    return make_daemon()


@contextmanager
def running_daemon(env: dict[str, str] | None = None) -> Iterator[DaemonProcess]:
    """One engramd on a temporary state folder, stopped and removed after.

    For module-scoped fixtures: a module whose tests only read, or write where no other test of
    the module looks, shares one daemon instead of starting one per test (a start costs more
    than most tests).
    """
    base = short_tempdir()
    process = DaemonProcess(base / "state", env)
    try:
        yield process.start()
    finally:
        process.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def plugin_env() -> Any:
    """Environment that installs the test providers (good, slow, broken) into a daemon."""

    def env(providers: dict[str, dict[str, Any]] | None = None, disabled: list[str] | None = None) -> dict[str, str]:
        out = {"PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGIN_SITE), os.environ.get("PYTHONPATH")]))}
        if providers is not None:
            out["ENGRAM_PLUGINS__PROVIDERS"] = json.dumps(providers)
        if disabled is not None:
            out["ENGRAM_PLUGINS__DISABLED"] = json.dumps(disabled)
        return out

    return env
