"""What an ONNX file declares: its inputs and outputs (types and shapes), opsets, external data.

Read with ``onnx`` without loading external weights, so that inspecting a model costs a parse of
its graph and nothing more.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engram.errors import DataError
from engram.inference.manifest import Dim, TensorSpec
from engram.wire.onnx_types import OnnxType
from engram.wire.tensors import UnsupportedDtype, from_onnx_type

if TYPE_CHECKING:
    # onnx is imported by the functions that parse a model: the registry imports this module at
    # every daemon start, and a model is parsed only when one is added.
    from onnx import GraphProto, TensorProto, TypeProto, ValueInfoProto

__all__ = ["OnnxInfo", "inspect_onnx", "type_name"]

_ORT_ELEM_NAMES = {
    OnnxType.FLOAT: "float",
    OnnxType.DOUBLE: "double",
}


class NotOnnx(DataError, ValueError):
    """The file is not a parsable ONNX model."""


def _elem_name(elem_type: int) -> str:
    if elem_type in _ORT_ELEM_NAMES:
        return _ORT_ELEM_NAMES[elem_type]
    from onnx import TensorProto

    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"type{elem_type}"


def type_name(tp: TypeProto) -> str:
    """ONNX Runtime's spelling of a type: tensor(float), seq(tensor(int64)), map(string,tensor(float))."""
    which = tp.WhichOneof("value")
    if which == "tensor_type":
        return f"tensor({_elem_name(tp.tensor_type.elem_type)})"
    if which == "sparse_tensor_type":
        return f"sparse_tensor({_elem_name(tp.sparse_tensor_type.elem_type)})"
    if which == "sequence_type":
        return f"seq({type_name(tp.sequence_type.elem_type)})"
    if which == "optional_type":
        return f"optional({type_name(tp.optional_type.elem_type)})"
    if which == "map_type":
        return f"map({_elem_name(tp.map_type.key_type)},{type_name(tp.map_type.value_type)})"
    return "unknown"


_KINDS = {
    "tensor_type": "tensor",
    "sparse_tensor_type": "sparse_tensor",
    "sequence_type": "sequence",
    "optional_type": "optional",
    "map_type": "map",
}


def spec_of(info: ValueInfoProto) -> TensorSpec:
    tp = info.type
    which = tp.WhichOneof("value")
    kind = _KINDS.get(which or "", "unknown")
    dtype: str | None = None
    shape: list[Dim] | None = None
    if kind == "tensor":
        try:
            dtype = from_onnx_type(tp.tensor_type.elem_type).name
        except UnsupportedDtype:
            dtype = None
        if tp.tensor_type.HasField("shape"):
            shape = []
            for dim in tp.tensor_type.shape.dim:
                if dim.HasField("dim_value"):
                    shape.append(int(dim.dim_value))
                elif dim.HasField("dim_param") and dim.dim_param:
                    shape.append(dim.dim_param)
                else:
                    shape.append(None)
    return TensorSpec(name=info.name, kind=kind, onnx_type=type_name(tp), dtype=dtype, shape=shape)  # type: ignore[arg-type]


@dataclass
class OnnxInfo:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ir_version: int
    opsets: dict[str, int]
    external_files: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


def _tensors(graph: GraphProto) -> Iterator[TensorProto]:
    from onnx import AttributeProto

    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == AttributeProto.GRAPH:
                yield from _tensors(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _tensors(sub)


def inspect_onnx(path: Path, shown_as: Path | None = None) -> OnnxInfo:
    """What the graph at ``path`` declares. ``shown_as`` is the file errors name: the user's own
    path when ``path`` is the registry's copy of it, whose name (model.onnx) they never chose."""
    import onnx
    from onnx import TensorProto

    shown = shown_as if shown_as is not None else path.name
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends, onnx's own errors
        raise NotOnnx(f"{shown} is not an ONNX model ({type(exc).__name__}: {exc})") from None
    graph = model.graph
    if not graph.output:
        raise NotOnnx(f"{shown} has no graph outputs; it is not a usable ONNX model")
    initializers = {t.name for t in graph.initializer}
    inputs = [spec_of(i) for i in graph.input if i.name not in initializers]
    outputs = [spec_of(o) for o in graph.output]
    external: list[str] = []
    for tensor in _tensors(graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if location not in external:
                external.append(location)
    return OnnxInfo(
        inputs=inputs,
        outputs=outputs,
        ir_version=int(model.ir_version),
        opsets={o.domain: int(o.version) for o in model.opset_import},
        external_files=external,
        metadata={p.key: p.value for p in model.metadata_props},
    )
