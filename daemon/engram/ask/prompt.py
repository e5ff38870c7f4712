"""The prompt of ``route.ask``: memories as :class:`Source` lines, most relevant first, within a
character budget; the template filled in; the concept names a question may hold."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Source", "build_prompt", "concept_candidates", "fill_template", "truncate_bytes"]

TIER_ORDER = {"working": 0, "semantic": 1, "episodic": 2}  # ties in score: the session first, then facts
_MAX_NGRAM = 4  # words in the longest concept name looked for in the question
_MAX_CANDIDATES = 900  # n-grams looked up at most (one SQL statement)
_WORD = re.compile(r"[\w][\w'’.-]*")
_POSSESSIVE = re.compile(r"['’]s$", re.IGNORECASE)
_TEMPLATE_FIELD = re.compile(r"\{(context|question)\}")


@dataclass(frozen=True)
class Source:
    tier: str
    id: str
    text: str
    score: float
    tags: tuple[str, ...] = field(default=())

    def line(self) -> str:
        return f"- [{self.tier}] {' '.join(self.text.split())}"


def build_prompt(sources: Iterable[Source], budget: int) -> tuple[str, list[Source]]:
    """The context block and the sources it carries: most relevant (highest score) first, one line
    each, a text seen already skipped, and a line that does not fit in ``budget`` characters left
    out (a shorter one after it may still fit)."""
    ranked = sorted(sources, key=lambda s: (-s.score, TIER_ORDER.get(s.tier, 9)))
    lines: list[str] = []
    used: list[Source] = []
    seen: set[str] = set()
    size = 0
    for source in ranked:
        line = source.line()
        norm = " ".join(source.text.split()).casefold()
        if not norm or norm in seen:
            continue
        cost = len(line) + (1 if lines else 0)
        if size + cost > budget:
            continue
        seen.add(norm)
        lines.append(line)
        used.append(source)
        size += cost
    return "\n".join(lines), used


def fill_template(template: str, context: str, question: str) -> str:
    """One pass over the template: a question that contains "{context}" stays as it is."""
    values = {"context": context, "question": question}
    return _TEMPLATE_FIELD.sub(lambda m: values[m.group(1)], template)


def concept_candidates(question: str) -> list[str]:
    """Names the question might give a concept: its runs of 1..4 words, longest first, each also
    with possessives dropped ("Ada's" names Ada), case folded and each once (memory matches
    concept names case aside, so case variants would be the same lookup)."""
    words = [w.strip(".'’-") for w in _WORD.findall(question)]
    words = [w for w in words if w]
    bare = [_POSSESSIVE.sub("", w) or w for w in words]
    out: dict[str, None] = {}
    for n in range(min(_MAX_NGRAM, len(words)), 0, -1):
        for i in range(len(words) - n + 1):
            for seq in (words, bare):
                out.setdefault(" ".join(seq[i : i + n]).casefold(), None)
            if len(out) >= _MAX_CANDIDATES:
                return list(out)[:_MAX_CANDIDATES]
    return list(out)


def truncate_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, "..." marking a cut."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: max(limit - 3, 0)].decode("utf-8", errors="ignore") + "..."
