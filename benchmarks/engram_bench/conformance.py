"""ONNX backend node tests run through the daemon, compared with ONNX Runtime run directly.

Each case is one ``model.onnx`` with ``test_data_set_*/input_*.pb`` and ``output_*.pb``. The
``onnx`` package defines them in ``onnx.backend.test.case.node``; some onnx wheels also ship them
written out under ``onnx/backend/test/data/node``, others (1.2x) do not. engram uses the shipped
folder when it is there and otherwise writes the cases out itself, with the same code as onnx's
``backend-test-tools generate-data``, into a cache folder reused by later runs.

For every case the same files go two ways:

* **direct**: ``onnxruntime.InferenceSession`` on the file, ``run`` on the arrays; a case with an
  input or output of a type numpy lacks (bfloat16, 8-bit floats) uses ``run_with_ort_values``
  instead, the values passed and read back as their bytes with the explicit ONNX type, because
  what ``run`` does with those types changes between ONNX Runtime versions (refusal, or raw
  unsigned integers);
* **daemon**: ``models.add`` of the file, ``infer.run`` with the tensors encoded in the wire
  format (base64), outputs decoded, then ``models.remove``.

Each way's outputs are compared with onnx's reference outputs as onnx's own runner does: same
dtype and shape, strings exactly, numbers with ``assert_allclose(rtol, atol)`` (NaN equal to NaN).
Both ways run the same ONNX Runtime, so the daemon should pass and fail where the direct run does,
and where both miss the reference, miss it with the same values. Every case where they part is a
*difference*; :func:`judge` says which are *disagreements* (the daemon's fault until shown
otherwise) and which have a known cause outside the daemon: types the wire format cannot express
(sequences, optionals, maps; 4-bit and complex tensors), or values ONNX Runtime's Python API
cannot take, where onnx's reference alone judges the daemon.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engram.errors import RPCError
from engram.inference.manifest import check_model_name
from engram.wire.tensors import (
    UnsupportedDtype,
    WireTensor,
    decode,
    dtype_name,
    encode,
)

__all__ = ["Case", "ConformanceReport", "judge", "load_cases", "node_tests_dir", "run_conformance", "select_subset"]

_COMPLETE = ".complete"


def default_cache_root() -> Path:
    if cache := os.environ.get("CACHE_DIRECTORY"):
        return Path(cache.split(":")[0])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "engram"


def node_tests_dir(cache_root: Path | None = None) -> Path:
    """The folder of node test cases: the one onnx ships, else one written out from its definitions."""
    shipped = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    if shipped.is_dir() and any(shipped.glob("*/model.onnx")):
        return shipped
    target = (cache_root or default_cache_root()) / f"onnx-node-tests-{onnx.__version__}"
    if not (target / _COMPLETE).is_file():
        _generate(target)
    return target


def _write_value(path: Path, value: Any, info: onnx.ValueInfoProto) -> None:
    kind = info.type.WhichOneof("value")
    if kind == "sequence_type":
        proto = numpy_helper.from_list(value, info.name)
    elif kind == "optional_type":
        proto = numpy_helper.from_optional(value, info.name)
    elif kind == "map_type":
        proto = numpy_helper.from_dict(value, info.name)
    elif isinstance(value, onnx.TensorProto):
        proto = value
    else:
        proto = numpy_helper.from_array(value, info.name)
    path.write_bytes(proto.SerializeToString())


def _generate(target: Path) -> None:
    """Write onnx's node test cases out like ``backend-test-tools generate-data`` does."""
    from onnx.backend.test.case import node as node_cases

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".node-tests-", dir=target.parent))
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            cases = node_cases.collect_testcases(None)
        for case in cases:
            assert case.model is not None and case.data_sets is not None
            folder = scratch / case.name
            folder.mkdir()
            (folder / "model.onnx").write_bytes(case.model.SerializeToString())
            for i, (inputs, outputs) in enumerate(case.data_sets):
                data = folder / f"test_data_set_{i}"
                data.mkdir()
                for j, value in enumerate(inputs):
                    _write_value(data / f"input_{j}.pb", value, case.model.graph.input[j])
                for j, value in enumerate(outputs):
                    _write_value(data / f"output_{j}.pb", value, case.model.graph.output[j])
            if (case.rtol, case.atol) != (1e-3, 1e-7):
                (folder / "tolerance.json").write_text(json.dumps({"rtol": case.rtol, "atol": case.atol}))
        (scratch / _COMPLETE).write_text(f"onnx {onnx.__version__}: {len(cases)} cases\n")
        shutil.rmtree(target, ignore_errors=True)
        os.rename(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class Case:
    name: str
    folder: Path
    rtol: float = 1e-3
    atol: float = 1e-7

    @property
    def model_path(self) -> Path:
        return self.folder / "model.onnx"

    def data_sets(self) -> list[Path]:
        return sorted(self.folder.glob("test_data_set_*"))


def load_cases(root: Path) -> list[Case]:
    cases = []
    for folder in sorted(p for p in root.iterdir() if (p / "model.onnx").is_file()):
        tolerance = {}
        if (folder / "tolerance.json").is_file():
            tolerance = json.loads((folder / "tolerance.json").read_text())
        cases.append(Case(folder.name, folder, **tolerance))
    return cases


def select_subset(cases: list[Case], limit: int) -> list[Case]:
    """``limit`` cases spread evenly over the sorted list: the same ones for the same onnx version."""
    if limit >= len(cases):
        return list(cases)
    step = len(cases) / limit
    return [cases[int(i * step)] for i in range(limit)]


# --- reading data -------------------------------------------------------------------------------


def _read_value(path: Path, info: onnx.ValueInfoProto) -> Any:
    kind = info.type.WhichOneof("value")
    raw = path.read_bytes()
    if kind == "sequence_type":
        proto = onnx.SequenceProto()
        proto.ParseFromString(raw)
        return numpy_helper.to_list(proto)
    if kind == "optional_type":
        proto = onnx.OptionalProto()
        proto.ParseFromString(raw)
        return numpy_helper.to_optional(proto)
    if kind == "map_type":
        proto = onnx.MapProto()
        proto.ParseFromString(raw)
        return numpy_helper.to_dict(proto)
    tensor = onnx.TensorProto()
    tensor.ParseFromString(raw)
    return numpy_helper.to_array(tensor)


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


@dataclass
class DataSet:
    inputs: dict[str, Any]
    expected: list[tuple[str, Any]]


def read_case(case: Case) -> tuple[onnx.ModelProto, list[DataSet]]:
    model = onnx.load(str(case.model_path), load_external_data=False)
    graph_inputs = _graph_inputs(model)
    sets = []
    for folder in case.data_sets():
        inputs = {}
        for j, info in enumerate(graph_inputs):
            path = folder / f"input_{j}.pb"
            if path.is_file():
                inputs[info.name] = _read_value(path, info)
        expected = [
            (info.name, _read_value(folder / f"output_{j}.pb", info))
            for j, info in enumerate(model.graph.output)
            if (folder / f"output_{j}.pb").is_file()
        ]
        sets.append(DataSet(inputs, expected))
    return model, sets


# --- comparing ----------------------------------------------------------------------------------------


def _comparable(value: np.ndarray) -> np.ndarray:
    if value.dtype.kind == "V" or value.dtype.name in ("bfloat16",) or value.dtype.name.startswith("float8"):
        return value.astype(np.float32)
    return value


def compare(expected: Any, actual: Any, rtol: float, atol: float) -> str | None:
    """None when ``actual`` matches ``expected`` as onnx's runner judges; else what differs."""
    if isinstance(expected, list) or isinstance(actual, list):
        if not isinstance(expected, list) or not isinstance(actual, list) or len(expected) != len(actual):
            return "sequence lengths differ"
        for e, a in zip(expected, actual, strict=True):
            if (problem := compare(e, a, rtol, atol)) is not None:
                return problem
        return None
    if expected is None or actual is None:
        return None if expected is None and actual is None else "optional presence differs"
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.dtype.kind in "OUS" or actual.dtype.kind in "OUS":
        if expected.shape != actual.shape or not np.array_equal(expected.astype(str), actual.astype(str)):
            return "strings differ"
        return None
    if expected.dtype != actual.dtype:
        return f"dtype {actual.dtype}, expected {expected.dtype}"
    if expected.shape != actual.shape:
        return f"shape {list(actual.shape)}, expected {list(expected.shape)}"
    try:
        np.testing.assert_allclose(_comparable(actual), _comparable(expected), rtol=rtol, atol=atol)
    except AssertionError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip().startswith(("Mismatched", "Max"))]
        return "values differ: " + "; ".join(lines)[:300]
    return None


