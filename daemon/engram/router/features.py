"""Complexity features of a request, computed before (and, for the confidence, after) the fast
target runs. Every feature is scaled to roughly [0, 1] so that one set of prior weights fits
inputs of any kind.

Novelty is the cosine distance to the nearest remembered input of the route in episodic memory
(novelty.py); :class:`NoveltyWindow` (a bounded window of cheap sketches in RAM) stands in when the
router runs without memory or a text could not be embedded. "seen" is an exact-hash repeat.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import deque

import numpy as np

__all__ = ["FEATURES", "NoveltyWindow", "input_hash", "sketch_tensor", "sketch_text", "tensor_features", "text_features"]

FEATURES = ("bias", "log_size", "spread", "entropy", "novelty", "seen", "depth", "has_conf", "low_conf", "low_margin")

_SKETCH = 64
_CLAUSE = re.compile(r"[,;:]|\b(and|or|but|because|which|that|if|when|while|although|whereas|unless)\b", re.IGNORECASE)
_WORD = re.compile(r"\w+")


def input_hash(kind: str, payload: bytes) -> str:
    return hashlib.sha256(kind.encode() + b"\0" + payload).hexdigest()


def _entropy(values: np.ndarray, bins: int = 16) -> float:
    """Normalised Shannon entropy of the value histogram: 0 constant, 1 uniform."""
    if values.size == 0:
        return 0.0
    finite = values[np.isfinite(values)]
    if finite.size == 0 or float(finite.max()) == float(finite.min()):
        return 0.0
    counts, _ = np.histogram(finite, bins=bins)
    p = counts[counts > 0] / finite.size
    return float(-(p * np.log(p)).sum() / math.log(bins))


def tensor_features(array: np.ndarray) -> dict[str, float]:
    values = np.asarray(array, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)] if values.size else values
    std = float(finite.std()) if finite.size else 0.0
    mean = float(np.abs(finite).mean()) if finite.size else 0.0
    return {
        "log_size": min(math.log1p(values.size) / 16.0, 1.0),
        "spread": std / (mean + std) if mean + std > 0 else 0.0,
        "entropy": _entropy(finite),
        "depth": 0.0,
    }


def text_features(text: str) -> dict[str, float]:
    """Size, character entropy and a semantic-depth estimate from length, clauses and questions."""
    words = _WORD.findall(text)
    clauses = len(_CLAUSE.findall(text))
    questions = text.count("?")
    sentences = max(1, len(re.findall(r"[.!?]+", text)))
    codes = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.float64)
    lengths = [len(w) for w in words] or [0]
    depth = (
        0.35 * min(len(words) / 200.0, 1.0)
        + 0.3 * min(clauses / 10.0, 1.0)
        + 0.2 * min(questions / 3.0, 1.0)
        + 0.15 * min((len(words) / sentences) / 40.0, 1.0)
    )
    return {
        "log_size": min(math.log1p(len(text)) / 16.0, 1.0),
        "spread": min(float(np.std(lengths)) / 10.0, 1.0),
        "entropy": _entropy(codes, bins=32),
        "depth": float(min(depth, 1.0)),
    }


def sketch_tensor(array: np.ndarray) -> np.ndarray:
    """A fixed-size, unit-length summary of a tensor (resampled to 64 values) for novelty."""
    values = np.nan_to_num(np.asarray(array, dtype=np.float64).ravel())
    if values.size == 0:
        return np.zeros(_SKETCH, np.float32)
    sketch = np.interp(np.linspace(0, values.size - 1, _SKETCH), np.arange(values.size), values)
    sketch = sketch - sketch.mean()
    norm = np.linalg.norm(sketch)
    return (sketch / norm if norm > 0 else sketch).astype(np.float32)


def sketch_text(text: str) -> np.ndarray:
    """Hashed character trigrams, unit length: cheap, model-free text similarity for novelty."""
    vector = np.zeros(_SKETCH, np.float32)
    lowered = f"  {text.lower()}  "
    for i in range(len(lowered) - 2):
        digest = hashlib.blake2b(lowered[i : i + 3].encode(), digest_size=2).digest()
        vector[int.from_bytes(digest, "little") % _SKETCH] += 1.0
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


class NoveltyWindow:
    """The last ``size`` input sketches of one route; novelty = 1 - the best cosine similarity."""

    def __init__(self, size: int) -> None:
        self._items: deque[np.ndarray] = deque(maxlen=size)

    def novelty(self, sketch: np.ndarray) -> float:
        if not self._items:
            return 1.0
        best = float(np.max(np.stack(self._items) @ sketch))
        return float(min(max(1.0 - best, 0.0), 1.0))

    def add(self, sketch: np.ndarray) -> None:
        self._items.append(sketch)
