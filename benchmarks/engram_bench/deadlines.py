"""``engram bench rpc --deadlines``: deadline miss rates under load, earliest-deadline-first on and off.

Two fresh daemons, one after the other, alike but for ``inference.batching.edf`` (off, then on),
each with one batch of at most ``max_batch`` texts running at a time, so that requests queue in
the embedding model's batcher. The same load is sent to each: ``clients`` connections, one
``infer.embed`` of one text at a time each, every request carrying a deadline
(``params._meta.deadline_ms``), tight for a share of them (drawn with a fixed seed, so both
daemons get the same sequence) and loose for the others.

Unless given, the deadlines come from the load itself: before the measured runs, the first daemon
serves the same load without deadlines (where EDF and FIFO are the same order), and its median
latency ``W`` sets tight = 0.75 W (about half of the requests of a FIFO queue wait longer) and
loose = 4 W. A request answered -32004 (``deadline_missed`` or ``deadline``) is a miss.

Printed per daemon and class: requests, misses, miss rate and latency percentiles (of every
request of the class, misses included), the daemon's own miss counters
(``engram_deadline_misses_total`` by where) and the load average when each run started.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engram_bench.bert import sample_texts
from engram_bench.processes import temporary_daemon

__all__ = ["DeadlinesReport", "run_deadlines_bench"]

BENCH_MODEL = "bench-embedder"
TIGHT_OF_MEDIAN = 0.75
LOOSE_OF_MEDIAN = 4.0


@dataclass(frozen=True)
class Outcome:
    tight: bool
    seconds: float
    missed: bool  # answered -32004
    failed: bool  # answered another error


def _plan(requests: int, clients: int, tight_share: float, seed: int) -> list[list[tuple[str, bool]]]:
    """Per client, its requests in order: (text, tight)."""
    rng = random.Random(seed)
    texts = sample_texts(max(requests, 64), seed=seed)[:requests]
    per_client = max(requests // clients, 1)
    return [
        [(texts[(c * per_client + i) % len(texts)], rng.random() < tight_share) for i in range(per_client)]
        for c in range(clients)
    ]


async def _client(
    path: Path, plan: list[tuple[str, bool]], deadlines: tuple[int, int] | None, model: str | None, out: list[Outcome]
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
    try:
        for request_id, (text, tight) in enumerate(plan):
            params: dict[str, Any] = {"texts": [text]}
            if model is not None:
                params["model"] = model
            if deadlines is not None:
                params["_meta"] = {"deadline_ms": deadlines[0] if tight else deadlines[1]}
            line = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "infer.embed", "params": params})
            started = time.perf_counter()
            writer.write(line.encode() + b"\n")
            answer = json.loads(await reader.readline())
            seconds = time.perf_counter() - started
            error = answer.get("error")
            missed = error is not None and error["code"] == -32004
            out.append(Outcome(tight, seconds, missed, error is not None and not missed))
    finally:
        writer.close()


async def _load(
    path: Path, plans: list[list[tuple[str, bool]]], deadlines: tuple[int, int] | None, model: str | None
) -> tuple[list[Outcome], float]:
    out: list[Outcome] = []
    started = time.perf_counter()
    await asyncio.gather(*(_client(path, plan, deadlines, model, out) for plan in plans))
    return out, time.perf_counter() - started


@dataclass
class ClassRow:
    name: str
    deadline_ms: int | None
    requests: int
    missed: int
    failed: int
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def miss_rate(self) -> float:
        return self.missed / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "class": self.name, "deadline_ms": self.deadline_ms, "requests": self.requests, "missed": self.missed,
            "failed": self.failed, "miss_rate": round(self.miss_rate, 4), "p50_ms": round(self.p50_ms, 2),
            "p90_ms": round(self.p90_ms, 2), "p99_ms": round(self.p99_ms, 2),
        }


def _row(name: str, deadline_ms: int | None, outcomes: list[Outcome]) -> ClassRow:
    values = np.asarray([o.seconds for o in outcomes], dtype=np.float64) * 1000
    p50, p90, p99 = np.percentile(values, [50, 90, 99]) if len(values) else (float("nan"),) * 3
    return ClassRow(name, deadline_ms, len(outcomes), sum(o.missed for o in outcomes), sum(o.failed for o in outcomes),
                    float(p50), float(p90), float(p99))


@dataclass
class ModeRun:
    edf: bool
    seconds: float
    rows: list[ClassRow]
    daemon_misses: dict[str, float]  # engram_deadline_misses_total by where
    daemon_requests: float  # engram_deadline_requests_total
    load_average: tuple[float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "edf": self.edf, "seconds": round(self.seconds, 3), "rows": [r.as_dict() for r in self.rows],
            "daemon_misses": self.daemon_misses, "daemon_deadline_requests": self.daemon_requests,
            "load_average": [round(v, 2) for v in self.load_average],
        }


@dataclass
class DeadlinesReport:
    model: str
    clients: int
    requests: int
    max_batch: int
    tight_share: float
    tight_ms: int
    loose_ms: int
    calibration_p50_ms: float | None
    runs: list[ModeRun] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "rpc-deadlines", "model": self.model, "clients": self.clients, "requests": self.requests,
            "max_batch": self.max_batch, "tight_share": self.tight_share, "tight_ms": self.tight_ms,
            "loose_ms": self.loose_ms, "calibration_p50_ms": _rounded(self.calibration_p50_ms),
            "runs": [run.as_dict() for run in self.runs],
        }

    def table(self) -> str:
        lines = [
            f"infer.embed of one text, {self.clients} clients, {self.requests} requests per run, model {self.model}, "
            f"one batch of at most {self.max_batch} texts at a time",
            f"deadlines: tight {self.tight_ms} ms ({self.tight_share:.0%} of requests), loose {self.loose_ms} ms"
            + (f"; from the median latency without deadlines, {self.calibration_p50_ms:.1f} ms"
               if self.calibration_p50_ms is not None else ""),
            f"{'EDF':<4} {'class':<6} {'deadline':>9} {'requests':>8} {'missed':>7} {'miss %':>7} "
            f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}",
        ]
        for run in self.runs:
            for row in run.rows:
                deadline = f"{row.deadline_ms} ms" if row.deadline_ms is not None else "-"
                lines.append(
                    f"{'on' if run.edf else 'off':<4} {row.name:<6} {deadline:>9} {row.requests:>8} {row.missed:>7} "
                    f"{row.miss_rate * 100:>6.1f}% {row.p50_ms:>8.1f} {row.p90_ms:>8.1f} {row.p99_ms:>8.1f}"
                )
            wheres = ", ".join(f"{where} {count:.0f}" for where, count in sorted(run.daemon_misses.items())) or "none"
            failed = sum(row.failed for row in run.rows if row.name != "all")
            lines.append(
                f"     daemon: misses by where: {wheres}; other errors {failed}; "
                f"load average at the start {', '.join(f'{v:.2f}' for v in run.load_average)}"
            )
        lines.append("latency percentiles are of every request of the class, misses included")
        return "\n".join(lines)


def _metrics(client: Any) -> tuple[dict[str, float], float]:
    misses: dict[str, float] = {}
    requests = 0.0
    for family in client.call("system.metrics")["families"]:
        for sample in family["samples"]:
            if sample["name"] == "engram_deadline_misses_total":
                misses[sample["labels"]["where"]] = sample["value"]
            elif sample["name"] == "engram_deadline_requests_total":
                requests = sample["value"]
    return misses, requests


def run_deadlines_bench(
    requests: int,
    clients: int,
    model: str | None = None,
    source: Path | None = None,
    tight_share: float = 0.5,
    tight_ms: int | None = None,
    loose_ms: int | None = None,
    max_batch: int = 4,
    seed: int = 1,
    progress: bool = True,
) -> DeadlinesReport:
    from rich.progress import Progress

    from engram.client import Client

    plans = _plan(requests, clients, tight_share, seed)
    report: DeadlinesReport | None = None
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("bench rpc --deadlines", total=3)
        for edf in (False, True):
            env = {
                "ENGRAM_LOG__LEVEL": "error",
                "ENGRAM_INFERENCE__BATCHING__EDF": "true" if edf else "false",
                "ENGRAM_INFERENCE__BATCHING__PARALLEL_RUNS": "1",
                "ENGRAM_INFERENCE__BATCHING__MAX_BATCH": str(max_batch),
            }
            if source is not None:
                env["ENGRAM_INFERENCE__AUTO_IMPORT"] = "false"
            with ExitStack() as stack:
                sock = stack.enter_context(temporary_daemon(env))
                client = stack.enter_context(Client(sock, timeout=600))
                if source is not None:
                    model = model or BENCH_MODEL
                    client.call("models.import", {"name": model, "path": str(source.resolve()), "overwrite": True})
                named = model
                served = model or client.call("models.list")["default_embedder"]
                client.call("models.load", {"name": served})
                asyncio.run(_load(sock, [plan[:8] for plan in plans], None, named))  # warm up
                if report is None:
                    calibration = None
                    if tight_ms is None or loose_ms is None:
                        bar.update(task, description="median latency without deadlines")
                        outcomes, _ = asyncio.run(_load(sock, plans, None, named))
                        calibration = float(np.percentile([o.seconds for o in outcomes], 50) * 1000)
                    bar.advance(task)
                    tight = tight_ms or max(1, round(calibration * TIGHT_OF_MEDIAN))  # type: ignore[operator]
                    loose = loose_ms or max(tight + 1, round(calibration * LOOSE_OF_MEDIAN))  # type: ignore[operator]
                    report = DeadlinesReport(served, clients, sum(len(p) for p in plans), max_batch, tight_share,
                                             tight, loose, calibration)
                bar.update(task, description=f"EDF {'on' if edf else 'off'}")
                load_average = os.getloadavg()
                outcomes, seconds = asyncio.run(_load(sock, plans, (report.tight_ms, report.loose_ms), named))
                misses, deadline_requests = _metrics(client)
                rows = [
                    _row("tight", report.tight_ms, [o for o in outcomes if o.tight]),
                    _row("loose", report.loose_ms, [o for o in outcomes if not o.tight]),
                    _row("all", None, outcomes),
                ]
                report.runs.append(ModeRun(edf, seconds, rows, misses, deadline_requests, load_average))
                bar.advance(task)
    assert report is not None
    return report


def _rounded(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None
