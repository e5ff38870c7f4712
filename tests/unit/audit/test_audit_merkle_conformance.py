"""transparency-dev/merkle golden vectors: every happy path verifies, every corruption is rejected.

The vectors live outside the project (``<repo>/../shared/conformance/merkle``, see its README);
the module is skipped where that folder is absent.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from engram.audit.merkle import ProofError, verify_consistency, verify_inclusion

VECTORS = Path(__file__).resolve().parents[3] / ".." / "shared" / "conformance" / "merkle"

if not VECTORS.is_dir():
    pytest.skip(f"conformance vectors not found at {VECTORS}", allow_module_level=True)


def _files(kind: str) -> list[Path]:
    return sorted((VECTORS / kind).rglob("*.json"))


def _id(path: Path) -> str:
    return path.relative_to(VECTORS).with_suffix("").as_posix()


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    assert isinstance(data["wantErr"], bool)
    return data


INCLUSION = _files("inclusion")
CONSISTENCY = _files("consistency")


def test_vector_sets_are_present() -> None:
    # Guard against a silently empty parametrisation (e.g. a moved folder).
    assert len(INCLUSION) > 50 and len(CONSISTENCY) > 50
    happy = [p for p in INCLUSION + CONSISTENCY if p.name == "happy-path.json"]
    assert happy and all(not _load(p)["wantErr"] for p in happy)


@pytest.mark.parametrize("path", INCLUSION, ids=_id)
def test_inclusion_vector(path: Path) -> None:
    v = _load(path)
    proof = [_b64(p) for p in v["proof"] or []]
    args = (_b64(v["leafHash"]), v["leafIdx"], v["treeSize"], proof, _b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY, ids=_id)
def test_consistency_vector(path: Path) -> None:
    v = _load(path)
    proof = [_b64(p) for p in v["proof"] or []]
    args = (v["size1"], v["size2"], proof, _b64(v["root1"]), _b64(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)
