"""``route.ask``: a text question answered with the user's memories as context.

1. **System 1** — the pattern cache: an exact or semantic repeat of the question, asked before in
   the same namespace (and through the same route), is answered from the router's cache
   (``router_cache``) without calling a provider. The cache rows of asks are kept under their own
   key, ``ask:<route or *>:<namespace>``, so an answer built from one namespace's memories can
   never be served to a question asked in another. An answer whose episodic sources have been
   forgotten since is not served.
2. **Context** — the session's working memory, the episodes memory's hybrid recall finds for the
   question, and the facts (one-hop relations) of the concepts the question names; each a
   :class:`Source` with its tier. :func:`build_prompt` puts them into the prompt most relevant
   first until ``router.ask.context_chars`` is full.
3. **Answer** — the chosen generate route's fast/slow/cascade (``Router.route_run``: its decision
   is recorded, so ``route.feedback`` works), else the providers' generate chain. Both go through
   the Providers part: the policy's egress check sees the whole prompt, context included, with
   the recalled memories' tags as data tags, and the provider gets the payload it returns
   (redacted when a rule obliges it).
4. **Remember** — the exchange becomes one episode (kind ``exchange``) in the namespace and session.

Memory is called through its own methods with the caller's request context, so namespace rules
and permissions are exactly those of ``memory.recall``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from prometheus_client import Counter, Histogram

from engram.errors import InvalidParams, NotFound, Unavailable
from engram.memory.api import (
    EpisodeIn,
    GetParams,
    GraphQueryParams,
    RecallParams,
    RememberParams,
    WorkingListParams,
)
from engram.memory.semantic import concept_key
from engram.memory.service import Memory
from engram.observability.metrics import LATENCY_BUCKETS, Metrics
from engram.providers.api import CHUNK_NOTIFICATION
from engram.router.api import AskParams, AskResult, AskSource, RouteRunParams
from engram.router.cache import CacheHit
from engram.router.features import input_hash
from engram.router.service import Router, checked_completion
from engram.router.settings import RouterAskSettings
from engram.server.methods import RequestContext, rpc

__all__ = ["Ask", "Source", "build_prompt", "concept_candidates", "fill_template"]

log = structlog.get_logger("engram.router.ask")

TIER_ORDER = {"working": 0, "semantic": 1, "episodic": 2}  # ties in score: the session first, then facts
_MAX_NGRAM = 4  # words in the longest concept name looked for in the question
_MAX_CANDIDATES = 900  # n-grams looked up at most (one SQL statement)
_WORD = re.compile(r"[\w][\w'’.-]*")
_POSSESSIVE = re.compile(r"['’]s$", re.IGNORECASE)
_TEMPLATE_FIELD = re.compile(r"\{(context|question)\}")


@dataclass(frozen=True)
class Source:
    tier: str
    id: str
    text: str
    score: float
    tags: tuple[str, ...] = field(default=())

    def line(self) -> str:
        return f"- [{self.tier}] {' '.join(self.text.split())}"


def build_prompt(sources: Iterable[Source], budget: int) -> tuple[str, list[Source]]:
    """The context block and the sources it carries: most relevant (highest score) first, one line
    each, a text seen already skipped, and a line that does not fit in ``budget`` characters left
    out (a shorter one after it may still fit)."""
    ranked = sorted(sources, key=lambda s: (-s.score, TIER_ORDER.get(s.tier, 9)))
    lines: list[str] = []
    used: list[Source] = []
    seen: set[str] = set()
    size = 0
    for source in ranked:
        line = source.line()
        norm = " ".join(source.text.split()).casefold()
        if not norm or norm in seen:
            continue
        cost = len(line) + (1 if lines else 0)
        if size + cost > budget:
            continue
        seen.add(norm)
        lines.append(line)
        used.append(source)
        size += cost
    return "\n".join(lines), used


def fill_template(template: str, context: str, question: str) -> str:
    """One pass over the template: a question that contains "{context}" stays as it is."""
    values = {"context": context, "question": question}
    return _TEMPLATE_FIELD.sub(lambda m: values[m.group(1)], template)


def concept_candidates(question: str) -> list[str]:
    """Concept keys the question might name: its runs of 1..4 words, longest first, each also
    with possessives dropped ("Ada's" names Ada)."""
    words = [w.strip(".'’-") for w in _WORD.findall(question)]
    words = [w for w in words if w]
    bare = [_POSSESSIVE.sub("", w) or w for w in words]
    out: dict[str, None] = {}
    for n in range(min(_MAX_NGRAM, len(words)), 0, -1):
        for i in range(len(words) - n + 1):
            for seq in (words, bare):
                out.setdefault(concept_key(" ".join(seq[i : i + n])), None)
            if len(out) >= _MAX_CANDIDATES:
                return list(out)[:_MAX_CANDIDATES]
    return list(out)


def _truncate_bytes(text: str, limit: int) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: max(limit - 3, 0)].decode("utf-8", errors="ignore") + "..."


class Ask:
    """The ``route.ask`` method; holds no state of its own beyond metrics."""

    def __init__(self, settings: RouterAskSettings, router: Router, memory: Memory, providers: Any, metrics: Metrics) -> None:
        self.settings = settings
        self._router = router
        self._memory = memory
        self._providers = providers
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
        """Names of the namespace's concepts the question names, longest first (blocking: a thread)."""
        keys = concept_candidates(question)
        if not keys:
            return []
        with self._memory.db.read() as conn:
            rows = conn.execute(
                f"SELECT key, name FROM memory_concepts WHERE namespace = ? AND key IN ({','.join('?' * len(keys))})",
                (namespace, *keys),
            ).fetchall()
        found = dict(rows)
        return [found[key] for key in keys if key in found]

    async def _semantic(self, ctx: RequestContext, namespace: str, question: str) -> list[Source]:
        if self.settings.concepts == 0:
            return []
        names = await anyio.to_thread.run_sync(self._concepts_named, namespace, question)
        out: dict[str, Source] = {}
        for name in names[: self.settings.concepts]:
            try:
                graph = await self._memory.graph_query(ctx, GraphQueryParams(concept=name, depth=1, namespace=namespace))
            except NotFound:  # forgotten since it was found
                continue
            for rel in graph.relations:
                if rel.retracted_at is None and rel.id not in out:
                    text = f"{rel.src} {rel.type.replace('_', ' ')} {rel.dst}"
                    out[rel.id] = Source("semantic", rel.id, text, float(rel.weight))
        return list(out.values())

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
        state = None
        if route_name is not None:
            state = router._route(route_name)  # -32002 unknown_route
            if state.settings.task != "generate":
                raise InvalidParams(f"route: {route_name} has task {state.settings.task}; route.ask needs a generate route",
                                    field="route", reason="not_generate")
        namespace = memory.namespaces.resolve(ctx.principal, ctx.method, params.namespace)  # -32001 as memory.recall
        remember = s.remember if params.remember is None else params.remember
        stream_id = params.stream_id or f"r{ctx.request}"

        async def emit(provider: str, text: str, index: int) -> None:
            await ctx.connection.notify(CHUNK_NOTIFICATION, {"stream": stream_id, "provider": provider, "index": index, "text": text})

        # System 1: this question (or one close enough) answered before in this namespace.
        cache = router.cache
        cache_route = f"ask:{route_name or '*'}:{namespace}"
        key = input_hash(cache_route, question.encode())
        use_cache = (s.cache and router.settings.cache.enabled and cache is not None
                     and (state is None or state.settings.cache))
        vector = None
        hit: CacheHit | None = None
        if use_cache:
            assert cache is not None
            hit = await router._db(cache.exact, cache_route, key)
            if hit is None and router.settings.cache.semantic:
                vector = await router._text_vector(question)
                if vector is not None:
                    hit = await router._db(cache.semantic, cache_route, vector)
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
            if state is not None:
                answer, path, provider, decision, escalated = await self._routed(ctx, route_name, prompt, tags)  # type: ignore[arg-type]
                if params.stream and answer:
                    await emit(provider or route_name or "", answer, 0)  # the route decides on the whole answer
            else:
                answer, provider = await self._chain(ctx, prompt, tags, emit if params.stream else None)
                path, decision, escalated = "fast", None, False
            if use_cache:
                assert cache is not None
                if vector is None and router.settings.cache.semantic:
                    vector = await router._text_vector(question)
                stored = {"text": answer, "sources": [src.model_dump(exclude={"audit_seq"}) for src in sources],
                          "provider": provider, "route": route_name, "path": path}
                await router._db(cache.put, cache_route, key, decision or "", provider or "", stored, vector)

        remembered: list[str] = []
        if remember:
            source_ids: list[Any] = [src.id for src in sources][:200]
            episode = EpisodeIn(
                text=_truncate_bytes(f"Q: {question}\nA: {answer}", limit),
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

    async def _chain(self, ctx: RequestContext, prompt: str, tags: list[str], emit: Any) -> tuple[str, str]:
        """The providers' generate chain (policy egress on each provider), streamed when ``emit`` is given."""
        providers = self._providers
        if providers is None:
            raise Unavailable("no providers part: nothing can generate", reason="no_provider", capability="generate")
        system = self.settings.system
        max_chars = providers.settings.max_prompt_chars
        if len(prompt) + len(system) > max_chars:
            raise InvalidParams(f"question: the prompt has {len(prompt) + len(system)} characters; at most {max_chars} "
                                "(providers.max_prompt_chars; see router.ask.context_chars)", field="question")
        names = providers.chain("generate", None)  # -32005 no_provider when none is configured
        payload = {"prompt": prompt, "system": system}
        if emit is None:
            def invoke(provider: Any, sent: dict[str, Any]) -> Any:
                return provider.generate(sent["prompt"], model=None, system=sent.get("system"), options={})

            name, (completion, _), _, _ = await providers.call(
                ctx, "generate", names, model=None, tags=tags, payload=payload, invoke=invoke, check=checked_completion
            )
            return completion.text, name

        def open_stream(provider: Any, sent: dict[str, Any]) -> Any:
            return provider.stream_generate(sent["prompt"], model=None, system=sent.get("system"), options={})

        name, text, _, _, _ = await providers.stream(
            ctx, "generate", names, model=None, tags=tags, payload=payload, open_stream=open_stream, emit=emit
        )
        return text, name