# --- the two ways ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    reason: str = ""  # category of the failure
    detail: str = ""
    # What the run gave for the data set it stopped at, as (output name, value): set when it ran and
    # only the values were off, so that two runs that both miss onnx's reference can be compared.
    outputs: list[tuple[str, Any]] | None = None
    data_set: int = 0
    through_ort_values: bool = False  # direct only: run with OrtValues, for types numpy lacks


def _category(message: str) -> str:
    """A label for ONNX Runtime failing to load or run a model, for the report's tallies only:
    it reads ONNX Runtime's message texts, which change between versions, so no verdict uses it."""
    m = message
    if "Unsupported model IR version" in m:
        return "onnx_ir_version_too_new"
    if "opset" in m.lower() and ("not supported" in m or "is under development" in m or "higher than" in m):
        return "opset_not_supported"
    if "NOT_IMPLEMENTED" in m or "Could not find an implementation" in m:
        return "op_not_implemented"
    if "INVALID_GRAPH" in m or "Type Error" in m:
        return "invalid_graph"
    return "runtime_error"


BINDING = "python_binding_dtype"
"""The failure of a direct run whose values ONNX Runtime's Python API cannot take or give."""

_SUB_BYTE = frozenset(getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2") if hasattr(TensorProto, n))


def _numpy_lacks(elem_type: int) -> bool:
    """True for element types numpy has no type of its own for (bfloat16, 8-bit floats, 4-bit
    types…): onnx reads them as ``ml_dtypes`` arrays, which ONNX Runtime's ``run()`` refuses or,
    depending on its version, hands back as raw unsigned integers."""
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).type.__module__.startswith("ml_dtypes")
    except (KeyError, TypeError, ValueError):
        return False


