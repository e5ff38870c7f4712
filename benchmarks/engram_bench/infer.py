"""``engram bench infer``: single-text embedding requests through engramd against an in-process loop.

The daemon side: N clients (raw asyncio streams, one connection each, one ``infer.embed`` of one
text at a time) for each concurrency level, so dynamic batching can coalesce what arrives
together; the daemon runs with its own inference settings. The baseline: a plain loop of
tokenize + ``session.run`` at batch 1 in this process (no padding: one text per run), on the same
ONNX file, tried with a few thread settings (one and two intra-op threads, ONNX Runtime's
spinning threads on and off); the fastest of them is the baseline, so that the ratio is measured
against the best a script without engram would get. Both run in the same invocation, on the same
texts; the ratio is daemon / best baseline throughput.

Wall-clock rates on a shared machine move with its load, so each row also carries the CPU time
spent per text: the daemon's (user + system of its process, from ``/proc``) and the baseline's
(this process's). The clients' own CPU is in neither. ``texts/run`` is how many texts dynamic
batching put into one ``session.run`` (texts over the model's runs in ``models.info``).

With ``int8`` the daemon first makes the model's int8 variant (``models.quantize``); requests for
the default embedder then run on it where ``inference.fast_embed`` lets them. The baseline loop is
then tried on both ONNX files, and the ratio is against the fastest loop of either; the ratio to
the full model's fastest loop (what a script using the model as published gets) is printed too.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engram_bench.bert import sample_texts
from engram_bench.processes import settle_fast_variant, temporary_daemon
from engram_bench.stats import Measurement, measure

__all__ = ["InferReport", "run_infer_bench"]

BENCH_MODEL = "bench-embedder"
GOAL_RATIO = 1.5
"""What dynamic batching should reach at 8 clients: 1.5x the best in-process batch-1 loop."""


def _process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (None where /proc cannot tell)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_ms_per_text(before: float | None, after: float | None, texts: int) -> float | None:
    if before is None or after is None or texts <= 0:
        return None
    return round(1000 * (after - before) / texts, 3)


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


def _requests(texts: list[str], model: str | None) -> list[bytes]:
    """One ``infer.embed`` line per text; without ``model`` the daemon picks (its default route)."""
    lines = []
    for i, text in enumerate(texts):
        params: dict[str, Any] = {"texts": [text]} if model is None else {"texts": [text], "model": model}
        lines.append(json.dumps({"jsonrpc": "2.0", "id": i, "method": "infer.embed", "params": params}).encode() + b"\n")
    return lines


@dataclass
class Level:
    measurement: Measurement
    cpu_ms_per_text: float | None
    texts_per_run: float | None  # how many texts dynamic batching put in one session.run


async def _model_runs(path: Path, model: str) -> int | None:
    """``runs`` of ``models.info``: session runs of the model so far."""
    line = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "models.info", "params": {"name": model}}).encode() + b"\n"
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
    try:
        writer.write(line)
        answer = json.loads(await reader.readline())
    finally:
        writer.close()
    runs = answer.get("result", {}).get("runs")
    return runs if isinstance(runs, int) else None


async def _level(path: Path, concurrency: int, lines: list[bytes], pid: int | None, model: str) -> Level:
    latencies: list[float] = []
    errors = [0]
    await _client(path, lines[: min(16, len(lines))], [], [0])  # warm-up: load, arenas, kernels
    chunks = [lines[i::concurrency] for i in range(concurrency)]
    runs_before = await _model_runs(path, model)
    cpu_before = _process_cpu_seconds(pid) if pid else None
    started = time.perf_counter()
    await asyncio.gather(*(_client(path, chunk, latencies, errors) for chunk in chunks))
    seconds = time.perf_counter() - started
    cpu = _cpu_ms_per_text(cpu_before, _process_cpu_seconds(pid) if pid else None, len(latencies))
    runs_after = await _model_runs(path, model)
    per_run = None
    if runs_before is not None and runs_after is not None and runs_after > runs_before:
        per_run = round(len(latencies) / (runs_after - runs_before), 2)
    return Level(measure("engramd", concurrency, latencies, seconds, errors[0]), cpu, per_run)


@dataclass(frozen=True)
class ThreadChoice:
    """One session setting (and ONNX file) the baseline is tried with."""

    intra_op: int
    spin: bool
    model: str = ""

    @property
    def label(self) -> str:
        threads = f"intra_op={self.intra_op} spin={'on' if self.spin else 'off'}"
        return f"{self.model} {threads}" if self.model else threads


def baseline_choices(threads: int, models: tuple[str, ...] = ("",)) -> list[ThreadChoice]:
    """The settings tried for the baseline: ``threads`` intra-op threads (0: one, and one per
    core up to two), each with spinning on and off, on each of ``models``."""
    counts = [threads] if threads else sorted({1, min(2, os.cpu_count() or 1)})
    return [ThreadChoice(count, spin, model) for model in models for count in counts for spin in (False, True)]


def _baseline(
    folder: Path, manifest: dict[str, Any], texts: list[str], choice: ThreadChoice
) -> tuple[Measurement, float]:
    """Tokenize one text, run the session at batch 1, repeat: what a script without engram does."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from engram.inference.sessions import SessionFactory
    from engram.inference.settings import InferenceSettings, ThreadSettings
    from engram.inference.text_encoder import TextEncoder

    threads = ThreadSettings(intra_op=choice.intra_op, inter_op=1, spin=choice.spin)
    settings = InferenceSettings(threads=threads, optimized_cache=False)
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
    cpu_started = time.process_time()
    started = time.perf_counter()
    for text in texts:
        t0 = time.perf_counter()
        one(text)
        latencies.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - started
    cpu = round(1000 * (time.process_time() - cpu_started) / len(texts), 3)
    return measure("baseline", 1, latencies, seconds), cpu


