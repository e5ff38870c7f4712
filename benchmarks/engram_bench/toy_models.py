"""Small ONNX graphs written with ``onnx.helper``: for tests, examples and smoke runs.

Each function writes one ``.onnx`` file and returns its path. They are real models (ONNX Runtime
runs them), just tiny and with known answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["identity_model", "linear_model", "sequence_model", "write_model"]

IR_VERSION = 10  # what every ONNX Runtime since 1.20 reads
OPSET = 21


def write_model(path: Path, graph: onnx.GraphProto, opset: int = OPSET, check: bool = True) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION,
                              producer_name="engram-toy")
    if check:  # the checker wants every graph output to have a shape; ONNX Runtime does not
        onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def linear_model(path: Path, inputs: int = 4, outputs: int = 3, seed: int = 0, batch: str | int = "batch") -> Path:
    """``y = x·W + b`` and ``relu = max(y, 0)``: float32 ``[batch, inputs]`` -> ``[batch, outputs]``."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(size=(inputs, outputs)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.normal(size=(outputs,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
            helper.make_node("Relu", ["y"], ["relu"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, inputs])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, outputs]),
            helper.make_tensor_value_info("relu", TensorProto.FLOAT, [batch, outputs]),
        ],
        initializer=[weight, bias],
    )
    return write_model(path, graph)


def identity_model(path: Path, elem_type: int, shape: list[int | str | None] | None = None) -> Path:
    """``out = Identity(x)`` for any element type (``shape`` None: any rank)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["out"])],
        "identity",
        [helper.make_tensor_value_info("x", elem_type, shape)],
        [helper.make_tensor_value_info("out", elem_type, shape)],
    )
    return write_model(path, graph, check=shape is not None)


def sequence_model(path: Path) -> Path:
    """``seq = SequenceConstruct(a, b)`` and ``total = a + b``: one output the wire cannot carry."""
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["a", "b"], ["seq"]), helper.make_node("Add", ["a", "b"], ["total"])],
        "sequence",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2]), helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])],
        [
            helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, [2]),
        ],
    )
    return write_model(path, graph)
