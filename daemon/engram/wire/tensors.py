"""Tensors on the wire: ``{"dtype", "shape", "b64"}`` or ``{"dtype", "shape", "data"}``.

The design brief fixes the format. ``b64`` is the tensor's bytes, little-endian, C order
(row-major), in standard padded base64; ``bool`` is one byte per element, 0 or 1. ``data`` is
the values as JSON, either nested like the shape (``[[1, 2], [3, 4]]``) or flat in C order
(``[1, 2, 3, 4]``); a scalar (shape ``[]``) may be the bare value. JSON has no NaN or infinity, so
lists carry them as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``.

Every ONNX numeric type ONNX Runtime can hand to Python travels: the float and integer types,
``bool``, ``bfloat16`` and the four 8-bit float types (their numpy types come from ``ml_dtypes``,
which ``onnx`` itself depends on). ``string`` tensors travel as lists only. 4-bit and 2-bit
types and complex numbers are refused with a message saying so: ONNX Runtime's Python binding
cannot exchange them.

Nothing is coerced: a value that does not fit the dtype (a float for an int32, 300 for a uint8,
``true`` for a float) is an error naming the tensor, never a silent conversion.

:class:`WireTensor` is a tensor in params; :class:`B64Tensor` and :class:`ListTensor` are one in
a result (:func:`result_tensor` makes them). Several parts' APIs carry tensors (``infer.*``,
``route.run``, memory's vectors), so the format lives here, below the parts.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any, Literal

import ml_dtypes
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engram.errors import DataError, InvalidParams
from engram.server.methods import Result
from engram.wire.onnx_types import OnnxType

__all__ = [
    "DTYPES",
    "B64Tensor",
    "ListTensor",
    "OutputFormat",
    "WireDtype",
    "WireTensor",
    "decode",
    "dtype_name",
    "encode",
    "from_onnx_type",
    "result_tensor",
]

OutputFormat = Literal["b64", "list"]


@dataclass(frozen=True)
class WireDtype:
    name: str
    numpy: np.dtype
    onnx: int  # ONNX's TensorProto.DataType, an OnnxType's value
    exotic: bool = False  # needs OrtValue with an explicit ONNX type to cross into ONNX Runtime

    @property
    def kind(self) -> str:
        """'f' float, 'i' signed, 'u' unsigned, 'b' bool, 'O' string."""
        if self.exotic:
            return "f"
        return self.numpy.kind


def _d(name: str, numpy: Any, onnx: int, exotic: bool = False) -> WireDtype:
    return WireDtype(name, np.dtype(numpy), int(onnx), exotic)


DTYPES: dict[str, WireDtype] = {
    d.name: d
    for d in (
        _d("float32", np.float32, OnnxType.FLOAT),
        _d("float64", np.float64, OnnxType.DOUBLE),
        _d("float16", np.float16, OnnxType.FLOAT16),
        _d("bfloat16", ml_dtypes.bfloat16, OnnxType.BFLOAT16, True),
        _d("float8e4m3fn", ml_dtypes.float8_e4m3fn, OnnxType.FLOAT8E4M3FN, True),
        _d("float8e4m3fnuz", ml_dtypes.float8_e4m3fnuz, OnnxType.FLOAT8E4M3FNUZ, True),
        _d("float8e5m2", ml_dtypes.float8_e5m2, OnnxType.FLOAT8E5M2, True),
        _d("float8e5m2fnuz", ml_dtypes.float8_e5m2fnuz, OnnxType.FLOAT8E5M2FNUZ, True),
        _d("int8", np.int8, OnnxType.INT8),
        _d("int16", np.int16, OnnxType.INT16),
        _d("int32", np.int32, OnnxType.INT32),
        _d("int64", np.int64, OnnxType.INT64),
        _d("uint8", np.uint8, OnnxType.UINT8),
        _d("uint16", np.uint16, OnnxType.UINT16),
        _d("uint32", np.uint32, OnnxType.UINT32),
        _d("uint64", np.uint64, OnnxType.UINT64),
        _d("bool", np.bool_, OnnxType.BOOL),
        _d("string", object, OnnxType.STRING),
    )
}
_BY_ONNX = {d.onnx: d for d in DTYPES.values()}
_BY_NUMPY = {d.numpy: d for d in DTYPES.values()}
# Every other ONNX type, by its ONNX name: 4-bit, 2-bit, 6-bit and e8m0 floats, complex numbers.
_NO_WIRE = {t.value: t.name.lower() for t in OnnxType if t.value not in _BY_ONNX and t is not OnnxType.UNDEFINED}

_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class UnsupportedDtype(DataError, ValueError):
    """An ONNX element type the wire format cannot carry; ``name`` is its ONNX name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"ONNX type {name} cannot be sent or received over the wire")
        self.name = name


