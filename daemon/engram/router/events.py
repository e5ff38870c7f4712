"""Bus events of the router. Topics start with ``route.``, which the audit log records."""

from __future__ import annotations

from pydantic import Field

from engram.bus.events import Event
from engram.principal import Principal

__all__ = ["ROUTER_EVENTS", "RouteCalibrated", "RouteDecided", "RouteReset", "RouteReverted"]


class RouteDecided(Event):
    topic = "route.decision"
    decision: str = Field(description="Decision id (route.feedback refers to it).")
    route: str
    mode: str = Field(description="The mode in force: fast, slow, auto or cascade.")
    taken: str = Field(description="Where the answer came from: cache, fast or slow.")
    target: str = Field(description="The target (or, for cache, the target that made the cached answer).")
    escalated: bool
    agreed: bool | None = Field(default=None, description="Whether fast and slow agreed, when both ran.")
    confidence: float | None = Field(default=None, description="The fast target's confidence, when it ran.")
    p_slow: float = Field(description="The assessor's probability that the slow path was needed.")
    features: dict[str, float]
    reason: str
    request: int | None = Field(default=None, description="The daemon's serial number of the request.")
    principal: Principal | None = Field(default=None, description="Who asked.")


class RouteReset(Event):
    topic = "route.reset"
    route: str
    cache_cleared: int = Field(description="Cached answers removed.")
    uid: int | None = None


class RouteCalibrated(Event):
    topic = "route.calibrated"
    route: str
    threshold: float | None = None
    auto_threshold: float | None = None
    target: str = Field(description="What was calibrated for, e.g. slow_share=0.3 or agreement=0.99.")
    samples: int


class RouteReverted(Event):
    topic = "route.reverted"
    route: str
    reason: str = Field(description="norm (the weights' norm passed max_norm) or unstable (oscillating or diverging "
                        "trajectory while replay accuracy fell below the snapshot's).")
    norm: float = Field(description="Euclidean norm of the diverged weights.")
    oscillation: float | None = Field(description="Share of recent steps that reversed direction.")
    lyapunov: float | None = Field(description="Largest-Lyapunov-exponent estimate of the recent weight trajectory (nats per step).")
    accuracy: float | None = Field(description="Accuracy of the diverged weights on the replay set.")
    stable_accuracy: float | None = Field(description="Accuracy of the restored snapshot on the same replay set.")
    rate_before: float
    rate_after: float = Field(description="The learning rate from now on.")
    snapshot_updates: int = Field(description="The route's update count when the restored snapshot was taken.")
    updates: int = Field(description="The route's update count at the revert.")
    reverts: int = Field(description="The route's reverts so far, this one included.")


ROUTER_EVENTS: tuple[type[Event], ...] = (RouteDecided, RouteReset, RouteCalibrated, RouteReverted)