@dataclass
class BaselineTry:
    choice: ThreadChoice
    measurement: Measurement
    cpu_ms_per_text: float


@dataclass
class InferReport:
    model: str
    levels: list[int]
    threads: int
    served: str = ""  # the model that served the daemon's requests (the int8 variant, with int8)
    rows: list[Measurement] = field(default_factory=list)
    cpu_ms: dict[int, float | None] = field(default_factory=dict)  # engramd CPU per text, by concurrency
    texts_per_run: dict[int, float | None] = field(default_factory=dict)  # by concurrency
    tries: list[BaselineTry] = field(default_factory=list)
    load_average: tuple[float, float, float] | None = None

    @property
    def best(self) -> BaselineTry:
        return max(self.tries, key=lambda t: t.measurement.throughput)

    @property
    def best_full(self) -> BaselineTry:
        """The fastest loop on the full model's ONNX file."""
        return max((t for t in self.tries if t.choice.model in ("", self.model)), key=lambda t: t.measurement.throughput)

    def full_ratio(self, concurrency: int) -> float | None:
        base = self.best_full.measurement.throughput
        return self.daemon(concurrency).throughput / base if base else None

    @property
    def baseline(self) -> Measurement:
        return next(m for m in self.rows if m.target == "baseline")

    def daemon(self, concurrency: int) -> Measurement:
        return next(m for m in self.rows if m.target == "engramd" and m.concurrency == concurrency)

    def ratio(self, concurrency: int) -> float | None:
        base = self.baseline.throughput
        return self.daemon(concurrency).throughput / base if base else None

    def as_dict(self) -> dict[str, Any]:
        base = self.baseline
        return {
            "benchmark": "infer",
            "model": self.model,
            "served_by": self.served or self.model,
            "threads": self.threads,
            "load_average": list(self.load_average) if self.load_average else None,
            "rows": [m.as_dict() for m in self.rows],
            "texts_per_run": [{"concurrency": c, "texts_per_run": self.texts_per_run.get(c)} for c in self.levels],
            "cpu_ms_per_text": [{"target": "engramd", "concurrency": c, "cpu_ms": self.cpu_ms.get(c)} for c in self.levels]
            + [{"target": "baseline", "concurrency": 1, "cpu_ms": self.best.cpu_ms_per_text}],
            "baseline": {
                "chosen": {"intra_op": self.best.choice.intra_op, "spin": self.best.choice.spin,
                           "model": self.best.choice.model or self.model},
                "tried": [
                    {"intra_op": t.choice.intra_op, "spin": t.choice.spin, "model": t.choice.model or self.model,
                     "cpu_ms_per_text": t.cpu_ms_per_text, **t.measurement.as_dict()}
                    for t in self.tries
                ],
            },
            "goal": {"concurrency": 8, "throughput_ratio": GOAL_RATIO},
            "ratios": [
                {
                    "concurrency": c,
                    "throughput_ratio": round(r, 3) if (r := self.ratio(c)) is not None else None,
                    "p50_ratio": round(self.daemon(c).p50_ms / base.p50_ms, 3) if base.p50_ms else None,
                    "full_model_ratio": round(r, 3) if (r := self.full_ratio(c)) is not None else None,
                }
                for c in self.levels
            ],
        }

    def table(self) -> str:
        base = self.baseline
        head = (f"{'clients':>7}  {'target':<9} {'texts/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/text':>11} "
                f"{'texts/run':>9} {'errors':>6} {'ratio':>7}")
        served = f" (served by {self.served})" if self.served and self.served != self.model else ""
        lines = [
            f"embedding model {self.model}{served}, one text per request (baseline: in-process session.run, batch 1, "
            f"best of {len(self.tries)} thread settings: {self.best.choice.label})",
            head,
        ]

        def cpu(value: float | None) -> str:
            return f"{value:>11.2f}" if value is not None else f"{'-':>11}"

        def per_run(value: float | None) -> str:
            return f"{value:>9.2f}" if value is not None else f"{'-':>9}"

        for c in self.levels:
            m = self.daemon(c)
            r = self.ratio(c)
            ratio = f"{r:>6.2f}x" if r is not None else f"{'-':>7}"
            lines.append(
                f"{c:>7}  {'engramd':<9} {m.throughput:>9.1f} {m.p50_ms:>8.2f} {m.p99_ms:>8.2f} {cpu(self.cpu_ms.get(c))} "
                f"{per_run(self.texts_per_run.get(c))} {m.errors:>6} {ratio}"
            )
        lines.append(
            f"{1:>7}  {'baseline':<9} {base.throughput:>9.1f} {base.p50_ms:>8.2f} {base.p99_ms:>8.2f} "
            f"{cpu(self.best.cpu_ms_per_text)} {per_run(1.0)} {base.errors:>6} {'1.00x':>7}"
        )
        lines.append("ratio = engramd / best baseline throughput (higher is better); "
                     f"goal at 8 clients: {GOAL_RATIO:.1f}x")
        if self.best_full is not self.best:
            lines.append(f"against the full model's best loop ({self.best_full.choice.label}): " + ", ".join(
                f"{r:.2f}x at {c}" for c in self.levels if (r := self.full_ratio(c)) is not None))
        lines.append("baseline thread settings tried:")
        for t in self.tries:
            m = t.measurement
            mark = "  <- best" if t is self.best else ""
            lines.append(
                f"  {t.choice.label:<22} {m.throughput:>9.1f} texts/s  p50 {m.p50_ms:.2f} ms  "
                f"p99 {m.p99_ms:.2f} ms  cpu {t.cpu_ms_per_text:.2f} ms/text{mark}"
            )
        if self.load_average:
            lines.append("load average at the start: " + ", ".join(f"{v:.2f}" for v in self.load_average))
        return "\n".join(lines)


