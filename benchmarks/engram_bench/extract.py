"""``engram bench extract``: precision and recall of memory's knowledge extraction.

The extractor the daemon runs (:class:`engram.memory.extraction.LocalExtractor` over the pinned
spaCy pipeline) reads every sentence of the labelled set (:mod:`engram_bench.extract_set`), and
its (subject, relation, object) triples are compared with the labels: exact match after
case-folding and dropping a leading article. Printed: precision, recall and F1 overall, by
relation type and by domain; sentences per second of CPU; and, in the same run, the same figures
for a naive baseline: every ordered pair of named entities of a sentence, linked by the relation
that the same verb table gives the sentence's main verb and the preposition before the second
entity (or the verb's lemma), which is what co-occurrence finds without the parse's structure.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from engram.clitools import Output, json_option
from engram_bench.extract_set import LABELLED, Item

__all__ = ["ExtractReport", "Scores", "bench_extract", "run_extract_bench"]

Key = tuple[str, str, str]


def _norm(name: str) -> str:
    words = name.split()
    if words and words[0].casefold() in ("the", "a", "an"):
        words = words[1:]
    return " ".join(words).casefold()


def _key(subject: str, relation: str, obj: str) -> Key:
    return _norm(subject), relation, _norm(obj)


@dataclass
class Scores:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "precision": round(self.precision, 4),
                "recall": round(self.recall, 4), "f1": round(self.f1, 4)}


@dataclass
class Evaluation:
    name: str
    overall: Scores = field(default_factory=Scores)
    by_relation: dict[str, Scores] = field(default_factory=dict)
    by_domain: dict[str, Scores] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    sentences: int = 0

    def score(self, domain: str, gold: Iterable[Key], found: Iterable[Key]) -> None:
        gold_set, found_set = set(gold), set(found)
        dom = self.by_domain.setdefault(domain, Scores())
        for key in gold_set | found_set:
            rel = self.by_relation.setdefault(key[1], Scores())
            hit, wanted = key in found_set, key in gold_set
            for s in (self.overall, rel, dom):
                if hit and wanted:
                    s.tp += 1
                elif hit:
                    s.fp += 1
                else:
                    s.fn += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall.as_dict(),
            "by_relation": {k: v.as_dict() for k, v in sorted(self.by_relation.items())},
            "by_domain": {k: v.as_dict() for k, v in sorted(self.by_domain.items())},
            "sentences": self.sentences,
            "cpu_seconds": round(self.cpu_seconds, 4),
            "sentences_per_cpu_second": round(self.sentences / self.cpu_seconds, 1) if self.cpu_seconds else None,
            "sentences_per_second": round(self.sentences / self.wall_seconds, 1) if self.wall_seconds else None,
        }


@dataclass
class ExtractReport:
    items: int
    load_cpu_seconds: float
    local: Evaluation
    baseline: Evaluation
    misses: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "load_cpu_seconds": round(self.load_cpu_seconds, 3),
                "local": self.local.as_dict(), "baseline": self.baseline.as_dict(), "misses": self.misses}

    def table(self) -> str:
        lines = [
            f"{self.items} labelled items; pipeline loaded in {self.load_cpu_seconds:.2f} s of CPU",
            "",
            f"{'extractor':<10} {'P':>6} {'R':>6} {'F1':>6} {'tp':>5} {'fp':>5} {'fn':>5} {'sent/CPU s':>11}",
        ]
        for ev in (self.local, self.baseline):
            s, d = ev.overall, ev.as_dict()
            lines.append(f"{ev.name:<10} {s.precision:>6.3f} {s.recall:>6.3f} {s.f1:>6.3f} {s.tp:>5} {s.fp:>5} {s.fn:>5} "
                         f"{d['sentences_per_cpu_second'] or 0:>11.1f}")
        for title, rows in (("relation", self.local.by_relation), ("domain", self.local.by_domain)):
            lines += ["", f"local, by {title}:", f"{title:<16} {'P':>6} {'R':>6} {'F1':>6} {'tp':>5} {'fp':>5} {'fn':>5}"]
            for name, s in sorted(rows.items(), key=lambda kv: -(kv[1].tp + kv[1].fn)):
                lines.append(f"{name:<16} {s.precision:>6.3f} {s.recall:>6.3f} {s.f1:>6.3f} {s.tp:>5} {s.fp:>5} {s.fn:>5}")
        return "\n".join(lines)


def _baseline_triples(doc: Any) -> list[Key]:
    """Co-occurrence: each ordered pair of entities, linked by the main verb (and preposition)."""
    from engram.memory.extraction.vocabulary import ENTITY_KINDS, VERB_PATTERNS  # noqa: PLC0415

    out: list[Key] = []
    for sent in doc.sents:
        ents = [e for e in sent.ents if e.label_ in ENTITY_KINDS]
        lemma = sent.root.lemma_.lower()
        for i, a in enumerate(ents):
            for b in ents[i + 1:]:
                before = doc[b.start - 1].lower_ if b.start > 0 and doc[b.start - 1].pos_ == "ADP" else None
                relation = VERB_PATTERNS.get((lemma, before)) or VERB_PATTERNS.get((lemma, None)) or lemma
                out.append(_key(a.text, relation, b.text))
    return out


def run_extract_bench(limit: int | None = None, items: Sequence[Item] = LABELLED) -> ExtractReport:
    from engram.memory.extraction.local import LocalExtractor  # noqa: PLC0415 - spaCy only when it runs
    from engram.memory.extraction.model import load_pipeline  # noqa: PLC0415

    chosen = list(items[:limit] if limit else items)
    started = time.process_time()
    nlp = load_pipeline()
    load_cpu = time.process_time() - started
    texts = [text for _, text, _ in chosen]
    local, baseline = Evaluation("local"), Evaluation("baseline")

    extractor = LocalExtractor(nlp)
    cpu, wall = time.process_time(), time.perf_counter()
    extractions = extractor.extract_many(texts)
    local.cpu_seconds, local.wall_seconds = time.process_time() - cpu, time.perf_counter() - wall
    cpu, wall = time.process_time(), time.perf_counter()
    docs = list(nlp.pipe(texts))
    found_baseline = [_baseline_triples(doc) for doc in docs]
    baseline.cpu_seconds, baseline.wall_seconds = time.process_time() - cpu, time.perf_counter() - wall

    misses: list[dict[str, Any]] = []
    for (domain, text, gold), extraction, naive in zip(chosen, extractions, found_baseline, strict=True):
        gold_keys = [_key(*t) for t in gold]
        found = [_key(t.subject, t.relation, t.object) for t in extraction.triples]
        local.score(domain, gold_keys, found)
        baseline.score(domain, gold_keys, naive)
        if set(found) != set(gold_keys):
            misses.append({"text": text, "missed": sorted(set(gold_keys) - set(found)), "extra": sorted(set(found) - set(gold_keys))})
    local.sentences = baseline.sentences = len(chosen)
    return ExtractReport(len(chosen), load_cpu, local, baseline, misses)


@click.command("extract")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N labelled items.")
@click.option("--misses", "show_misses", is_flag=True, help="Also list the items the local extractor got wrong.")
@json_option
def bench_extract(limit: int | None, show_misses: bool, as_json: bool) -> None:
    """Knowledge extraction: precision/recall/F1 of (subject, relation, object) on engram's labelled set."""
    report = run_extract_bench(limit)

    def human(_: Any) -> None:
        click.echo(report.table())
        if show_misses:
            click.echo("\nmisses:")
            for m in report.misses:
                click.echo(f"  {m['text']}\n    missed {m['missed']}\n    extra  {m['extra']}")

    data = report.as_dict()
    if not show_misses:
        data.pop("misses")
    Output(as_json).emit(data, human)


def relation_counts(items: Sequence[Item] = LABELLED) -> Counter[str]:
    """How many labelled triples each relation type has (for the docs' table)."""
    return Counter(t[1] for _, _, triples in items for t in triples)
