"""The accuracy-cost curve of a cascade, computed from recorded decisions."""

from __future__ import annotations

import numpy as np
from engram.router.calibrate import accuracy_cost_curve


def test_curve_runs_from_the_fast_agreement_to_one():
    # Confident answers agree, doubtful ones do not; a fast-only decision (-1) is left out.
    conf = np.array([0.95, 0.9, 0.85, 0.4, 0.3, 0.2, 0.99])
    agreed = np.array([1, 1, 1, 0, 0, 1, -1])
    curve = accuracy_cost_curve(conf, agreed, points=50)
    first, last = curve[0], curve[-1]
    assert (first.threshold, first.slow_share, first.accuracy) == (0.0, 0.0, round(4 / 6, 6))
    assert last.slow_share == 1.0 and last.accuracy == 1.0
    assert [p.slow_share for p in curve] == sorted(p.slow_share for p in curve)
    # Escalating the three doubtful ones (threshold just above 0.4) costs half and fixes both wrong answers.
    half = next(p for p in curve if p.slow_share == 0.5)
    assert half.accuracy == 1.0


def test_a_fast_target_that_never_agrees_is_worth_only_what_escalates():
    conf = np.linspace(0.1, 0.9, 9)
    curve = accuracy_cost_curve(conf, np.zeros(9, dtype=np.int64), points=5)
    assert len(curve) <= 5
    assert all(p.accuracy == p.slow_share for p in curve)


def test_no_decision_where_both_ran_gives_no_curve():
    assert accuracy_cost_curve(np.array([0.5, 0.7]), np.array([-1, -1]), points=10) == []


def test_thresholds_that_change_nothing_are_left_out():
    conf = np.array([0.5] * 10 + [0.9] * 10)
    curve = accuracy_cost_curve(conf, np.array([0] * 10 + [1] * 10), points=21)
    assert [(p.slow_share, p.accuracy) for p in curve] == [(0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]
    assert curve[0].threshold == 0.0 and 0.5 < curve[1].threshold <= 0.9 and curve[2].threshold == 1.0
