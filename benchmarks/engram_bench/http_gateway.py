"""``engram bench http``: ``POST /v1/embeddings`` on the HTTP gateway against ``infer.embed`` over
the socket, one text per request, on the same texts, in one run.

A fresh engramd (or none: see ``url``/``socket``) serves both. For each client count, the socket
side runs that many raw asyncio Unix-socket clients (one connection each, one request at a time),
then the HTTP side that many httpx clients (keep-alive: one connection each, reused), each side
after a warm-up. Both sides reach the same method through the same request chain; the difference
is what HTTP costs: the connection's parsing (h11), Starlette's routing, the token check, the
OpenAI shapes, and JSON floats instead of base64 (the HTTP side asks for base64 too, to compare
like with like). The ratio is HTTP / socket throughput; the load average is printed because
wall-clock rates on a shared machine move with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from engram_bench.bert import sample_texts
from engram_bench.processes import serving_process
from engram_bench.stats import Measurement, measure

__all__ = ["HttpReport", "run_http_bench"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def gateway_daemon() -> Iterator[tuple[Path, str]]:
    """A fresh engramd with the gateway on a free loopback port; yields its socket and base URL."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="engram-bench-http-") as tmp:
        sock = Path(tmp) / "engram.sock"
        env = {"ENGRAM_LOG__LEVEL": "warning", "ENGRAM_HTTP__LISTEN": f"127.0.0.1:{port}"}
        args = [sys.executable, "-m", "engram.cli", "serve", "--state-dir", tmp, "--socket", str(sock)]
        with serving_process(args, sock, env) as path:
            yield path, f"http://127.0.0.1:{port}"


async def _rpc(path: Path, method: str, params: dict[str, Any]) -> Any:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
    try:
        writer.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode() + b"\n")
        answer = json.loads(await reader.readline())
    finally:
        writer.close()
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']['message']}")
    return answer["result"]


async def _socket_client(path: Path, texts: list[str], latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
    try:
        for i, text in enumerate(texts):
            line = json.dumps({"jsonrpc": "2.0", "id": i, "method": "infer.embed", "params": {"texts": [text]}}).encode()
            started = time.perf_counter()
            writer.write(line + b"\n")
            response = await reader.readline()
            latencies.append(time.perf_counter() - started)
            if b'"result"' not in response:
                errors[0] += 1
    finally:
        writer.close()


async def _http_client(url: str, token: str, texts: list[str], latencies: list[float], errors: list[int]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        for text in texts:
            started = time.perf_counter()
            response = await client.post("/v1/embeddings", json={"model": "engram", "input": text, "encoding_format": "base64"})
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors[0] += 1


async def _level(path: Path, url: str, token: str, clients: int, texts: list[str]) -> tuple[Measurement, Measurement]:
    chunks = [texts[i::clients] for i in range(clients)]
    results = []
    for target in ("socket", "http"):
        latencies: list[float] = []
        errors = [0]
        if target == "socket":
            await _socket_client(path, texts[:16], [], [0])  # warm-up
            started = time.perf_counter()
            await asyncio.gather(*(_socket_client(path, chunk, latencies, errors) for chunk in chunks))
        else:
            await _http_client(url, token, texts[:16], [], [0])
            started = time.perf_counter()
            await asyncio.gather(*(_http_client(url, token, chunk, latencies, errors) for chunk in chunks))
        results.append(measure(target, clients, latencies, time.perf_counter() - started, errors[0]))
    return results[0], results[1]


@dataclass
class HttpReport:
    rows: list[tuple[Measurement, Measurement]]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "http",
            "rows": [m.as_dict() for pair in self.rows for m in pair],
            "ratios": [
                {"concurrency": sock.concurrency, "throughput_ratio": round(http.throughput / sock.throughput, 3)
                 if sock.throughput else None,
                 "p50_ratio": round(http.p50_ms / sock.p50_ms, 3) if sock.p50_ms else None}
                for sock, http in self.rows
            ],
            "load_average": {"before": list(self.load_before), "after": list(self.load_after)},
        }

    def table(self) -> str:
        lines = [
            "one text per request: POST /v1/embeddings (HTTP, keep-alive, bearer token) vs infer.embed over the socket",
            f"{'clients':>7}  {'target':<7} {'texts/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'ratio':>7}",
        ]
        for sock, http in self.rows:
            for m in (sock, http):
                ratio = m.throughput / sock.throughput if sock.throughput else 0.0
                lines.append(f"{m.concurrency:>7}  {m.target:<7} {m.throughput:>9.1f} {m.p50_ms:>8.2f} {m.p99_ms:>8.2f} "
                             f"{m.errors:>6} {ratio:>6.2f}x")
        lines.append("ratio = throughput / the socket's at the same client count (higher is better)")
        lines.append("load average before: " + ", ".join(f"{v:.2f}" for v in self.load_before)
                     + "; after: " + ", ".join(f"{v:.2f}" for v in self.load_after))
        return "\n".join(lines)


async def _run(path: Path, url: str, requests: int, levels: list[int]) -> list[tuple[Measurement, Measurement]]:
    token = (await _rpc(path, "token.create", {"name": f"bench-{os.getpid()}", "owner": True}))["token"]
    texts = sample_texts(requests)
    try:
        return [await _level(path, url, token, clients, texts) for clients in levels]
    finally:
        await _rpc(path, "token.revoke", {"name": f"bench-{os.getpid()}"})


def run_http_bench(requests: int, levels: list[int], socket_path: Path | None = None, url: str | None = None) -> HttpReport:
    """Measure a fresh daemon, or the running one at ``socket_path`` whose gateway is at ``url``."""
    load_before = os.getloadavg()
    if socket_path is not None and url is not None:
        rows = asyncio.run(_run(socket_path, url.rstrip("/"), requests, levels))
    else:
        with gateway_daemon() as (path, base):
            rows = asyncio.run(_run(path, base, requests, levels))
    return HttpReport(rows, load_before, os.getloadavg())
