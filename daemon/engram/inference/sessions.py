"""ONNX Runtime sessions: how they are made, how they run, and the LRU cache that keeps them.

Making a session (:class:`SessionFactory`, blocking: run it in a worker thread) applies the
configured threads and graph optimization level and picks execution providers from the
preference list, falling back to the CPU. With ``inference.optimized_cache`` the optimized graph is
saved under ``<model>/cache/`` the first time and loaded (with optimization off) the next time, so a
restart skips the optimizer; the saved graph is hashed like the model itself and rebuilt if it
does not match its record.

:class:`SessionCache` keeps loaded models under ``inference.sessions``: at most ``max_items``, at
most ``max_bytes`` of model files, and none idle for longer than ``idle_ttl`` (Ollama's
keep-alive). The least recently used model goes first; a model still running a request is only
dropped from the cache, and its session lives until that request is done.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import structlog

from engram.errors import InternalError, InvalidParams, Unavailable
from engram.inference.bert_onnx import sha256_file
from engram.inference.manifest import Manifest
from engram.inference.settings import InferenceSettings
from engram.wire.tensors import DTYPES

if TYPE_CHECKING:
    # ONNX Runtime is imported by the functions that create and run sessions: the daemon makes its
    # session cache at every start, and needs the runtime only when a model is loaded.
    import onnxruntime as ort

__all__ = [
    "LoadedModel", "ProviderFallback", "SessionCache", "SessionFactory", "provider_chain", "provider_fallbacks", "run_session",
]

log = structlog.get_logger("engram.inference")

# inference.graph_optimization -> the name of its ort.GraphOptimizationLevel.
_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
_CPU = "CPUExecutionProvider"


def provider_chain(preferred: list[str], available: list[str] | None = None) -> list[str]:
    """The preferred providers this ONNX Runtime has, in order, with the CPU as the last resort."""
    import onnxruntime as ort

    available = ort.get_available_providers() if available is None else available
    chain = [p for p in preferred if p in available and p != _CPU]
    return [*chain, _CPU]


@dataclass(frozen=True)
class ProviderFallback:
    """A configured execution provider a session does not run on, and why."""

    provider: str
    reason: str


# Builds of ONNX Runtime other than the CPU one, by the providers they bring (`pip install
# engram[gpu]`, which docs/inference.md says to install in place of onnxruntime).
_BUILDS = {
    "CUDAExecutionProvider": "onnxruntime-gpu (engram[gpu]; make install-gpu)",
    "TensorrtExecutionProvider": "onnxruntime-gpu (engram[gpu]; make install-gpu)",
    "ROCMExecutionProvider": "onnxruntime-rocm",
    "MIGraphXExecutionProvider": "onnxruntime-migraphx",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
    "DmlExecutionProvider": "onnxruntime-directml",
    "CoreMLExecutionProvider": "onnxruntime (its macOS build)",
}


def provider_fallbacks(preferred: list[str], used: list[str] | None = None) -> list[ProviderFallback]:
    """The providers of ``preferred`` (the CPU aside: it is the last resort) that this ONNX Runtime
    does not have, or, given the providers a session got (``used``), that the session lacks.

    A build without a provider is what ONNX Runtime itself can tell; a provider it has but could
    not start for a session (no device, CUDA or cuDNN libraries missing) it only writes to its own
    log on stderr, so the reason says where to look."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    fallbacks = []
    for name in preferred:
        if name == _CPU or (used is not None and name in used):
            continue
        if name not in ort.get_all_providers():
            reason = f"ONNX Runtime {ort.__version__} knows no execution provider named {name}"
        elif name not in available:
            build = _BUILDS.get(name)
            reason = (
                f"this ONNX Runtime {ort.__version__} ({ort.get_device()} build) does not include it; it has "
                f"{', '.join(available)}" + (f"; {name} comes with {build}, installed in its place" if build else "")
            )
        else:
            reason = (
                f"ONNX Runtime {ort.__version__} has {name} but could not start it for this session "
                "(no device, or its libraries such as CUDA and cuDNN missing; ONNX Runtime's log on stderr says which)"
            )
        fallbacks.append(ProviderFallback(name, reason))
    return fallbacks


@dataclass
class CreatedSession:
    session: ort.InferenceSession
    providers: list[str]
    optimized_cache: str  # "hit", "stored", "off"
    seconds: float
    fallbacks: list[ProviderFallback] = field(default_factory=list)


