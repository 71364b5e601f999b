"""RQ 9.1's own pieces: the Wilson interval and the attribution of a wrong facts answer to the
signal that removed the gold token at step 0 (hand-built traces)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.research.rq9_1_failures import classify, gold_score_lr, wilson
from tempo_jax.trace import Trace


def test_wilson_matches_statsmodels_and_hand_values():
    from statsmodels.stats.proportion import proportion_confint

    for k, n in [(0, 10), (3, 10), (10, 10), (17, 41)]:
        p, lo, hi = wilson(k, n)
        ref = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert p == k / n and lo == pytest.approx(ref[0], abs=1e-6) and hi == pytest.approx(ref[1], abs=1e-6)
    # k = 0: lo = 0 and hi = z^2 / (n + z^2)
    z = 1.959964
    assert wilson(0, 10)[2] == pytest.approx(z * z / (10 + z * z))
    assert all(math.isnan(v) for v in wilson(0, 0))


def _trace(members, n_slots=16):
    """One step whose members are (token, prob, pruned, score); prompt of 4 tokens."""
    W = len(members)
    a = {"tokens": np.array([[t for t, _, _, _ in members]]), "probs": np.array([[p for _, p, _, _ in members]]),
         "slots": np.array([[4 + i for i in range(W)]]), "positions": np.full((1, W), 4.0),
         "valid": np.ones((1, W), bool), "tau": np.array([0.05]), "entropy": np.array([1.0]),
         "set_n": np.array([W]), "prune_score": np.full(n_slots, np.nan), "pruned_at": np.full(n_slots, -1)}
    for i, (_, _, pruned, score) in enumerate(members):
        if score is not None:
            a["prune_score"][4 + i] = score
        if pruned:
            a["pruned_at"][4 + i] = 2
    return Trace("m", {"prune": True}, [1, 2, 3, 4], a)


def test_classify_attributes_each_signal():
    d0 = np.full(100, 0.001)
    d0[[10, 11, 12]] = [0.5, 0.2, 0.1]
    d0[50] = 0.01  # gold below tau
    tr = _trace([(10, 0.5, False, 0.3), (11, 0.2, True, 0.1), (12, 0.1, False, 0.2)])
    assert classify(tr, d0, {11}, 0.05, 8) == ("pruned", 11)
    assert classify(tr, d0, {12}, 0.05, 8) == ("outranked", 12)
    assert classify(tr, d0, {10}, 0.05, 8) == ("later", None)
    assert classify(tr, d0, {50, 51}, 0.05, 8) == ("below_tau", 50)
    d0[60] = 0.06  # passes tau but was not kept: the width cap
    assert classify(tr, d0, {60}, 0.05, 8) == ("width_cut", 60)
    # when the top member is pruned, the clean path is the next alive one
    tr2 = _trace([(10, 0.5, True, 0.1), (12, 0.1, False, 0.4)])
    assert classify(tr2, d0, {12}, 0.05, 8) == ("later", None)
    assert classify(tr2, d0, {10}, 0.05, 8) == ("pruned", 10)
    # the gold score relative to the mean of the others
    assert gold_score_lr(tr, {11}) == pytest.approx(np.log(0.1) - np.log(0.25))
    assert math.isnan(gold_score_lr(_trace([(10, 0.5, False, None), (11, 0.2, False, None)]), {11}))