def from_onnx_type(elem_type: int) -> WireDtype:
    """The wire dtype of an ONNX ``TensorProto.DataType``; :class:`UnsupportedDtype` if none."""
    if elem_type in _BY_ONNX:
        return _BY_ONNX[elem_type]
    name = _NO_WIRE.get(elem_type)
    if name is None:
        # A type newer than OnnxType: the installed onnx may know its name. Only a model's
        # inspection gets here, and that has imported onnx already.
        from onnx import TensorProto

        try:
            name = TensorProto.DataType.Name(elem_type).lower()
        except ValueError:
            name = f"type {elem_type}"
    raise UnsupportedDtype(name)


def dtype_name(array: np.ndarray) -> str:
    """Wire dtype name of a numpy array (``U``/``S`` string arrays count as ``string``)."""
    if array.dtype.kind in "USO":
        return "string"
    try:
        return _BY_NUMPY[array.dtype].name
    except KeyError:
        raise UnsupportedDtype(str(array.dtype)) from None


class WireTensor(BaseModel):
    """A tensor as it travels in JSON: dtype, shape and either ``b64`` or ``data``."""

    model_config = ConfigDict(extra="forbid")

    dtype: str = Field(description=f"One of {', '.join(DTYPES)}.")
    shape: list[int] = Field(description="Dimensions, outermost first; [] for a scalar.")
    b64: str | None = Field(default=None, description="Little-endian C-order bytes, base64 (not for string).")
    data: Any = Field(
        default=None,
        description='Values, nested like the shape or flat in C order; "NaN", "Infinity", "-Infinity" for non-finite floats.',
    )

    @model_validator(mode="after")
    def _one_payload(self) -> WireTensor:
        if (self.b64 is None) == (self.data is None):
            raise ValueError("give exactly one of 'b64' and 'data'")
        if any(d < 0 for d in self.shape):
            raise ValueError("dimensions must be >= 0")
        return self


def _lookup(dtype: str, field: str) -> WireDtype:
    found = DTYPES.get(dtype)
    if found is None:
        raise InvalidParams(
            f"{field}: unknown dtype {dtype!r}; one of {', '.join(DTYPES)}",
            field=f"{field}.dtype",
            reason="bad_dtype",
        )
    return found