def _types_numpy_lacks(model: onnx.ModelProto) -> dict[str, int]:
    """Graph inputs and outputs of a type numpy lacks: name -> ONNX element type."""
    found = {}
    for info in [*_graph_inputs(model), *model.graph.output]:
        if info.type.WhichOneof("value") == "tensor_type" and _numpy_lacks(info.type.tensor_type.elem_type):
            found[info.name] = info.type.tensor_type.elem_type
    return found


class _OrtCannotTake(Exception):
    """ONNX Runtime's Python API cannot take (or give back) one of the case's values."""


def _run_with_ort_values(session: Any, inputs: dict[str, Any], names: list[str], lacking: dict[str, int]) -> list[Any]:
    """``run`` for a case with types numpy lacks, the way ONNX Runtime offers for them: values of
    those types go in as their bytes with the explicit ONNX type and come out as their bytes."""
    import onnxruntime as ort

    feed = {}
    for name, value in inputs.items():
        try:
            array = np.asarray(value)
            if name in lacking:
                # A view keeps the shape (0-d included) and the bytes; only the element type differs.
                bits = array.view(np.dtype(f"u{array.dtype.itemsize}"))
                feed[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, lacking[name])
            else:
                feed[name] = ort.OrtValue.ortvalue_from_numpy(array)
        except Exception as exc:  # noqa: BLE001 - strings, sequences and such have no OrtValue here
            raise _OrtCannotTake(f"input {name!r}: {exc}") from None
    results = session.run_with_ort_values(names, feed)  # ONNX Runtime's own failures pass through
    outputs = []
    for name, value in zip(names, results, strict=True):
        try:
            if name not in lacking:
                outputs.append(value.numpy())
                continue
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(lacking[name]))
            shape = value.shape()
            size = math.prod(shape) * dtype.itemsize
            raw = ctypes.string_at(value.data_ptr(), size) if size else b""
            outputs.append(np.frombuffer(raw, dtype=dtype).reshape(shape))
        except Exception as exc:  # noqa: BLE001 - as above
            raise _OrtCannotTake(f"output {name!r}: {exc}") from None
    return outputs


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def run_direct(case: Case) -> Outcome:
    """The case with ONNX Runtime's Python API: ``run`` on numpy arrays, or ``run_with_ort_values``
    when an input or output has a type numpy lacks."""
    import onnxruntime as ort

    try:
        model, sets = read_case(case)
    except Exception as exc:  # noqa: BLE001 - a broken case is a result to report, not a crash
        return Outcome(False, "unreadable_test_data", f"{type(exc).__name__}: {exc}"[:300])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(case.model_path.read_bytes(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's pybind errors share no useful base
        return Outcome(False, _category(str(exc)), _first_line(exc))
    lacking = _types_numpy_lacks(model)
    # Packed 4- and 2-bit tensors have no OrtValue from numpy either: those go to run() as they are.
    through_ort_values = bool(lacking) and not _SUB_BYTE & set(lacking.values())
    for index, data in enumerate(sets):
        names = [name for name, _ in data.expected]
        try:
            if through_ort_values:
                outputs = _run_with_ort_values(session, data.inputs, names, lacking)
            else:
                outputs = session.run(names, data.inputs)
        except _OrtCannotTake as exc:
            return Outcome(False, BINDING, str(exc)[:300], through_ort_values=True)
        except Exception as exc:  # noqa: BLE001 - as above
            # run() given or asked for a type numpy lacks fails in the binding, whatever its message says.
            return Outcome(False, BINDING if lacking and not through_ort_values else _category(str(exc)), _first_line(exc),
                           through_ort_values=through_ort_values)
        actual = list(zip(names, outputs, strict=True))
        for (name, expected), (_, value) in zip(data.expected, actual, strict=True):
            if (problem := compare(expected, value, case.rtol, case.atol)) is not None:
                return Outcome(False, "mismatch", f"{name}: {problem}", actual, index, through_ort_values)
    return Outcome(True, through_ort_values=through_ort_values)


def model_name(case_name: str) -> str:
    name = re.sub(r"[^a-z0-9._-]", "-", case_name.lower())
    if check_model_name(name) is None:
        return name
    return f"{name[:55].strip('-._')}-{hashlib.sha1(case_name.encode()).hexdigest()[:8]}"


def _wire_reason(data: DataSet) -> str | None:
    """Why these inputs cannot be written in the wire format (None when they can)."""
    for name, value in data.inputs.items():
        if value is None or isinstance(value, (list, dict)):
            return f"input {name!r} is a sequence, optional or map: not expressible in the wire format"
        try:
            dtype_name(np.asarray(value))
        except UnsupportedDtype as exc:
            return f"input {name!r} has dtype {exc.name}: not expressible in the wire format"
    return None


Call = Callable[[str, dict[str, Any]], Any]


def run_daemon(case: Case, call: Call) -> Outcome:
    try:
        _, sets = read_case(case)
    except Exception as exc:  # noqa: BLE001 - a broken case is a result to report, not a crash
        return Outcome(False, "unreadable_test_data", f"{type(exc).__name__}: {exc}"[:300])
    name = model_name(case.name)
    try:
        call("models.add", {"name": name, "path": str(case.model_path.resolve()), "overwrite": True})
    except RPCError as exc:
        return Outcome(False, f"models.add:{exc.reason}", exc.message[:300])
    try:
        for index, data in enumerate(sets):
            if (why := _wire_reason(data)) is not None:
                return Outcome(False, "not_expressible", why)
            inputs = {key: encode(np.asarray(value), "b64") for key, value in data.inputs.items()}
            outputs = [n for n, _ in data.expected]
            try:
                result = call("infer.run", {"model": name, "inputs": inputs, "outputs": outputs})
            except RPCError as exc:
                if exc.reason in ("unsupported_type", "unsupported_dtype"):
                    return Outcome(False, "not_expressible", exc.message[:300])
                if exc.reason == "load_failed":
                    return Outcome(False, _category(exc.message), exc.message[:300])
                return Outcome(False, f"infer.run:{exc.reason}", exc.message[:300])
            actual = [(n, decode(WireTensor.model_validate(result["outputs"][n]), n)) for n in outputs]
            for (out_name, expected), (_, value) in zip(data.expected, actual, strict=True):
                if (problem := compare(expected, value, case.rtol, case.atol)) is not None:
                    return Outcome(False, "mismatch", f"{out_name}: {problem}", actual, index)
        return Outcome(True)
    finally:
        with contextlib.suppress(RPCError):
            call("models.remove", {"name": name})


# --- the report ----------------------------------------------------------------------------------------------


@dataclass
class Difference:
    case: str
    direct: str
    daemon: str
    reason: str
    disagreement: bool = False  # the daemon and ONNX Runtime run directly disagree: a daemon bug to find


def judge(case: Case, direct: Outcome, daemon: Outcome) -> Difference | None:
    """None when the daemon agrees with ONNX Runtime run directly on ``case``; else the difference,
    marked as a disagreement unless its cause is known and lies outside the daemon.

    Both ways run the same ONNX Runtime, so they pass and fail together. Known causes apart:

    * the wire format cannot carry the case (the daemon answers ``unsupported_type``);
    * ONNX Runtime's Python API cannot take or give the case's values: then only onnx's reference
      outputs judge the daemon, and a daemon that matches them is right.
    """
    if direct.ok and daemon.ok:
        return None
    words = ("pass" if direct.ok else "fail", "pass" if daemon.ok else "fail")
    if daemon.reason == "not_expressible":
        if not direct.ok and direct.outputs is None:
            return None  # neither way ran it
        return Difference(case.name, *words, f"not_expressible: {daemon.detail}")
    if direct.reason == BINDING:
        if daemon.ok:
            return Difference(case.name, *words, f"direct cannot ({BINDING}): {direct.detail}; "
                              "the daemon matches onnx's reference outputs")
        if daemon.outputs is not None:
            return Difference(case.name, *words, f"daemon outputs differ from onnx's reference ({daemon.detail}) and the direct "
                              f"run cannot take this case ({direct.detail})", True)
        return None  # neither way ran it
    if daemon.ok:
        return Difference(case.name, *words, f"daemon passes where ONNX Runtime run directly fails ({direct.reason}): "
                          f"{direct.detail}", True)
    if direct.ok:
        return Difference(case.name, *words, f"daemon only fails ({daemon.reason}): {daemon.detail}", True)
    if direct.outputs is None and daemon.outputs is None:
        return None  # both refused the case
    if direct.outputs is None or daemon.outputs is None:
        ran, refused = ("direct", daemon) if daemon.outputs is None else ("daemon", direct)
        return Difference(case.name, *words, f"only the {ran} run gave outputs; the other failed ({refused.reason}): "
                          f"{refused.detail}", True)
    if direct.data_set != daemon.data_set:
        return Difference(case.name, *words, f"outputs first miss onnx's reference in data set {direct.data_set} directly, "
                          f"{daemon.data_set} through the daemon", True)
    for (name, value_direct), (_, value_daemon) in zip(direct.outputs, daemon.outputs, strict=True):
        if (problem := compare(value_direct, value_daemon, case.rtol, case.atol)) is not None:
            return Difference(case.name, *words, f"both miss onnx's reference and differ from each other: {name}: {problem}", True)
    return None  # ONNX Runtime's own miss of the reference, which the daemon reproduces


@dataclass
class ConformanceReport:
    source: str
    onnx_version: str
    onnxruntime_version: str
    total: int = 0
    passed_direct: int = 0
    passed_daemon: int = 0
    direct_through_ort_values: int = 0
    seconds: float = 0.0
    differences: list[Difference] = field(default_factory=list)
    failures_direct: dict[str, int] = field(default_factory=dict)
    failures_daemon: dict[str, int] = field(default_factory=dict)

    @property
    def disagreements(self) -> list[Difference]:
        return [d for d in self.differences if d.disagreement]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["difference_reasons"] = dict(Counter(d.reason.split(":")[0] for d in self.differences))
        data["disagreements"] = len(self.disagreements)
        return data

    def table(self) -> str:
        lines = [
            f"ONNX backend node tests from {self.source}",
            f"onnx {self.onnx_version}, onnxruntime {self.onnxruntime_version}, {self.seconds:.1f} s",
            f"cases                  {self.total}",
            f"passed, direct ORT     {self.passed_direct}",
            f"passed, through daemon {self.passed_daemon}",
            f"direct with OrtValues  {self.direct_through_ort_values} (types numpy lacks)",
            f"differences            {len(self.differences)} ({len(self.disagreements)} disagreements)",
        ]
        for label, failures in (("direct", self.failures_direct), ("daemon", self.failures_daemon)):
            if failures:
                lines.append(f"failures ({label}): " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())))
        for d in sorted(self.differences, key=lambda d: not d.disagreement):
            kind = "DISAGREEMENT" if d.disagreement else "explained"
            lines.append(f"  {kind} {d.case}: direct {d.direct}, daemon {d.daemon}: {d.reason}")
        return "\n".join(lines)


