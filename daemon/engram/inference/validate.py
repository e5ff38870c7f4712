"""Request tensors against a model's declared inputs and outputs, before anything runs.

Every problem is an :class:`~engram.errors.InvalidParams` (-32602) whose ``data.field`` names the
input (``inputs.input_ids``) and whose message says what was expected, symbolic dimensions
included: ``expected int64 [batch, sequence], got int32 [2, 7]``.
"""

from __future__ import annotations

import numpy as np

from engram.errors import InvalidParams
from engram.inference.manifest import Manifest, TensorSpec
from engram.wire.tensors import DTYPES, WireTensor, decode, dtype_name

__all__ = ["prepare_feed", "select_outputs", "wire_size"]


def wire_size(inputs: dict[str, WireTensor]) -> int:
    """A rough measure of decoding work: base64 characters plus elements given as lists."""
    total = 0
    for tensor in inputs.values():
        total += len(tensor.b64) if tensor.b64 is not None else int(np.prod(tensor.shape)) if tensor.shape else 1
    return total


def _names(specs: list[TensorSpec]) -> str:
    return ", ".join(f"{s.name} ({s.describe()})" for s in specs) or "none"


def _carried(spec: TensorSpec, field: str, what: str) -> None:
    if spec.kind != "tensor":
        raise InvalidParams(
            f"{what} {spec.name!r} is {spec.onnx_type}; the wire format carries tensors only",
            field=field,
            reason="unsupported_type",
        )
    if spec.dtype is None:
        raise InvalidParams(
            f"{what} {spec.name!r} is {spec.onnx_type}, a type the wire format cannot carry",
            field=field,
            reason="unsupported_dtype",
        )


def prepare_feed(manifest: Manifest, inputs: dict[str, WireTensor]) -> dict[str, np.ndarray]:
    """Decode ``inputs`` and check them against ``manifest``; returns the ONNX Runtime feed."""
    declared = {spec.name: spec for spec in manifest.inputs}
    for name in inputs:
        if name not in declared:
            raise InvalidParams(
                f"model {manifest.name!r} has no input {name!r}; its inputs: {_names(manifest.inputs)}",
                field=f"inputs.{name}",
                reason="unknown_input",
            )
    feed: dict[str, np.ndarray] = {}
    bound: dict[str, tuple[int, str]] = {}  # symbolic dimension -> (size, input that fixed it)
    for spec in manifest.inputs:
        field = f"inputs.{spec.name}"
        if spec.name not in inputs:
            raise InvalidParams(
                f"missing input {spec.name!r}: expected {spec.describe()}", field=field, reason="missing_input"
            )
        _carried(spec, field, "input")
        array = decode(inputs[spec.name], field)
        got = f"{dtype_name(array)} {list(array.shape)}"
        if dtype_name(array) != spec.dtype:
            raise InvalidParams(
                f"{field}: expected {spec.describe()}, got {got} (dtype must be {spec.dtype})",
                field=field,
                reason="wrong_dtype",
            )
        if spec.shape is not None:
            _check_shape(spec, array, field, got, bound)
        if not spec.allow_nonfinite and DTYPES[spec.dtype].kind == "f":
            finite = np.isfinite(array.astype(np.float64) if DTYPES[spec.dtype].exotic else array)
            if not finite.all():
                where = [int(i) for i in np.unravel_index(int(np.argmin(finite)), array.shape)] if array.ndim else []
                raise InvalidParams(
                    f"{field}: NaN or infinity at {where}; this model accepts finite values only",
                    field=field,
                    reason="nonfinite",
                )
        feed[spec.name] = array
    return feed


def _check_shape(spec: TensorSpec, array: np.ndarray, field: str, got: str, bound: dict[str, tuple[int, str]]) -> None:
    assert spec.shape is not None
    if array.ndim != len(spec.shape):
        raise InvalidParams(
            f"{field}: expected {spec.describe()} ({len(spec.shape)} dimensions), got {got}",
            field=field,
            reason="wrong_shape",
        )
    for axis, (want, size) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if isinstance(want, int) and want >= 0 and size != want:
            raise InvalidParams(
                f"{field}: expected {spec.describe()}, got {got} (dimension {axis} must be {want})",
                field=field,
                reason="wrong_shape",
            )
        if isinstance(want, str):
            previous = bound.setdefault(want, (int(size), spec.name))
            if previous[0] != size:
                raise InvalidParams(
                    f"{field}: expected {spec.describe()}, got {got}: dimension {axis} ({want}) is {size} here "
                    f"but {previous[0]} in input {previous[1]!r}",
                    field=field,
                    reason="wrong_shape",
                )


def select_outputs(manifest: Manifest, requested: list[str] | None) -> list[str]:
    """The output names to compute: ``requested`` (checked) or every output."""
    declared = {spec.name: spec for spec in manifest.outputs}
    names = list(dict.fromkeys(requested)) if requested is not None else list(declared)
    if requested is not None and not names:
        raise InvalidParams("outputs: name at least one output, or leave it out for all", field="outputs")
    for name in names:
        spec = declared.get(name)
        if spec is None:
            raise InvalidParams(
                f"model {manifest.name!r} has no output {name!r}; its outputs: {_names(manifest.outputs)}",
                field="outputs",
                reason="unknown_output",
            )
        try:
            _carried(spec, "outputs", "output")
        except InvalidParams as exc:
            others = [s.name for s in manifest.outputs if s.kind == "tensor" and s.dtype is not None]
            hint = f"; ask for the others with 'outputs': {others}" if others and requested is None else ""
            raise InvalidParams(exc.message + hint, field="outputs", reason=exc.reason) from None
    return names
