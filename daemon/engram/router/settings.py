"""The ``router`` section of the configuration: routes, the pattern cache, and learning."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "RouteSettings", "RouterAskSettings", "RouterCacheSettings", "RouterLearningSettings", "RouterSettings",
    "RouterStabilitySettings",
]

Mode = Literal["fast", "slow", "auto", "cascade"]
Task = Literal["classify", "embed", "generate"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _check_target(value: str) -> str:
    kind, _, name = value.partition(":")
    if kind not in ("model", "provider") or not name:
        raise ValueError("a target is model:<name> or provider:<name>")
    return value


class RouteSettings(_Section):
    """One route: a task, a fast and a slow target, and how to choose between them."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="Route name, as route.run's route param.")
    task: Task = Field(default="classify", description="classify (tensor in, probabilities out), embed (texts in), generate.")
    fast: str = Field(description="Fast target: model:<name> (inference registry) or provider:<name>.")
    slow: str = Field(description="Slow target: model:<name> or provider:<name>.")
    mode: Mode = Field(default="cascade", description="fast, slow, auto (learned assessor) or cascade (confidence threshold).")
    threshold: float = Field(
        default=0.9, ge=0, le=1, description="cascade: escalate when the fast confidence is below this."
    )
    auto_threshold: float = Field(
        default=0.5, ge=0, le=1, description="auto: escalate when the assessor's probability that the slow path is needed is above this."
    )
    direct_slow: float = Field(
        default=0.97, ge=0, le=1,
        description="auto: skip the fast target and go straight to the slow one when the assessor, before running the fast "
        "target, is this sure the slow path is needed.",
    )
    confidence: Literal["max_prob", "margin"] = Field(
        default="max_prob", description="Classifier confidence: the top probability, or top minus second."
    )
    input: str | None = Field(default=None, description="Graph input the tensor is fed to (default: the model's only input).")
    output: str | None = Field(
        default=None, description="Output holding class scores (default: the first float output with one row per input row)."
    )
    fallback: Literal["fail", "other"] = Field(
        default="other", description="When a target is down: other (use the other target) or fail (-32005)."
    )
    cache: bool = Field(default=True, description="Serve repeats of this route from the pattern cache (System 1).")

    _check_fast = field_validator("fast", "slow")(lambda cls, v: _check_target(v))

    @model_validator(mode="after")
    def _distinct(self) -> RouteSettings:
        if self.fast == self.slow and self.mode in ("auto", "cascade"):
            raise ValueError("fast and slow are the same target: mode auto/cascade needs two")
        return self


class RouterCacheSettings(_Section):
    """System 1's pattern cache."""

    enabled: bool = Field(default=True, description="Serve exact (and, for text, semantic) repeats from the cache.")
    ttl: float = Field(default=3600.0, gt=0, le=30 * 86_400, description="Seconds a cached answer stays valid.")
    max_entries: int = Field(default=10_000, ge=1, le=1_000_000, description="Cached answers kept per route; the oldest go first.")
    semantic: bool = Field(default=True, description="For text inputs, also serve answers to texts embedded close enough.")
    semantic_threshold: float = Field(
        default=0.95, ge=0, le=1, description="Cosine similarity at or above which a text counts as a semantic repeat."
    )


class RouterStabilitySettings(_Section):
    """Watching online learning: when the weights diverge, back to the last stable snapshot at a lower rate."""

    enabled: bool = Field(default=True, description="Watch every online step and revert diverged weights.")
    window: int = Field(default=32, ge=8, le=4096, description="Recent weight vectors per route that the readings are taken over.")
    horizon: int = Field(default=4, ge=1, le=64, description="Steps over which the Lyapunov estimate follows neighbouring states.")
    replay: int = Field(default=64, ge=1, le=10_000, description="Recent labelled outcomes per route kept to measure accuracy on.")
    min_replay: int = Field(default=16, ge=1, le=10_000, description="Outcomes the replay set needs before accuracy is compared.")
    max_norm: float = Field(default=30.0, gt=0, description="Weights whose Euclidean norm passes this have diverged.")
    max_oscillation: float = Field(
        default=0.75, ge=0, le=1, description="Share of steps reversing direction above which the trajectory counts as unstable."
    )
    max_lyapunov: float = Field(
        default=0.3, description="Lyapunov estimate (nats per step) above which the trajectory counts as unstable."
    )
    max_accuracy_drop: float = Field(
        default=0.2, ge=0, le=1,
        description="An unstable trajectory has diverged when its replay accuracy is this far below the snapshot's.",
    )
    snapshot_every: int = Field(default=16, ge=1, le=1_000_000, description="Steps between stable snapshots, at least.")
    rate_factor: float = Field(default=0.5, gt=0, lt=1, description="The learning rate is multiplied by this at each revert.")
    min_rate: float = Field(default=0.001, gt=0, le=1, description="The learning rate never goes below this.")

    @model_validator(mode="after")
    def _fits(self) -> RouterStabilitySettings:
        if self.min_replay > self.replay:
            raise ValueError("min_replay is larger than replay")
        if self.horizon + 2 >= self.window:
            raise ValueError("window must be larger than horizon + 2")
        return self


