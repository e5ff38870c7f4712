"""``engram bench recall --locomo PATH``: retrieval quality on LoCoMo, engram against dense retrieval.

The same work, in one run, through both:

- **engram**: a fresh ``engramd`` on a temporary state folder. Each conversation goes into a
  namespace of its own, every turn one episode (:func:`episode_text`, time = its session's date,
  ``session`` = ``"<conversation>/<session number>"``), through ``memory.remember``; each question
  is one ``memory.recall`` (its text alone, default settings, top 20).
- **baseline**: plain dense retrieval, what most memory layers start from: the same texts and
  questions embedded by the same daemon's model (``infer.embed``: the default embedder, or the one
  ``--embedder`` names, which the daemon then also uses for memory), exact cosine search in the
  benchmark's process.

Printed: R@1/5/10/20 (the paper's metric, :func:`engram_bench.locomo.recall_at`) overall and by
category, for both, and recall latency percentiles. The paper's DRAGON retriever reaches R@5
0.567 and R@10 0.662 over all ten conversations (Table 3).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engram_bench.locomo import CATEGORIES, Conversation, Turn, load, recall_at
from engram_bench.stats import measure

__all__ = ["KS", "MissingModel", "RecallReport", "episode_text", "run_recall_bench"]

KS = (1, 5, 10, 20)
_BATCH = 64  # episodes per memory.remember (memory.max_items allows more; this keeps frames small)


class MissingModel(Exception):
    """The daemon has no embedding model (the default one, or the one asked for)."""


def episode_text(turn: Turn) -> str:
    """A turn as a person's memory of a chat would hold it: who said what, and the photo shared."""
    text = f"{turn.speaker}: {turn.text}"
    return f"{text} [shares a photo of {turn.caption}]" if turn.caption else text


@dataclass
class Scores:
    """Per-question R@k of one target, with each question's category."""

    categories: list[int] = field(default_factory=list)
    at: dict[int, list[float]] = field(default_factory=lambda: {k: [] for k in KS})

    def add(self, category: int, found: list[str], evidence: frozenset[str]) -> None:
        self.categories.append(category)
        for k in KS:
            self.at[k].append(recall_at(found, evidence, k))

    def mean(self, k: int, category: int | None = None) -> float:
        values = [v for v, c in zip(self.at[k], self.categories) if category is None or c == category]
        return float(np.mean(values)) if values else float("nan")


