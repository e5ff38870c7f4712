"""Params and results of the ``route.*`` RPC methods (the wire contract); ``route.ask``'s are the
ask part's (:mod:`engram.ask.api`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engram.router.settings import Mode
from engram.server.methods import Params, Result
from engram.wire.tensors import B64Tensor, ListTensor, WireTensor

__all__ = [
    "CacheProvenance",
    "RouteCalibrateParams",
    "RouteCalibrateResult",
    "RouteConsolidateParams",
    "RouteConsolidateResult",
    "RouteFeedbackParams",
    "RouteFeedbackResult",
    "RouteNameParams",
    "RouteResetParams",
    "RouteResetResult",
    "RouteRunParams",
    "RouteRunResult",
    "RouteStats",
    "RouteStatsResult",
]


class RouteRunParams(Params):
    route: str = Field(description="A route of router.routes.")
    tensor: WireTensor | None = Field(default=None, description="Tensor input (classify routes): fed to the route's input.")
    text: str | None = Field(default=None, description="Text input (embed and generate routes).")
    mode: Mode | None = Field(default=None, description="Override the route's mode for this request.")
    threshold: float | None = Field(
        default=None, ge=0, le=1, description="Override the threshold in force (cascade: confidence; auto: p_slow). 1: always escalate."
    )
    use_cache: bool = Field(default=True, description="false: skip the pattern cache for this request.")
    output_format: Literal["b64", "list"] = Field(default="b64", description="b64 or list, as infer.run.")

    @model_validator(mode="after")
    def _one_input(self) -> RouteRunParams:
        if (self.tensor is None) == (self.text is None):
            raise ValueError("give exactly one of 'tensor' and 'text'")
        return self


class CacheProvenance(Result):
    kind: Literal["exact", "semantic"]
    decision: str = Field(description="The decision whose answer is served.")
    target: str = Field(description="The target that produced it.")
    created_at: float
    similarity: float = Field(description="1 for exact repeats; the cosine similarity for semantic ones.")


class RouteRunResult(Result):
    decision: str = Field(description="Decision id, for route.feedback.")
    route: str
    mode: Mode
    taken: Literal["cache", "fast", "slow"]
    target: str
    escalated: bool
    agreed: bool | None = Field(description="Whether fast and slow agreed, when both ran.")
    confidence: float | None = Field(description="The fast target's confidence, when it ran.")
    p_slow: float = Field(description="The assessor's probability that the slow path is needed.")
    features: dict[str, float]
    reason: str = Field(description="One line: why this path.")
    labels: list[int] | None = Field(default=None, description="classify: the top class of each row.")
    outputs: dict[str, B64Tensor | ListTensor] = Field(
        description="The answer: the target's outputs (embed: vectors; generate: score, when the provider reports one)."
    )
    text: str | None = Field(default=None, description="generate: the provider's text.")
    cached: CacheProvenance | None = None


class RouteNameParams(Params):
    route: str | None = Field(default=None, description="One route (default: all).")


class RouteStats(Result):
    route: str
    mode: Mode
    fast: str
    slow: str
    threshold: float
    auto_threshold: float
    calibrated: str | None = Field(description="What the thresholds were calibrated for, if they were.")
    requests: int
    taken: dict[str, int] = Field(description="Answers by source: cache, fast, slow.")
    escalation_rate: float = Field(description="Share of requests that ran the slow target after the fast one.")
    slow_share: float = Field(description="Share of requests answered by the slow target.")
    agreement_rate: float | None = Field(description="Share of requests where both ran and agreed (null: none ran both).")
    both_ran: int
    errors: int
    latency_ms: dict[str, float] = Field(description="mean, p50, p99 of the requests since start.")
    assessor_updates: int
    consolidations: int
    learning_rate: float = Field(description="The assessor's learning rate in force: the configured one, lowered at each revert.")
    reverts: int = Field(description="Times the assessor's diverged weights were put back to the last stable snapshot.")


class RouteStatsResult(Result):
    routes: list[RouteStats]


class RouteFeedbackParams(Params):
    decision: str = Field(description="The decision id from route.run.")
    correct: bool = Field(description="Whether the answer was right.")


class RouteFeedbackResult(Result):
    decision: str
    route: str
    learned: bool = Field(description="True when the assessor was updated (answers that came from the fast target).")
    p_slow_before: float


class RouteResetParams(Params):
    route: str
    cache: bool = Field(default=False, description="Also drop the route's cached answers.")


class RouteResetResult(Result):
    route: str
    cache_cleared: int


class RouteCalibrateParams(Params):
    route: str
    slow_share: float | None = Field(default=None, gt=0, lt=1, description="Target share of requests taking the slow path.")
    agreement: float | None = Field(
        default=None, gt=0, le=1, description="Target agreement rate of the answers the fast path keeps."
    )

    @model_validator(mode="after")
    def _one_target(self) -> RouteCalibrateParams:
        if (self.slow_share is None) == (self.agreement is None):
            raise ValueError("give exactly one of 'slow_share' and 'agreement'")
        return self


class RouteCalibrateResult(Result):
    route: str
    threshold: float = Field(description="cascade: the new confidence threshold.")
    auto_threshold: float = Field(description="auto: the new p_slow threshold.")
    samples: int = Field(description="Recorded decisions it was calibrated on.")
    expected_slow_share: float = Field(description="cascade: the share of those decisions that would have escalated.")


class RouteCurveParams(Params):
    route: str
    points: int = Field(default=21, ge=2, le=201, description="Most thresholds on the curve.")


class CurvePointOut(Result):
    threshold: float = Field(description="The cascade confidence threshold.")
    slow_share: float = Field(description="Share of the decisions that would have escalated (the cost).")
    accuracy: float = Field(description="Share whose final answer would have agreed with the slow target.")


class RouteCurveResult(Result):
    route: str
    samples: int = Field(description="Recorded decisions where both targets ran (what the curve is measured on).")
    threshold: float = Field(description="The route's cascade threshold now.")
    points: list[CurvePointOut] = Field(description="From the cheapest threshold (0: nothing escalates) to the dearest.")


class RouteConsolidateParams(Params):
    route: str | None = Field(default=None, description="One route (default: all).")


class RouteConsolidateResult(Result):
    routes: list[str]
