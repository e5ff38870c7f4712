"""The router part: ``route.run`` and the learning around it.

For each request: features (features.py) -> System 1 (the pattern cache, cache.py) -> the route's
mode decides the path -> fast and/or slow target -> agreement, learning, a ``route.decision``
event, and the answer with its route, confidence, features and a one-line reason.

Targets are ``model:<name>`` (the inference registry; classify routes feed a tensor to the model,
embed routes embed text) or ``provider:<name>`` (generate routes: the Providers part's ``generate``
capability, policy egress checks included). A provider's answer is kept in the outputs as
``text`` (UTF-8 bytes, shown as the result's ``text``) and, when the provider reports one,
``score`` (its confidence in [0, 1], which the cascade compares with the threshold). What the
router needs of the inference and providers parts, and of memory (novelty), it declares in
:mod:`engram.router.ports` and gets when it is made.

The router's tables (router/migrations/) are used through one own SQLite connection in a
worker thread (capacity 1): every statement is short, and the event loop never waits on disk.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import numpy as np
import structlog
from prometheus_client import Counter, Histogram

from engram.bus import EventBus
from engram.errors import (
    Conflict,
    IntegrityError,
    InternalSignal,
    InvalidParams,
    NotFound,
    RPCError,
    Timeout,
    Unavailable,
)
from engram.lifecycle import Health, Part, PartState
from engram.observability.metrics import LATENCY_BUCKETS, Metrics
from engram.router.api import (
    CacheProvenance,
    RouteCalibrateParams,
    RouteCalibrateResult,
    RouteConsolidateParams,
    RouteConsolidateResult,
    RouteCurveParams,
    RouteCurveResult,
    RouteFeedbackParams,
    RouteFeedbackResult,
    RouteNameParams,
    RouteResetParams,
    RouteResetResult,
    RouteRunParams,
    RouteRunResult,
    RouteStats,
    RouteStatsResult,
)
from engram.router.assessor import Assessor, Revert
from engram.router.cache import CacheHit, PatternCache
from engram.router.calibrate import accuracy_cost_curve, calibrate
from engram.router.cascade import agreement, confidence, probabilities, score_output
from engram.router.events import RouteCalibrated, RouteDecided, RouteReset, RouteReverted
from engram.router.features import (
    NoveltyWindow,
    input_hash,
    sketch_tensor,
    sketch_text,
    tensor_features,
    text_features,
)
from engram.router.novelty import EpisodicNovelty, tensor_vector
from engram.router.ports import Generator, Models, NoveltyStore
from engram.router.settings import RouterSettings, RouteSettings
from engram.server.methods import RequestContext, rpc
from engram.wire.tensors import B64Tensor, ListTensor, WireTensor, decode, encode, result_tensor

__all__ = ["Router"]

log = structlog.get_logger("engram.router")

T = TypeVar("T")

DECISIONS_KEPT = 20_000  # rows of router_decisions kept per route (feedback and calibration window)
_SEEN_KEPT = 4096  # input hashes remembered per route for the "seen" feature


@dataclass(frozen=True)
class TargetInput:
    """What a target is given: the tensor (classify) or the text, and for provider targets what
    a caller that routes a prompt of its own (route.ask) adds: the system prompt and the data
    tags the policy's egress rules see. route.run gives neither."""

    array: np.ndarray | None
    text: str | None
    system: str | None = None
    tags: tuple[str, ...] = ()


class TargetDown(InternalSignal):
    def __init__(self, target: str, error: RPCError) -> None:
        super().__init__(error.message)
        self.target, self.error = target, error


@dataclass
class _RouteStats:
    requests: int = 0
    taken: dict[str, int] = field(default_factory=lambda: {"cache": 0, "fast": 0, "slow": 0})
    escalated: int = 0
    both_ran: int = 0
    agreed: int = 0
    errors: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))


@dataclass
class _RouteState:
    settings: RouteSettings
    window: NoveltyWindow
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    stats: _RouteStats = field(default_factory=_RouteStats)
    explore_counter: int = 0
    threshold: float | None = None  # calibrated overrides
    auto_threshold: float | None = None
    calibrated: str | None = None