def run_infer_bench(
    requests: int,
    levels: list[int],
    model: str | None = None,
    source: Path | None = None,
    socket_path: Path | None = None,
    threads: int = 0,
    progress: bool = True,
    int8: bool = False,
) -> InferReport:
    """Measure; ``source`` is a BERT folder imported into the daemon first (as ``model``); with
    ``int8`` the model's int8 variant is made first (see the module docstring)."""
    from rich.progress import Progress

    from engram.client import Client

    texts = sample_texts(max(requests, 64), seed=1)[:requests]
    with ExitStack() as stack:
        env = {"ENGRAM_LOG__LEVEL": "error"}
        if threads:
            env["ENGRAM_INFERENCE__THREADS__INTRA_OP"] = str(threads)
        if source is not None:
            env["ENGRAM_INFERENCE__AUTO_IMPORT"] = "false"
        sock = socket_path or stack.enter_context(temporary_daemon(env, fast_variant=True))
        settle_fast_variant(sock)
        with Client(sock, timeout=600) as client:
            if source is not None:
                model = model or BENCH_MODEL
                client.call("models.import", {"name": model, "path": str(source.resolve()), "overwrite": True})
            named = model  # None: the requests name no model and the daemon routes them
            if model is None:
                model = client.call("models.list")["default_embedder"]
            info = client.call("models.load", {"name": model})
            if info["task"] != "embed":
                raise ValueError(f"model {model!r} is not an embedding model")
            if int8:
                client.call("models.quantize", {"name": model, "overwrite": True})
            served = client.call("infer.embed", {"texts": ["which model"], **({"model": named} if named else {})})["model"]
            paths = {model: (Path(info["path"]), info["manifest"])}
            if served != model:
                served_info = client.call("models.info", {"name": served})
                paths[served] = (Path(served_info["path"]), served_info["manifest"])
            pid = client.call("system.status").get("pid")
        report = InferReport(model, levels, threads, served=served, load_average=os.getloadavg())
        lines = _requests(texts, named)
        choices = baseline_choices(threads, (model, served) if served != model else ("",))
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("bench infer", total=len(levels) + len(choices))
            for concurrency in levels:
                bar.update(task, description=f"engramd x{concurrency}")
                level = asyncio.run(_level(sock, concurrency, lines, pid, served))
                report.rows.append(level.measurement)
                report.cpu_ms[concurrency] = level.cpu_ms_per_text
                report.texts_per_run[concurrency] = level.texts_per_run
                bar.advance(task)
            for choice in choices:
                bar.update(task, description=f"baseline {choice.label}")
                folder, manifest = paths[choice.model or model]
                measurement, cpu = _baseline(folder, manifest, texts, choice)
                report.tries.append(BaselineTry(choice, measurement, cpu))
                bar.advance(task)
            report.rows.append(report.best.measurement)
    return report
