"""The MPNet parts of the sentence-embedding graph (all-mpnet-base-v2 and its kin).

MPNet (Hugging Face ``modeling_mpnet``) is a BERT encoder with three differences, all here:

* no token type embeddings, so the graph takes only ``input_ids`` and ``attention_mask``;
* RoBERTa-style position ids, ``cumsum(mask) * mask + padding_idx``: real tokens count from
  ``padding_idx + 1`` and padding sits on ``padding_idx``;
* a learnt relative position bias added to every layer's attention scores:
  ``bias[h, i, j] = relative_attention_bias[bucket(j - i), h]``, computed once and shared by all
  layers. The bucket of each (i, j) pair is precomputed as a table and sliced to the batch's length.

The tensor names differ too (``attention.attn.{q,k,v,o}``, ``attention.LayerNorm``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from engram.inference.onnx_graph import GraphBuilder, LayerNames, encoder_layer, layer_norm

if TYPE_CHECKING:
    from engram.inference.bert_onnx import BertConfig

__all__ = ["MAX_DISTANCE", "mpnet_encoder", "mpnet_shapes", "relative_position_buckets"]

MPNET_LAYER = LayerNames(q="attention.attn.q", k="attention.attn.k", v="attention.attn.v", out="attention.attn.o",
                         attention_norm="attention.LayerNorm", attention="attention.attn")
"""Where Hugging Face's ``MPNetModel`` keeps a layer's attention tensors."""

MAX_DISTANCE = 128
"""Relative distances from this on share the last bucket (fixed in ``modeling_mpnet``)."""


def mpnet_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    """Canonical (prefix-free) tensor names an MPNet graph needs, with their shapes."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (cfg.vocab_size, h),
        "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
        "encoder.relative_attention_bias.weight": (cfg.relative_attention_num_buckets, cfg.num_attention_heads),
    }
    for n in range(cfg.num_hidden_layers):
        shapes.update(MPNET_LAYER.shapes(n, h, i))
    return shapes


def relative_position_buckets(length: int, num_buckets: int, max_distance: int = MAX_DISTANCE) -> NDArray[np.int64]:
    """``[length, length]``: the bias bucket of key position j seen from query position i.

    ``modeling_mpnet``'s ``relative_position_bucket`` of ``j - i``: half the buckets for keys
    before the query, half for keys after; in each half, distances below a quarter of the buckets
    get a bucket each and longer ones share buckets on a log scale up to ``max_distance``.
    """
    relative = np.arange(length)[None, :] - np.arange(length)[:, None]
    half = num_buckets // 2
    exact = half // 2
    n = -relative
    buckets = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    # float32 as in the reference (torch computes this in float32); max(n, 1) only keeps log() off
    # zero, where the exact branch is taken anyway.
    ratio = np.maximum(n, 1).astype(np.float32) / np.float32(exact)
    scaled = np.log(ratio) / np.float32(math.log(max_distance / exact))
    large = np.minimum(exact + (scaled * np.float32(half - exact)).astype(np.int64), half - 1)
    return buckets + np.where(n < exact, n, large)


def _embeddings(g: GraphBuilder, cfg: BertConfig) -> str:
    words = g.op("Gather", [g.param("embeddings.word_embeddings.weight"), "input_ids"], "embeddings.words")
    # RoBERTa-style positions from the mask: 1 + padding_idx, 2 + padding_idx, ... on real tokens,
    # padding_idx itself on padding.
    counted = g.op("CumSum", ["attention_mask", g.table("const.seq_axis", np.array(1, dtype=np.int64))],
                   "embeddings.counted")
    on_tokens = g.op("Mul", [counted, "attention_mask"], "embeddings.counted_tokens")
    padding_idx = g.table("const.padding_idx", np.array(cfg.pad_token_id, dtype=np.int64))
    position_ids = g.op("Add", [on_tokens, padding_idx], "embeddings.position_ids")
    positions = g.op("Gather", [g.param("embeddings.position_embeddings.weight"), position_ids],
                     "embeddings.positions")
    summed = g.op("Add", [words, positions], "embeddings.sum")
    return layer_norm(g, summed, "embeddings.LayerNorm", cfg.layer_norm_eps)


def _position_bias(g: GraphBuilder, cfg: BertConfig) -> str:
    """[1, heads, seq, seq]: the relative position bias, the same for every layer and row."""
    shape = g.op("Shape", ["input_ids"], "bias.input_shape")
    seq_len = g.op("Slice", [shape, g.const([1]), g.const([2])], "bias.seq_len")
    ends = g.op("Concat", [seq_len, seq_len], "bias.ends", axis=0)
    table = g.table("encoder.relative_position_buckets",
                    relative_position_buckets(cfg.max_position_embeddings, cfg.relative_attention_num_buckets))
    buckets = g.op("Slice", [table, g.const([0, 0]), ends, g.const([0, 1])], "bias.buckets")
    values = g.op("Gather", [g.param("encoder.relative_attention_bias.weight"), buckets], "bias.values")  # [s, s, h]
    per_head = g.op("Transpose", [values], "bias.per_head", perm=[2, 0, 1])
    return g.op("Unsqueeze", [per_head, g.const([0])], "bias.out")


def mpnet_encoder(g: GraphBuilder, cfg: BertConfig, mask: str) -> str:
    """The last hidden state ``[batch, seq, hidden]`` from ``input_ids`` and ``attention_mask``.

    ``mask`` is the additive padding mask; the position bias is added to it once, so each layer
    adds one ``[batch, heads, seq, seq]`` tensor to its scores, as a BERT layer adds the mask.
    """
    hidden = _embeddings(g, cfg)
    additive = g.op("Add", [mask, _position_bias(g, cfg)], "bias.masked")
    for n in range(cfg.num_hidden_layers):
        hidden = encoder_layer(g, hidden, additive, n, MPNET_LAYER, heads=cfg.num_attention_heads,
                               head_size=cfg.head_size, eps=cfg.layer_norm_eps)
    return hidden
