"""engram's table of ONNX element types (:mod:`engram.wire.onnx_types`, kept so that the wire
format need not import ``onnx``) says what the installed ``onnx`` says."""

from __future__ import annotations

import pytest
from onnx import TensorProto

from engram.wire.onnx_types import OnnxType
from engram.wire.tensors import DTYPES, UnsupportedDtype, from_onnx_type


def test_every_onnx_type_engram_names_has_onnx_number() -> None:
    assert {t.name: t.value for t in OnnxType} == {
        name: value for name, value in TensorProto.DataType.items() if name in OnnxType.__members__
    }


def test_the_wire_dtypes_round_trip_through_their_onnx_numbers() -> None:
    for wire in DTYPES.values():
        assert type(wire.onnx) is int
        assert from_onnx_type(wire.onnx) is wire
        onnx_name = {"float32": "float", "float64": "double"}.get(wire.name, wire.name)
        assert TensorProto.DataType.Name(wire.onnx).lower() == onnx_name


@pytest.mark.parametrize("onnx_type", ["INT4", "COMPLEX128", "FLOAT4E2M1", "INT2"])
def test_types_without_a_wire_dtype_are_refused_by_their_onnx_name(onnx_type: str) -> None:
    with pytest.raises(UnsupportedDtype) as refused:
        from_onnx_type(TensorProto.DataType.Value(onnx_type))
    assert refused.value.name == onnx_type.lower()
