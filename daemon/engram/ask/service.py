"""``route.ask``: a text question answered with the user's memories as context.

1. **System 1** — the pattern cache: an exact or semantic repeat of the question, asked before in
   the same namespace (and through the same route), is answered from the router's pattern cache
   without calling a provider. The cache rows of asks are kept under their own
   key, ``ask:<route or *>:<namespace>``, so an answer built from one namespace's memories can
   never be served to a question asked in another. An answer whose episodic sources have been
   forgotten since is not served.
2. **Context** — the session's working memory, the episodes memory's hybrid recall finds for the
   question, and the facts (one-hop relations) of the concepts the question names; each a
   :class:`~engram.ask.prompt.Source` with its tier. :func:`~engram.ask.prompt.build_prompt` puts
   them into the prompt most relevant first until ``router.ask.context_chars`` is full.
3. **Answer** — the chosen generate route's fast/slow/cascade (``Router.run``: its decision
   is recorded, so ``route.feedback`` works), else the providers' generate chain. Both go through
   the Providers part: the policy's egress check sees the whole prompt, context included, with
   the recalled memories' tags as data tags, and the provider gets the payload it returns
   (redacted when a rule obliges it).
4. **Remember** — the exchange becomes one episode (kind ``exchange``) in the namespace and session.

Memory is called through its own methods with the caller's request context, so namespace rules
and permissions are exactly those of ``memory.recall``. What this part needs of memory, the router
and the providers it declares in :mod:`engram.ask.ports`; its settings are the ``router.ask``
section of the configuration.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import structlog
from prometheus_client import Counter, Histogram

from engram.ask.api import AskParams, AskResult, AskSource
from engram.ask.ports import AnswerRouter, AskMemory, CachedAnswer, Emit, Generator
from engram.ask.prompt import Source, build_prompt, concept_candidates, fill_template, truncate_bytes
from engram.errors import InvalidParams, NotFound, Unavailable
from engram.memory.api import (
    EpisodeIn,
    GetParams,
    GraphQueryParams,
    RecallParams,
    RememberParams,
    WorkingListParams,
)
from engram.observability.metrics import LATENCY_BUCKETS, Metrics
from engram.providers.api import CHUNK_NOTIFICATION
from engram.router.api import RouteRunParams
from engram.router.settings import RouterAskSettings
from engram.server.methods import RequestContext, rpc

__all__ = ["Ask"]

log = structlog.get_logger("engram.ask")


def _day(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")


class Ask:
    """The ``route.ask`` method; holds no state of its own beyond metrics."""

    def __init__(self, settings: RouterAskSettings, router: AnswerRouter, memory: AskMemory, generator: Generator | None,
                 metrics: Metrics) -> None:
        self.settings = settings
        self._router = router
        self._memory = memory
        self._generator = generator
        self._requests = Counter("engram_ask_requests", "route.ask answers, by path (cache, fast, slow).", ["path"],
                                 registry=metrics.registry)
        self._seconds = Histogram("engram_ask_duration_seconds", "Seconds per route.ask answer.", buckets=LATENCY_BUCKETS,
                                  registry=metrics.registry)

    # --- context -----------------------------------------------------------------------------------

    async def _working(self, ctx: RequestContext, namespace: str, session: str | None) -> list[Source]:
        if session is None or self.settings.working_items == 0:
            return []
        listed = await self._memory.working_list(ctx, WorkingListParams(session=session, namespace=namespace))
        return [
            Source("working", item.key, item.content, float(item.score), tuple(item.tags))
            for item in listed.items[: self.settings.working_items]
        ]

    async def _episodic(self, ctx: RequestContext, namespace: str, question: str, k: int) -> list[Source]:
        if k == 0:
            return []
        try:
            recalled = await self._memory.recall(ctx, RecallParams(query=question, k=k, namespace=namespace))
        except Unavailable as exc:
            if exc.reason != "no_embedder":
                raise
            log.info("no episodic context: no embedding model", namespace=namespace)
            return []
        return [Source("episodic", h.id, h.text, float(h.score), tuple(h.tags)) for h in recalled.hits]

    def _concepts_named(self, namespace: str, question: str) -> list[str]:
        """The namespace's concepts the question names, wholly or by their first words, longest
        run of words first (blocking: a thread)."""
        names = concept_candidates(question)
        return self._memory.linked_concepts(namespace, names, self.settings.concepts) if names else []

    async def _semantic(self, ctx: RequestContext, namespace: str, question: str) -> list[Source]:
        """The believed facts of the concepts the question names: those that hold now by their
        weight, then those whose validity has ended, marked with when, and always ranked below
        every current one (half the lowest current score), so that the prompt states what holds
        first and what held only as history."""
        if self.settings.concepts == 0:
            return []
        names = await anyio.to_thread.run_sync(self._concepts_named, namespace, question)
        now = time.time()
        current: dict[str, Source] = {}
        ended: dict[str, tuple[str, float]] = {}
        for name in names:
            try:
                graph = await self._memory.graph_query(ctx, GraphQueryParams(concept=name, depth=1, namespace=namespace))
            except NotFound:  # forgotten since it was found
                continue
            for rel in graph.relations:
                if rel.retracted_at is not None or rel.id in current or rel.id in ended:
                    continue
                text = f"{rel.src} {rel.type.replace('_', ' ')} {rel.dst}"
                if rel.valid_to is not None and rel.valid_to <= now:
                    ended[rel.id] = (f"{text} (until {_day(rel.valid_to)})", float(rel.weight))
                else:
                    current[rel.id] = Source("semantic", rel.id, text, float(rel.weight))
        floor = min((s.score for s in current.values()), default=1.0)
        past = [Source("semantic", rid, text, 0.5 * min(weight, floor)) for rid, (text, weight) in ended.items()]
        return [*current.values(), *past]

    async def _sources_exist(self, ctx: RequestContext, namespace: str, sources: Sequence[dict[str, Any]]) -> bool:
        """Whether a cached answer's episodic sources are all still remembered (a forgotten memory
        must not live on in an answer built from it)."""
        ids = [s["id"] for s in sources if s.get("tier") == "episodic"]
        step = self._memory.settings.max_items
        for start in range(0, len(ids), step):
            try:
                await self._memory.get(ctx, GetParams(ids=ids[start : start + step], namespace=namespace))
            except NotFound:
                return False
        return True

    # --- route.ask ------------------------------------------------------------------------------------

    @rpc("route.ask", summary="Answer a question with recalled memories as context: pattern cache, route or generate chain.",
         timeout=3600)
    async def ask(self, ctx: RequestContext, params: AskParams) -> AskResult:
        started = time.perf_counter()
        s, memory, router = self.settings, self._memory, self._router
        question = params.question.strip()
        if not question:
            raise InvalidParams("question: empty question", field="question", reason="empty_question")
        limit = memory.settings.max_text_bytes
        if len(question.encode()) > limit:
            raise InvalidParams(f"question: longer than {limit} bytes (memory.max_text_bytes)", field="question",
                                reason="question_too_large")
        k = s.k if params.k is None else params.k
        if k > memory.settings.max_k:
            raise InvalidParams(f"k: {k}; at most {memory.settings.max_k} (memory.max_k)", field="k", reason="k_too_large")
        route_name = params.route or s.route
        route = None
        if route_name is not None:
            route = router.route_settings(route_name)  # -32002 unknown_route
            if route.task != "generate":
                raise InvalidParams(f"route: {route_name} has task {route.task}; route.ask needs a generate route",
                                    field="route", reason="not_generate")
        namespace = memory.namespaces.resolve(ctx.principal, ctx.method, params.namespace)  # -32001 as memory.recall
        remember = s.remember if params.remember is None else params.remember
        stream_id = params.stream_id or f"r{ctx.request}"

        async def emit(provider: str, text: str, index: int) -> None:
            await ctx.connection.notify(CHUNK_NOTIFICATION, {"stream": stream_id, "provider": provider, "index": index, "text": text})

        # System 1: this question (or one close enough) answered before in this namespace.
        cache_route = f"ask:{route_name or '*'}:{namespace}"
        use_cache = s.cache and router.cache_enabled and (route is None or route.cache)
        vector = None
        hit: CachedAnswer | None = None
        if use_cache:
            hit, vector = await router.cached_answer(cache_route, question)
            if hit is not None and not await self._sources_exist(ctx, namespace, hit.answer.get("sources", [])):
                log.debug("cached answer not served: a source was forgotten", namespace=namespace)
                hit = None

        if hit is not None:
            answer = str(hit.answer["text"])
            sources = [AskSource(**src) for src in hit.answer.get("sources", [])]
            provider = hit.answer.get("provider")
            path, cached, escalated = "cache", True, False
            decision = hit.decision or None
            if params.stream and answer:
                await emit(provider or "cache", answer, 0)
        else:
            found = [
                *await self._working(ctx, namespace, params.session),
                *await self._semantic(ctx, namespace, question),
                *await self._episodic(ctx, namespace, question, k),
            ]
            context, used = build_prompt(found, s.context_chars)
            prompt = fill_template(s.template, context or s.no_context, question)
            tags = sorted({tag for src in used for tag in src.tags})
            sources = [AskSource(tier=src.tier, id=src.id, text=src.text, score=round(src.score, 6)) for src in used]  # type: ignore[arg-type]
            cached = False
            if route is not None:
                answer, path, provider, decision, escalated = await self._routed(ctx, route_name, prompt, tags)  # type: ignore[arg-type]
                if params.stream and answer:
                    await emit(provider or route_name or "", answer, 0)  # the route decides on the whole answer
            else:
                answer, provider = await self._chain(ctx, prompt, tags, emit if params.stream else None)
                path, decision, escalated = "fast", None, False
            if use_cache:
                stored = {"text": answer, "sources": [src.model_dump(exclude={"audit_seq"}) for src in sources],
                          "provider": provider, "route": route_name, "path": path}
                await router.keep_answer(cache_route, question, decision or "", provider or "", stored, vector)

        remembered: list[str] = []
        if remember:
            source_ids: list[Any] = [src.id for src in sources][:200]
            episode = EpisodeIn(
                text=truncate_bytes(f"Q: {question}\nA: {answer}", limit),
                kind=s.kind, tags=list(s.tags), session=params.session, importance=s.importance, source="route.ask",
                metadata={"sources": source_ids, "route": route_name, "path": path,
                          "provider": provider, "decision": decision, "cached": cached},
            )
            remembered = (await memory.remember(ctx, RememberParams(items=[episode], namespace=namespace))).ids
        self._requests.labels(path).inc()
        self._seconds.observe(time.perf_counter() - started)
        log.debug("asked", namespace=namespace, route=route_name, path=path, provider=provider, sources=len(sources))
        return AskResult(
            answer=answer, sources=sources, route=route_name, path=path, provider=provider,  # type: ignore[arg-type]
            cached=cached, escalated=escalated, remembered=remembered, decision=decision,
        )

    async def _routed(self, ctx: RequestContext, route: str, prompt: str, tags: list[str]
                      ) -> tuple[str, str, str | None, str | None, bool]:
        """The route's fast/slow/cascade on the prompt (its decision recorded for route.feedback)."""
        run = await self._router.run(
            ctx, RouteRunParams(route=route, text=prompt, use_cache=False), system=self.settings.system, tags=tuple(tags)
        )
        provider = run.target.partition(":")[2] or None
        return run.text or "", run.taken, provider, run.decision, run.escalated

    async def _chain(self, ctx: RequestContext, prompt: str, tags: list[str], emit: Emit | None) -> tuple[str, str]:
        """The providers' generate chain (policy egress on each provider), streamed when ``emit`` is given."""
        generator = self._generator
        if generator is None:
            raise Unavailable("no providers part: nothing can generate", reason="no_provider", capability="generate")
        system = self.settings.system
        max_chars = generator.max_prompt_chars
        if len(prompt) + len(system) > max_chars:
            raise InvalidParams(f"question: the prompt has {len(prompt) + len(system)} characters; at most {max_chars} "
                                "(providers.max_prompt_chars; see router.ask.context_chars)", field="question")
        # -32005 no_provider when no generate chain is configured
        if emit is None:
            generated = await generator.generate(ctx, prompt, system, tags)
        else:
            generated = await generator.stream(ctx, prompt, system, tags, emit)
        return generated.text, generated.provider
