"""Vectors from the wire: a JSON list of numbers or a tensor object, checked and made unit length.

Similarity in memory is cosine similarity, computed as the inner product of unit vectors, so
every vector is L2-normalised on the way in; a vector of zeros has no direction and is refused.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from engram.errors import InvalidParams
from engram.wire.tensors import WireTensor, decode

__all__ = ["VectorIn", "from_blob", "to_blob", "unit_vector"]

VectorIn = Annotated[
    list[float] | WireTensor,
    Field(
        description="A vector: a list of numbers, or a tensor object {dtype: float32|float64, shape: [dim], b64|data}."
    ),
]


def unit_vector(value: Any, field: str, max_dim: int, dim: int | None = None) -> NDArray[np.float32]:
    """The unit-length float32 vector ``value`` stands for; InvalidParams naming ``field`` otherwise.

    ``dim`` is the dimension required (the namespace's or the embedder's), None when any goes.
    """
    if isinstance(value, WireTensor):
        if value.dtype not in ("float32", "float64"):
            raise InvalidParams(f"{field}: vectors are float32 or float64, not {value.dtype}", field=f"{field}.dtype", reason="bad_vector")
        array = _fast_b64(value) if value.b64 is not None else None
        if array is None:
            array = decode(value, field)  # the general decoder names what is wrong
        if array.ndim != 1:
            raise InvalidParams(f"{field}: a vector has shape [dim], got {list(array.shape)}", field=f"{field}.shape", reason="bad_vector")
    else:
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidParams(f"{field}: not a list of numbers", field=field, reason="bad_vector") from None
        if array.ndim != 1:
            raise InvalidParams(f"{field}: not a flat list of numbers", field=field, reason="bad_vector")
    if array.size == 0:
        raise InvalidParams(f"{field}: empty vector", field=field, reason="bad_vector")
    if array.size > max_dim:
        raise InvalidParams(
            f"{field}: {array.size} dimensions; at most {max_dim} (memory.max_dim)", field=field, reason="bad_vector"
        )
    if dim is not None and array.size != dim:
        raise InvalidParams(
            f"{field}: {array.size} dimensions, but this namespace's vectors have {dim}",
            field=field,
            reason="dimension_mismatch",
            expected=dim,
            got=int(array.size),
        )
    wide = array.astype(np.float64, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        norm = float(np.sqrt(wide @ wide))  # NaN or infinity anywhere makes the norm NaN or infinite
    if not np.isfinite(norm):
        if not np.all(np.isfinite(wide)):
            raise InvalidParams(f"{field}: NaN or infinite component", field=field, reason="bad_vector")
        wide = wide / np.abs(wide).max()  # finite but so large that the sum of squares overflows
        norm = float(np.sqrt(wide @ wide))
    if norm == 0.0:
        raise InvalidParams(f"{field}: a vector of zeros has no direction", field=field, reason="bad_vector")
    return (wide / norm).astype(np.float32)


def _fast_b64(value: WireTensor) -> NDArray[Any] | None:
    """The common case (base64 float32/float64 of shape [dim]) without the general decoder's
    per-tensor overhead; None when anything is unusual."""
    if len(value.shape) != 1:
        return None
    try:
        raw = base64.b64decode(value.b64 or "", validate=True)
    except (binascii.Error, ValueError):
        return None
    dtype = np.dtype("<f4") if value.dtype == "float32" else np.dtype("<f8")
    if len(raw) != value.shape[0] * dtype.itemsize:
        return None
    return np.frombuffer(raw, dtype=dtype)


def to_blob(vector: NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes, dim: int | None = None) -> NDArray[np.float32]:
    array = np.frombuffer(blob, dtype="<f4")
    if dim is not None and array.size != dim:
        raise ValueError(f"stored vector has {array.size} components, expected {dim}")
    return array.astype(np.float32, copy=False)
