"""``engram bench rpc``: ping round trips through engramd against the minimal echo server.

Both servers run as separate processes and are driven by the same load generator (raw asyncio
streams, one connection per client, one request at a time per connection), so the ratio shows
what engram's protocol handling, limits, telemetry and events cost per request.

On a machine with two or more CPUs the load generator (this process) runs on one and each
server, every thread of it, on another (``--no-pin`` leaves placement to the scheduler). Unpinned,
the scheduler tends to wake a client on its server's CPU, so that the two take turns on one core
while the other idles or runs something else; how often it does moves the figures of one build by
half from one run to the next. Both servers are pinned alike.

Beside the rates, each row shows the server's CPU time per request (user + system, read from
``/proc/<pid>/stat`` of the process on the other end of the socket, found by its peer
credentials): unlike the rates, it hardly moves when other work shares the machine. Where the
system offers neither (not Linux), the column is empty.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from engram_bench.processes import echo_server, temporary_daemon
from engram_bench.stats import Measurement, measure

PING = b'{"jsonrpc":"2.0","id":1,"method":"system.ping"}\n'
_UCRED = struct.Struct("3i")  # pid, uid, gid


def server_pid(path: Path) -> int | None:
    """The pid of the process listening on ``path`` (Linux peer credentials), else None."""
    if not sys.platform.startswith("linux"):
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        pid, _uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time the process has used so far, or None where it cannot be read."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15


def _threads(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


@contextmanager
def cores_apart(pin: bool) -> Iterator[tuple[int, int] | None]:
    """Run the block with this process on one CPU; yields (its CPU, the servers' CPU), or None where
    there are not two CPUs to use or the system cannot pin (then nothing is pinned). The servers
    are pinned with :func:`pin_server`; this process gets its CPUs back at the end."""
    if not pin or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    mine = os.sched_getaffinity(0)
    if len(mine) < 2:
        yield None
        return
    client_cpu, server_cpu = sorted(mine)[:2]
    os.sched_setaffinity(0, {client_cpu})
    try:
        yield client_cpu, server_cpu
    finally:
        os.sched_setaffinity(0, mine)


def pin_server(pid: int | None, cores: tuple[int, int] | None) -> None:
    """Every thread of the server ``pid`` onto the servers' CPU of ``cores`` (threads it starts
    later inherit it)."""
    if pid is None or cores is None:
        return
    for tid in _threads(pid):
        try:
            os.sched_setaffinity(tid, {cores[1]})
        except OSError:  # a thread that ended meanwhile
            pass


async def _client(path: Path, count: int, latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(PING)
            line = await reader.readline()
            latencies.append(time.perf_counter() - started)
            if b'"result"' not in line:
                errors[0] += 1
    finally:
        writer.close()


async def _level(path: Path, target: str, concurrency: int, total: int, pid: int | None) -> tuple[Measurement, float | None]:
    """The measurement of one level, and the server's CPU µs per request during it."""
    per_client = max(total // concurrency, 1)
    latencies: list[float] = []
    errors = [0]
    # Warm up each target once so that first-connection costs do not land in the numbers.
    await _client(path, min(50, per_client), [], [0])
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(_client(path, per_client, latencies, errors) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    cpu_after = cpu_seconds(pid)
    cpu_us = None
    if cpu_before is not None and cpu_after is not None and latencies:
        cpu_us = (cpu_after - cpu_before) / len(latencies) * 1e6
    return measure(target, concurrency, latencies, seconds, errors[0]), cpu_us


@dataclass
class RpcReport:
    levels: list[int]
    rows: list[Measurement] = field(default_factory=list)
    # (target, concurrency) -> the server's CPU µs per request; None where it could not be read.
    # Counted in clock ticks (10 ms), so it needs a few thousand requests to mean much.
    cpu_us: dict[tuple[str, int], float | None] = field(default_factory=dict)
    breakdown: LayerBreakdown | None = None
    cores: tuple[int, int] | None = None  # (load generator's CPU, servers' CPU) when pinned

    def pairs(self) -> list[tuple[Measurement, Measurement]]:
        by_key = {(m.target, m.concurrency): m for m in self.rows}
        return [(by_key[("engramd", c)], by_key[("baseline", c)]) for c in self.levels]

    def as_dict(self) -> dict:
        return {
            "benchmark": "rpc",
            "rows": [
                {**m.as_dict(), "cpu_us_per_request": _rounded(self.cpu_us.get((m.target, m.concurrency)))}
                for m in self.rows
            ],
            "ratios": [
                {
                    "concurrency": e.concurrency,
                    "throughput_ratio": round(e.throughput / b.throughput, 3) if b.throughput else None,
                    "p99_ratio": round(e.p99_ms / b.p99_ms, 3) if b.p99_ms else None,
                }
                for e, b in self.pairs()
            ],
            "layers": self.breakdown.as_dict() if self.breakdown else None,
            "pinned": {"load_generator_cpu": self.cores[0], "server_cpu": self.cores[1]} if self.cores else None,
        }

    def table(self) -> str:
        lines = [
            f"{'clients':>7}  {'target':<9} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/req':>10} {'errors':>6}"
        ]
        for engram, baseline in self.pairs():
            for m in (engram, baseline):
                cpu = self.cpu_us.get((m.target, m.concurrency))
                shown = f"{cpu:>10.0f}" if cpu is not None else f"{'-':>10}"
                lines.append(
                    f"{m.concurrency:>7}  {m.target:<9} {m.throughput:>10.0f} {m.p50_ms:>8.3f} {m.p99_ms:>8.3f} {shown} {m.errors:>6}"
                )
            ratio = engram.throughput / baseline.throughput if baseline.throughput else float("nan")
            lines.append(f"{'':>7}  {'ratio':<9} {ratio:>9.2f}x {'':>8} {engram.p99_ms / baseline.p99_ms:>7.2f}x")
        lines.append("ratio = engramd / baseline (throughput: higher is better; p99: lower is better)")
        lines.append("CPU µs/req = the server process's user + system time per request during the level")
        if self.cores is not None:
            lines.append(f"pinned: load generator on CPU {self.cores[0]}, each server on CPU {self.cores[1]} (--no-pin: not pinned)")
        else:
            lines.append("not pinned: the scheduler placed the servers and the load generator")
        if self.breakdown is not None:
            lines += ["", self.breakdown.table()]
        return "\n".join(lines)


@dataclass
class LayerBreakdown:
    """Where one client's pings spend the daemon's time, from a daemon started with
    ``server.layer_timing`` (which adds its own clock readings to every layer)."""

    requests: int
    cpu_us: float | None  # the timed daemon's CPU µs per request, all included
    layers_us: dict[str, float]  # each layer's own µs per request, outermost first

    @property
    def outside_us(self) -> float | None:
        """What the chain does not account for: reading, parsing, admitting, encoding, sending,
        the event loop, and the timing itself."""
        return self.cpu_us - sum(self.layers_us.values()) if self.cpu_us is not None else None

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "cpu_us_per_request": _rounded(self.cpu_us),
            "layers_us_per_request": {name: round(us, 2) for name, us in self.layers_us.items()},
            "outside_chain_us_per_request": _rounded(self.outside_us),
        }

    def table(self) -> str:
        lines = [f"Per layer, 1 client, {self.requests} pings, daemon started with server.layer_timing:", f"{'layer':<22} {'µs/req':>8}"]
        lines += [f"{name:<22} {us:>8.1f}" for name, us in self.layers_us.items()]
        if self.outside_us is not None:
            lines.append(f"{'(outside the chain)':<22} {self.outside_us:>8.1f}")
            lines.append(f"{'total CPU':<22} {self.cpu_us:>8.1f}")
        lines.append("outside the chain = framing, parsing, admission, encoding, socket I/O and the event loop")
        return "\n".join(lines)


def _layer_seconds(path: Path) -> dict[str, float]:
    """engram_request_layer_seconds_total of the daemon at ``path``, by layer, in chain order."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"system.metrics"}\n')
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    families = json.loads(data)["result"]["families"]
    return {
        sample["labels"]["layer"]: sample["value"]
        for family in families
        if family["name"] == "engram_request_layer_seconds"
        for sample in family["samples"]
        if sample["name"] == "engram_request_layer_seconds_total"
    }


async def _breakdown(path: Path, requests: int, pid: int | None) -> LayerBreakdown:
    await _client(path, min(50, requests), [], [0])
    before = _layer_seconds(path)
    cpu_before = cpu_seconds(pid)
    await _client(path, requests, [], [0])
    cpu_after = cpu_seconds(pid)
    after = _layer_seconds(path)
    cpu_us = (cpu_after - cpu_before) / requests * 1e6 if cpu_before is not None and cpu_after is not None else None
    # The metrics request itself is timed too; its share over thousands of pings is negligible.
    # The innermost layer finishes first, so the daemon met the names innermost first.
    layers = {name: (after[name] - before.get(name, 0.0)) / requests * 1e6 for name in reversed(after)}
    return LayerBreakdown(requests, cpu_us, layers)


def run_rpc_bench(
    requests: int, levels: list[int], socket_path: Path | None = None, progress: bool = True, pin: bool = True
) -> RpcReport:
    from contextlib import ExitStack

    from rich.progress import Progress

    report = RpcReport(levels)
    with ExitStack() as stack:
        engram_sock = socket_path or stack.enter_context(temporary_daemon())
        baseline_sock = stack.enter_context(echo_server())
        # A running daemon (--socket) is someone else's: it is measured where it runs.
        report.cores = cores = stack.enter_context(cores_apart(pin and socket_path is None))
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("bench rpc", total=len(levels) * 2)
            targets = [("engramd", engram_sock), ("baseline", baseline_sock)]
            pids = {target: server_pid(path) for target, path in targets}
            for pid in pids.values():
                pin_server(pid, cores)
            for concurrency in levels:
                for target, path in targets:
                    bar.update(task, description=f"{target} x{concurrency}")
                    row, cpu_us = asyncio.run(_level(path, target, concurrency, requests, pids[target]))
                    report.rows.append(row)
                    report.cpu_us[(target, concurrency)] = cpu_us
                    bar.advance(task)
            if socket_path is None:  # a daemon of our own: a second one, timed, for the breakdown
                bar.update(task, description="engramd per layer")
                with temporary_daemon({"ENGRAM_SERVER__LAYER_TIMING": "true"}) as timed_sock:
                    timed_pid = server_pid(timed_sock)
                    pin_server(timed_pid, cores)
                    report.breakdown = asyncio.run(_breakdown(timed_sock, requests, timed_pid))
    return report


def _rounded(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None