class RouterLearningSettings(_Section):
    """How the assessor learns from outcomes; every update is bounded."""

    enabled: bool = Field(default=True, description="Update the assessor's fast weights from outcomes.")
    rate: float = Field(default=0.05, gt=0, le=1, description="Learning rate of the online (fast-weight) updates.")
    max_step: float = Field(default=0.25, gt=0, le=10, description="Largest change of one weight in one update.")
    max_weight: float = Field(default=20.0, gt=0, le=1000, description="Weights are kept within ±this.")
    consolidate_every: int = Field(
        default=500, ge=0, le=1_000_000, description="Fold fast weights into slow weights after this many updates (0: only on request)."
    )
    explore: float = Field(
        default=0.0, ge=0, le=1,
        description="auto and cascade: share of confident requests for which the slow target also runs, to keep learning.",
    )
    novelty_window: int = Field(
        default=512, ge=1, le=100_000,
        description="Without episodic memory (or without an embedding for a text): recent inputs per route that novelty is "
        "measured against.",
    )
    novelty_dim: int = Field(
        default=256, ge=1, le=65_536,
        description="Tensor routes: the flattened input is truncated or zero-padded to this many values before it is "
        "remembered in the route's memory namespace (router:<route>) and compared for novelty.",
    )
    novelty_queue: int = Field(
        default=1024, ge=1, le=1_000_000,
        description="Input vectors waiting to be written to episodic memory; when full, new ones are dropped and counted "
        "(engram_route_novelty_dropped).",
    )
    stability: RouterStabilitySettings = Field(default_factory=RouterStabilitySettings)


DEFAULT_ASK_SYSTEM = (
    "You answer the user's question. Below the question's context: notes recalled from the user's memory "
    "(working memory, past episodes, known facts), most relevant first. Use them when they help, and say so "
    "when they do not answer the question."
)
DEFAULT_ASK_TEMPLATE = "Context:\n{context}\n\nQuestion: {question}"


class RouterAskSettings(_Section):
    """route.ask: a question answered with recalled memories as context."""

    route: str | None = Field(
        default=None,
        description="The generate route of router.routes that answers (default: none; the providers' generate chain answers).",
    )
    k: int = Field(default=5, ge=0, le=1000, description="Episodes recalled as context when the request gives no k.")
    working_items: int = Field(
        default=8, ge=0, le=1000, description="Working-memory items of the session used as context, highest score first."
    )
    concepts: int = Field(
        default=3, ge=0, le=100,
        description="Concepts named in the question whose relations (one hop) are used as context.",
    )
    context_chars: int = Field(
        default=4000, ge=0, le=1_000_000,
        description="Characters of context at most in the prompt; sources are added most relevant first until it is full.",
    )
    system: str = Field(default=DEFAULT_ASK_SYSTEM, max_length=100_000, description="The system prompt sent with every question.")
    template: str = Field(
        default=DEFAULT_ASK_TEMPLATE, max_length=100_000,
        description="The prompt: {context} is replaced by the context lines, {question} by the question.",
    )
    no_context: str = Field(default="(none)", max_length=1000, description="What {context} becomes when no memory was recalled.")
    remember: bool = Field(default=True, description="Remember each exchange as an episode unless the request says otherwise.")
    kind: str = Field(default="exchange", pattern=r"^[a-z][a-z0-9_]{0,63}$", description="Kind of the remembered exchange's episode.")
    tags: list[str] = Field(default_factory=lambda: ["ask"], max_length=16, description="Tags of the remembered exchange's episode.")
    importance: float = Field(default=0.5, ge=0, le=1, description="Importance of the remembered exchange's episode.")
    cache: bool = Field(
        default=True,
        description="Answer exact and semantic repeats of a question in the same namespace from the pattern cache "
        "(also needs router.cache.enabled).",
    )

    @field_validator("template")
    @classmethod
    def _has_question(cls, template: str) -> str:
        if "{question}" not in template:
            raise ValueError("the template must contain {question}")
        return template


class RouterSettings(_Section):
    """The HRM router (route.*)."""

    routes: list[RouteSettings] = Field(default_factory=list, description="The routes (each a [[router.routes]] table).")
    cache: RouterCacheSettings = Field(default_factory=RouterCacheSettings)
    learning: RouterLearningSettings = Field(default_factory=RouterLearningSettings)
    ask: RouterAskSettings = Field(default_factory=RouterAskSettings)
    target_timeout: float = Field(default=30.0, gt=0, le=3600, description="Seconds one target call may take.")

    @field_validator("routes")
    @classmethod
    def _unique(cls, routes: list[RouteSettings]) -> list[RouteSettings]:
        names = [r.name for r in routes]
        if len(set(names)) != len(names):
            raise ValueError("route names must be unique")
        return routes

    @model_validator(mode="after")
    def _ask_route(self) -> RouterSettings:
        if self.ask.route is not None:
            route = next((r for r in self.routes if r.name == self.ask.route), None)
            if route is None:
                raise ValueError(f"ask.route: {self.ask.route!r} is not one of router.routes")
            if route.task != "generate":
                raise ValueError(f"ask.route: route {self.ask.route!r} has task {route.task}; route.ask needs a generate route")
        return self
