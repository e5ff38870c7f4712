"""A daemon loads ONNX Runtime and onnx when a model first needs them, not at start: without a
model neither is in the process; a model's first embedding loads ONNX Runtime. (Whether a model
import loads onnx depends on the import cache: a cached graph needs no onnx.) spaCy, memory's
extraction pipeline, loads in the extraction worker's first batch, never at start.

The check reads which shared objects the daemon has mapped (``/proc/PID/maps``): an imported
extension module is mapped, one never imported is not. FAISS, which memory needs at every start
to load its vector index, is the control that the check sees extension modules at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from engram_bench.tiny_bert import create_tiny_bert

from tests.conftest import DaemonProcess

pytestmark = pytest.mark.e2e

ONNX_RUNTIME = "onnxruntime_pybind11_state"
ONNX = "onnx_cpp2py_export"
SPACY = "/spacy/"
FAISS = "_swigfaiss"


def mapped(daemon: DaemonProcess) -> str:
    assert daemon.proc is not None
    return Path(f"/proc/{daemon.proc.pid}/maps").read_text()


def test_onnx_runtime_loads_with_the_first_model_run_and_neither_it_nor_onnx_at_start(make_daemon: Any, tmp_path: Path) -> None:
    daemon = make_daemon(env={"ENGRAM_INFERENCE__AUTO_IMPORT": "false", "ENGRAM_INFERENCE__DEFAULT_EMBEDDER": "tiny"})
    assert daemon.call("system.ping") is not None
    at_start = mapped(daemon)
    assert FAISS in at_start
    assert ONNX_RUNTIME not in at_start and ONNX not in at_start and SPACY not in at_start

    daemon.call("models.import", {"name": "tiny", "path": str(create_tiny_bert(tmp_path / "tiny-bert"))})
    assert daemon.call("infer.embed", {"texts": ["hello"]})["vectors"]["shape"] == [1, 32]
    assert ONNX_RUNTIME in mapped(daemon)
