"""``engram bench frames``: how long one large frame holds every other client.

One client pings in a loop while another sends one large frame of a given shape; the pings'
latencies while the large frame is under way are the figures (p50, p99 and the worst). The
baseline is the minimal echo server of ``bench rpc``, which parses each line on its event loop,
as a server does that takes no care: the ratio shows what engramd's care is worth. The shapes
are what clients send (texts, vectors, one long string) and what an attacker would (a million
numbers, an object of a million keys); engramd answers some of them with an error, which costs
it the same parsing first.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engram_bench.processes import echo_server, temporary_daemon

PING = b'{"jsonrpc":"2.0","id":"p","method":"system.ping"}\n'
PING_GAP_S = 0.002  # between pings: a steady, light client


def _remember(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"method": "memory.remember", "params": {"items": items}}


# Params of about ``size`` bytes, by shape.
SHAPES: dict[str, Callable[[int], dict[str, Any]]] = {
    "texts": lambda size: _remember([{"text": "word " * 40} for _ in range(size // 220)]),
    "vectors": lambda size: _remember([{"text": "t", "vector": [0.1234567] * 384} for _ in range(size // 4000)]),
    "string": lambda size: _remember([{"text": "t", "metadata": {"blob": "a" * size}}]),
    "numbers": lambda size: _remember([{"text": "t", "metadata": {"v": list(range(size // 8))}}]),
    "object": lambda size: _remember([{"text": "t", "metadata": {f"k{i}": i for i in range(size // 12)}}]),
}


@dataclass(frozen=True)
class Stall:
    target: str
    shape: str
    frame_bytes: int
    seconds: float  # until the large frame was answered
    pings: int
    p50_ms: float
    p99_ms: float
    worst_ms: float

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


async def _stall(path: Path, target: str, shape: str, frame: bytes) -> Stall:
    latencies: list[float] = []
    done = asyncio.Event()

    async def pinger() -> None:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
        try:
            # At least one ping after the frame went out, even when the frame was answered within
            # one ping's gap: a stall shorter than that still shows as that ping's wait.
            while not done.is_set() or not latencies:
                started = time.perf_counter()
                writer.write(PING)
                await reader.readline()
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(PING_GAP_S)
        finally:
            writer.close()

    pinging = asyncio.create_task(pinger())
    await asyncio.sleep(0.2)  # pinging steadily before the large frame
    latencies.clear()
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 26)
    started = time.perf_counter()
    writer.write(frame)
    await reader.readline()
    seconds = time.perf_counter() - started
    writer.close()
    done.set()
    await pinging
    values = np.asarray(latencies) * 1000
    p50, p99 = np.percentile(values, [50, 99])
    return Stall(target, shape, len(frame), seconds, len(latencies), float(p50), float(p99), float(values.max()))


@dataclass
class FramesReport:
    size: int
    rows: list[Stall] = field(default_factory=list)

    def pairs(self) -> list[tuple[Stall, Stall]]:
        by_key = {(s.target, s.shape): s for s in self.rows}
        shapes = dict.fromkeys(s.shape for s in self.rows)
        return [(by_key[("engramd", shape)], by_key[("baseline", shape)]) for shape in shapes]

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "frames",
            "size": self.size,
            "rows": [s.as_dict() for s in self.rows],
            "ratios": [
                {"shape": e.shape, "worst_ratio": round(e.worst_ms / b.worst_ms, 3) if b.worst_ms else None}
                for e, b in self.pairs()
            ],
        }

    def table(self) -> str:
        lines = [f"{'shape':<8} {'target':<9} {'frame MB':>8} {'answer s':>8} {'pings':>6} {'p50 ms':>7} {'p99 ms':>8} {'worst ms':>8}"]
        for engram, baseline in self.pairs():
            for s in (engram, baseline):
                lines.append(
                    f"{s.shape:<8} {s.target:<9} {s.frame_bytes / 1e6:>8.1f} {s.seconds:>8.2f} {s.pings:>6} "
                    f"{s.p50_ms:>7.2f} {s.p99_ms:>8.1f} {s.worst_ms:>8.1f}"
                )
            lines.append(f"{'':<8} {'ratio':<9} {'':>8} {'':>8} {'':>6} {'':>7} {'':>8} {engram.worst_ms / baseline.worst_ms:>7.2f}x")
        lines.append("pings of another client while the large frame was under way; ratio = engramd / baseline worst ping")
        return "\n".join(lines)


def run_frames_bench(size: int, shapes: list[str], progress: bool = True) -> FramesReport:
    from contextlib import ExitStack

    from rich.progress import Progress

    report = FramesReport(size)
    frames = {
        shape: json.dumps({"jsonrpc": "2.0", "id": "big", **SHAPES[shape](size)}, separators=(",", ":")).encode() + b"\n"
        for shape in shapes
    }
    with ExitStack() as stack:
        targets = (("engramd", stack.enter_context(temporary_daemon())), ("baseline", stack.enter_context(echo_server())))
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("bench frames", total=len(shapes) * 2)
            for shape, frame in frames.items():
                for target, path in targets:
                    bar.update(task, description=f"{target}: {shape}")
                    report.rows.append(asyncio.run(_stall(path, target, shape, frame)))
                    bar.advance(task)
    return report
