"""Latency statistics and the report tables every benchmark prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Measurement:
    target: str
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int = 0

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "throughput": round(self.throughput, 1)}


def measure(target: str, concurrency: int, latencies_s: list[float], seconds: float, errors: int = 0) -> Measurement:
    values = np.asarray(latencies_s, dtype=np.float64) * 1000
    p50, p99 = (np.percentile(values, [50, 99]) if len(values) else (float("nan"), float("nan")))
    return Measurement(target, concurrency, len(latencies_s), seconds, float(p50), float(p99), errors)