class Router(Part):
    """The router part: routes, their cascades, cache and learning."""

    def __init__(
        self, settings: RouterSettings, database_path: Path, bus: EventBus, metrics: Metrics, models: Models,
        busy_timeout: float = 5.0, novelty_store: NoveltyStore | None = None, generator: Generator | None = None,
    ) -> None:
        super().__init__("router")
        self.settings = settings
        self._path = database_path
        self._busy = busy_timeout
        self._bus = bus
        self._models = models
        self._generator = generator  # provider:<name> targets
        self._conn: sqlite3.Connection | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self.assessor: Assessor | None = None
        self.cache: PatternCache | None = None
        self.routes = {
            r.name: _RouteState(r, NoveltyWindow(settings.learning.novelty_window)) for r in settings.routes
        }
        reg = metrics.registry
        self._decisions = Counter("engram_route_decisions", "Routed requests, by route and source of the answer.",
                                  ["route", "taken"], registry=reg)
        self._escalations = Counter("engram_route_escalations", "Requests escalated from the fast to the slow target.",
                                    ["route"], registry=reg)
        self._disagreements = Counter("engram_route_disagreements", "Requests where fast and slow disagreed.", ["route"],
                                      registry=reg)
        dropped = Counter("engram_route_novelty_dropped", "Input vectors not remembered because the novelty queue was full.",
                          ["route"], registry=reg)
        # Novelty against the route's episodic namespace when the daemon has memory; else the RAM window.
        self.novelty = (
            EpisodicNovelty(novelty_store, settings.learning.novelty_queue, dropped) if novelty_store is not None else None
        )
        self._reverts = Counter("engram_route_reverts", "Diverged assessor weights put back to the last stable snapshot.",
                                ["route", "reason"], registry=reg)
        self._seconds = Histogram("engram_route_duration_seconds", "Seconds per routed request.", ["route"],
                                  buckets=LATENCY_BUCKETS, registry=reg)

    # --- lifecycle ------------------------------------------------------------------------------

    async def setup(self, stack: AsyncExitStack) -> None:
        self._limiter = anyio.CapacityLimiter(1)
        stack.push_async_callback(self._close_conn)
        await self._db(self._open)
        if self.novelty is not None:
            self.novelty.open()
            await self.start_tasks(stack)
            stack.push_async_callback(self._finish_novelty)  # first: while its writer still runs
            self.start_soon(self.novelty.run, name="router novelty writer")
        log.info("router ready", routes=sorted(self.routes))

    def _open(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=self._busy)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a learned step may be lost on power loss, never corrupt
        self._conn = conn
        self.assessor = Assessor(conn, self.settings.learning)
        self.cache = PatternCache(conn, self.settings.cache)
        for name, state in self.routes.items():
            row = conn.execute(
                "SELECT threshold, auto_threshold, target FROM router_thresholds WHERE route = ?", (name,)
            ).fetchone()
            if row is not None:
                state.threshold, state.auto_threshold, state.calibrated = row

    async def _finish_novelty(self) -> None:
        assert self.novelty is not None
        self.novelty.close()  # the writer drains what is queued, then ends
        if self.novelty.finished is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await self.novelty.finished.wait()

    async def _close_conn(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(conn.close, limiter=self._limiter)

    async def _db(self, func: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)

    async def health(self) -> Health:
        return Health(self.state is PartState.RUNNING, f"{len(self.routes)} routes")

    def _route(self, name: str) -> _RouteState:
        state = self.routes.get(name)
        if state is None:
            raise NotFound(f"route {name!r} is not configured (router.routes)", reason="unknown_route", route=name)
        return state

    def route_settings(self, name: str) -> RouteSettings:
        """Route ``name`` as configured; NotFound (unknown_route) when there is none."""
        return self._route(name).settings

    # --- targets ---------------------------------------------------------------------------------

    async def _call(self, ctx: RequestContext, route: RouteSettings, target: str, given: TargetInput
                    ) -> dict[str, np.ndarray]:
        kind, _, name = target.partition(":")
        array, text = given.array, given.text
        try:
            with anyio.fail_after(self.settings.target_timeout):
                if kind == "provider":
                    return await self._generate(ctx, route, target, name, given)
                if route.task == "classify":
                    assert array is not None
                    return await self._classify(route, name, array)
                if route.task == "embed":
                    assert text is not None
                    return {"vectors": await self._models.embed([text], name)}
                raise TargetDown(target, Unavailable(
                    f"target {target}: task {route.task} needs a provider target", reason="provider_unavailable", target=target
                ))
        except TimeoutError:
            raise TargetDown(target, Timeout(f"target {target} did not answer within {self.settings.target_timeout:g} s",
                                             reason="target_timeout", target=target)) from None
        except InvalidParams as exc:
            field_name = "tensor" if route.task == "classify" else "text"
            raise InvalidParams(f"{field_name}: target {target} rejected the input: {exc.message}", field=field_name,
                                reason=exc.reason, target=target) from None
        except (NotFound, Unavailable, IntegrityError) as exc:
            raise TargetDown(target, exc) from None

    async def _generate(self, ctx: RequestContext, route: RouteSettings, target: str, name: str, given: TargetInput
                        ) -> dict[str, np.ndarray]:
        """A ``generate`` call through the Providers part (breaker, policy egress, call timeout)."""
        text, system, tags = given.text, given.system, given.tags
        if route.task != "generate" or text is None:
            raise TargetDown(target, Unavailable(
                f"target {target}: provider targets serve generate routes", reason="provider_unavailable", target=target
            ))
        generator = self._generator
        if generator is None:
            raise TargetDown(target, Unavailable(f"target {target}: the daemon has no providers part",
                                                 reason="provider_unavailable", target=target))
        limit = generator.max_prompt_chars
        if len(text) + len(system or "") > limit:
            raise InvalidParams(f"text: {len(text)} characters; at most {limit} (providers.max_prompt_chars)", field="text")
        generated = await generator.generate(ctx, text, system, tags, provider=name)
        out = {"text": np.frombuffer(generated.text.encode("utf-8"), dtype=np.uint8).copy()}
        if generated.score is not None:
            out["score"] = np.array([generated.score], dtype=np.float32)
        return out

    async def _classify(self, route: RouteSettings, model: str, array: np.ndarray) -> dict[str, np.ndarray]:
        inputs = await self._models.input_names(model)
        name = route.input or (inputs[0] if len(inputs) == 1 else None)
        if name is None or name not in inputs:
            raise InvalidParams(f"model {model!r} has inputs {inputs}; set the route's input", field="tensor")
        return await self._models.run(model, {name: array})

    async def _call_or_fallback(
        self, ctx: RequestContext, route: RouteSettings, which: str, given: TargetInput, notes: list[str],
    ) -> tuple[str, dict[str, np.ndarray]]:
        """Run the ``which`` (fast/slow) target; on a down target, the other one per the route's fallback."""
        target = route.fast if which == "fast" else route.slow
        try:
            return which, await self._call(ctx, route, target, given)
        except TargetDown as down:
            other = "slow" if which == "fast" else "fast"
            if route.fallback != "other":
                raise Unavailable(f"route {route.name}: {down.error.message}", reason="target_down", target=target) from None
            notes.append(f"{which} target down ({down.error.reason}), fell back to {other}")
            log.warning("route target down; falling back", route=route.name, target=target, error=down.error.message)
            try:
                return other, await self._call(ctx, route, route.slow if other == "slow" else route.fast, given)
            except TargetDown as both:
                raise Unavailable(
                    f"route {route.name}: both targets are down ({down.error.message}; {both.error.message})",
                    reason="target_down", target=target,
                ) from None

    def _judge(self, route: RouteSettings, outputs: dict[str, np.ndarray]) -> tuple[float | None, float | None]:
        if route.task == "generate":  # the provider's own score, when it reports one
            return (float(outputs["score"][0]), None) if "score" in outputs else (None, None)
        if route.task != "classify":
            return None, None
        name = score_output(outputs, route.output)
        if name is None:
            return None, None
        return confidence(probabilities(outputs[name]), route.confidence)

    # --- route.run ---------------------------------------------------------------------------------

    @rpc("route.run", summary="Route a request: pattern cache, fast target, slow target or the cascade between them.")
    async def route_run(self, ctx: RequestContext, params: RouteRunParams) -> RouteRunResult:
        return await self.run(ctx, params)

    async def run(self, ctx: RequestContext, params: RouteRunParams, *, system: str | None = None,
                  tags: tuple[str, ...] = ()) -> RouteRunResult:
        """route.run, for in-process callers too; ``system`` and ``tags`` go with the text to
        provider targets (see :class:`TargetInput`)."""
        state = self._route(params.route)
        route = state.settings
        started = time.perf_counter()
        try:
            result = await self._run(ctx, state, params, system, tags)
        except RPCError:
            state.stats.errors += 1
            raise
        elapsed = time.perf_counter() - started
        state.stats.latencies.append(elapsed)
        self._seconds.labels(route.name).observe(elapsed)
        return result

    async def _run(self, ctx: RequestContext, state: _RouteState, params: RouteRunParams, system: str | None,
                   tags: tuple[str, ...]) -> RouteRunResult:
        route = state.settings
        assert self.assessor is not None and self.cache is not None
        array: np.ndarray | None = None
        text = params.text
        if route.task == "classify":
            if params.tensor is None:
                raise InvalidParams(f"tensor: route {route.name} (task classify) takes a tensor", field="tensor")
            array = decode(params.tensor, "tensor")
            payload = f"{array.dtype.str}{array.shape}".encode() + np.ascontiguousarray(array).tobytes()
            features, sketch = tensor_features(array), sketch_tensor(array)
        else:
            if text is None:
                raise InvalidParams(f"text: route {route.name} (task {route.task}) takes text", field="text")
            payload = text.encode()
            features, sketch = text_features(text), sketch_text(text)
        key = input_hash(route.name, payload)
        features["bias"] = 1.0
        mode = params.mode or route.mode
        use_cache = params.use_cache and route.cache and self.settings.cache.enabled and mode != "slow"
        # The input's vector: the text's embedding (also the semantic cache's key) or the flattened tensor.
        vector: np.ndarray | None = None
        if text is not None and (self.novelty is not None or (use_cache and self.settings.cache.semantic)):
            vector = await self._text_vector(text)
        memory_vector = tensor_vector(array, self.settings.learning.novelty_dim) if array is not None else vector
        seen = key in state.seen
        if self.novelty is not None and memory_vector is not None:
            novelty = self.novelty
            features["novelty"] = await anyio.to_thread.run_sync(novelty.novelty, route.name, memory_vector)
            if not seen:
                novelty.remember(route.name, key, memory_vector)  # written off the request path
        else:
            features["novelty"] = state.window.novelty(sketch)
            state.window.add(sketch)
        features["seen"] = 1.0 if seen else 0.0
        features.update(has_conf=0.0, low_conf=0.0, low_margin=0.0)
        state.seen[key] = None
        state.seen.move_to_end(key)
        while len(state.seen) > _SEEN_KEPT:
            state.seen.popitem(last=False)
        decision = "rt_" + uuid.uuid4().hex[:20]

        # System 1: a remembered answer.
        if use_cache:
            hit = await self._db(self.cache.exact, route.name, key)
            if hit is None and vector is not None and text is not None and self.settings.cache.semantic:
                hit = await self._semantic_hit(route.name, key, vector)
            if hit is not None:
                return await self._from_cache(ctx, state, mode, decision, features, hit, params.output_format)

        p_pre = await self._p_slow(route.name, features)
        threshold = params.threshold if params.threshold is not None else self._threshold(state, mode)
        notes: list[str] = []
        given = TargetInput(array, text, system, tags)
        fast_out: dict[str, np.ndarray] | None = None
        slow_out: dict[str, np.ndarray] | None = None
        conf: float | None = None
        p_slow = p_pre
        escalated = False
        if mode == "fast":
            taken, out = await self._call_or_fallback(ctx, route, "fast", given, notes)
            reason = "mode fast"
        elif mode == "slow":
            taken, out = await self._call_or_fallback(ctx, route, "slow", given, notes)
            reason = "mode slow"
        elif mode == "auto" and p_pre >= route.direct_slow:
            taken, out = await self._call_or_fallback(ctx, route, "slow", given, notes)
            reason = f"auto: p_slow {p_pre:.3f} >= direct_slow {route.direct_slow:g} before the fast target ran"
        else:
            taken, out = await self._call_or_fallback(ctx, route, "fast", given, notes)
            if taken == "fast":
                fast_out = out
                conf, margin = self._judge(route, out)
                if conf is not None:
                    features.update(has_conf=1.0, low_conf=1.0 - conf, low_margin=1.0 - (margin if margin is not None else conf))
                p_slow = await self._p_slow(route.name, features)
                if mode == "cascade":
                    # Without a confidence a classifier escalates; a generator keeps its answer (no score: fast).
                    unsure = conf is None and route.task != "generate"
                    doubt = unsure or (conf is not None and conf < threshold) or threshold >= 1.0
                    reason = (
                        f"cascade: confidence {conf:.3f} {'<' if doubt else '>='} threshold {threshold:g}"
                        if conf is not None else "cascade: the fast target reports no confidence"
                        + ("" if doubt or unsure else "; kept its answer")
                    )
                else:
                    doubt = p_slow > threshold or threshold >= 1.0
                    reason = f"auto: p_slow {p_slow:.3f} {'>' if doubt else '<='} threshold {threshold:g}"
                explore = False
                if not doubt and self.settings.learning.explore > 0:
                    state.explore_counter += 1
                    if state.explore_counter * self.settings.learning.explore >= 1.0:
                        state.explore_counter, explore = 0, True
                if doubt or explore:
                    try:
                        slow_out = await self._call(ctx, route, route.slow, given)
                    except TargetDown as down:
                        if route.fallback != "other":
                            raise Unavailable(f"route {route.name}: {down.error.message}", reason="target_down",
                                              target=route.slow) from None
                        notes.append(f"slow target down ({down.error.reason}), kept the fast answer")
                    else:
                        if doubt:
                            taken, out, escalated = "slow", slow_out, True
                        else:
                            reason += "; slow also ran to keep learning (router.learning.explore)"
            else:
                reason = f"{mode}: fast target down"
        agreed = agreement(route.task, fast_out, slow_out, route.output) if fast_out is not None and slow_out is not None else None
        if agreed is not None:
            await self._learn(route.name, features, not agreed)
        if notes:
            reason += "; " + "; ".join(notes)
        target = route.fast if taken == "fast" else route.slow
        labels = self._labels(route, out)
        await self._db(self._record, decision, route.name, taken, features, conf, p_slow, agreed)
        if use_cache:
            if vector is None and text is not None and self.settings.cache.semantic:
                vector = await self._text_vector(text)
            answer = {"outputs": {k: encode(v, "b64") for k, v in out.items()}, "labels": labels}
            await self._db(self.cache.put, route.name, key, decision, target, answer, vector)
        self._count(state, taken, escalated, agreed)
        self._publish(ctx, decision, route.name, mode, taken, target, escalated, agreed, conf, p_slow, features, reason)
        return RouteRunResult(
            decision=decision, route=route.name, mode=mode, taken=taken, target=target, escalated=escalated, agreed=agreed,
            confidence=None if conf is None else round(conf, 6), p_slow=round(p_slow, 6), features=_rounded(features),
            reason=reason, labels=labels, outputs=_wire(out, params.output_format), text=_text(out),
        )

    async def _p_slow(self, route: str, features: dict[str, float]) -> float:
        assert self.assessor is not None
        if self.assessor.loaded(route):  # pure arithmetic on weights in memory: no thread hop
            return self.assessor.probability(route, features)
        return await self._db(self.assessor.probability, route, features)

    async def _semantic_hit(self, route: str, key: str, vector: np.ndarray) -> CacheHit | None:
        """A cached answer to a text close enough to this one: the nearest remembered inputs in the
        route's episodic namespace (with memory), else the cache's own table of embeddings."""
        assert self.cache is not None
        if self.novelty is None:
            return await self._db(self.cache.semantic, route, vector)
        near = await anyio.to_thread.run_sync(self.novelty.nearest, route, vector, 8)
        threshold = self.settings.cache.semantic_threshold
        for other, similarity in near:
            if similarity < threshold:
                break
            if other == key:  # this very input: an exact hit would have been found already
                continue
            hit = await self._db(self.cache.exact, route, other)
            if hit is not None:
                return CacheHit("semantic", hit.key, hit.decision, hit.target, hit.answer, hit.created_at, similarity)
        return None

    async def _text_vector(self, text: str) -> np.ndarray | None:
        try:
            vectors = await self._models.embed([text], None)
        except RPCError as exc:
            log.debug("no semantic cache lookup: embedding failed", error=exc.message)
            return None
        return vectors[0]

    # --- the pattern cache for other parts (route.ask) ------------------------------------------------
    # Their answers are kept under a cache route of theirs (route.ask: ask:<route>:<namespace>), so
    # they never mix with route.run's.

    @property
    def cache_enabled(self) -> bool:
        """Whether the pattern cache is on (router.cache.enabled) and open."""
        return self.settings.cache.enabled and self.cache is not None

    async def cached_answer(self, cache_route: str, text: str) -> tuple[CacheHit | None, np.ndarray | None]:
        """The answer kept under ``cache_route`` for ``text``, or (router.cache.semantic) for a text
        close enough; and ``text``'s embedding when the semantic lookup needed it."""
        assert self.cache is not None
        cache = self.cache
        hit = await self._db(cache.exact, cache_route, input_hash(cache_route, text.encode()))
        vector = None
        if hit is None and self.settings.cache.semantic:
            vector = await self._text_vector(text)
            if vector is not None:
                hit = await self._db(cache.semantic, cache_route, vector)
        return hit, vector

    async def keep_answer(self, cache_route: str, text: str, decision: str, target: str, answer: dict[str, Any],
                          vector: np.ndarray | None) -> None:
        """Keep ``answer`` to ``text`` under ``cache_route``; ``vector`` is ``text``'s embedding, if the caller has it."""
        assert self.cache is not None
        if vector is None and self.settings.cache.semantic:
            vector = await self._text_vector(text)
        key = input_hash(cache_route, text.encode())
        await self._db(self.cache.put, cache_route, key, decision, target, answer, vector)

    async def _from_cache(
        self, ctx: RequestContext, state: _RouteState, mode: str, decision: str, features: dict[str, float], hit: CacheHit,
        fmt: str,
    ) -> RouteRunResult:
        route = state.settings
        assert self.assessor is not None
        p_slow = await self._p_slow(route.name, features)
        out = {k: decode(WireTensor(**v), k) for k, v in hit.answer["outputs"].items()}
        reason = f"cache: {hit.kind} repeat of decision {hit.decision}" + (
            f" (similarity {hit.similarity:.3f})" if hit.kind == "semantic" else ""
        )
        await self._db(self._record, decision, route.name, "cache", features, None, p_slow, None)
        self._count(state, "cache", False, None)
        self._publish(ctx, decision, route.name, mode, "cache", hit.target, False, None, None, p_slow, features, reason)
        return RouteRunResult(
            decision=decision, route=route.name, mode=mode, taken="cache", target=hit.target, escalated=False, agreed=None,
            confidence=None, p_slow=round(p_slow, 6), features=_rounded(features), reason=reason,
            labels=hit.answer.get("labels"), outputs=_wire(out, fmt), text=_text(out),
            cached=CacheProvenance(kind=hit.kind, decision=hit.decision, target=hit.target, created_at=hit.created_at,
                                   similarity=round(hit.similarity, 6)),
        )

    def _threshold(self, state: _RouteState, mode: str) -> float:
        if mode == "auto":
            return state.auto_threshold if state.auto_threshold is not None else state.settings.auto_threshold
        return state.threshold if state.threshold is not None else state.settings.threshold

    @staticmethod
    def _labels(route: RouteSettings, out: dict[str, np.ndarray]) -> list[int] | None:
        if route.task != "classify":
            return None
        name = score_output(out, route.output)
        return None if name is None else [int(i) for i in out[name].argmax(axis=1)]

    def _record(self, decision: str, route: str, taken: str, features: dict[str, float], conf: float | None,
                p_slow: float, agreed: bool | None) -> None:
        assert self._conn is not None
        self._conn.execute(
            "INSERT INTO router_decisions (id, route, time, taken, features, confidence, p_slow, agreed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (decision, route, time.time(), taken, json.dumps(features), conf, p_slow, None if agreed is None else int(agreed)),
        )
        if self.routes[route].stats.requests % 1000 == 0:  # trim now and then, not on every request
            self._conn.execute(
                "DELETE FROM router_decisions WHERE route = ? AND id IN (SELECT id FROM router_decisions WHERE route = ? "
                "ORDER BY time DESC LIMIT -1 OFFSET ?)",
                (route, route, DECISIONS_KEPT),
            )

    def _count(self, state: _RouteState, taken: str, escalated: bool, agreed: bool | None) -> None:
        stats = state.stats
        stats.requests += 1
        stats.taken[taken] += 1
        name = state.settings.name
        self._decisions.labels(name, taken).inc()
        if escalated:
            stats.escalated += 1
            self._escalations.labels(name).inc()
        if agreed is not None:
            stats.both_ran += 1
            stats.agreed += int(agreed)
            if not agreed:
                self._disagreements.labels(name).inc()

    def _publish(self, ctx: RequestContext, decision: str, route: str, mode: str, taken: str, target: str, escalated: bool,
                 agreed: bool | None, conf: float | None, p_slow: float, features: dict[str, float], reason: str) -> None:
        self._bus.publish(RouteDecided(
            decision=decision, route=route, mode=mode, taken=taken, target=target, escalated=escalated, agreed=agreed,
            confidence=conf, p_slow=p_slow, features=_rounded(features), reason=reason, request=ctx.request,
            principal=ctx.principal,
        ))
        log.debug("routed", route=route, decision=decision, taken=taken, reason=reason)

    # --- stats, feedback, learning ------------------------------------------------------------------

    @rpc("route.stats", summary="Per route: counts, escalation rate, agreement rate and latency since start.", audit=False)
    async def route_stats(self, ctx: RequestContext, params: RouteNameParams) -> RouteStatsResult:
        names = [self._route(params.route).settings.name] if params.route else sorted(self.routes)
        assert self.assessor is not None
        out = []
        for name in names:
            state = self.routes[name]
            s, r = state.stats, state.settings
            weights = await self._db(self.assessor.snapshot, name)
            rate, reverts = await self._db(self.assessor.stability, name)
            lat = np.asarray(s.latencies, dtype=np.float64) * 1000
            latency = (
                {"mean": round(float(lat.mean()), 3), "p50": round(float(np.percentile(lat, 50)), 3),
                 "p99": round(float(np.percentile(lat, 99)), 3)} if lat.size else {}
            )
            n = max(s.requests, 1)
            out.append(RouteStats(
                route=name, mode=r.mode, fast=r.fast, slow=r.slow, threshold=self._threshold(state, "cascade"),
                auto_threshold=self._threshold(state, "auto"), calibrated=state.calibrated, requests=s.requests,
                taken=dict(s.taken), escalation_rate=round(s.escalated / n, 6), slow_share=round(s.taken["slow"] / n, 6),
                agreement_rate=round(s.agreed / s.both_ran, 6) if s.both_ran else None, both_ran=s.both_ran,
                errors=s.errors, latency_ms=latency, assessor_updates=weights.updates, consolidations=weights.consolidations,
                learning_rate=rate, reverts=reverts,
            ))
        return RouteStatsResult(routes=out)

    @rpc("route.curve", summary="A route's accuracy-cost curve: for cascade thresholds, the slow share and the agreement "
         "with the slow target, on its recorded decisions where both targets ran.", audit=False)
    async def route_curve(self, ctx: RequestContext, params: RouteCurveParams) -> RouteCurveResult:
        state = self._route(params.route)
        assert self._conn is not None
        conn = self._conn

        def work() -> tuple[np.ndarray, np.ndarray]:
            rows = conn.execute(
                "SELECT confidence, agreed FROM router_decisions WHERE route = ? AND confidence IS NOT NULL "
                "AND agreed IS NOT NULL ORDER BY time DESC LIMIT ?", (params.route, DECISIONS_KEPT),
            ).fetchall()
            return np.array([r[0] for r in rows], dtype=np.float64), np.array([r[1] for r in rows], dtype=np.int64)

        conf, agreed = await self._db(work)
        points = accuracy_cost_curve(conf, agreed, params.points)
        return RouteCurveResult.model_validate({
            "route": params.route, "samples": int(conf.size), "threshold": self._threshold(state, "cascade"),
            "points": [vars(p) for p in points],
        })

    @rpc("route.feedback", summary="Tell the router whether an answer was right; answers of the fast target teach the assessor.")
    async def route_feedback(self, ctx: RequestContext, params: RouteFeedbackParams) -> RouteFeedbackResult:
        def lookup() -> tuple[str, str, str] | None:
            assert self._conn is not None
            return self._conn.execute(
                "SELECT route, taken, features FROM router_decisions WHERE id = ?", (params.decision,)
            ).fetchone()

        row = await self._db(lookup)
        if row is None:
            raise NotFound(f"decision: no decision {params.decision!r} is remembered", reason="unknown_decision",
                           field="decision")
        route, taken, features_json = row
        features = json.loads(features_json)
        assert self.assessor is not None and self._conn is not None
        conn = self._conn
        await self._db(lambda: conn.execute("UPDATE router_decisions SET feedback = ? WHERE id = ?",
                                            ("correct" if params.correct else "wrong", params.decision)))
        learned = taken == "fast" and route in self.routes
        if learned:
            p = await self._learn(route, features, not params.correct)
        else:
            p = await self._db(self.assessor.probability, route, features)
        return RouteFeedbackResult(decision=params.decision, route=route, learned=learned, p_slow_before=round(p, 6))

    async def _learn(self, route: str, features: dict[str, float], slow_needed: bool) -> float:
        """One watched online step of the assessor; a revert is counted, logged and published
        (``route.*`` events become audit entries). Returns the probability before the step."""
        assert self.assessor is not None
        p, revert = await self._db(self.assessor.learn, route, features, slow_needed)
        if revert is not None:
            self._reverted(revert)
        return p

    def _reverted(self, revert: Revert) -> None:
        r = revert.readings
        reason = r.diverged
        assert reason is not None  # a revert is made only of diverged readings
        self._reverts.labels(revert.route, reason).inc()
        log.warning("router weights diverged; reverted to the last stable snapshot", route=revert.route, reason=reason,
                    norm=r.norm, oscillation=r.oscillation, lyapunov=r.lyapunov, accuracy=r.accuracy,
                    stable_accuracy=r.stable_accuracy, rate=revert.rate_after)
        self._bus.publish(RouteReverted(
            route=revert.route, reason=reason, norm=round(r.norm, 6), oscillation=_round(r.oscillation),
            lyapunov=_round(r.lyapunov), accuracy=_round(r.accuracy), stable_accuracy=_round(r.stable_accuracy),
            rate_before=revert.rate_before, rate_after=revert.rate_after, snapshot_updates=revert.snapshot_updates,
            updates=revert.updates, reverts=revert.reverts,
        ))

    async def consolidate(self, route: str | None = None) -> list[str]:
        """Fold the fast weights into the slow weights (the sleep cycle calls this)."""
        assert self.assessor is not None
        routes = await self._db(self.assessor.consolidate, route)
        log.info("router weights consolidated", routes=routes)
        return routes

    @rpc("route.consolidate", summary="Fold the assessor's online (fast) weights into its slow weights now.", owner_only=True)
    async def route_consolidate(self, ctx: RequestContext, params: RouteConsolidateParams) -> RouteConsolidateResult:
        if params.route:
            self._route(params.route)
        return RouteConsolidateResult(routes=await self.consolidate(params.route))

    @rpc("route.reset", summary="Return a route's assessor to the prior weights and drop calibrated thresholds.", owner_only=True)
    async def route_reset(self, ctx: RequestContext, params: RouteResetParams) -> RouteResetResult:
        state = self._route(params.route)
        assert self.assessor is not None and self.cache is not None and self._conn is not None
        conn, cache, assessor = self._conn, self.cache, self.assessor

        def work() -> int:
            assessor.reset(params.route)
            conn.execute("DELETE FROM router_thresholds WHERE route = ?", (params.route,))
            return cache.clear(params.route) if params.cache else 0

        cleared = await self._db(work)
        state.threshold = state.auto_threshold = state.calibrated = None
        log.info("route reset", route=params.route, cache_cleared=cleared, uid=ctx.principal.uid)
        self._bus.publish(RouteReset(route=params.route, cache_cleared=cleared, uid=ctx.principal.uid))
        return RouteResetResult(route=params.route, cache_cleared=cleared)

    @rpc("route.calibrate", summary="Set a route's thresholds from its recorded decisions, for a target slow share or agreement.",
         owner_only=True)
    async def route_calibrate(self, ctx: RequestContext, params: RouteCalibrateParams) -> RouteCalibrateResult:
        state = self._route(params.route)
        assert self.assessor is not None and self._conn is not None
        conn, assessor = self._conn, self.assessor

        def work() -> tuple[float, float, int, float, str]:
            rows = conn.execute(
                "SELECT features, confidence, agreed FROM router_decisions WHERE route = ? AND confidence IS NOT NULL "
                "ORDER BY time DESC LIMIT ?", (params.route, DECISIONS_KEPT),
            ).fetchall()
            conf = np.array([r[1] for r in rows], dtype=np.float64)
            p = np.array([assessor.probability(params.route, json.loads(r[0])) for r in rows], dtype=np.float64)
            agreed = np.array([-1 if r[2] is None else r[2] for r in rows], dtype=np.int64)
            result = calibrate(conf, p, agreed, slow_share=params.slow_share, agreement=params.agreement)
            target = f"slow_share={params.slow_share:g}" if params.slow_share is not None else f"agreement={params.agreement:g}"
            conn.execute(
                "INSERT OR REPLACE INTO router_thresholds (route, threshold, auto_threshold, target, calibrated_at) VALUES (?, ?, ?, ?, ?)",
                (params.route, result.threshold, result.auto_threshold, target, time.time()),
            )
            return result.threshold, result.auto_threshold, len(rows), result.expected_slow_share, target

        try:
            threshold, auto_threshold, samples, share, target = await self._db(work)
        except ValueError as exc:
            raise Conflict(f"route {params.route}: {exc}", reason="too_few_outcomes") from None
        state.threshold, state.auto_threshold, state.calibrated = threshold, auto_threshold, target
        log.info("route calibrated", route=params.route, threshold=threshold, auto_threshold=auto_threshold, target=target)
        self._bus.publish(RouteCalibrated(route=params.route, threshold=threshold, auto_threshold=auto_threshold,
                                          target=target, samples=samples))
        return RouteCalibrateResult(route=params.route, threshold=threshold, auto_threshold=auto_threshold, samples=samples,
                                    expected_slow_share=round(share, 6))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _rounded(features: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in sorted(features.items())}


def _text(out: dict[str, np.ndarray]) -> str | None:
    text = out.get("text")
    return None if text is None else bytes(np.asarray(text, dtype=np.uint8)).decode("utf-8")


def _wire(out: dict[str, np.ndarray], fmt: str) -> dict[str, B64Tensor | ListTensor]:
    # the generated text is the result's text field
    return {name: result_tensor(array, fmt) for name, array in out.items() if name != "text"}  # type: ignore[arg-type]
