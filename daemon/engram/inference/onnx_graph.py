"""The pieces of a hand-written transformer-encoder ONNX graph that BERT and MPNet share.

:class:`GraphBuilder` collects nodes and initializers; the functions below add one block each
(a dense layer, LayerNorm, exact GELU, multi-head self-attention, the additive padding mask,
mean pooling with L2 normalisation). Node shapes follow what ``torch.onnx.export`` emits for
Hugging Face's ``BertModel`` because that is what onnxruntime.transformers' fusions
(Attention, SkipLayerNormalization, BiasGelu) look for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    # onnx is imported where a graph is built: the daemon imports the builders at every start and
    # builds a graph only on an import.
    import onnx

__all__ = [
    "GraphBuilder",
    "LayerNames",
    "Weights",
    "additive_mask",
    "dense",
    "encoder_layer",
    "gelu",
    "layer_norm",
    "mean_pool_normalize",
    "self_attention",
]

Weights = Mapping[str, NDArray[np.float32]]


class GraphBuilder:
    """Collects nodes and initializers; every node has one output, named after the node."""

    def __init__(self, weights: Weights) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._weights = weights
        self._initializers: dict[str, NDArray[Any]] = {}
        self._constants: dict[tuple[str, tuple[float, ...]], str] = {}

    def _add_initializer(self, name: str, array: NDArray[Any]) -> str:
        if name in self._initializers:
            raise ValueError(f"duplicate initializer {name!r}")
        self._initializers[name] = array
        return name

    def param(self, key: str, *, transpose: bool = False) -> str:
        """The checkpoint tensor ``key`` as an initializer of the same name."""
        array = self._weights[key]
        return self._add_initializer(key, array.T if transpose else array)

    def const(self, values: float | list[int]) -> str:
        """A float32 scalar or an int64 vector, shared by every node that needs the same value."""
        key: tuple[str, tuple[float, ...]]
        if isinstance(values, list):
            key, array = ("i64", tuple(values)), np.array(values, dtype=np.int64)
        else:
            key, array = ("f32", (values,)), np.array(values, dtype=np.float32)
        if key not in self._constants:
            self._constants[key] = self._add_initializer(f"const.{len(self._constants)}", array)
        return self._constants[key]

    def table(self, name: str, array: NDArray[Any]) -> str:
        return self._add_initializer(name, array)

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def write_initializers(self, graph: onnx.GraphProto) -> None:
        """Serialise the weights straight into ``graph``.

        Built field by field rather than with ``numpy_helper.from_array`` + ``make_graph``, which
        would copy every tensor twice more: the difference between 2 and 4 times the model's size in
        memory for a large model.
        """
        from onnx import helper

        for name, array in self._initializers.items():
            tensor = graph.initializer.add()
            tensor.name = name
            tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
            tensor.dims.extend(array.shape)
            # ONNX raw_data is little-endian, C order; tobytes() also linearises transposed views.
            tensor.raw_data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def dense(g: GraphBuilder, x: str, key: str) -> str:
    """x·Wᵀ + b, with W stored transposed (in, out) like the exporter stores it."""
    product = g.op("MatMul", [x, g.param(f"{key}.weight", transpose=True)], f"{key}.matmul")
    return g.op("Add", [product, g.param(f"{key}.bias")], f"{key}.out")


def layer_norm(g: GraphBuilder, x: str, key: str, eps: float) -> str:
    inputs = [x, g.param(f"{key}.weight"), g.param(f"{key}.bias")]
    return g.op("LayerNormalization", inputs, f"{key}.out", axis=-1, epsilon=eps)


def gelu(g: GraphBuilder, x: str, name: str) -> str:
    """Exact GELU, x·(1 + erf(x/√2))·½ (BERT's "gelu"; the tanh form differs by up to 1e-3)."""
    erf = g.op("Erf", [g.op("Div", [x, g.const(math.sqrt(2.0))], f"{name}.scaled")], f"{name}.erf")
    gated = g.op("Mul", [x, g.op("Add", [erf, g.const(1.0)], f"{name}.gate")], f"{name}.gated")
    return g.op("Mul", [gated, g.const(0.5)], f"{name}.out")


def additive_mask(g: GraphBuilder) -> str:
    """[batch, 1, 1, seq] float: 0 where attended, -10000 at padding.

    -10000 rather than float32's minimum: exp() of it is already exactly 0 in float32, and it
    cannot overflow to -inf when added to a score.
    """
    from onnx import TensorProto

    mask = g.op("Unsqueeze", ["attention_mask", g.const([1])], "mask.unsqueeze1")
    mask = g.op("Unsqueeze", [mask, g.const([2])], "mask.unsqueeze2")
    mask = g.op("Cast", [mask], "mask.float", to=TensorProto.FLOAT)
    mask = g.op("Sub", [g.const(1.0), mask], "mask.inverted")
    return g.op("Mul", [mask, g.const(-10000.0)], "mask.additive")


def _heads(g: GraphBuilder, x: str, heads: int, head_size: int, name: str, perm: list[int]) -> str:
    # Reshape's 0 keeps that dimension, so one constant shape serves every batch and length.
    split = g.op("Reshape", [x, g.const([0, 0, heads, head_size])], f"{name}.heads")
    return g.op("Transpose", [split], f"{name}.transposed", perm=perm)


def self_attention(
    g: GraphBuilder, x: str, additive: str, *, heads: int, head_size: int, q: str, k: str, v: str, out: str, name: str
) -> str:
    """softmax(Q·Kᵀ/√d + additive)·V through the output projection, plus the residual ``x``.

    ``q``, ``k``, ``v`` and ``out`` are the checkpoint keys of the four projections; ``additive``
    is added to every head's scores (the padding mask, broadcast; for MPNet the mask plus the
    relative position bias).
    """
    p = name
    queries = _heads(g, dense(g, x, q), heads, head_size, f"{p}.q", [0, 2, 1, 3])
    keys = _heads(g, dense(g, x, k), heads, head_size, f"{p}.k", [0, 2, 3, 1])  # [b, h, d, s]: Q·Kᵀ is one MatMul
    values = _heads(g, dense(g, x, v), heads, head_size, f"{p}.v", [0, 2, 1, 3])
    scores = g.op("Div", [g.op("MatMul", [queries, keys], f"{p}.qk"), g.const(math.sqrt(head_size))], f"{p}.scaled")
    probs = g.op("Softmax", [g.op("Add", [scores, additive], f"{p}.masked")], f"{p}.probs", axis=-1)
    context = g.op("Transpose", [g.op("MatMul", [probs, values], f"{p}.context")], f"{p}.context_t", perm=[0, 2, 1, 3])
    merged = g.op("Reshape", [context, g.const([0, 0, heads * head_size])], f"{p}.merged")
    return g.op("Add", [dense(g, merged, out), x], f"{out}.residual")


def mean_pool_normalize(g: GraphBuilder, hidden: str) -> str:
    """Mean over real tokens, then x / max(‖x‖, 1e-12), as sentence-transformers computes it."""
    from onnx import TensorProto

    mask_float = g.op("Cast", ["attention_mask"], "pool.mask_float", to=TensorProto.FLOAT)
    mask = g.op("Unsqueeze", [mask_float, g.const([-1])], "pool.mask")
    summed = g.op("ReduceSum", [g.op("Mul", [hidden, mask], "pool.masked"), g.const([1])], "pool.sum", keepdims=0)
    count = g.op("ReduceSum", [mask, g.const([1])], "pool.count", keepdims=0)
    # An all-padding row would divide by 0; sentence-transformers clamps the count at 1e-9 too.
    count = g.op("Max", [count, g.const(1e-9)], "pool.count_clamped")
    mean = g.op("Div", [summed, count], "pool.mean")
    squares = g.op("ReduceSum", [g.op("Mul", [mean, mean], "norm.squares"), g.const([1])], "norm.sum_squares",
                   keepdims=1)
    length = g.op("Max", [g.op("Sqrt", [squares], "norm.length"), g.const(1e-12)], "norm.clamped")
    return g.op("Div", [mean, length], "sentence_embedding")


@dataclass(frozen=True, slots=True)
class LayerNames:
    """Where an encoder layer keeps its attention tensors, under ``encoder.layer.N.``: BERT and
    MPNet name them differently and agree on the rest (``intermediate.dense``, ``output.dense``,
    ``output.LayerNorm``)."""

    q: str
    k: str
    v: str
    out: str  # the attention's output projection
    attention_norm: str  # the LayerNorm after the attention's residual
    attention: str  # the attention block's node name prefix

    def shapes(self, n: int, hidden: int, intermediate: int) -> dict[str, tuple[int, ...]]:
        """Layer ``n``'s tensor names with their shapes."""
        layer = f"encoder.layer.{n}"
        shapes: dict[str, tuple[int, ...]] = {}
        for proj in (self.q, self.k, self.v, self.out):
            shapes[f"{layer}.{proj}.weight"] = (hidden, hidden)
            shapes[f"{layer}.{proj}.bias"] = (hidden,)
        for norm in (self.attention_norm, "output.LayerNorm"):
            shapes[f"{layer}.{norm}.weight"] = (hidden,)
            shapes[f"{layer}.{norm}.bias"] = (hidden,)
        shapes[f"{layer}.intermediate.dense.weight"] = (intermediate, hidden)
        shapes[f"{layer}.intermediate.dense.bias"] = (intermediate,)
        shapes[f"{layer}.output.dense.weight"] = (hidden, intermediate)
        shapes[f"{layer}.output.dense.bias"] = (hidden,)
        return shapes


def encoder_layer(g: GraphBuilder, x: str, mask: str, n: int, names: LayerNames, *, heads: int, head_size: int,
                  eps: float) -> str:
    """Layer ``n``: self-attention → residual + LayerNorm → dense → GELU → dense → residual + LayerNorm."""
    layer = f"encoder.layer.{n}"
    attended = self_attention(
        g, x, mask, heads=heads, head_size=head_size, q=f"{layer}.{names.q}", k=f"{layer}.{names.k}",
        v=f"{layer}.{names.v}", out=f"{layer}.{names.out}", name=f"{layer}.{names.attention}",
    )
    attended = layer_norm(g, attended, f"{layer}.{names.attention_norm}", eps)
    inner = gelu(g, dense(g, attended, f"{layer}.intermediate.dense"), f"{layer}.intermediate.gelu")
    residual = g.op("Add", [dense(g, inner, f"{layer}.output.dense"), attended], f"{layer}.output.residual")
    return layer_norm(g, residual, f"{layer}.output.LayerNorm", eps)
