"""``engram bench rpc``: ping round trips through engramd against the minimal echo server.

Both servers run as separate processes and are driven by the same load generator (raw asyncio
streams, one connection per client, one request at a time per connection), so the ratio shows
what engram's protocol handling, limits, telemetry and events cost per request.

Beside the rates, each row shows the server's CPU time per request (user + system, read from
``/proc/<pid>/stat`` of the process on the other end of the socket, found by its peer
credentials): unlike the rates, it hardly moves when other work shares the machine. Where the
system offers neither (not Linux), the column is empty.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import time
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
        return "\n".join(lines)


def run_rpc_bench(requests: int, levels: list[int], socket_path: Path | None = None, progress: bool = True) -> RpcReport:
    from contextlib import ExitStack

    from rich.progress import Progress

    report = RpcReport(levels)
    with ExitStack() as stack:
        engram_sock = socket_path or stack.enter_context(temporary_daemon())
        baseline_sock = stack.enter_context(echo_server())
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("bench rpc", total=len(levels) * 2)
            targets = [("engramd", engram_sock), ("baseline", baseline_sock)]
            pids = {target: server_pid(path) for target, path in targets}
            for concurrency in levels:
                for target, path in targets:
                    bar.update(task, description=f"{target} x{concurrency}")
                    row, cpu_us = asyncio.run(_level(path, target, concurrency, requests, pids[target]))
                    report.rows.append(row)
                    report.cpu_us[(target, concurrency)] = cpu_us
                    bar.advance(task)
    return report


def _rounded(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None
