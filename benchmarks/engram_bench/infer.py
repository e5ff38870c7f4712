"""``engram bench infer``: single-text embedding requests through engramd against an in-process loop.

The daemon side: N clients (raw asyncio streams, one connection each, one ``infer.embed`` of one
text at a time) for each concurrency level, so dynamic batching can coalesce what arrives
together. The baseline: a plain loop of tokenize + ``session.run`` at batch 1 in this process, on
the same ONNX file with the same session options (threads, optimization level, spinning). Both
run in the same invocation, on the same texts; the ratio is daemon / baseline throughput.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engram_bench.bert import sample_texts
from engram_bench.processes import temporary_daemon
from engram_bench.stats import Measurement, measure

__all__ = ["InferReport", "run_infer_bench"]

BENCH_MODEL = "bench-embedder"


async def _client(path: Path, lines: list[bytes], latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
    try:
        for line in lines:
            started = time.perf_counter()
            writer.write(line)
            response = await reader.readline()
            latencies.append(time.perf_counter() - started)
            if b'"result"' not in response:
                errors[0] += 1
    finally:
        writer.close()


def _requests(texts: list[str], model: str) -> list[bytes]:
    return [
        json.dumps({"jsonrpc": "2.0", "id": i, "method": "infer.embed", "params": {"texts": [t], "model": model}}).encode() + b"\n"
        for i, t in enumerate(texts)
    ]


async def _level(path: Path, concurrency: int, lines: list[bytes]) -> Measurement:
    latencies: list[float] = []
    errors = [0]
    await _client(path, lines[: min(16, len(lines))], [], [0])  # warm-up: load, arenas, kernels
    chunks = [lines[i::concurrency] for i in range(concurrency)]
    started = time.perf_counter()
    await asyncio.gather(*(_client(path, chunk, latencies, errors) for chunk in chunks))
    return measure("engramd", concurrency, latencies, time.perf_counter() - started, errors[0])


def _baseline(folder: Path, manifest: dict[str, Any], texts: list[str], threads: int) -> Measurement:
    """Tokenize one text, run the session at batch 1, repeat: what a script without engram does."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from engram.inference.sessions import SessionFactory
    from engram.inference.settings import InferenceSettings, ThreadSettings
    from engram.inference.text_encoder import TextEncoder

    settings = InferenceSettings(threads=ThreadSettings(intra_op=threads), optimized_cache=False)
    options = SessionFactory(settings).options(settings.graph_optimization)
    session = ort.InferenceSession(str(folder / manifest["model_file"]), options, providers=["CPUExecutionProvider"])
    info = manifest["embedding"]
    encoder = TextEncoder(Tokenizer.from_file(str(folder / manifest["tokenizer"])), info["max_seq_len"])
    names = {i.name for i in session.get_inputs()}

    def one(text: str) -> np.ndarray:
        feed = {k: v for k, v in encoder.encode([text]).feed().items() if k in names}
        return session.run([info["output"]], feed)[0]

    for text in texts[:16]:
        one(text)
    latencies = []
    started = time.perf_counter()
    for text in texts:
        t0 = time.perf_counter()
        one(text)
        latencies.append(time.perf_counter() - t0)
    return measure("baseline", 1, latencies, time.perf_counter() - started)


@dataclass
class InferReport:
    model: str
    levels: list[int]
    threads: int
    rows: list[Measurement] = field(default_factory=list)

    @property
    def baseline(self) -> Measurement:
        return next(m for m in self.rows if m.target == "baseline")

    def daemon(self, concurrency: int) -> Measurement:
        return next(m for m in self.rows if m.target == "engramd" and m.concurrency == concurrency)

    def as_dict(self) -> dict[str, Any]:
        base = self.baseline
        return {
            "benchmark": "infer",
            "model": self.model,
            "threads": self.threads,
            "rows": [m.as_dict() for m in self.rows],
            "ratios": [
                {
                    "concurrency": c,
                    "throughput_ratio": round(self.daemon(c).throughput / base.throughput, 3) if base.throughput else None,
                    "p50_ratio": round(self.daemon(c).p50_ms / base.p50_ms, 3) if base.p50_ms else None,
                }
                for c in self.levels
            ],
        }

    def table(self) -> str:
        base = self.baseline
        lines = [
            f"embedding model {self.model}, one text per request (baseline: in-process session.run, batch 1)",
            f"{'clients':>7}  {'target':<9} {'texts/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'ratio':>7}",
        ]
        for c in self.levels:
            m = self.daemon(c)
            ratio = m.throughput / base.throughput if base.throughput else float("nan")
            lines.append(
                f"{c:>7}  {'engramd':<9} {m.throughput:>9.1f} {m.p50_ms:>8.2f} {m.p99_ms:>8.2f} {m.errors:>6} {ratio:>6.2f}x"
            )
        lines.append(
            f"{1:>7}  {'baseline':<9} {base.throughput:>9.1f} {base.p50_ms:>8.2f} {base.p99_ms:>8.2f} {base.errors:>6} {'1.00x':>7}"
        )
        lines.append("ratio = engramd / baseline throughput (higher is better)")
        return "\n".join(lines)


def run_infer_bench(
    requests: int,
    levels: list[int],
    model: str | None = None,
    source: Path | None = None,
    socket_path: Path | None = None,
    threads: int = 0,
    progress: bool = True,
) -> InferReport:
    """Measure; ``source`` is a BERT folder imported into the daemon first (as ``model``)."""
    from rich.progress import Progress

    from engram.client import Client

    texts = sample_texts(max(requests, 64), seed=1)[:requests]
    with ExitStack() as stack:
        env = {"ENGRAM_INFERENCE__THREADS__INTRA_OP": str(threads), "ENGRAM_LOG__LEVEL": "error"}
        if source is not None:
            env["ENGRAM_INFERENCE__AUTO_IMPORT"] = "false"
        sock = socket_path or stack.enter_context(temporary_daemon(env))
        with Client(sock, timeout=600) as client:
            if source is not None:
                model = model or BENCH_MODEL
                client.call("models.import", {"name": model, "path": str(source.resolve()), "overwrite": True})
            if model is None:
                model = client.call("models.list")["default_embedder"]
            info = client.call("models.load", {"name": model})
        if info["task"] != "embed":
            raise ValueError(f"model {model!r} is not an embedding model")
        report = InferReport(model, levels, threads)
        lines = _requests(texts, model)
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("bench infer", total=len(levels) + 1)
            for concurrency in levels:
                bar.update(task, description=f"engramd x{concurrency}")
                report.rows.append(asyncio.run(_level(sock, concurrency, lines)))
                bar.advance(task)
            bar.update(task, description="baseline")
            report.rows.append(_baseline(Path(info["path"]), info["manifest"], texts, threads))
            bar.advance(task)
    return report
