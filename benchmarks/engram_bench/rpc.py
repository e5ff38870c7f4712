"""``engram bench rpc``: ping round trips through engramd against the minimal echo server.

Both servers run as separate processes and are driven by the same load generator (raw asyncio
streams, one connection per client, one request at a time per connection), so the ratio shows
what engram's protocol handling, limits, telemetry and events cost per request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from engram_bench.processes import echo_server, temporary_daemon
from engram_bench.stats import Measurement, measure

PING = b'{"jsonrpc":"2.0","id":1,"method":"system.ping"}\n'


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


async def _level(path: Path, target: str, concurrency: int, total: int) -> Measurement:
    per_client = max(total // concurrency, 1)
    latencies: list[float] = []
    errors = [0]
    # Warm up each target once so that first-connection costs do not land in the numbers.
    await _client(path, min(50, per_client), [], [0])
    started = time.perf_counter()
    await asyncio.gather(*(_client(path, per_client, latencies, errors) for _ in range(concurrency)))
    return measure(target, concurrency, latencies, time.perf_counter() - started, errors[0])


@dataclass
class RpcReport:
    levels: list[int]
    rows: list[Measurement] = field(default_factory=list)

    def pairs(self) -> list[tuple[Measurement, Measurement]]:
        by_key = {(m.target, m.concurrency): m for m in self.rows}
        return [(by_key[("engramd", c)], by_key[("baseline", c)]) for c in self.levels]

    def as_dict(self) -> dict:
        return {
            "benchmark": "rpc",
            "rows": [m.as_dict() for m in self.rows],
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
        lines = [f"{'clients':>7}  {'target':<9} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"]
        for engram, baseline in self.pairs():
            for m in (engram, baseline):
                lines.append(
                    f"{m.concurrency:>7}  {m.target:<9} {m.throughput:>10.0f} {m.p50_ms:>8.3f} {m.p99_ms:>8.3f} {m.errors:>6}"
                )
            ratio = engram.throughput / baseline.throughput if baseline.throughput else float("nan")
            lines.append(f"{'':>7}  {'ratio':<9} {ratio:>9.2f}x {'':>8} {engram.p99_ms / baseline.p99_ms:>7.2f}x")
        lines.append("ratio = engramd / baseline (throughput: higher is better; p99: lower is better)")
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
            for concurrency in levels:
                for target, path in (("engramd", engram_sock), ("baseline", baseline_sock)):
                    bar.update(task, description=f"{target} x{concurrency}")
                    report.rows.append(asyncio.run(_level(path, target, concurrency, requests)))
                    bar.advance(task)
    return report
