"""The model registry: ``<state>/models/<name>/`` folders, each ``model.onnx`` plus ``manifest.json``.

Every change is staged in a scratch folder beside the models and renamed into place, so a crash
never leaves a half-written model under a real name; leftovers are swept at the next start. Model
files are made read-only (0400). Everything here is blocking file work: the service calls it in
worker threads.

Integrity: :meth:`ModelRegistry.verify` hashes every file the manifest lists and raises
:class:`~engram.errors.IntegrityError` (-32006, reason ``hash_mismatch`` or ``file_missing``,
naming the file) on the first that differs. The service verifies before every load.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from engram import __version__
from engram.errors import Conflict, IntegrityError, InvalidParams, NotFound
from engram.inference.bert_onnx import (
    OPSET,
    ModelImportError,
    WeightsHashMismatch,
    build_bert_onnx,
    sha256_file,
)
from engram.inference.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    EmbeddingInfo,
    Manifest,
    Task,
    TensorSpec,
    check_model_name,
)
from engram.inference.onnx_info import NotOnnx, OnnxInfo, inspect_onnx
from engram.storage.files import fsync_directory

__all__ = ["ModelRegistry", "copy_hashed", "default_import_cache_dir"]

log = structlog.get_logger("engram.inference")

_CHUNK = 1 << 20
_STAGING_PREFIX = ".staging-"
_TRASH_PREFIX = ".trash-"
# The files of a sentence-transformers folder an embedding model keeps beside its graph.
_TEXT_FILES = ("tokenizer.json", "config.json", "sentence_bert_config.json", "tokenizer_config.json")


def builder_id() -> str:
    """What built an imported model's graph, in its import-cache key: it changes whenever the graph
    the importer writes could change (engram, the opset, onnx), so that cached builds are not reused.
    onnx's version comes from its metadata, not its import: an import that finds its graph in the
    cache needs nothing else of onnx."""
    return f"engram {__version__} bert_onnx opset {OPSET} onnx {importlib.metadata.version('onnx')}"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def copy_hashed(source: Path, target: Path) -> str:
    """Copy ``source`` to ``target`` and return the SHA-256 of the bytes written, in one pass."""
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def default_import_cache_dir() -> Path:
    """$CACHE_DIRECTORY (systemd CacheDirectory=), else $XDG_CACHE_HOME/engram/imports, else ~/.cache."""
    if cache := os.environ.get("CACHE_DIRECTORY"):
        return Path(cache.split(":")[0]) / "imports"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "engram" / "imports"


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root

    # --- reading ------------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the models folder and sweep what an interrupted change left behind."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in self.root.iterdir():
            if leftover.name.startswith((_STAGING_PREFIX, _TRASH_PREFIX)):
                log.info("removing leftover of an interrupted model change", path=str(leftover))
                shutil.rmtree(leftover, ignore_errors=True)

    def folder(self, name: str) -> Path:
        return self.root / name

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if check_model_name(p.name) is None and (p / MANIFEST_FILE).is_file()
        )

    def exists(self, name: str) -> bool:
        return check_model_name(name) is None and (self.folder(name) / MANIFEST_FILE).is_file()

    def manifest(self, name: str) -> Manifest:
        if problem := check_model_name(name):
            raise InvalidParams(f"invalid model name {name!r}: {problem}", field="name")
        path = self.folder(name) / MANIFEST_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotFound(f"no model named {name!r}", reason="no_such_model", model=name) from None
        try:
            manifest = Manifest.model_validate_json(text)
        except ValueError as exc:
            log.error("model manifest is unreadable", model=name, path=str(path), error=str(exc)[:500])
            raise IntegrityError(
                f"model {name!r}: {MANIFEST_FILE} is not a valid manifest", reason="bad_manifest", model=name
            ) from None
        if manifest.name != name:
            log.error("model manifest names another model", model=name, manifest_name=manifest.name)
            raise IntegrityError(
                f"model {name!r}: the manifest says it is {manifest.name!r}", reason="bad_manifest", model=name
            )
        return manifest

    def sizes(self, name: str) -> dict[str, int]:
        folder = self.folder(name)
        out = {}
        for path in folder.iterdir():
            if path.is_file():
                out[path.name] = path.stat().st_size
        return out

    def size(self, manifest: Manifest) -> int:
        sizes = self.sizes(manifest.name)
        return sum(sizes.get(file, 0) for file in manifest.files)

    def verify(self, manifest: Manifest) -> None:
        """Hash every file of ``manifest``; :class:`IntegrityError` naming the first that differs."""
        folder = self.folder(manifest.name)
        if manifest.model_file not in manifest.files:
            raise IntegrityError(
                f"model {manifest.name!r}: the manifest lists no hash for {manifest.model_file}",
                reason="bad_manifest",
                model=manifest.name,
            )
        for file, expected in sorted(manifest.files.items()):
            path = folder / file
            try:
                actual = sha256_file(path)
            except FileNotFoundError:
                log.error("model file missing", model=manifest.name, file=file)
                raise IntegrityError(
                    f"model {manifest.name!r}: {file} is missing", reason="file_missing", model=manifest.name, file=file
                ) from None
            if actual != expected:
                log.error(
                    "model file does not match its manifest; refusing it",
                    model=manifest.name,
                    file=file,
                    expected=expected,
                    actual=actual,
                )
                raise IntegrityError(
                    f"model {manifest.name!r}: {file} has SHA-256 {actual}, the manifest says {expected}",
                    reason="hash_mismatch",
                    model=manifest.name,
                    file=file,
                )

    # --- writing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A scratch folder beside the models; removed unless :meth:`install` moved it into place."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.root))
        try:
            yield path
        finally:
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)

    def check_new(self, name: str, overwrite: bool) -> None:
        if problem := check_model_name(name):
            raise InvalidParams(f"invalid model name {name!r}: {problem}", field="name")
        if not overwrite and self.folder(name).exists():
            raise Conflict(
                f"a model named {name!r} exists; remove it first or pass overwrite", reason="model_exists", model=name
            )

    def _write_manifest_file(self, folder: Path, manifest: Manifest) -> None:
        tmp = folder / f".{MANIFEST_FILE}.{secrets.token_hex(4)}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(manifest.model_dump_json(indent=2, exclude_none=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / MANIFEST_FILE)

    def install(self, staged: Path, manifest: Manifest, overwrite: bool) -> None:
        """Write the manifest into ``staged`` and rename it to the model's folder."""
        for file in manifest.files:
            os.chmod(staged / file, 0o400)
        self._write_manifest_file(staged, manifest)
        os.chmod(staged, 0o700)
        target = self.folder(manifest.name)
        trash: Path | None = None
        if target.exists():
            if not overwrite:
                raise Conflict(f"a model named {manifest.name!r} exists", reason="model_exists", model=manifest.name)
            trash = self.root / f"{_TRASH_PREFIX}{manifest.name}-{secrets.token_hex(4)}"
            os.rename(target, trash)
        os.rename(staged, target)
        fsync_directory(self.root)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def write_manifest(self, manifest: Manifest) -> None:
        """Replace an installed model's manifest (signing does this)."""
        self._write_manifest_file(self.folder(manifest.name), manifest)

    def remove(self, name: str) -> None:
        self.manifest(name)  # NotFound for an unknown name
        trash = self.root / f"{_TRASH_PREFIX}{name}-{secrets.token_hex(4)}"
        os.rename(self.folder(name), trash)
        fsync_directory(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    # --- adding an ONNX file --------------------------------------------------------------------

    def add_onnx(
        self,
        name: str,
        source: Path,
        *,
        task: Task = "generic",
        labels: list[str] | None = None,
        allow_nonfinite: bool = True,
        overwrite: bool = False,
    ) -> Manifest:
        """Copy ``source`` (and external data beside it) in, hash it, read its inputs and outputs."""
        self.check_new(name, overwrite)
        _check_source(source)
        with self.staging() as staged:
            try:
                files = {MODEL_FILE: copy_hashed(source, staged / MODEL_FILE)}
            except OSError as exc:
                raise InvalidParams(f"path: cannot read {source}: {exc.strerror}", field="path") from None
            try:
                info = inspect_onnx(staged / MODEL_FILE, shown_as=source)
            except NotOnnx as exc:
                raise InvalidParams(f"path: {exc}", field="path", reason="not_onnx") from None
            for location in info.external_files:
                files[location] = self._copy_external(source.parent, location, staged)
            if labels is not None:
                _check_labels(labels, task)
            manifest = self._manifest(
                name, info, files, task=task, labels=labels, allow_nonfinite=allow_nonfinite,
                source={"kind": "add", "path": str(source)},
            )
            self.install(staged, manifest, overwrite)
        return manifest

    def _copy_external(self, base: Path, location: str, staged: Path) -> str:
        if not location or "/" in location or "\\" in location or location in (".", "..") or location == MODEL_FILE:
            raise InvalidParams(
                f"path: the model keeps weights in {location!r}; only a file beside the model is supported",
                field="path",
                reason="external_data",
            )
        source = base / location
        if not source.is_file():
            raise InvalidParams(
                f"path: the model keeps weights in {location!r}, which is not beside it in {base}",
                field="path",
                reason="external_data",
            )
        return copy_hashed(source, staged / location)

    def _manifest(
        self,
        name: str,
        info: OnnxInfo,
        files: dict[str, str],
        *,
        task: Task,
        source: dict[str, Any],
        labels: list[str] | None = None,
        allow_nonfinite: bool = True,
        tokenizer: str | None = None,
        embedding: EmbeddingInfo | None = None,
    ) -> Manifest:
        inputs = info.inputs
        if not allow_nonfinite:
            inputs = [spec.model_copy(update={"allow_nonfinite": False}) for spec in inputs]
        return Manifest(
            name=name,
            task=task,
            files=files,
            external_data=list(info.external_files),
            tokenizer=tokenizer,
            labels=labels,
            inputs=inputs,
            outputs=info.outputs,
            embedding=embedding,
            ir_version=info.ir_version,
            opsets=info.opsets,
            source=source,
            created_at=now_iso(),
        )

    # --- importing a BERT sentence-transformers folder ----------------------------------------------

    def import_bert(
        self,
        name: str,
        model_dir: Path,
        *,
        expected_sha256: str | None = None,
        overwrite: bool = False,
        cache_dir: Path | None = None,
        source: dict[str, Any] | None = None,
    ) -> tuple[Manifest, dict[str, Any]]:
        """Build the ONNX graph of a BERT checkpoint folder and register it as an ``embed`` model.

        With ``cache_dir``, a graph built earlier from files with the same hashes (by the same
        builder) is reused instead of built again, and the inputs' hashes are remembered by file
        identity (:class:`_HashMemo`). The model is hashed before every load like any other.
        Returns the manifest and a report (seconds, parameters, whether the cache served it).
        """
        self.check_new(name, overwrite)
        if not model_dir.is_dir():
            raise InvalidParams(f"path: {model_dir} is not a folder", field="path")
        for needed in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (model_dir / needed).is_file():
                raise InvalidParams(f"path: {model_dir} has no {needed}", field="path", reason="not_a_bert_folder")
        memo = _HashMemo(cache_dir / "hashes.json") if cache_dir is not None else None
        inputs = {file: memo.sha256(model_dir / file) if memo else sha256_file(model_dir / file)
                  for file in (*_TEXT_FILES, "model.safetensors") if (model_dir / file).is_file()}
        if memo is not None:
            memo.save()
        if expected_sha256 is not None and inputs["model.safetensors"] != expected_sha256:
            log.error("pinned weights do not match", path=str(model_dir / "model.safetensors"),
                      expected=expected_sha256, actual=inputs["model.safetensors"])
            raise IntegrityError(
                f"{model_dir / 'model.safetensors'} has SHA-256 {inputs['model.safetensors']}, pinned {expected_sha256}",
                reason="hash_mismatch",
                file="model.safetensors",
            )
        key = hashlib.sha256(json.dumps({"builder": builder_id(), "inputs": inputs}, sort_keys=True).encode()).hexdigest()
        with self.staging() as staged:
            target = staged / MODEL_FILE
            build = _cached_build(cache_dir, key, target) if cache_dir is not None else None
            cached = build is not None
            if build is None:
                try:
                    report = build_bert_onnx(model_dir, target, expected_sha256=expected_sha256)
                except WeightsHashMismatch as exc:
                    raise IntegrityError(str(exc), reason="hash_mismatch", file="model.safetensors") from None
                except ModelImportError as exc:
                    raise InvalidParams(f"path: {exc}", field="path", reason="import_failed") from None
                if report.external_data_path is not None:
                    raise InvalidParams(
                        "path: the model is too large for one ONNX file (over 2 GB); engram imports models that fit",
                        field="path",
                        reason="too_large",
                    )
                described = inspect_onnx(target)
                build = {
                    "sha256": report.output_sha256,
                    "hidden_size": report.hidden_size,
                    "num_layers": report.num_layers,
                    "num_heads": report.num_heads,
                    "max_seq_len": report.max_seq_len,
                    "parameters": report.parameter_count,
                    "build_seconds": round(report.seconds, 3),
                    # What the graph declares, so that a cache hit need not parse 90 MB of protobuf.
                    "inputs": [spec.model_dump(mode="json") for spec in described.inputs],
                    "outputs": [spec.model_dump(mode="json") for spec in described.outputs],
                    "ir_version": described.ir_version,
                    "opsets": described.opsets,
                }
                if cache_dir is not None:
                    _store_build(cache_dir, key, target, build)
            files = {MODEL_FILE: build["sha256"]}
            for file in _TEXT_FILES:
                if (model_dir / file).is_file():
                    files[file] = copy_hashed(model_dir / file, staged / file)
            info = OnnxInfo(
                inputs=[TensorSpec.model_validate(spec) for spec in build["inputs"]],
                outputs=[TensorSpec.model_validate(spec) for spec in build["outputs"]],
                ir_version=build["ir_version"],
                opsets=build["opsets"],
            )
            embedding = EmbeddingInfo(
                dim=build["hidden_size"],
                max_seq_len=build["max_seq_len"],
                hidden_size=build["hidden_size"],
                num_layers=build["num_layers"],
                num_heads=build["num_heads"],
            )
            manifest = self._manifest(
                name, info, files, task="embed", tokenizer="tokenizer.json", embedding=embedding,
                source={"kind": "import", "path": str(model_dir), "inputs_sha256": inputs, **(source or {})},
            )
            self.install(staged, manifest, overwrite)
        return manifest, {"cached": cached, "parameters": build["parameters"], "build_seconds": build.get("build_seconds")}

    def add_derived(
        self,
        base: Manifest,
        name: str,
        onnx_file: Path,
        *,
        source: dict[str, Any],
        overwrite: bool = False,
    ) -> Manifest:
        """Register ``onnx_file`` as model ``name`` with ``base``'s task, tokenizer and labels (quantize)."""
        self.check_new(name, overwrite)
        with self.staging() as staged:
            files = {MODEL_FILE: copy_hashed(onnx_file, staged / MODEL_FILE)}
            info = inspect_onnx(staged / MODEL_FILE)
            for location in info.external_files:
                files[location] = self._copy_external(onnx_file.parent, location, staged)
            base_folder = self.folder(base.name)
            for file in base.files:
                if file != base.model_file and file not in files and file in _TEXT_FILES:
                    files[file] = copy_hashed(base_folder / file, staged / file)
            inputs = [
                spec.model_copy(update={"allow_nonfinite": base.input(spec.name).allow_nonfinite})
                if base.input(spec.name) is not None else spec
                for spec in info.inputs
            ]
            info.inputs = inputs
            manifest = self._manifest(
                name, info, files, task=base.task, labels=base.labels, tokenizer=base.tokenizer,
                embedding=base.embedding, source=source,
            )
            self.install(staged, manifest, overwrite)
        return manifest


def _check_source(source: Path) -> None:
    if source.suffix != ".onnx":
        raise InvalidParams(f"path: {source} does not end in .onnx", field="path")
    if not source.is_absolute():
        raise InvalidParams(f"path: {source} is not an absolute path", field="path")
    try:
        st = source.stat()
    except OSError as exc:
        raise InvalidParams(f"path: cannot read {source}: {exc.strerror}", field="path") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidParams(f"path: {source} is not a regular file", field="path")
    if not os.access(source, os.R_OK):
        raise InvalidParams(f"path: {source} is not readable by the daemon", field="path")


def _check_labels(labels: list[str], task: Task) -> None:
    if task != "classify":
        raise InvalidParams("labels: only classify models have labels", field="labels")
    if not labels or len(set(labels)) != len(labels):
        raise InvalidParams("labels: give each class name once", field="labels")


def _identity(path: Path, with_ctime: bool = True) -> list[int]:
    st = path.stat()
    ident = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]
    return [*ident, st.st_ctime_ns] if with_ctime else ident


