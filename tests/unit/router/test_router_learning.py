"""The assessor and calibration: bounded online learning, consolidation, reset, persistence, and
thresholds that move the right way on a synthetic stream."""

from __future__ import annotations

import numpy as np
import pytest
from engram.router.assessor import Assessor
from engram.router.calibrate import calibrate
from engram.router.settings import RouterLearningSettings

HARD = {"bias": 1.0, "novelty": 0.5, "has_conf": 1.0, "low_conf": 0.45, "low_margin": 0.8}
EASY = {"bias": 1.0, "novelty": 0.1, "has_conf": 1.0, "low_conf": 0.02, "low_margin": 0.04}


def test_prior_comes_from_the_database_and_orders_easy_below_hard(conn):
    assessor = Assessor(conn, RouterLearningSettings())
    assert assessor.probability("r", EASY) < 0.5 < assessor.probability("r", HARD)
    conn.execute("UPDATE router_weights SET slow = '{\"bias\": 5.0}' WHERE route = '*prior'")
    assert Assessor(conn, RouterLearningSettings()).probability("other", EASY) > 0.99


def test_online_updates_move_towards_outcomes_and_stay_bounded(conn):
    settings = RouterLearningSettings(rate=1.0, max_step=0.1, max_weight=2.0, consolidate_every=0)
    assessor = Assessor(conn, settings)
    before = assessor.probability("r", EASY)
    for _ in range(200):  # easy inputs keep disagreeing: the slow path was needed after all
        assessor.update("r", EASY, slow_needed=True)
    after = assessor.probability("r", EASY)
    assert after > before
    weights = assessor.snapshot("r").effective(settings.max_weight)
    assert max(abs(v) for v in weights.values()) <= 2.0 + 1e-9
    one = Assessor(conn, settings)
    w0 = one.snapshot("s").effective(2.0)
    one.update("s", HARD, slow_needed=False)
    w1 = one.snapshot("s").effective(2.0)
    assert 0 < max(abs(w1[k] - w0[k]) for k in w0) <= 0.1 + 1e-9  # a step, and a bounded one


def test_weights_persist_consolidate_and_reset(conn, open_db):
    settings = RouterLearningSettings(consolidate_every=0)
    assessor = Assessor(conn, settings)
    for _ in range(30):
        assessor.update("r", HARD, slow_needed=False)
    learned = assessor.probability("r", HARD)
    restarted = Assessor(open_db(), settings)  # a new connection: what a restarted daemon reads
    assert restarted.probability("r", HARD) == pytest.approx(learned)
    assert restarted.snapshot("r").fast and restarted.snapshot("r").updates == 30
    restarted.consolidate("r")
    snap = restarted.snapshot("r")
    assert snap.fast == {} and snap.consolidations == 1
    assert restarted.probability("r", HARD) == pytest.approx(learned)
    restarted.reset("r")
    assert restarted.probability("r", HARD) == pytest.approx(Assessor(conn, settings).probability("fresh", HARD))


def test_consolidation_happens_every_n_updates(conn):
    assessor = Assessor(conn, RouterLearningSettings(consolidate_every=5))
    for _ in range(12):
        assessor.update("r", EASY, slow_needed=True)
    snap = assessor.snapshot("r")
    assert snap.consolidations == 2 and snap.updates == 12


def _stream(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic outcomes: the less confident the fast answer, the likelier the slow one differs."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.3, 1.0, n)
    agreed = (rng.uniform(size=n) < conf**2).astype(np.int64)
    return conf, agreed


def test_calibration_for_agreement_moves_threshold_up_when_stricter():
    conf, agreed = _stream(2000)
    p = 1 - conf
    loose = calibrate(conf, p, agreed, agreement=0.8)
    strict = calibrate(conf, p, agreed, agreement=0.95)
    assert strict.threshold > loose.threshold
    assert strict.expected_slow_share > loose.expected_slow_share
    assert strict.auto_threshold < loose.auto_threshold
    kept = conf >= strict.threshold
    assert agreed[kept].mean() >= 0.95


def test_calibration_for_slow_share_hits_the_share():
    conf, agreed = _stream(1000, seed=1)
    result = calibrate(conf, 1 - conf, agreed, slow_share=0.3)
    assert result.expected_slow_share == pytest.approx(0.3, abs=0.01)
    assert np.mean((1 - conf) > result.auto_threshold) == pytest.approx(0.3, abs=0.01)


def test_calibration_needs_enough_outcomes():
    conf, agreed = _stream(10)
    with pytest.raises(ValueError, match="at least"):
        calibrate(conf, 1 - conf, agreed, slow_share=0.3)
    conf, _ = _stream(100)
    with pytest.raises(ValueError, match="both targets ran"):
        calibrate(conf, 1 - conf, np.full(100, -1), agreement=0.9)


def _stream_features(c: float) -> dict[str, float]:
    return {"bias": 1.0, "has_conf": 1.0, "low_conf": 1 - c, "low_margin": min(1.0, 2 * (1 - c))}


def _log_loss(assessor: Assessor, conf: np.ndarray, agreed: np.ndarray) -> float:
    """How badly the assessor's p(slow needed) predicts the outcomes: lower is better."""
    p = np.array([assessor.probability("r", _stream_features(c)) for c in conf])
    slow_needed = agreed == 0
    return float(-np.mean(np.where(slow_needed, np.log(p), np.log(1 - p))))


def test_learning_on_a_stream_predicts_fresh_outcomes_better_than_the_prior(conn):
    """Low-confidence answers disagree more often (p = 1 - conf²), but less often than the prior
    expects (it gives 0.73 at conf 0.7, where the truth is 0.51): after the stream, the assessor
    predicts fresh outcomes of the same process about as well as the true probabilities do,
    and much better than the prior. Without learning it stays at the prior's loss."""
    assessor = Assessor(conn, RouterLearningSettings())
    held_conf, held_agreed = _stream(2000, seed=3)
    best = float(-np.mean(np.where(held_agreed == 0, np.log(1 - held_conf**2), np.log(held_conf**2))))
    prior = _log_loss(assessor, held_conf, held_agreed)
    assert prior > best + 0.1  # the prior is far enough off for learning to show
    truth_mid = 1 - 0.7**2
    prior_mid = assessor.probability("r", _stream_features(0.7))
    conf, agreed = _stream(3000, seed=2)
    for c, a in zip(conf, agreed, strict=True):
        assessor.update("r", _stream_features(c), slow_needed=not a)
    # Online SGD ends near the optimum, not on it: these bounds hold for every training seed tried
    # (2, 10 to 19), so they do not rest on this stream's luck.
    assert _log_loss(assessor, held_conf, held_agreed) < best + 0.04
    assert abs(assessor.probability("r", _stream_features(0.7)) - truth_mid) < abs(prior_mid - truth_mid)
    easy, hard = _stream_features(0.98), _stream_features(0.4)
    assert assessor.probability("r", hard) > 0.5 > assessor.probability("r", easy)