def run_conformance(
    cases: list[Case], call: Call, source: str, progress: Callable[[str], None] | None = None
) -> ConformanceReport:
    import onnxruntime as ort

    report = ConformanceReport(source, onnx.__version__, ort.__version__)
    started = time.perf_counter()
    direct_failures: Counter[str] = Counter()
    daemon_failures: Counter[str] = Counter()
    for case in cases:
        if progress is not None:
            progress(case.name)
        direct = run_direct(case)
        daemon = run_daemon(case, call)
        report.total += 1
        report.passed_direct += direct.ok
        report.passed_daemon += daemon.ok
        report.direct_through_ort_values += direct.through_ort_values
        if not direct.ok:
            direct_failures[direct.reason] += 1
        if not daemon.ok:
            daemon_failures[daemon.reason] += 1
        if (difference := judge(case, direct, daemon)) is not None:
            report.differences.append(difference)
    report.failures_direct = dict(direct_failures)
    report.failures_daemon = dict(daemon_failures)
    report.seconds = round(time.perf_counter() - started, 2)
    return report


@contextlib.contextmanager
def conformance_daemon(socket_path: Path | None) -> Iterator[Path]:
    """The given daemon, or a fresh one that keeps no embedder and unloads models promptly."""
    if socket_path is not None:
        yield socket_path
        return
    from engram_bench.processes import temporary_daemon

    env = {
        "ENGRAM_INFERENCE__AUTO_IMPORT": "false",
        "ENGRAM_INFERENCE__SESSIONS__MAX_ITEMS": "8",
        "ENGRAM_LOG__LEVEL": "error",  # models ONNX Runtime cannot load are expected here
    }
    with temporary_daemon(env) as path:
        yield path