class _HashMemo:
    """SHA-256 of files remembered by identity (size, mtime, inode, device, ctime).

    Hashing a 90 MB checkpoint on every fresh state folder would cost a tenth of a second each
    time. A file whose identity is unchanged has the same bytes unless someone rewrote it and
    restored its times, and no one can restore a ctime; anything else is hashed again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._changed = False
        try:
            self._known: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self._known = {}

    def sha256(self, file: Path) -> str:
        key = str(file.resolve())
        ident = _identity(file)
        entry = self._known.get(key)
        if isinstance(entry, dict) and entry.get("identity") == ident and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        digest = sha256_file(file)
        self._known[key] = {"identity": ident, "sha256": digest}
        self._changed = True
        return digest

    def save(self) -> None:
        if not self._changed:
            return
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
            tmp.write_text(json.dumps(self._known, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.info("hash memo not written", path=str(self.path), error=str(exc))


def _cached_build(cache_dir: Path, key: str, target: Path) -> dict[str, Any] | None:
    """Put the cached graph for ``key`` at ``target`` (hard link, else copy); None when absent or bad.

    The cached file is hashed against its record unless its identity (size, mtime, inode) is the
    one recorded when it was stored: accidental damage is caught here, and the manifest's hash
    is checked again before every load anyway.
    """
    entry = cache_dir / "bert" / key
    try:
        meta = json.loads((entry / "build.json").read_text(encoding="utf-8"))
        cached = entry / MODEL_FILE
        if not {"sha256", "inputs", "outputs", "ir_version", "opsets"} <= meta.keys():
            shutil.rmtree(entry, ignore_errors=True)  # written by an older engram: make room for a new one
            return None
        if meta.get("identity") != _identity(cached, with_ctime=False) and sha256_file(cached) != meta["sha256"]:
            log.warning("cached import does not match its record; building again", path=str(cached))
            shutil.rmtree(entry, ignore_errors=True)
            return None
        try:
            os.link(cached, target)
        except OSError:
            shutil.copyfile(cached, target)
        return meta
    except (OSError, ValueError, KeyError):
        return None


def _store_build(cache_dir: Path, key: str, built: Path, meta: dict[str, Any]) -> None:
    """Keep a copy of a built graph for the next import of the same weights; failures only log."""
    entry = cache_dir / "bert" / key
    try:
        entry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        try:
            shutil.copyfile(built, scratch / MODEL_FILE)
            os.chmod(scratch / MODEL_FILE, 0o444)
            record = {**meta, "identity": _identity(scratch / MODEL_FILE, with_ctime=False)}
            (scratch / "build.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            try:
                os.rename(scratch, entry)
            except OSError:
                pass  # another daemon stored the same build first
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except OSError as exc:
        log.info("import cache not written", path=str(entry), error=str(exc))
