"""Stable learning: the readings of a weight trajectory on known trajectories, adversarial feedback
that makes the assessor diverge and is undone (snapshot restored, rate lowered, event, metric),
and honest feedback that never is."""

from __future__ import annotations

import fnmatch
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from engram.audit.events import AUDITED_TOPICS
from engram.bus import EventBus
from engram.bus.events import CORE_EVENTS
from engram.observability.metrics import Metrics
from engram.principal import Principal
from engram.router.api import RouteFeedbackParams, RouteNameParams
from engram.router.assessor import Assessor
from engram.router.events import ROUTER_EVENTS, RouteReverted
from engram.router.service import Router
from engram.router.settings import RouterLearningSettings, RouterSettings, RouteSettings, RouterStabilitySettings
from engram.router.stability import lyapunov, oscillation
from engram.server.methods import RequestContext

ADVERSARIAL_RATE = 0.3  # high enough that an adversary can swing the weights, as a misconfigured rate would


def _features(c: float) -> dict[str, float]:
    return {"bias": 1.0, "has_conf": 1.0, "low_conf": 1 - c, "low_margin": min(1.0, 2 * (1 - c))}


def _honest(n: int, seed: int) -> Iterator[tuple[dict[str, float], bool]]:
    """Outcomes of a noisy but fixed process: the less confident the fast answer, the likelier the
    slow path was needed (p = 1 - conf²)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        c = float(rng.uniform(0.3, 1.0))
        yield _features(c), bool(rng.uniform() >= c**2)


# --- the readings ---------------------------------------------------------------------------------


def test_contracting_trajectory_has_a_negative_exponent_and_an_expanding_one_a_positive():
    start = np.array([1.0, -2.0, 0.5])
    for a in (0.5, 0.9):
        contracting = np.array([a**t * start for t in range(32)])
        assert lyapunov(contracting) == pytest.approx(math.log(a), abs=1e-6)
    for a in (1.1, 1.5):
        expanding = np.array([a**t * start for t in range(32)])
        assert lyapunov(expanding) == pytest.approx(math.log(a), abs=1e-6)
    assert lyapunov(np.array([start, start, start, start, start, start])) is None  # no separation to follow


def test_oscillation_counts_reversals_of_direction():
    straight = np.array([[t, 2.0 * t] for t in range(20)], dtype=float)
    assert oscillation(straight) == 0.0
    flipping = np.array([[(-1) ** t, 0.0] for t in range(20)], dtype=float)
    assert oscillation(flipping) == 1.0
    # steps +1 +1 -1 repeated: of each three pairs of steps, two reverse; 21 steps make 20 pairs,
    # six whole periods (12 reversals) and a last pair (+1, -1) that reverses too
    zigzag = np.cumsum([[1.0], [1.0], [-1.0]] * 7, axis=0)
    assert oscillation(np.vstack([[0.0], zigzag])) == pytest.approx(13 / 20)
    assert oscillation(np.zeros((10, 2))) is None  # never moved


def test_settings_refuse_a_window_no_exponent_fits_in():
    with pytest.raises(ValueError, match="horizon"):
        RouterStabilitySettings(window=8, horizon=6)
    with pytest.raises(ValueError, match="min_replay"):
        RouterStabilitySettings(replay=8, min_replay=16)


# --- the assessor -----------------------------------------------------------------------------------


def test_adversarial_feedback_is_reverted_to_the_snapshot_at_a_lower_rate(conn, open_db):
    """Honest outcomes first (snapshots are taken), then an adversary that contradicts whatever the
    assessor predicts: the weights swing, replay accuracy falls, and they are put back."""
    assessor = Assessor(conn, RouterLearningSettings(rate=ADVERSARIAL_RATE))
    for features, slow_needed in _honest(400, seed=5):
        assert assessor.learn("r", features, slow_needed)[1] is None
    rng = np.random.default_rng(6)
    revert = None
    for step in range(300):
        features = _features(float(rng.uniform(0.3, 1.0)))
        _, revert = assessor.learn("r", features, not assessor.probability("r", features) > 0.5)
        if revert is not None:
            break
    assert revert is not None, "the adversary was never stopped"
    r = revert.readings
    assert r.diverged == "unstable" and r.accuracy is not None and r.stable_accuracy is not None
    assert r.accuracy < r.stable_accuracy - 0.2
    assert revert.rate_before == ADVERSARIAL_RATE and revert.rate_after == ADVERSARIAL_RATE / 2 and revert.reverts == 1
    assert 400 <= revert.snapshot_updates < revert.updates == 401 + step
    row = conn.execute("SELECT slow, fast, snapshot_updates, rate, reverts FROM router_stability WHERE route = 'r'").fetchone()
    weights = assessor.snapshot("r")
    assert (weights.slow, weights.fast) == (json.loads(row[0]), json.loads(row[1]))  # the weights are the snapshot's
    assert row[2:] == (revert.snapshot_updates, ADVERSARIAL_RATE / 2, 1)
    restarted = Assessor(open_db(), RouterLearningSettings(rate=ADVERSARIAL_RATE))
    assert restarted.stability("r") == (ADVERSARIAL_RATE / 2, 1)  # the lowered rate holds after a restart
    assert restarted.snapshot("r").fast == weights.fast
    restarted.reset("r")
    assert restarted.stability("r") == (ADVERSARIAL_RATE, 0)


def test_the_rate_is_never_lowered_below_its_floor(conn):
    stability = RouterStabilitySettings(max_norm=7.0, min_rate=0.04, rate_factor=0.5)
    assessor = Assessor(conn, RouterLearningSettings(rate=0.1, max_step=2.0, stability=stability))
    rates = []
    for _ in range(50):  # the prior's norm is 7.2: every step leaves the weights past max_norm
        _, revert = assessor.learn("r", _features(0.9), True)
        assert revert is not None and revert.readings.diverged == "norm"
        rates.append(revert.rate_after)
        if rates[-1] == 0.04:
            break
    assert rates == [0.05, 0.04]


def test_honest_feedback_never_reverts(conn):
    assessor = Assessor(conn, RouterLearningSettings())
    taken = 0
    for features, slow_needed in _honest(2000, seed=1):
        _, revert = assessor.learn("r", features, slow_needed)
        assert revert is None
        taken = conn.execute("SELECT snapshot_updates FROM router_stability WHERE route = 'r'").fetchone()
    assert taken is not None and taken[0] >= 1900  # snapshots kept following the learning
    assert assessor.stability("r") == (RouterLearningSettings().rate, 0)


def test_without_the_watch_nothing_is_reverted(conn):
    settings = RouterLearningSettings(rate=0.1, max_step=2.0, stability=RouterStabilitySettings(enabled=False, max_norm=7.0))
    assessor = Assessor(conn, settings)
    assert all(assessor.learn("r", _features(0.9), True)[1] is None for _ in range(20))
    assert conn.execute("SELECT count(*) FROM router_stability").fetchone()[0] == 0


# --- the router: route.feedback, event, metric, audit ------------------------------------------------


def _decide(conn: Any, decision: str, features: dict[str, float]) -> None:
    """A decision of the fast target, as route.run records it."""
    conn.execute(
        "INSERT INTO router_decisions (id, route, time, taken, features, confidence, p_slow) VALUES (?, 'r', ?, 'fast', ?, 0.9, 0.1)",
        (decision, time.time(), json.dumps(features)),
    )


async def test_route_feedback_from_an_adversary_reverts_and_says_so(conn: Any, db_path: Path):
    settings = RouterSettings(
        routes=[RouteSettings(name="r", fast="model:a", slow="model:b", mode="auto")],
        learning=RouterLearningSettings(rate=ADVERSARIAL_RATE),
    )
    bus, metrics = EventBus((*CORE_EVENTS, *ROUTER_EVENTS)), Metrics()
    sub = bus.subscribe(["route.reverted"])
    ctx = RequestContext(principal=Principal(uid=os.getuid(), gid=os.getgid(), pid=1), connection=None, request=1)  # type: ignore[arg-type]
    async with Router(settings, db_path, bus, metrics, models=None) as router:  # type: ignore[arg-type]
        for i, (features, slow_needed) in enumerate(_honest(400, seed=5)):
            _decide(conn, f"h{i}", features)
            await router.route_feedback(ctx, RouteFeedbackParams(decision=f"h{i}", correct=not slow_needed))
        rng = np.random.default_rng(6)
        for i in range(300):
            features = _features(float(rng.uniform(0.3, 1.0)))
            _decide(conn, f"a{i}", features)
            # the adversary calls right what the assessor would have escalated, and wrong what it would not
            correct = router.assessor.probability("r", features) > 0.5  # type: ignore[union-attr]
            await router.route_feedback(ctx, RouteFeedbackParams(decision=f"a{i}", correct=correct))
            if metrics.registry.get_sample_value("engram_route_reverts_total", {"route": "r", "reason": "unstable"}):
                break
        with anyio.fail_after(5):
            event = await sub.receive()
        stats = (await router.route_stats(ctx, RouteNameParams(route="r"))).routes[0]
    assert isinstance(event, RouteReverted) and event.route == "r" and event.reason == "unstable"
    assert event.rate_before == ADVERSARIAL_RATE and event.rate_after == ADVERSARIAL_RATE / 2 and event.reverts == 1
    assert stats.reverts == 1 and stats.learning_rate == ADVERSARIAL_RATE / 2
    assert any(fnmatch.fnmatchcase("route.reverted", pattern) for pattern in AUDITED_TOPICS)  # so it is an audit entry
