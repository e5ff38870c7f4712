"""The tensor wire codec: every dtype both ways, nested and flat, and the refusals."""

from __future__ import annotations

import base64
import json

import ml_dtypes
import numpy as np
import pytest
from engram.errors import InvalidParams
from engram.wire.tensors import (
    DTYPES,
    UnsupportedDtype,
    WireTensor,
    decode,
    encode,
    from_onnx_type,
)
from onnx import TensorProto

NUMERIC = [name for name in DTYPES if name != "string"]


def sample(name: str) -> np.ndarray:
    dtype = DTYPES[name].numpy
    if name == "bool":
        return np.array([[True, False, True], [False, False, True]])
    if DTYPES[name].kind == "f":
        return np.array([[0.5, -1.25, 3.0], [0.0, 2.0, -0.375]], dtype=np.float32).astype(dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, 0, 1], [info.max, 7, int(info.max) // 3]], dtype=dtype)


def roundtrip(array: np.ndarray, fmt: str) -> np.ndarray:
    wire = json.loads(json.dumps(encode(array, fmt)))  # through real JSON text
    return decode(WireTensor.model_validate(wire), "inputs.x")


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("fmt", ["b64", "list"])
def test_every_numeric_dtype_round_trips(name: str, fmt: str) -> None:
    array = sample(name)
    back = roundtrip(array, fmt)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()


@pytest.mark.parametrize("name", NUMERIC)
def test_flat_and_nested_lists_agree(name: str) -> None:
    array = sample(name)
    nested = encode(array, "list")
    flat = {**nested, "data": np.asarray(array).reshape(-1).astype(np.float64 if DTYPES[name].kind == "f" else object).tolist()}
    assert decode(WireTensor.model_validate(flat), "x").tobytes() == decode(WireTensor.model_validate(nested), "x").tobytes()


def test_b64_is_little_endian_c_order() -> None:
    array = np.array([[1, 2], [3, 258]], dtype=np.int16)
    wire = encode(array, "b64")
    assert base64.b64decode(wire["b64"]) == bytes([1, 0, 2, 0, 3, 0, 2, 1])
    assert wire == {"dtype": "int16", "shape": [2, 2], "b64": wire["b64"]}


def test_strings_travel_as_lists() -> None:
    array = np.array([["a", "bé"], ["", "ünïcode"]], dtype=object)
    wire = encode(array, "b64")  # strings ignore the format: always a list
    assert wire == {"dtype": "string", "shape": [2, 2], "data": [["a", "bé"], ["", "ünïcode"]]}
    assert roundtrip(array, "list").tolist() == array.tolist()
    with pytest.raises(InvalidParams, match="travel as 'data' lists"):
        decode(WireTensor(dtype="string", shape=[1], b64="YQ=="), "x")


def test_non_finite_floats_as_strings() -> None:
    array = np.array([np.nan, np.inf, -np.inf, 1.5], dtype=np.float32)
    wire = encode(array, "list")
    assert wire["data"] == ["NaN", "Infinity", "-Infinity", 1.5]
    json.dumps(wire, allow_nan=False)  # valid strict JSON
    back = roundtrip(array, "list")
    assert np.isnan(back[0]) and back[1] == np.inf and back[2] == -np.inf and back[3] == 1.5
    for name in ("float16", "bfloat16", "float64"):
        assert np.isnan(roundtrip(array.astype(DTYPES[name].numpy), "list")[0])


def test_scalars_and_empty_tensors() -> None:
    for fmt in ("b64", "list"):
        scalar = roundtrip(np.array(3.25, dtype=np.float64), fmt)
        assert scalar.shape == () and scalar == 3.25
        empty = roundtrip(np.zeros((0, 4), dtype=np.int32), fmt)
        assert empty.shape == (0, 4)
    assert decode(WireTensor(dtype="int64", shape=[], data=7), "x") == 7
    assert decode(WireTensor(dtype="int64", shape=[], data=[7]), "x") == 7


def test_bfloat16_bytes_are_the_top_half_of_float32() -> None:
    array = np.array([1.0, -2.5], dtype=ml_dtypes.bfloat16)
    raw = base64.b64decode(encode(array)["b64"])
    assert raw == np.array([1.0, -2.5], dtype=np.float32).view(np.uint16)[1::2].tobytes()


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"dtype": "float128", "shape": [1], "data": [1]}, "unknown dtype 'float128'"),
        ({"dtype": "int8", "shape": [2], "b64": "AQID"}, "holds 3 bytes; shape \\[2\\] of int8 needs 2"),
        ({"dtype": "int8", "shape": [1], "b64": "!!"}, "not valid base64"),
        ({"dtype": "bool", "shape": [1], "b64": "Ag=="}, "bool bytes must be 0 or 1"),
        ({"dtype": "uint8", "shape": [2], "data": [1, 300]}, "data\\[1\\] is 300, outside uint8"),
        ({"dtype": "int32", "shape": [2], "data": [1, 2.5]}, "not an integer"),
        ({"dtype": "int32", "shape": [1], "data": [True]}, "not an integer"),
        ({"dtype": "float32", "shape": [1], "data": [True]}, "not a number"),
        ({"dtype": "float32", "shape": [1], "data": ["1.5"]}, "only \"NaN\""),
        ({"dtype": "bool", "shape": [1], "data": [1]}, "not true or false"),
        ({"dtype": "float32", "shape": [2, 2], "data": [[1, 2], [3]]}, "data\\[1\\] has 1 entries, shape \\[2, 2\\] needs 2"),
        ({"dtype": "float32", "shape": [2, 2], "data": [1, 2, 3]}, "data has 3 entries"),
        ({"dtype": "float32", "shape": [2], "data": 5}, "must be a list"),
        ({"dtype": "float32", "shape": [], "data": [1, 2]}, "a scalar"),
    ],
)
def test_bad_tensors_name_the_field(tensor: dict, message: str) -> None:
    with pytest.raises(InvalidParams, match=message) as caught:
        decode(WireTensor.model_validate(tensor), "inputs.x")
    assert caught.value.data["field"].startswith("inputs.x")


def test_wire_tensor_needs_exactly_one_payload() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        WireTensor.model_validate({"dtype": "int8", "shape": [1]})
    with pytest.raises(ValueError, match="exactly one"):
        WireTensor.model_validate({"dtype": "int8", "shape": [1], "b64": "AQ==", "data": [1]})
    with pytest.raises(ValueError, match=">= 0"):
        WireTensor.model_validate({"dtype": "int8", "shape": [-1], "data": []})


def test_onnx_types_without_a_wire_form_are_named() -> None:
    assert from_onnx_type(TensorProto.FLOAT).name == "float32"
    assert from_onnx_type(TensorProto.BFLOAT16).name == "bfloat16"
    for elem, name in ((TensorProto.INT4, "int4"), (TensorProto.COMPLEX64, "complex64")):
        with pytest.raises(UnsupportedDtype) as caught:
            from_onnx_type(elem)
        assert caught.value.name == name
