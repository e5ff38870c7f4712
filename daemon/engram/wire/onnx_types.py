"""ONNX's tensor element types (``TensorProto.DataType``) by number, without importing ``onnx``.

The numbers are part of the ONNX format (``onnx.proto``); a model file stores them, so they never
change meaning. The wire format names its dtypes by them, and importing ``onnx`` to read them
would cost every daemon start about a tenth of a second for a table of constants.
``tests/unit/core/test_onnx_types.py`` checks this table against ``onnx.TensorProto``.
"""

from __future__ import annotations

from enum import IntEnum


class OnnxType(IntEnum):
    UNDEFINED = 0
    FLOAT = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    STRING = 8
    BOOL = 9
    FLOAT16 = 10
    DOUBLE = 11
    UINT32 = 12
    UINT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    BFLOAT16 = 16
    FLOAT8E4M3FN = 17
    FLOAT8E4M3FNUZ = 18
    FLOAT8E5M2 = 19
    FLOAT8E5M2FNUZ = 20
    UINT4 = 21
    INT4 = 22
    FLOAT4E2M1 = 23
    FLOAT8E8M0 = 24
    UINT2 = 25
    INT2 = 26
    FLOAT6E2M3 = 27
    FLOAT6E3M2 = 28
