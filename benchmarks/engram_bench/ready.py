"""``engram bench startup``: how long engramd takes from spawn until it answers ``system.ping``,
the CPU it spent getting there and its resident memory at that moment, against a bare Python.

Each run starts the installed ``engramd`` on a new, empty state folder, as a first start does,
with no model: ``inference.auto_import`` is off, so the figure is the daemon's own start (its
imports, its parts' setup, binding the socket), not copying the built-in embedder's weights in.
The client side is a raw socket that connects and sends one ``system.ping`` every few
milliseconds, so that the measurement imports nothing and costs the daemon nothing but the
pings it answers. CPU and RSS are read from ``/proc`` the moment the first answer arrives, for
the daemon and any process it started; then the daemon gets SIGTERM.

The baseline, ``python -c pass`` (the same interpreter, site-packages and ``.pth`` files
included), takes turns with the daemon so that a change in the machine's load falls on both.
The load average is reported before and after, since on a busy machine every figure grows.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engram.errors import DaemonUnreachable

# What engramd's ready time should stay under at the median (p50), in milliseconds (issue #22).
READY_LIMIT_MS = 1500.0
PING = b'{"jsonrpc":"2.0","id":1,"method":"system.ping"}\n'
POLL_INTERVAL_S = 0.005
READY_TIMEOUT_S = 60.0
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def engramd_command() -> list[str]:
    """This environment's installed ``engramd`` script, as systemd runs it; ``python -m engram.cli
    serve`` where there is none (running from a source tree)."""
    script = Path(sys.executable).parent / "engramd"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "engram.cli", "serve"]


@dataclass(frozen=True)
class Sample:
    wall_s: float
    cpu_s: float
    rss_bytes: int


@dataclass(frozen=True)
class Row:
    target: str
    command: str
    runs: int
    p50_ms: float
    p95_ms: float
    cpu_p50_ms: float
    rss_p50_mb: float


@dataclass
class StartupReport:
    rows: list[Row] = field(default_factory=list)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def row(self, target: str) -> Row:
        return next(r for r in self.rows if r.target == target)

    def verdict(self) -> dict:
        p50 = self.row("engramd").p50_ms
        return {"target": "engramd", "p50_ms": round(p50, 1), "limit_ms": READY_LIMIT_MS, "met": p50 <= READY_LIMIT_MS}

    def ready_over_baseline_ms(self) -> float:
        """What engramd adds to an interpreter's start, at the median."""
        return round(self.row("engramd").p50_ms - self.row("baseline").p50_ms, 1)

    def as_dict(self) -> dict:
        return {
            "benchmark": "startup",
            "rows": [asdict(r) for r in self.rows],
            "ready_over_baseline_ms": self.ready_over_baseline_ms(),
            "load_before": list(self.load_before),
            "load_after": list(self.load_after),
            "verdict": self.verdict(),
        }

    def table(self) -> str:
        lines = [f"{'command':<22} {'runs':>5} {'p50 ms':>8} {'p95 ms':>8} {'CPU p50 ms':>10} {'RSS p50 MB':>10}"]
        for r in self.rows:
            lines.append(
                f"{r.command:<22} {r.runs:>5} {r.p50_ms:>8.1f} {r.p95_ms:>8.1f} {r.cpu_p50_ms:>10.1f} {r.rss_p50_mb:>10.1f}"
            )
        v = self.verdict()
        lines += [
            "engramd: spawn until system.ping answers, empty state folder, no model; CPU and RSS at that moment",
            f"engramd adds {self.ready_over_baseline_ms():.0f} ms to python -c pass (p50)",
            "load average before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}".format(*self.load_before, *self.load_after),
            f"engramd ready: p50 {v['p50_ms']:.0f} ms, target <= {v['limit_ms']:.0f} ms: {'PASS' if v['met'] else 'FAIL'}",
        ]
        return "\n".join(lines)


def _process_tree(pid: int) -> list[int]:
    """``pid`` and every process under it that is still running."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                todo += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
        except FileNotFoundError:  # it exited between the listing and the read
            continue
    return tree


def _cpu_and_rss(pids: list[int]) -> tuple[float, int]:
    """CPU seconds (user + system, all threads) and resident bytes, summed over ``pids``."""
    cpu, rss = 0.0, 0
    for pid in pids:
        try:
            # Fields after the command name, which is in parentheses and may hold spaces.
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            statm = Path(f"/proc/{pid}/statm").read_text().split()
        except FileNotFoundError:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime
        rss += int(statm[1]) * PAGE_BYTES
    return cpu, rss


def _answers_ping(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(READY_TIMEOUT_S)
        try:
            probe.connect(str(path))
        except OSError:  # not bound yet, or bound and not yet listening
            return False
        probe.sendall(PING)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = probe.recv(4096)
            if not chunk:
                return False
            reply += chunk
        return b'"result"' in reply


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def time_engramd_ready(command: list[str]) -> Sample:
    """One start of engramd on a new state folder, measured until its first ``system.ping`` answer."""
    with tempfile.TemporaryDirectory(prefix="engram-startup-") as tmp:
        sock = Path(tmp) / "engram.sock"
        env = {**os.environ, "ENGRAM_LOG__LEVEL": "warning", "ENGRAM_INFERENCE__AUTO_IMPORT": "false"}
        started = time.perf_counter()
        proc = subprocess.Popen(
            [*command, "--state-dir", tmp, "--socket", str(sock)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            while not _answers_ping(sock):
                if proc.poll() is not None:
                    raise DaemonUnreachable(f"engramd exited with {proc.returncode} before answering a ping", str(sock))
                if time.perf_counter() - started > READY_TIMEOUT_S:
                    raise DaemonUnreachable(f"engramd did not answer a ping within {READY_TIMEOUT_S:g} s", str(sock))
                time.sleep(POLL_INTERVAL_S)
            wall = time.perf_counter() - started
            cpu, rss = _cpu_and_rss(_process_tree(proc.pid))
        finally:
            _stop(proc)
    return Sample(wall, cpu, rss)


def time_bare_python() -> Sample:
    """One ``python -c pass``, start to exit, with its CPU time and peak RSS."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait for it again
    if proc.returncode != 0:
        raise RuntimeError(f"python -c pass exited with {proc.returncode}")
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)  # ru_maxrss is KiB on Linux


def _row(target: str, command: str, samples: list[Sample]) -> Row:
    p50, p95 = np.percentile([s.wall_s * 1000 for s in samples], [50, 95])
    return Row(
        target, command, len(samples), float(p50), float(p95),
        float(np.median([s.cpu_s * 1000 for s in samples])),
        float(np.median([s.rss_bytes / 2**20 for s in samples])),
    )


def run_startup_bench(runs: int, progress: bool = True) -> StartupReport:
    from rich.console import Console
    from rich.progress import Progress

    command = engramd_command()
    # Once each, uncounted: the interpreter's and the daemon's files into the page cache.
    time_bare_python()
    time_engramd_ready(command)
    load_before = os.getloadavg()
    baseline: list[Sample] = []
    engramd: list[Sample] = []
    with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task("bench startup", total=runs * 2)
        for _ in range(runs):
            baseline.append(time_bare_python())
            bar.advance(task)
            engramd.append(time_engramd_ready(command))
            bar.advance(task)
    return StartupReport(
        [_row("baseline", "python -c pass", baseline), _row("engramd", "engramd (ready)", engramd)],
        load_before, os.getloadavg(),
    )
