"""``engram bench providers``: what the provider path costs on top of the provider itself.

One fake Ollama server on loopback (``engram_ollama.testing.FakeOllama``, so the plugin
``engram-ollama`` must be installed) answers both targets, in one run:

* **engram** — ``infer.generate`` to a temporary engramd over its socket: JSON-RPC, the method's
  policy decision, the egress decision, the chain, the breaker, the timeout, the plugin's HTTP
  call and the audit entry;
* **baseline** — the same ``POST /api/generate`` sent straight to the server with httpx;
* **plugin alone** (for reading the difference) — the plugin's own ``generate`` called in-process
  on an event loop, without the daemon: what the provider's async HTTP client costs by itself.

All are sequential calls with the same prompt; engram minus "plugin alone" is what the daemon's
path adds (socket, JSON-RPC, policy, chain, breaker, audit).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from engram.errors import ConfigError
from engram_bench.processes import temporary_daemon
from engram_bench.stats import Measurement, measure

PROMPT = "Summarise: the meeting moved to Tuesday; write to ada@example.org."


@dataclass
class ProvidersReport:
    calls: int
    rows: list[Measurement] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        engram, baseline = self.rows[0], self.rows[1]
        return {
            "benchmark": "providers",
            "calls": self.calls,
            "rows": [m.as_dict() for m in self.rows],
            "throughput_ratio": round(engram.throughput / baseline.throughput, 4) if baseline.throughput else None,
            "p50_overhead_ms": round(engram.p50_ms - baseline.p50_ms, 3),
            "p99_ratio": round(engram.p99_ms / baseline.p99_ms, 3) if baseline.p99_ms else None,
            "daemon_p50_overhead_ms": round(engram.p50_ms - self.rows[2].p50_ms, 3) if len(self.rows) > 2 else None,
        }

    def table(self) -> str:
        lines = [f"{'target':<34} {'calls/s':>10} {'p50 ms':>9} {'p99 ms':>9}"]
        for m in self.rows:
            lines.append(f"{m.target:<34} {m.throughput:>10.1f} {m.p50_ms:>9.3f} {m.p99_ms:>9.3f}")
        data = self.as_dict()
        lines.append(f"{'ratio (engram / baseline)':<34} {data['throughput_ratio']:>9.3f}x {'':>9} {data['p99_ratio']:>8.2f}x")
        lines.append(f"engram adds {data['p50_overhead_ms']:.3f} ms per call at p50 ({self.calls} sequential calls each)")
        if data["daemon_p50_overhead_ms"] is not None:
            lines.append(f"of which the plugin's own async HTTP client: all but {data['daemon_p50_overhead_ms']:.3f} ms (the daemon's path)")
        return "\n".join(lines)


def _timed(func: Any, calls: int) -> tuple[list[float], float, int]:
    latencies, errors = [], 0
    clock = time.perf_counter
    started = clock()
    for _ in range(calls):
        t0 = clock()
        try:
            func()
        except Exception:  # counted, not fatal: the report says how many
            errors += 1
        latencies.append(clock() - t0)
    return latencies, clock() - started, errors


def run_providers_bench(calls: int = 500) -> ProvidersReport:
    try:
        import httpx
        from engram_ollama.testing import FakeOllama  # type: ignore[import-not-found]  # an optional plugin
    except ImportError as exc:
        raise ConfigError(
            f"engram bench providers needs the engram-ollama plugin: pip install -e plugins/engram-ollama ({exc})"
        ) from None
    from engram.client import Client

    report = ProvidersReport(calls)
    with FakeOllama() as server:
        env = {
            "ENGRAM_PLUGINS__PROVIDERS": json.dumps({"ollama": {"base_url": server.url}}),
            "ENGRAM_PLUGINS__DISABLED": '["openai"]',
            "ENGRAM_PROVIDERS__CHAINS": json.dumps({"generate": ["ollama"]}),
        }
        with temporary_daemon(env) as sock, Client(sock, timeout=30) as client:
            params = {"prompt": PROMPT}
            client.call("infer.generate", params)  # warm: connections, first-use work
            latencies, seconds, errors = _timed(lambda: client.call("infer.generate", params), calls)
            report.rows.append(measure("engram infer.generate", 1, latencies, seconds, errors))
        body = {"model": "llama3.2", "prompt": PROMPT, "stream": False}
        with httpx.Client(base_url=server.url, timeout=30) as http:
            http.post("/api/generate", json=body)

            def direct() -> None:
                http.post("/api/generate", json=body).raise_for_status()

            latencies, seconds, errors = _timed(direct, calls)
            report.rows.append(measure("baseline POST /api/generate", 1, latencies, seconds, errors))
        latencies, seconds, errors = anyio.run(_plugin_alone, server.url, calls)
        report.rows.append(measure("plugin alone (in-process)", 1, latencies, seconds, errors))
    return report


async def _plugin_alone(url: str, calls: int) -> tuple[list[float], float, int]:
    from engram_ollama import OllamaConfig, OllamaProvider  # type: ignore[import-not-found]

    provider = OllamaProvider(OllamaConfig(base_url=url))
    await provider.start()
    try:
        await provider.generate(PROMPT)
        latencies, errors = [], 0
        clock = time.perf_counter
        started = clock()
        for _ in range(calls):
            t0 = clock()
            try:
                await provider.generate(PROMPT)
            except Exception:  # counted, not fatal
                errors += 1
            latencies.append(clock() - t0)
        return latencies, clock() - started, errors
    finally:
        await provider.stop()