def _count(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def decode(tensor: WireTensor, field: str) -> np.ndarray:
    """The numpy array ``tensor`` stands for; :class:`InvalidParams` naming ``field`` otherwise."""
    wire = _lookup(tensor.dtype, field)
    if tensor.b64 is not None:
        return _decode_b64(tensor.b64, wire, tensor.shape, field)
    return _decode_list(tensor.data, wire, tensor.shape, field)


def _decode_b64(text: str, wire: WireDtype, shape: list[int], field: str) -> np.ndarray:
    if wire.name == "string":
        raise InvalidParams(f"{field}: string tensors travel as 'data' lists, not 'b64'", field=f"{field}.b64")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParams(f"{field}: 'b64' is not valid base64", field=f"{field}.b64") from None
    needed = _count(shape) * wire.numpy.itemsize
    if len(raw) != needed:
        raise InvalidParams(
            f"{field}: 'b64' holds {len(raw)} bytes; shape {shape} of {wire.name} needs {needed}",
            field=f"{field}.b64",
        )
    array = np.frombuffer(raw, dtype=wire.numpy.newbyteorder("<") if wire.numpy.itemsize > 1 and not wire.exotic else wire.numpy)
    if wire.name == "bool":
        as_bytes = np.frombuffer(raw, dtype=np.uint8)
        if as_bytes.size and as_bytes.max() > 1:
            raise InvalidParams(f"{field}: bool bytes must be 0 or 1", field=f"{field}.b64")
    # A native-order, writable copy: ONNX Runtime and numpy both want one.
    return array.astype(wire.numpy, copy=True).reshape(shape)


def _check_scalar(value: Any, wire: WireDtype, field: str, where: str) -> Any:
    kind = wire.kind
    if kind == "f":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise InvalidParams(f"{field}: {where} is {value!r}, not a number", field=f"{field}.data")
        if isinstance(value, str):
            if value not in _SPECIAL_FLOATS:
                raise InvalidParams(
                    f'{field}: {where} is the string {value!r}; only "NaN", "Infinity" and "-Infinity" stand for numbers',
                    field=f"{field}.data",
                )
            return _SPECIAL_FLOATS[value]
        return value
    if kind in "iu":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParams(f"{field}: {where} is {value!r}, not an integer ({wire.name})", field=f"{field}.data")
        info = np.iinfo(wire.numpy)
        if not info.min <= value <= info.max:
            raise InvalidParams(
                f"{field}: {where} is {value}, outside {wire.name} [{info.min}, {info.max}]", field=f"{field}.data"
            )
        return value
    if kind == "b":
        if not isinstance(value, bool):
            raise InvalidParams(f"{field}: {where} is {value!r}, not true or false", field=f"{field}.data")
        return value
    if not isinstance(value, str):
        raise InvalidParams(f"{field}: {where} is {value!r}, not a string", field=f"{field}.data")
    return value


def _flatten(data: Any, shape: list[int], wire: WireDtype, field: str) -> list[Any]:
    if not shape:
        if isinstance(data, list):
            if len(data) != 1:
                raise InvalidParams(f"{field}: a scalar (shape []) needs one value, got {len(data)}", field=f"{field}.data")
            data = data[0]
        return [_check_scalar(data, wire, field, "the value")]
    if not isinstance(data, list):
        raise InvalidParams(f"{field}: 'data' must be a list for shape {shape}", field=f"{field}.data")
    total = _count(shape)
    # Flat: one list of scalars as long as the tensor (for a 1-D tensor flat and nested coincide).
    if len(shape) > 1 and len(data) == total and not any(isinstance(v, list) for v in data[:1]):
        return [_check_scalar(v, wire, field, f"data[{i}]") for i, v in enumerate(data)]
    out: list[Any] = []

    def walk(node: Any, depth: int, path: str) -> None:
        if not isinstance(node, list):
            raise InvalidParams(
                f"{field}: {path} is {node!r}, expected a list of {shape[depth]} (shape {shape})", field=f"{field}.data"
            )
        if len(node) != shape[depth]:
            hint = f", or one flat list of {total}" if depth == 0 and len(shape) > 1 else ""
            raise InvalidParams(
                f"{field}: {path} has {len(node)} entries, shape {shape} needs {shape[depth]} there{hint}",
                field=f"{field}.data",
            )
        if depth == len(shape) - 1:
            out.extend(_check_scalar(v, wire, field, f"{path}[{i}]") for i, v in enumerate(node))
        else:
            for i, child in enumerate(node):
                walk(child, depth + 1, f"{path}[{i}]")

    walk(data, 0, "data")
    return out


def _decode_list(data: Any, wire: WireDtype, shape: list[int], field: str) -> np.ndarray:
    values = _flatten(data, shape, wire, field)
    if wire.name == "string":
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    if wire.exotic or wire.name == "float16":
        # Through float64: the exact value, rounded once to the narrow type.
        return np.array(values, dtype=np.float64).astype(wire.numpy).reshape(shape)
    return np.array(values, dtype=wire.numpy).reshape(shape)


def _json_floats(array: np.ndarray) -> list[Any] | float | str:
    wide = array.astype(np.float64)
    finite = np.isfinite(wide)
    if finite.all():
        return wide.tolist()
    values = wide.astype(object)
    values[np.isnan(wide)] = "NaN"
    values[np.isposinf(wide)] = "Infinity"
    values[np.isneginf(wide)] = "-Infinity"
    return values.tolist()


def encode(array: np.ndarray, output_format: OutputFormat = "b64") -> dict[str, Any]:
    """``array`` in the wire format (strings always as a list)."""
    array = np.asarray(array)
    name = dtype_name(array)
    wire = DTYPES[name]
    shape = [int(d) for d in array.shape]
    if name == "string":
        flat = [v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1).tolist()]
        return {"dtype": name, "shape": shape, "data": np.array(flat, dtype=object).reshape(shape).tolist() if shape else flat[0]}
    if output_format == "b64":
        little = array.astype(wire.numpy.newbyteorder("<"), copy=False) if wire.numpy.itemsize > 1 and not wire.exotic else array
        return {"dtype": name, "shape": shape, "b64": base64.b64encode(np.ascontiguousarray(little).tobytes()).decode("ascii")}
    if wire.kind == "f":
        data: Any = _json_floats(array)
    else:
        data = array.tolist()
    return {"dtype": name, "shape": shape, "data": data}


class B64Tensor(Result):
    dtype: str
    shape: list[int]
    b64: str


class ListTensor(Result):
    dtype: str
    shape: list[int]
    data: Any


def result_tensor(array: np.ndarray, output_format: OutputFormat = "b64") -> B64Tensor | ListTensor:
    """``array`` as a result's tensor (strings always as a list)."""
    data = encode(np.asarray(array), output_format)
    return B64Tensor(**data) if "b64" in data else ListTensor(**data)
