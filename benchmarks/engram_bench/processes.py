"""Start and stop the processes a benchmark measures: a fresh engramd, a baseline server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engram.errors import DaemonUnreachable


def wait_for_socket(path: Path, proc: subprocess.Popen | None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DaemonUnreachable(f"process exited with {proc.returncode} before listening on {path}", str(path))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                time.sleep(0.05)
    raise DaemonUnreachable(f"nothing listened on {path} within {timeout:g} s", str(path))


@contextmanager
def serving_process(args: list[str], socket_path: Path, env: dict[str, str] | None = None) -> Iterator[Path]:
    """Run ``args`` (with ``env`` over this environment) until it listens on ``socket_path``;
    yields that path, and stops the process (SIGTERM, then SIGKILL after 30 s) on the way out."""
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    try:
        wait_for_socket(socket_path, proc)
        yield socket_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def settle_fast_variant(socket_path: Path, timeout: float = 600.0) -> str:
    """Wait until the daemon is done making its default embedder's int8 variant (made in the
    background after start, docs/inference.md "The fast route"), so that a benchmark does not
    measure the full model for some requests and the variant for the rest, nor the making itself.
    Returns the model that now answers embedding requests naming none."""
    from engram.client import Client

    deadline = time.monotonic() + timeout
    with Client(socket_path, timeout=60) as client:
        while True:
            listed = client.call("models.list")
            if listed["fast_variant"]["state"] not in ("pending", "making"):
                return str(listed["default_route"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"the daemon was still making its int8 variant after {timeout:g} s")
            time.sleep(0.2)


@contextmanager
def temporary_daemon(extra_env: dict[str, str] | None = None, fast_variant: bool = False) -> Iterator[Path]:
    """A fresh engramd on a temporary state folder; yields its socket.

    A fresh daemon makes its default embedder's int8 variant in the background (seconds of CPU
    in a child process), which would land in the figures of the benchmarks that do not embed:
    only those given ``fast_variant`` let it, unless the environment says otherwise
    (``ENGRAM_INFERENCE__MAKE_FAST_VARIANT``)."""
    with tempfile.TemporaryDirectory(prefix="engram-bench-") as tmp:
        sock = Path(tmp) / "engram.sock"
        make = os.environ.get("ENGRAM_INFERENCE__MAKE_FAST_VARIANT", "true" if fast_variant else "false")
        env = {"ENGRAM_LOG__LEVEL": "warning", "ENGRAM_INFERENCE__MAKE_FAST_VARIANT": make, **(extra_env or {})}
        args = [sys.executable, "-m", "engram.cli", "serve", "--state-dir", tmp, "--socket", str(sock)]
        with serving_process(args, sock, env) as path:
            yield path


@contextmanager
def echo_server() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="engram-echo-") as tmp:
        sock = Path(tmp) / "echo.sock"
        with serving_process([sys.executable, "-m", "engram_bench.echo_server", str(sock)], sock) as path:
            yield path