@dataclass
class RecallReport:
    source: str
    conversations: int = 0
    turns: int = 0
    questions: int = 0
    scores: dict[str, Scores] = field(default_factory=lambda: {"engram": Scores(), "baseline": Scores()})
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def _rows(self) -> list[dict[str, Any]]:
        rows = []
        groups: list[tuple[str, int | None]] = [("all", None)] + [(name, c) for c, name in CATEGORIES.items()]
        for label, category in groups:
            count = sum(1 for c in self.scores["engram"].categories if category is None or c == category)
            if not count:
                continue
            row: dict[str, Any] = {"category": label, "questions": count}
            for target, scores in self.scores.items():
                row[target] = {f"r@{k}": round(scores.mean(k, category), 4) for k in KS}
            rows.append(row)
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "recall", "source": self.source, "conversations": self.conversations, "turns": self.turns,
            "questions": self.questions, "recall": self._rows(), "latency_ms": self.latency_ms, "notes": self.notes,
        }

    def table(self) -> str:
        head = "  ".join(f"{'r@' + str(k):>6}" for k in KS)
        lines = [f"{self.conversations} conversations, {self.turns} turns, {self.questions} questions ({self.source})", "",
                 f"{'category':<12} {'n':>5}  {'target':<9} {head}  {'ratio r@10':>10}"]
        for row in self._rows():
            for target in ("engram", "baseline"):
                values = "  ".join(f"{row[target][f'r@{k}']:>6.3f}" for k in KS)
                base = row["baseline"]["r@10"]
                ratio = f"{row['engram']['r@10'] / base:>10.2f}" if target == "engram" and base else ""
                lines.append(f"{row['category'] if target == 'engram' else '':<12} "
                             f"{row['questions'] if target == 'engram' else '':>5}  {target:<9} {values}  {ratio}")
        lines.append("")
        for target, lat in self.latency_ms.items():
            lines.append(f"recall latency {target:<9} p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


async def _remember(socket: Path, namespace: str, conversation: Conversation) -> dict[str, str]:
    """Every turn as an episode; returns episode id -> dia_id."""
    from engram.client.async_client import AsyncClient

    by_id: dict[str, str] = {}
    async with AsyncClient(socket, timeout=600) as client:
        turns = conversation.turns
        for start in range(0, len(turns), _BATCH):
            chunk = turns[start : start + _BATCH]
            items = [{"text": episode_text(t), "time": t.time, "session": f"{conversation.name}/{t.session}"} for t in chunk]
            result = await client.call("memory.remember", {"items": items, "namespace": namespace})
            by_id.update(zip(result["ids"], (t.dia_id for t in chunk)))
    return by_id


async def _recall(socket: Path, namespace: str, questions: list[str], tick: Callable[[], None]) -> tuple[list[list[str]], list[float]]:
    from engram.client.async_client import AsyncClient

    found, latencies = [], []
    async with AsyncClient(socket, timeout=600) as client:
        for q in questions:
            began = time.perf_counter()
            result = await client.call("memory.recall", {"query": q, "k": max(KS), "namespace": namespace})
            latencies.append(time.perf_counter() - began)
            found.append([h["id"] for h in result["hits"]])
            tick()
    return found, latencies


async def _embed(client: Any, texts: list[str], model: str | None) -> tuple[str, np.ndarray]:
    """The daemon's embeddings of ``texts`` (its default model, or ``model``) and the model's name."""
    from engram.errors import RPCError

    rows, name = [], ""
    for begin in range(0, len(texts), _BATCH):
        params = {"texts": texts[begin : begin + _BATCH], "model": model, "output_format": "list"}
        try:
            result = await client.call("infer.embed", params)
        except RPCError as exc:
            raise MissingModel(f"the daemon cannot embed: {exc.message} (`make install-model`)") from None
        rows.append(np.asarray(result["vectors"]["data"], dtype=np.float32).reshape(result["vectors"]["shape"]))
        name = result["model"]
    return name, np.concatenate(rows)


async def _model_name(socket: Path, model: str | None) -> str:
    """The model the daemon embeds with; :class:`MissingModel` when it has none."""
    from engram.client.async_client import AsyncClient

    async with AsyncClient(socket, timeout=600) as client:
        return (await _embed(client, ["ready"], model))[0]


async def _baseline(socket: Path, conversation: Conversation, questions: list[str], model: str | None,
                    tick: Callable[[], None]) -> tuple[str, list[list[str]], list[float]]:
    """Dense retrieval: the turns and each question embedded by the daemon, exact cosine here."""
    from engram.client.async_client import AsyncClient

    found, latencies = [], []
    async with AsyncClient(socket, timeout=600) as client:
        name, turns = await _embed(client, [episode_text(t) for t in conversation.turns], model)
        for q in questions:
            began = time.perf_counter()
            query = (await _embed(client, [q], model))[1][0]
            order = np.argsort(-(turns @ query), kind="stable")[: max(KS)]
            latencies.append(time.perf_counter() - began)
            found.append([conversation.turns[i].dia_id for i in order])
            tick()
    return name, found, latencies


@contextmanager
def _daemon(folder: Path, embedder: str | None) -> Iterator[Path]:
    from engram_bench.processes import serving_process

    sock = folder / "engram.sock"
    args = [sys.executable, "-m", "engram.cli", "serve", "--state-dir", str(folder), "--socket", str(sock)]
    env = {"ENGRAM_LOG__LEVEL": "warning"}
    if embedder is not None:
        env["ENGRAM_INFERENCE__DEFAULT_EMBEDDER"] = embedder
    with serving_process(args, sock, env) as path:
        yield path


def run_recall_bench(path: Path, conversations: int | None = None, questions: int | None = None,
                     progress: bool = True, embedder: str | None = None) -> RecallReport:
    """Run every (or the first ``conversations``) conversation of the LoCoMo file at ``path``,
    at most ``questions`` questions of each; ``embedder`` names the daemon's embedding model
    (default: its own default)."""
    from rich.console import Console
    from rich.progress import Progress

    from engram_bench.processes import settle_fast_variant

    data = load(path)[:conversations]
    report = RecallReport(str(path))
    engram_latencies: list[float] = []
    baseline_latencies: list[float] = []
    with ExitStack() as stack, Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="engram-bench-recall-")))
        state = folder / "daemon"
        state.mkdir(mode=0o700)
        socket = stack.enter_context(_daemon(state, embedder))
        settle_fast_variant(socket)  # the whole run on one model, not the first turns on the full one
        model = asyncio.run(_model_name(socket, embedder))  # before any work: fails fast without a model
        for n, conversation in enumerate(data):
            asked = conversation.questions[:questions]
            namespace = f"locomo-{n + 1}"
            task = bar.add_task(f"{conversation.name}: remember {len(conversation.turns)} turns", total=2 * len(asked))
            by_id = asyncio.run(_remember(socket, namespace, conversation))
            bar.update(task, description=f"{conversation.name}: {len(asked)} questions")
            found, latencies = asyncio.run(_recall(socket, namespace, [q.text for q in asked], lambda: bar.advance(task)))
            engram_latencies += latencies
            for q, hits in zip(asked, found):
                report.scores["engram"].add(q.category, [by_id.get(h, "") for h in hits], q.evidence)
            _, dense, latencies = asyncio.run(_baseline(socket, conversation, [q.text for q in asked], embedder,
                                                            lambda: bar.advance(task)))
            baseline_latencies += latencies
            for q, hits in zip(asked, dense):
                report.scores["baseline"].add(q.category, hits, q.evidence)
            bar.remove_task(task)
            report.conversations += 1
            report.turns += len(conversation.turns)
            report.questions += len(asked)
    for target, latencies in (("engram", engram_latencies), ("baseline", baseline_latencies)):
        m = measure(target, 1, latencies, sum(latencies))
        report.latency_ms[target] = {"p50": round(m.p50_ms, 3), "p99": round(m.p99_ms, 3)}
    report.notes.append(f"engram: memory.recall over the socket, default settings, embedder {model}; baseline: the "
                        f"same model through infer.embed, exact cosine over the conversation's turns (query "
                        f"embedding included)")
    report.notes.append("reference (paper, DRAGON over turns, all ten conversations): r@5 0.567, r@10 0.662")
    return report
