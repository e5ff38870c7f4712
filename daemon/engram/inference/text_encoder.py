"""Text → BERT input tensors, with the ``tokenizers`` library and nothing else.

:class:`TextEncoder` turns strings into the three int64 arrays a BERT graph takes
(``input_ids``, ``attention_mask``, ``token_type_ids``), truncating every text to the model's
maximum sequence length and padding a batch only to its own longest member. :meth:`TextEncoder.batches`
groups texts of similar length so that short texts do not pay for a long neighbour's padding.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tokenizers import Encoding, Tokenizer

from engram.errors import ConfigError, InvalidParams

__all__ = [
    "RUN_OVERHEAD_TOKENS",
    "EncodedBatch",
    "TextEncoder",
    "length_buckets",
    "padding_aware_buckets",
    "resolve_max_seq_len",
]

# tokenizer_config.json uses this huge value (int(1e30)) to mean "no limit"; anything above it
# is treated as unset rather than as a real limit.
_UNBOUNDED_MODEL_MAX_LENGTH = 1_000_000


@dataclass(frozen=True)
class EncodedBatch:
    """One padded batch: three ``int64 [batch, seq]`` arrays plus per-row bookkeeping."""

    input_ids: NDArray[np.int64]
    attention_mask: NDArray[np.int64]
    token_type_ids: NDArray[np.int64]
    lengths: NDArray[np.int64]
    """Real (unpadded) token count of each row, special tokens included."""
    truncated: NDArray[np.bool_]
    """Whether the row's text was cut to fit the maximum sequence length."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def feed(self) -> dict[str, NDArray[np.int64]]:
        """The ONNX Runtime input feed (names match the graph's inputs)."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    return data


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def resolve_max_seq_len(model_dir: Path) -> int:
    """The longest sequence (special tokens included) the model should be fed.

    The first limit found wins, then it is capped by ``max_position_embeddings``:

    1. ``sentence_bert_config.json`` ``max_seq_length``: sentence-transformers passes it on every
       call, overriding the tokenizer's own setting, and the model was trained with it (256 for
       all-MiniLM-L6-v2 even though its ``tokenizer.json`` says 128);
    2. ``tokenizer.json`` ``truncation.max_length``;
    3. ``tokenizer_config.json`` ``model_max_length`` when it is a real limit.
    """
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    if config is None:
        raise ConfigError(f"{model_dir} has no config.json")
    positions = _positive_int(config.get("max_position_embeddings"))
    if positions is None:
        raise ConfigError(f"{model_dir / 'config.json'}: max_position_embeddings must be a positive integer")

    sbert = _read_json(model_dir / "sentence_bert_config.json") or {}
    tokenizer = _read_json(model_dir / "tokenizer.json") or {}
    truncation = tokenizer.get("truncation")  # null when the tokenizer does not truncate
    if not isinstance(truncation, dict):
        truncation = {}
    tokenizer_config = _read_json(model_dir / "tokenizer_config.json") or {}
    model_max = _positive_int(tokenizer_config.get("model_max_length"))
    if model_max is not None and model_max > _UNBOUNDED_MODEL_MAX_LENGTH:
        model_max = None

    for candidate in (
        _positive_int(sbert.get("max_seq_length")),
        _positive_int(truncation.get("max_length")),
        model_max,
    ):
        if candidate is not None:
            return min(candidate, positions)
    return positions


def length_buckets(lengths: Sequence[int] | NDArray[np.integer], batch_size: int) -> list[NDArray[np.intp]]:
    """Split row indices into batches of at most ``batch_size`` rows of similar length.

    Longest first, so that the batch needing the most memory runs first and a failure shows at
    once rather than at the end of a long job. The sort is stable: equal lengths keep input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


RUN_OVERHEAD_TOKENS = 8
"""The fixed cost of one run of a BERT embedder, in token-rows. Measured for all-MiniLM-L6-v2 on
one CPU thread (docs/inference.md, "Dynamic batching"): a run of ``rows x width`` tokens took about
4 ms plus 0.66 ms per token-row, so a run is worth about 6 token-rows; an estimate of 64 let
batches pad away more than batching saved."""


