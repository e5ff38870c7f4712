"""What the cascade needs to judge an answer: a classifier's confidence and whether two answers agree.

Confidence of a classifier is taken from its score output: probabilities when the rows already
are (values in [0, 1] summing to 1), a softmax of them otherwise (logits). For a batch of rows
the least confident row counts: the request escalates if any row is in doubt.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["agreement", "confidence", "probabilities", "score_output"]


def score_output(outputs: dict[str, np.ndarray], wanted: str | None) -> str | None:
    """The output holding class scores: ``wanted``, else the first 2-D float output."""
    if wanted is not None:
        return wanted if wanted in outputs else None
    for name, array in outputs.items():
        if array.ndim == 2 and np.issubdtype(array.dtype, np.floating) and array.shape[1] >= 2:
            return name
    return None


def probabilities(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size and scores.min() >= 0 and scores.max() <= 1 and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return scores
    shifted = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def confidence(probs: np.ndarray, kind: Literal["max_prob", "margin"] = "max_prob") -> tuple[float, float]:
    """(confidence per ``kind``, margin), each the minimum over rows."""
    if probs.size == 0:
        return 1.0, 1.0
    top = np.sort(probs, axis=1)[:, ::-1]
    margin = top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0.0)
    chosen = top[:, 0] if kind == "max_prob" else margin
    return float(chosen.min()), float(margin.min())


def agreement(task: str, fast: dict[str, np.ndarray], slow: dict[str, np.ndarray], output: str | None) -> bool | None:
    """Do the two answers agree? Classify: same top class on every row. Embed: cosine >= 0.9 on
    every row (only when both vectors have the same width). None when they cannot be compared."""
    if task == "classify":
        a, b = score_output(fast, output), score_output(slow, output)
        if a is None or b is None or fast[a].shape[0] != slow[b].shape[0]:
            return None
        return bool(np.array_equal(fast[a].argmax(axis=1), slow[b].argmax(axis=1)))
    if task == "embed":
        a, b = fast.get("vectors"), slow.get("vectors")
        if a is None or b is None or a.shape != b.shape:
            return None
        return bool(np.all(np.sum(a * b, axis=1) >= 0.9))
    return None
