"""Checking request tensors against a model's declared inputs and outputs."""

from __future__ import annotations

import numpy as np
import pytest
from engram.errors import InvalidParams
from engram.inference.manifest import Manifest, TensorSpec
from engram.inference.validate import prepare_feed, select_outputs
from engram.wire.tensors import WireTensor, encode


def spec(name: str, dtype: str | None, shape, **kw) -> TensorSpec:
    return TensorSpec(name=name, dtype=dtype, shape=shape, onnx_type=f"tensor({dtype})", **kw)


MANIFEST = Manifest(
    name="bert",
    files={"model.onnx": "0" * 64},
    inputs=[spec("input_ids", "int64", ["batch", "sequence"]), spec("attention_mask", "int64", ["batch", "sequence"])],
    outputs=[spec("emb", "float32", ["batch", 8])],
)


def wire(array: np.ndarray) -> WireTensor:
    return WireTensor.model_validate(encode(array))


def ids(*shape: int, dtype=np.int64) -> WireTensor:
    return wire(np.zeros(shape, dtype=dtype))


def problem(manifest: Manifest, inputs: dict) -> InvalidParams:
    with pytest.raises(InvalidParams) as caught:
        prepare_feed(manifest, inputs)
    assert caught.value.code == -32602
    return caught.value


def test_good_inputs_become_the_feed() -> None:
    feed = prepare_feed(MANIFEST, {"input_ids": ids(2, 5), "attention_mask": ids(2, 5)})
    assert set(feed) == {"input_ids", "attention_mask"} and feed["input_ids"].shape == (2, 5)


def test_missing_and_extra_inputs() -> None:
    err = problem(MANIFEST, {"input_ids": ids(1, 3)})
    assert err.data["field"] == "inputs.attention_mask" and err.reason == "missing_input"
    assert "expected int64 [batch, sequence]" in err.message
    err = problem(MANIFEST, {"input_ids": ids(1, 3), "attention_mask": ids(1, 3), "token_type_ids": ids(1, 3)})
    assert err.data["field"] == "inputs.token_type_ids" and "its inputs: input_ids (int64 [batch, sequence])" in err.message


def test_dtype_rank_and_symbolic_dimensions() -> None:
    err = problem(MANIFEST, {"input_ids": ids(1, 3, dtype=np.int32), "attention_mask": ids(1, 3)})
    assert err.message == "inputs.input_ids: expected int64 [batch, sequence], got int32 [1, 3] (dtype must be int64)"
    err = problem(MANIFEST, {"input_ids": ids(3), "attention_mask": ids(1, 3)})
    assert "(2 dimensions), got int64 [3]" in err.message
    err = problem(MANIFEST, {"input_ids": ids(2, 3), "attention_mask": ids(2, 4)})
    assert err.data["field"] == "inputs.attention_mask"
    assert "dimension 1 (sequence) is 4 here but 3 in input 'input_ids'" in err.message


def test_fixed_dimensions() -> None:
    manifest = MANIFEST.model_copy(update={"inputs": [spec("x", "float32", [None, 3])], "outputs": []})
    prepare_feed(manifest, {"x": wire(np.zeros((5, 3), np.float32))})
    err = problem(manifest, {"x": wire(np.zeros((5, 4), np.float32))})
    assert err.message == "inputs.x: expected float32 [?, 3], got float32 [5, 4] (dimension 1 must be 3)"


def test_non_finite_values_only_where_allowed() -> None:
    data = np.array([[1.0, np.nan, 3.0]], np.float32)
    allowed = MANIFEST.model_copy(update={"inputs": [spec("x", "float32", ["n", 3])]})
    assert np.isnan(prepare_feed(allowed, {"x": wire(data)})["x"][0, 1])
    strict = MANIFEST.model_copy(update={"inputs": [spec("x", "float32", ["n", 3], allow_nonfinite=False)]})
    err = problem(strict, {"x": wire(data)})
    assert err.reason == "nonfinite" and "NaN or infinity at [0, 1]" in err.message


def test_inputs_the_wire_cannot_carry() -> None:
    seq = TensorSpec(name="s", kind="sequence", onnx_type="seq(tensor(float))")
    int4 = TensorSpec(name="q", onnx_type="tensor(int4)", shape=[2])
    err = problem(MANIFEST.model_copy(update={"inputs": [seq]}), {"s": wire(np.zeros(2, np.float32))})
    assert err.reason == "unsupported_type" and "seq(tensor(float))" in err.message
    err = problem(MANIFEST.model_copy(update={"inputs": [int4]}), {"q": wire(np.zeros(2, np.int8))})
    assert err.reason == "unsupported_dtype" and "tensor(int4)" in err.message


def test_select_outputs() -> None:
    seq = TensorSpec(name="seq", kind="sequence", onnx_type="seq(tensor(float))")
    manifest = MANIFEST.model_copy(update={"outputs": [spec("a", "float32", [2]), seq]})
    assert select_outputs(manifest, ["a"]) == ["a"]
    with pytest.raises(InvalidParams, match="ask for the others with 'outputs': \\['a'\\]") as caught:
        select_outputs(manifest, None)
    assert caught.value.data["field"] == "outputs"
    with pytest.raises(InvalidParams, match="has no output 'b'"):
        select_outputs(manifest, ["b"])
    with pytest.raises(InvalidParams, match="at least one"):
        select_outputs(manifest, [])