def padding_aware_buckets(
    lengths: Sequence[int] | NDArray[np.integer], batch_size: int, overhead_tokens: int = RUN_OVERHEAD_TOKENS
) -> list[NDArray[np.intp]]:
    """Like :func:`length_buckets`, but cut where padding would cost more than another run.

    A run of ``rows`` texts padded to ``width`` tokens costs about ``overhead_tokens + rows * width``
    (a run has a fixed cost, worth a few token-rows on a CPU). Over the texts sorted
    longest first, the cheapest split into runs of at most ``batch_size`` is found by dynamic
    programming: a handful of texts of similar length run together, a long one does not make
    thirty short ones pay for its width. For more than 1024 texts (one big request, already
    cut into well-filled batches) it falls back to :func:`length_buckets`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    widths = np.asarray(lengths, dtype=np.int64)
    if len(widths) > 1024:
        return length_buckets(widths, batch_size)
    order = np.argsort(-widths, kind="stable")
    sorted_widths = widths[order].tolist()
    n = len(sorted_widths)
    best = [0.0] + [float("inf")] * n  # best[i]: cheapest cost of the first i texts
    start = [0] * (n + 1)
    for end in range(1, n + 1):
        for begin in range(max(0, end - batch_size), end):
            cost = best[begin] + overhead_tokens + (end - begin) * sorted_widths[begin]
            if cost < best[end]:
                best[end], start[end] = cost, begin
    buckets: list[NDArray[np.intp]] = []
    end = n
    while end > 0:
        buckets.append(order[start[end] : end])
        end = start[end]
    return buckets[::-1]


class TextEncoder:
    """A ``tokenizers.Tokenizer`` set up to truncate to ``max_seq_len`` and never pad by itself.

    Padding is done here instead of by the tokenizer because a ``tokenizer.json`` may ask for
    fixed-length padding (all-MiniLM-L6-v2's pads everything to 128), which would waste compute
    on short texts. The tokenizer passed in is reconfigured in place.
    """

    def __init__(self, tokenizer: Tokenizer, max_seq_len: int) -> None:
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len must leave room for [CLS] and [SEP], not {max_seq_len}")
        self._tokenizer = tokenizer
        self._pad_id = self._find_pad_id(tokenizer)
        self._max_seq_len = max_seq_len
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_seq_len)

    @classmethod
    def from_model_dir(cls, model_dir: Path, max_seq_len: int | None = None) -> TextEncoder:
        """Load ``tokenizer.json`` from a model directory; ``max_seq_len`` defaults to the model's."""
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ConfigError(f"{model_dir} has no tokenizer.json")
        limit = resolve_max_seq_len(model_dir)
        return cls(Tokenizer.from_file(str(path)), limit if max_seq_len is None else min(max_seq_len, limit))

    @property
    def max_seq_len(self) -> int:
        return self._max_seq_len

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @staticmethod
    def _find_pad_id(tokenizer: Tokenizer) -> int:
        padding = tokenizer.padding
        if padding is not None:
            return int(padding["pad_id"])
        pad = tokenizer.token_to_id("[PAD]")
        return 0 if pad is None else pad

    def _encode(self, texts: Sequence[str]) -> list[Encoding]:
        if isinstance(texts, str):
            raise TypeError("pass a sequence of strings, not a single string")
        return self._tokenizer.encode_batch(list(texts))

    def _pad(self, encodings: Sequence[Encoding]) -> EncodedBatch:
        rows = len(encodings)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=rows)
        width = int(lengths.max()) if rows else 0
        input_ids = np.full((rows, width), self._pad_id, dtype=np.int64)
        attention_mask = np.zeros((rows, width), dtype=np.int64)
        token_type_ids = np.zeros((rows, width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            input_ids[row, :n] = encoding.ids
            attention_mask[row, :n] = 1
            token_type_ids[row, :n] = encoding.type_ids
        truncated = np.fromiter((bool(e.overflowing) for e in encodings), dtype=np.bool_, count=rows)
        return EncodedBatch(input_ids, attention_mask, token_type_ids, lengths, truncated)

    def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        """Tokenize ``texts`` for :meth:`batches_of`; a text the tokenizer refuses (a lone UTF-16
        surrogate, say) is an :class:`~engram.errors.InvalidParams` naming its index.

        Meant to run on each request's texts alone, before they share a batch with another
        request's: a text that fails here then fails only the request that sent it.
        """
        try:
            return self._encode(texts)
        except (TypeError, ValueError) as exc:
            index = next((i for i, text in enumerate(texts) if not self._accepts(text)), None)
            field = "texts" if index is None else f"texts.{index}"
            raise InvalidParams(f"{field}: the tokenizer refused the text ({exc})", field=field) from None

    def _accepts(self, text: str) -> bool:
        try:
            self._tokenizer.encode(text)
        except (TypeError, ValueError):
            return False
        return True

    def encode(self, texts: Sequence[str]) -> EncodedBatch:
        """Tokenize ``texts`` as one batch, padded to its longest row."""
        return self._pad(self._encode(texts))

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text after truncation, special tokens included."""
        return [len(e.ids) for e in self._encode(texts)]

    def batches(
        self,
        texts: Sequence[str],
        batch_size: int,
        split: Callable[[list[int], int], list[NDArray[np.intp]]] = length_buckets,
    ) -> Iterator[tuple[NDArray[np.intp], EncodedBatch]]:
        """Yield ``(indices, batch)`` pairs covering ``texts`` once, grouped by token length.

        ``indices`` are positions in ``texts``: row ``i`` of ``batch`` is ``texts[indices[i]]``.
        Tokenizing everything first costs little next to the model and gives exact lengths.
        ``split`` decides the groups from the lengths (:func:`length_buckets` or
        :func:`padding_aware_buckets`).
        """
        return self.batches_of(self._encode(texts), batch_size, split)

    def batches_of(
        self,
        encodings: Sequence[Encoding],
        batch_size: int,
        split: Callable[[list[int], int], list[NDArray[np.intp]]] = length_buckets,
    ) -> Iterator[tuple[NDArray[np.intp], EncodedBatch]]:
        """:meth:`batches` of texts already tokenized (by :meth:`tokenize`)."""
        for indices in split([len(e.ids) for e in encodings], batch_size):
            yield indices, self._pad([encodings[i] for i in indices])
