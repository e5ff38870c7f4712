"""The default embedder's int8 variant, made by the daemon on the machine it runs on.

Without it requests for the default embedder run the full model unless the owner ran
``engram models quantize`` by hand. So after start the inference part makes the variant itself,
in the background, when it is missing or is a stale earlier one of its own. It is a per-machine
cache kept in the state folder as an ordinary model (``<default>-int8``), whose manifest records
what it was made from: the base model's SHA-256 and the ONNX Runtime version (``source.base_sha256``,
``source.onnxruntime``), and ``source.made_by = "engramd"``. A variant of the daemon's own is made
again when either differs, or when a file of it no longer matches its manifest's hash; one the
owner made with ``models.quantize`` is never replaced.

The work (for all-MiniLM-L6-v2 on the development machine 3.5-4 s of CPU in all, about 1.6 s of
it quantizing and 1.5 s comparing with the full model, and a peak of 514 MB) runs in a child
process: niced, one intra-op thread, killed at shutdown or after :data:`MAKE_TIMEOUT`, so the
quantization tools (onnx, ``onnxruntime.quantization``) and the graph's copies never enter, or
stay in, the daemon's own memory. The child writes the
int8 graph and a ``result.json`` into a staging folder the daemon gave it; the daemon registers
the graph. Whether the variant then serves is decided as for one made by hand
(:func:`engram.inference.service.fast_variant_problem`: cosine and speed on this machine).

``quantize_dynamic`` writes the same bytes for the same input and ONNX Runtime version (measured:
the SHA-256 of the variant is equal from run to run); what depends on the machine is the speed
check, and the ONNX Runtime installed can change after engram was installed: hence a variant made
where it runs rather than at install time.

Run as ``python -m engram.inference.fast_variant MODEL_FOLDER WORK_DIR`` by the service only.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream

from engram.errors import InternalSignal
from engram.inference.manifest import MANIFEST_FILE, Manifest

__all__ = [
    "MADE_BY",
    "MAKE_TIMEOUT",
    "VariantMakeFailed",
    "make_variant",
    "onnxruntime_version",
    "remake_reason",
    "variant_name",
]

MADE_BY = "engramd"
"""``source.made_by`` of a variant the daemon made itself (it may replace those, and only those)."""

MAKE_TIMEOUT = 900.0
"""Seconds the child may take; a niced child on a busy 2-core machine took under 15."""

NICE = 10
"""The child's niceness: requests served meanwhile come first."""

RESULT_FILE = "result.json"
_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")
_STDERR_KEEP = 4096


class VariantMakeFailed(InternalSignal):
    """The child process failed, timed out or left no result (the service logs it and goes on
    with the full model)."""


def variant_name(base: str) -> str:
    """The name ``models.quantize`` gives a variant by default, and the one the route looks for."""
    return f"{base}-int8"[:64]


def onnxruntime_version() -> str:
    """The installed ONNX Runtime's version, from its distribution's metadata: importing it would
    load its native library into a daemon that may not have needed it yet (about 20 MB)."""
    for distribution in _ORT_DISTRIBUTIONS:  # looking one up by name costs a millisecond...
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    # ...scanning every installed distribution for the one that ships the module, half a second.
    for distribution in importlib.metadata.packages_distributions().get("onnxruntime", []):
        return importlib.metadata.version(distribution)
    return "unknown"


def remake_reason(base: Manifest, variant: Manifest | None, ort_version: str) -> str | None:
    """Why the daemon should make the variant (again); None when the one there is to be kept.

    ``variant`` None: there is none. A variant the owner made (not ``made_by`` the daemon) is kept
    whatever it is: the route decides whether it serves."""
    if variant is None:
        return "missing"
    source = variant.source
    if source.get("made_by") != MADE_BY:
        return None
    if source.get("base_sha256") != base.files.get(base.model_file):
        return "made from other weights than the default embedder has now"
    if source.get("onnxruntime") != ort_version:
        return f"made by ONNX Runtime {source.get('onnxruntime')}, this is {ort_version}"
    return None


async def _tail(stream: ByteReceiveStream | None) -> str:
    if stream is None:
        return ""
    kept: deque[bytes] = deque()
    size = 0
    async for chunk in stream:
        kept.append(chunk)
        size += len(chunk)
        while size - len(kept[0]) >= _STDERR_KEEP:
            size -= len(kept.popleft())
    return b"".join(kept).decode("utf-8", "replace")[-_STDERR_KEEP:]


async def make_variant(model_folder: Path, work_dir: Path, *, timeout: float = MAKE_TIMEOUT) -> dict[str, Any]:
    """Run the child on the model in ``model_folder``; its result (``path`` of the int8 graph in
    ``work_dir``, ``comparison``, ``seconds``, ``onnxruntime``). Cancelling kills the child."""
    command = [sys.executable, "-m", "engram.inference.fast_variant", str(model_folder), str(work_dir)]
    # The child finds engram where the daemon did (same interpreter, same environment).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = await anyio.open_process(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
    try:
        with anyio.fail_after(timeout):
            stderr = await _tail(process.stderr)
            code = await process.wait()
    except TimeoutError:
        raise VariantMakeFailed(f"the child process took longer than {timeout:.0f} s") from None
    finally:
        with anyio.CancelScope(shield=True):  # at shutdown too: no child outlives the daemon
            if process.returncode is None:
                process.kill()
            await process.aclose()
    result = work_dir / RESULT_FILE
    if code != 0 or not result.is_file():
        last = stderr.strip().splitlines()[-1:] or ["no output"]
        raise VariantMakeFailed(f"the child process exited with status {code}: {last[0]}")
    data: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
    return data


def _child(model_folder: Path, work_dir: Path) -> int:
    import time

    from tokenizers import Tokenizer

    from engram.inference.quantize import compare_embedders, quantize_model
    from engram.inference.text_encoder import TextEncoder

    os.nice(NICE)
    started = time.perf_counter()
    base = Manifest.model_validate_json((model_folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    if base.embedding is None or not base.tokenizer:
        print(f"{base.name!r} is not an embedding model", file=sys.stderr)
        return 2
    encoder = TextEncoder(Tokenizer.from_file(str(model_folder / base.tokenizer)), base.embedding.max_seq_len)
    source = model_folder / base.model_file
    # Unfused: one quantization instead of three (fusing, and quantizing and timing both), and
    # fusion was not faster here; the owner can still make a fused one with models.quantize.
    outcome = quantize_model(source, base, work_dir, fuse="never", encoder=encoder, threads=1)
    comparison = compare_embedders(source, outcome.path, base, encoder, threads=1)
    result = {
        "path": str(outcome.path),
        "comparison": comparison,
        "seconds": round(time.perf_counter() - started, 3),
        "onnxruntime": onnxruntime_version(),
    }
    tmp = work_dir / f".{RESULT_FILE}"
    tmp.write_text(json.dumps(result), encoding="utf-8")
    tmp.replace(work_dir / RESULT_FILE)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m engram.inference.fast_variant MODEL_FOLDER WORK_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(_child(Path(sys.argv[1]), Path(sys.argv[2])))