class SessionFactory:
    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings

    def options(self, level: str) -> ort.SessionOptions:
        import onnxruntime as ort

        s = self.settings
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
        if s.threads.intra_op:
            options.intra_op_num_threads = s.threads.intra_op
        if s.threads.inter_op:
            options.inter_op_num_threads = s.threads.inter_op
        if not s.threads.spin:
            # Idle ONNX Runtime threads would otherwise spin for a while after every run, taking
            # cores from the event loop and from whatever else runs on the machine.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: warnings would go to stderr, outside the log
        return options

    def create(self, manifest: Manifest, folder: Path) -> CreatedSession:
        import onnxruntime as ort

        started = time.perf_counter()
        providers = provider_chain(self.settings.providers)
        model_path = folder / manifest.model_file
        level = self.settings.graph_optimization
        # A graph with external weights would be saved with them inlined (or fail over 2 GB).
        use_cache = self.settings.optimized_cache and level != "disable" and not manifest.external_data
        if use_cache:
            cached, meta = self._cache_paths(manifest, folder, providers)
            if _cache_valid(cached, meta):
                try:
                    session = ort.InferenceSession(str(cached), self.options("disable"), providers=providers)
                    return self._created(manifest, session, "hit", started)
                except Exception as exc:  # noqa: BLE001 - a stale or foreign cache file: drop it, optimize again
                    log.warning("optimized model cache unusable; optimizing again", model=manifest.name, error=str(exc)[:300])
                    cached.unlink(missing_ok=True)
                    meta.unlink(missing_ok=True)
            options = self.options(level)
            cached.parent.mkdir(mode=0o700, exist_ok=True)
            scratch = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
            options.optimized_model_filepath = str(scratch)
            session = self._session(model_path, options, providers, manifest.name)
            try:
                if scratch.is_file():
                    meta.write_text(json.dumps({"sha256": sha256_file(scratch)}) + "\n", encoding="utf-8")
                    os.replace(scratch, cached)
                    status = "stored"
                else:
                    status = "off"
            except OSError as exc:
                log.info("optimized model not cached", model=manifest.name, error=str(exc))
                status = "off"
            finally:
                scratch.unlink(missing_ok=True)
            if status == "stored":
                # A session that optimised and saved its graph keeps ~40 MB more (MiniLM) for its
                # whole life than one opened from the saved graph: open that one instead (the first
                # goes before, so that the two are never in RAM together).
                del session
                session = self._session(cached, self.options("disable"), providers, manifest.name)
            return self._created(manifest, session, status, started)
        session = self._session(model_path, self.options(level), providers, manifest.name)
        return self._created(manifest, session, "off", started)

    def _created(self, manifest: Manifest, session: ort.InferenceSession, cache: str, started: float) -> CreatedSession:
        used = session.get_providers()
        fallbacks = provider_fallbacks(self.settings.providers, used)
        for fallback in fallbacks:
            log.warning(
                "execution provider unavailable; the model runs on the next one",
                model=manifest.name, provider=fallback.provider, runs_on=used[0], reason=fallback.reason,
            )
        return CreatedSession(session, used, cache, time.perf_counter() - started, fallbacks)

    def _session(self, path: Path, options: ort.SessionOptions, providers: list[str], name: str) -> ort.InferenceSession:
        import onnxruntime as ort

        try:
            return ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's pybind errors: unsupported IR, unknown op, bad graph
            message = str(exc).replace("\n", " ")
            log.warning("ONNX Runtime cannot load model", model=name, error=message[:500])
            raise Unavailable(
                f"ONNX Runtime {ort.__version__} cannot load model {name!r}: {message[:800]}",
                reason="load_failed",
                model=name,
            ) from None

    def _cache_paths(self, manifest: Manifest, folder: Path, providers: list[str]) -> tuple[Path, Path]:
        import onnxruntime as ort

        s = self.settings
        key = "|".join(
            [manifest.files[manifest.model_file], ort.__version__, s.graph_optimization, ",".join(providers)]
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        base = folder / "cache" / f"optimized-{digest}"
        return base.with_suffix(".onnx"), base.with_suffix(".json")


def _cache_valid(cached: Path, meta: Path) -> bool:
    try:
        expected = json.loads(meta.read_text(encoding="utf-8"))["sha256"]
        return sha256_file(cached) == expected
    except (OSError, ValueError, KeyError, TypeError):
        return False


# --- running ------------------------------------------------------------------------------------


def _ort_value(array: np.ndarray, dtype: str) -> ort.OrtValue:
    import onnxruntime as ort

    wire = DTYPES[dtype]
    # np.require, not np.ascontiguousarray: the latter turns a 0-d array (a scalar input) into shape (1,).
    contiguous = np.require(array, requirements="C")
    if wire.exotic:
        raw = contiguous.view(np.uint8 if wire.numpy.itemsize == 1 else np.uint16)
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(raw, wire.onnx)
    return ort.OrtValue.ortvalue_from_numpy(contiguous)


def _from_ort_value(value: ort.OrtValue, dtype: str | None) -> np.ndarray:
    wire = DTYPES.get(dtype or "")
    if wire is None or not wire.exotic:
        return value.numpy()
    shape = value.shape()
    count = int(np.prod(shape)) if shape else 1
    if count == 0:
        return np.zeros(shape, dtype=wire.numpy)
    # numpy has no bfloat16 or 8-bit floats of its own, so ONNX Runtime cannot hand them over as
    # arrays; the bytes of a CPU tensor are copied out and viewed with ml_dtypes' types.
    raw = ctypes.string_at(value.data_ptr(), count * wire.numpy.itemsize)
    return np.frombuffer(raw, dtype=wire.numpy).reshape(shape).copy()


def run_session(
    session: ort.InferenceSession,
    manifest: Manifest,
    feed: dict[str, np.ndarray],
    outputs: list[str],
    exotic: bool,
) -> dict[str, np.ndarray]:
    """One ``session.run``; ONNX Runtime's errors become engram's (blocking: use a worker thread)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    try:
        if not exotic:
            values = session.run(outputs, feed)
            return dict(zip(outputs, values, strict=True))
        in_types = {spec.name: spec.dtype for spec in manifest.inputs}
        out_types = {spec.name: spec.dtype for spec in manifest.outputs}
        ort_feed = {name: _ort_value(array, in_types[name] or "") for name, array in feed.items()}
        results = session.run_with_ort_values(outputs, ort_feed)
        return {name: _from_ort_value(value, out_types.get(name)) for name, value in zip(outputs, results, strict=True)}
    except ort_errors.InvalidArgument as exc:
        raise InvalidParams(
            f"model {manifest.name!r} rejected the inputs: {_short(exc)}", field="inputs", reason="rejected_by_model"
        ) from None
    except (ort_errors.Fail, ort_errors.RuntimeException, ort_errors.NotImplemented, ort_errors.EPFail) as exc:
        log.warning("model run failed", model=manifest.name, error=_short(exc))
        raise InternalError(f"model {manifest.name!r} failed: {_short(exc)}", reason="run_failed", model=manifest.name) from None


def _short(exc: Exception) -> str:
    return str(exc).replace("\n", " ")[:800]


# --- the cache ------------------------------------------------------------------------------------


@dataclass(eq=False)
class LoadedModel:
    """A model ready to run: its verified manifest, its session and what serves requests to it."""

    name: str
    manifest: Manifest
    session: ort.InferenceSession
    providers: list[str]
    size_bytes: int
    load_seconds: float
    optimized_cache: str
    signature: str
    signed_by: str | None
    exotic: bool
    batchable: bool
    fallbacks: list[ProviderFallback] = field(default_factory=list)  # configured providers it lacks
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    active: int = 0
    runs: int = 0
    extras: dict[str, Any] = field(default_factory=dict)  # batchers, text encoder

    @property
    def provider(self) -> str:
        return self.providers[0] if self.providers else _CPU

    def touch(self) -> None:
        self.last_used = time.monotonic()


Loader = Callable[[str], Awaitable[LoadedModel]]
Unloaded = Callable[[LoadedModel, str], None]


class SessionCache:
    """Loaded models by name, least recently used first."""

    def __init__(self, settings: InferenceSettings, loader: Loader, on_unload: Unloaded) -> None:
        self._settings = settings
        self._loader = loader
        self._on_unload = on_unload
        self._entries: OrderedDict[str, LoadedModel] = OrderedDict()
        self._locks: dict[str, anyio.Lock] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def peek(self, name: str) -> LoadedModel | None:
        return self._entries.get(name)

    @property
    def models(self) -> list[LoadedModel]:
        return list(self._entries.values())

    @property
    def total_bytes(self) -> int:
        return sum(m.size_bytes for m in self._entries.values())

    def lock(self, name: str) -> anyio.Lock:
        """The lock that serialises loading, replacing and removing one model."""
        return self._locks.setdefault(name, anyio.Lock())

    async def get(self, name: str) -> LoadedModel:
        entry = self._entries.get(name)
        if entry is None:
            async with self.lock(name):
                entry = self._entries.get(name)
                if entry is None:
                    entry = await self._loader(name)
                    self._entries[name] = entry
                    self._enforce_limits(keep=name)
        self._entries.move_to_end(name)
        entry.touch()
        return entry

    def unload(self, name: str, reason: str) -> LoadedModel | None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._on_unload(entry, reason)
        return entry

    def _enforce_limits(self, keep: str) -> None:
        limits = self._settings.sessions
        while len(self._entries) > limits.max_items:
            if not self._evict_one(keep, "max_items"):
                break
        while self.total_bytes > limits.max_bytes:
            if not self._evict_one(keep, "max_bytes"):
                break

    def _evict_one(self, keep: str, reason: str) -> bool:
        for name in self._entries:  # oldest first
            if name != keep:
                self.unload(name, reason)
                return True
        return False

    def reap(self, now: float | None = None) -> list[str]:
        """Unload models idle for longer than ``idle_ttl``; returns their names."""
        ttl = self._settings.sessions.idle_ttl
        if ttl <= 0:
            return []
        now = time.monotonic() if now is None else now
        idle = [m.name for m in self._entries.values() if m.active == 0 and now - m.last_used >= ttl]
        for name in idle:
            self.unload(name, "idle")
        return idle

    def clear(self, reason: str) -> None:
        for name in list(self._entries):
            self.unload(name, reason)
