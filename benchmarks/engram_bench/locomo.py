"""LoCoMo (Maharana et al., ACL 2024) read as turns, questions and their evidence.

The data set is not part of engram (CC BY-NC 4.0): it is read at run time from the path given to
``engram bench recall --locomo``. One file holds a list of conversations; each has
``conversation`` (``speaker_a``, ``speaker_b``, ``session_N_date_time`` such as ``"1:56 pm on 8
May, 2023"``, ``session_N``: turns ``{"speaker", "dia_id": "D1:3", "text", "blip_caption"?}``)
and ``qa`` (``{"question", "answer" | "adversarial_answer", "evidence": ["D1:3", ...],
"category"}``; categories 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial).

A few evidence ids are malformed upstream (``"D8:6; D9:17"``, ``"D:11:26"``, ``"D30:05"``);
:func:`evidence_ids` splits and normalises them.

The metric is the paper's (Table 3): per question, the fraction of its evidence turns among the
top k retrieved, a question without evidence counting as 1, averaged over questions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["CATEGORIES", "Conversation", "Question", "Turn", "evidence_ids", "load", "recall_at"]

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}

_DIA_ID = re.compile(r"D\s*:?\s*(\d+)\s*:\s*(\d+)")
_SESSION_KEY = re.compile(r"session_(\d+)$")


@dataclass(frozen=True, slots=True)
class Turn:
    dia_id: str
    session: int
    speaker: str
    text: str
    caption: str | None
    time: float  # the session's date, seconds since the epoch (UTC)


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    category: int
    evidence: frozenset[str]


@dataclass(frozen=True, slots=True)
class Conversation:
    name: str
    speakers: tuple[str, str]
    turns: list[Turn]
    questions: list[Question]


def evidence_ids(raw: Iterable[str]) -> frozenset[str]:
    """``D<session>:<turn>`` ids from the evidence list, however they were written."""
    return frozenset(f"D{int(s)}:{int(t)}" for item in raw for s, t in _DIA_ID.findall(item))


def session_time(text: str) -> float:
    """``"1:56 pm on 8 May, 2023"`` as seconds since the epoch (the data gives no zone: UTC)."""
    return datetime.strptime(" ".join(text.split()), "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC).timestamp()


def _conversation(index: int, raw: dict) -> Conversation:
    body = raw["conversation"]
    turns: list[Turn] = []
    sessions = sorted(int(m.group(1)) for key in body if (m := _SESSION_KEY.match(key)))
    for n in sessions:
        when = session_time(body[f"session_{n}_date_time"])
        for turn in body[f"session_{n}"]:
            (dia_id,) = evidence_ids([turn["dia_id"]])
            turns.append(Turn(dia_id, n, turn["speaker"], turn["text"], turn.get("blip_caption"), when))
    questions = [
        Question(q["question"], int(q["category"]), evidence_ids(q.get("evidence", []))) for q in raw.get("qa", [])
    ]
    name = str(raw.get("sample_id", f"conversation-{index + 1}"))
    return Conversation(name, (body["speaker_a"], body["speaker_b"]), turns, questions)


def load(path: Path) -> list[Conversation]:
    """Every conversation of a LoCoMo file (ValueError with the reason when it is not one)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return [_conversation(i, c) for i, c in enumerate(raw)]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a LoCoMo file ({type(exc).__name__}: {exc})") from None


def recall_at(found: Sequence[str], evidence: frozenset[str], k: int) -> float:
    """The share of ``evidence`` among the first ``k`` of ``found`` (1.0 without evidence)."""
    if not evidence:
        return 1.0
    return len(evidence.intersection(found[:k])) / len(evidence)
