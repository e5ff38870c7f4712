"""The model registry: adding, importing, integrity, signatures, removal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from engram.errors import Conflict, IntegrityError, InvalidParams, NotFound
from engram.inference.manifest import (
    BadSignature,
    Manifest,
    canonical_bytes,
    check_model_name,
    sign_manifest,
    signature_status,
)
from engram.inference.registry import ModelRegistry
from engram.signing import Signer, generate_signer
from engram_bench.tiny_bert import create_tiny_bert
from engram_bench.toy_models import linear_model, sequence_model
from onnx import TensorProto, helper, numpy_helper


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "models")
    reg.ensure()
    return reg


def test_add_copies_hashes_and_reads_the_signature_of_the_graph(registry: ModelRegistry, tmp_path: Path) -> None:
    source = linear_model(tmp_path / "src" / "linear.onnx")
    manifest = registry.add_onnx("linear", source, task="generic")
    folder = registry.folder("linear")
    assert (folder / "model.onnx").read_bytes() == source.read_bytes()
    assert manifest.files == {"model.onnx": __import__("hashlib").sha256(source.read_bytes()).hexdigest()}
    assert [(s.name, s.dtype, s.shape) for s in manifest.inputs] == [("x", "float32", ["batch", 4])]
    assert [(s.name, s.dtype, s.shape) for s in manifest.outputs] == [("y", "float32", ["batch", 3]), ("relu", "float32", ["batch", 3])]
    assert manifest.opsets == {"": 21} and manifest.ir_version == 10
    assert registry.manifest("linear") == manifest
    assert registry.names() == ["linear"]
    assert oct((folder / "model.onnx").stat().st_mode & 0o777) == "0o400"
    registry.verify(manifest)  # untouched: passes


def test_tampered_or_missing_file_is_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    manifest = registry.add_onnx("linear", linear_model(tmp_path / "linear.onnx"))
    path = registry.folder("linear") / "model.onnx"
    os.chmod(path, 0o600)
    with open(path, "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(IntegrityError) as caught:
        registry.verify(manifest)
    assert caught.value.code == -32006
    assert caught.value.data == {"reason": "hash_mismatch", "model": "linear", "file": "model.onnx"}
    path.unlink()
    with pytest.raises(IntegrityError) as caught:
        registry.verify(manifest)
    assert caught.value.reason == "file_missing"


def test_external_data_is_copied_and_hashed(registry: ModelRegistry, tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    src = tmp_path / "ext"
    src.mkdir()
    onnx.save_model(model, str(src / "big.onnx"), save_as_external_data=True, location="big.weights", size_threshold=0)
    manifest = registry.add_onnx("ext", src / "big.onnx")
    assert set(manifest.files) == {"model.onnx", "big.weights"} and manifest.external_data == ["big.weights"]
    assert (registry.folder("ext") / "big.weights").read_bytes() == (src / "big.weights").read_bytes()


@pytest.mark.parametrize(
    ("name", "path", "field", "message"),
    [
        ("Bad Name", None, "name", "invalid model name"),
        ("ok", "relative.onnx", "path", "not an absolute path"),
        ("ok", "/nonexistent/x.onnx", "path", "cannot read"),
        ("ok", "/etc/hostname", "path", "does not end in .onnx"),
    ],
)
def test_add_refuses_bad_names_and_paths(registry: ModelRegistry, name: str, path: str | None, field: str, message: str,
                                         tmp_path: Path) -> None:
    source = Path(path) if path else linear_model(tmp_path / "l.onnx")
    with pytest.raises(InvalidParams, match=message) as caught:
        registry.add_onnx(name, source)
    assert caught.value.data["field"] == field


def test_add_refuses_directories_and_non_onnx(registry: ModelRegistry, tmp_path: Path) -> None:
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(InvalidParams, match="not a regular file"):
        registry.add_onnx("d", tmp_path / "dir.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    with pytest.raises(InvalidParams, match="not an ONNX model") as caught:
        registry.add_onnx("junk", tmp_path / "junk.onnx")
    assert caught.value.reason == "not_onnx"
    assert not registry.folder("junk").exists() and registry.names() == []
    assert [p.name for p in registry.root.iterdir()] == []  # no staging left behind


def test_a_refused_file_is_named_by_the_users_path_not_the_registrys_copy(registry: ModelRegistry, tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    with pytest.raises(InvalidParams) as caught:
        registry.add_onnx("junk", junk)
    assert str(caught.value).startswith(f"path: {junk} is not an ONNX model") and "model.onnx" not in str(caught.value)
    graph = helper.make_graph([], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [])
    hollow = tmp_path / "hollow.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(hollow))
    with pytest.raises(InvalidParams) as caught:
        registry.add_onnx("hollow", hollow)
    assert str(caught.value) == f"path: {hollow} has no graph outputs; it is not a usable ONNX model"


def test_names_conflict_unless_overwrite(registry: ModelRegistry, tmp_path: Path) -> None:
    registry.add_onnx("m", linear_model(tmp_path / "a.onnx", seed=1))
    with pytest.raises(Conflict):
        registry.add_onnx("m", linear_model(tmp_path / "b.onnx", seed=2))
    replaced = registry.add_onnx("m", tmp_path / "b.onnx", overwrite=True)
    assert registry.manifest("m").files == replaced.files
    registry.remove("m")
    assert registry.names() == []
    with pytest.raises(NotFound):
        registry.manifest("m")


def test_non_tensor_outputs_are_described(registry: ModelRegistry, tmp_path: Path) -> None:
    manifest = registry.add_onnx("seq", sequence_model(tmp_path / "s.onnx"))
    seq = manifest.output("seq")
    assert seq is not None and seq.kind == "sequence" and seq.onnx_type == "seq(tensor(float))" and seq.dtype is None


def test_labels_only_for_classify(registry: ModelRegistry, tmp_path: Path) -> None:
    path = linear_model(tmp_path / "l.onnx")
    with pytest.raises(InvalidParams, match="only classify"):
        registry.add_onnx("c", path, labels=["a", "b", "c"])
    manifest = registry.add_onnx("c", path, task="classify", labels=["a", "b", "c"])
    assert manifest.labels == ["a", "b", "c"]


def test_bad_manifest_is_an_integrity_failure(registry: ModelRegistry, tmp_path: Path) -> None:
    registry.add_onnx("m", linear_model(tmp_path / "l.onnx"))
    (registry.folder("m") / "manifest.json").write_text("{not json")
    with pytest.raises(IntegrityError) as caught:
        registry.manifest("m")
    assert caught.value.reason == "bad_manifest"


def test_leftover_staging_is_swept(registry: ModelRegistry) -> None:
    (registry.root / ".staging-abc").mkdir()
    (registry.root / ".staging-abc" / "model.onnx").write_bytes(b"x")
    registry.ensure()
    assert list(registry.root.iterdir()) == []


def test_model_names() -> None:
    for good in ("a", "all-minilm-l6-v2", "x.y_z-1", "9" * 64):
        assert check_model_name(good) is None
    for bad in ("", "-a", "A", "a b", "a/b", "é", "9" * 65, ".hidden"):
        assert check_model_name(bad) is not None


# --- importing -------------------------------------------------------------------------------------


def test_import_bert_registers_an_embed_model_and_reuses_the_cache(registry: ModelRegistry, tmp_path: Path) -> None:
    bert = create_tiny_bert(tmp_path / "tiny")
    cache = tmp_path / "cache"
    manifest, report = registry.import_bert("tiny", bert, cache_dir=cache)
    assert manifest.task == "embed" and manifest.tokenizer == "tokenizer.json"
    assert manifest.embedding is not None and manifest.embedding.dim == 32 and manifest.embedding.max_seq_len == 48
    assert {"model.onnx", "tokenizer.json", "config.json"} <= set(manifest.files)
    assert report["cached"] is False
    registry.verify(manifest)
    again, report = registry.import_bert("tiny2", bert, cache_dir=cache)
    assert report["cached"] is True
    assert again.files["model.onnx"] == manifest.files["model.onnx"]
    registry.verify(again)


def test_import_checks_the_pin(registry: ModelRegistry, tmp_path: Path) -> None:
    bert = create_tiny_bert(tmp_path / "tiny")
    with pytest.raises(IntegrityError) as caught:
        registry.import_bert("tiny", bert, expected_sha256="0" * 64)
    assert caught.value.reason == "hash_mismatch"
    assert registry.names() == []


def test_import_refuses_folders_without_a_bert(registry: ModelRegistry, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidParams, match="has no config.json"):
        registry.import_bert("x", tmp_path / "empty")


def test_a_corrupt_cache_entry_is_rebuilt(registry: ModelRegistry, tmp_path: Path) -> None:
    bert = create_tiny_bert(tmp_path / "tiny")
    cache = tmp_path / "cache"
    registry.import_bert("a", bert, cache_dir=cache)
    (cached,) = cache.glob("bert/*/model.onnx")
    os.chmod(cached, 0o600)
    cached.write_bytes(b"garbage")
    manifest, report = registry.import_bert("b", bert, cache_dir=cache)
    assert report["cached"] is False
    registry.verify(manifest)


# --- signatures ------------------------------------------------------------------------------------


def _manifest(registry: ModelRegistry, tmp_path: Path) -> Manifest:
    return registry.add_onnx("m", linear_model(tmp_path / "l.onnx"))


def test_signatures_verify_and_are_trusted_by_key(registry: ModelRegistry, tmp_path: Path) -> None:
    skey, vkey = generate_signer("models.example")
    _, other_vkey = generate_signer("someone-else")
    from engram.signing import Verifier

    manifest = _manifest(registry, tmp_path)
    assert signature_status(manifest, []) == ("unsigned", None)
    signed = manifest.model_copy(update={"signature": sign_manifest(manifest, Signer(skey))})
    status, by = signature_status(signed, [Verifier(vkey)])
    assert status == "trusted" and by is not None and by.startswith("models.example+")
    assert signature_status(signed, [Verifier(other_vkey)])[0] == "untrusted"
    # The signature covers the canonical bytes, which exclude the signature itself.
    assert canonical_bytes(signed) == canonical_bytes(manifest)
    assert b'"signature"' not in canonical_bytes(signed)
    assert json.loads(canonical_bytes(manifest)) == json.loads(manifest.model_dump_json(exclude={"signature"}))


def test_a_changed_manifest_breaks_its_signature(registry: ModelRegistry, tmp_path: Path) -> None:
    skey, vkey = generate_signer("k")
    manifest = _manifest(registry, tmp_path)
    signed = manifest.model_copy(update={"signature": sign_manifest(manifest, Signer(skey))})
    forged = signed.model_copy(update={"files": {"model.onnx": "0" * 64}})
    from engram.signing import Verifier

    with pytest.raises(BadSignature):
        signature_status(forged, [Verifier(vkey)])


def test_changed_inputs_are_hashed_again_not_served_from_memory(registry: ModelRegistry, tmp_path: Path) -> None:
    bert = create_tiny_bert(tmp_path / "tiny")
    cache = tmp_path / "cache"
    first, _ = registry.import_bert("a", bert, cache_dir=cache)
    assert (cache / "hashes.json").is_file()
    config = json.loads((bert / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6
    (bert / "config.json").write_text(json.dumps(config))
    second, report = registry.import_bert("b", bert, cache_dir=cache)
    assert report["cached"] is False
    assert second.source["inputs_sha256"]["config.json"] != first.source["inputs_sha256"]["config.json"]
    third, report = registry.import_bert("c", bert, cache_dir=cache)
    assert report["cached"] is True and third.files == second.files
