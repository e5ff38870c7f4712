"""Thresholds from recorded decisions: for a target slow-path share, or a target agreement rate.

* ``slow_share = s``: the cascade threshold is the s-quantile of the fast confidences (that share
  escalates); the auto threshold is the (1 - s)-quantile of the assessor's probabilities.
* ``agreement = a``: among decisions where both targets ran, keep the largest set of the most
  confident (cascade) or least doubtful (auto) answers whose agreement rate is still >= a; the
  threshold is where that set ends. Escalating the rest means the fast answers kept agree with the
  slow target at rate a (on the recorded decisions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_SAMPLES", "Calibration", "CurvePoint", "accuracy_cost_curve", "calibrate"]

MIN_SAMPLES = 20


@dataclass(frozen=True)
class Calibration:
    threshold: float
    auto_threshold: float
    expected_slow_share: float


def _largest_prefix(order_values: np.ndarray, agreed: np.ndarray, target: float) -> int:
    """Length of the longest prefix (in the given order) whose agreement rate is >= target."""
    rates = np.cumsum(agreed) / np.arange(1, agreed.size + 1)
    ok = np.nonzero(rates >= target)[0]
    return int(ok[-1]) + 1 if ok.size else 0


def calibrate(
    confidences: np.ndarray, p_slow: np.ndarray, agreed: np.ndarray, *, slow_share: float | None = None,
    agreement: float | None = None,
) -> Calibration:
    """``agreed`` holds 1/0 where both targets ran and -1 where only the fast one did."""
    if confidences.size < MIN_SAMPLES:
        raise ValueError(f"{confidences.size} recorded decisions with a fast confidence; at least {MIN_SAMPLES} needed")
    if slow_share is not None:
        threshold = float(np.quantile(confidences, slow_share))
        auto = float(np.quantile(p_slow, 1.0 - slow_share))
    else:
        assert agreement is not None
        both = agreed >= 0
        if int(both.sum()) < MIN_SAMPLES:
            raise ValueError(
                f"{int(both.sum())} recorded decisions where both targets ran; at least {MIN_SAMPLES} needed "
                "(run the route with threshold 1 or router.learning.explore to collect them)"
            )
        conf_b, p_b, agree_b = confidences[both], p_slow[both], agreed[both].astype(np.float64)
        order = np.argsort(-conf_b, kind="stable")
        k = _largest_prefix(conf_b[order], agree_b[order], agreement)
        threshold = float(conf_b[order][k - 1]) if k else 1.0
        order = np.argsort(p_b, kind="stable")
        k = _largest_prefix(p_b[order], agree_b[order], agreement)
        auto = float(p_b[order][k - 1]) if k else 0.0
    share = float(np.mean(confidences < threshold))
    return Calibration(round(min(max(threshold, 0.0), 1.0), 6), round(min(max(auto, 0.0), 1.0), 6), share)


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    slow_share: float
    accuracy: float


def accuracy_cost_curve(confidences: np.ndarray, agreed: np.ndarray, points: int) -> list[CurvePoint]:
    """What each cascade threshold would have given on the decisions where both targets ran.

    At threshold ``t`` the decisions with a fast confidence below ``t`` escalate (the cost: their
    share) and take the slow answer, right by definition (the slow target is the reference); the
    others keep the fast answer, right where it agreed with the slow one. So accuracy is
    ``(escalated + kept and agreed) / n``: the fast target's agreement rate at ``t = 0``, 1 at
    ``t = 1`` unless some fast answers were fully confident. Thresholds are 0, the confidences'
    quantiles and 1, rounded as reported; a threshold that changes nothing from the one before
    is left out, so the points run from the cheapest to the dearest, at most ``points`` of them.
    """
    both = agreed >= 0
    conf, agree = confidences[both], agreed[both].astype(np.float64)
    if conf.size == 0:
        return []
    inner = np.quantile(conf, np.linspace(0, 1, max(points - 2, 1)))
    thresholds = np.unique(np.round(np.clip(np.concatenate(([0.0], inner, [1.0])), 0.0, 1.0), 6))
    out: list[CurvePoint] = []
    for t in thresholds:
        escalated = conf < t
        share = round(float(escalated.mean()), 6)
        accuracy = round(float((escalated.sum() + agree[~escalated].sum()) / conf.size), 6)
        if out and (out[-1].slow_share, out[-1].accuracy) == (share, accuracy):
            continue
        out.append(CurvePoint(float(t), share, accuracy))
    return out
