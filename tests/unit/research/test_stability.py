"""The stability column (tempo_jax.research.statistics.stability) on simulated data with known
answers: a large effect keeps its verdict in (nearly) every prompt resample, an effect whose t
statistic sits on the critical value keeps it about half the time, a tight null stays "no effect",
and the family correction the test received is applied to every resample."""

from __future__ import annotations

import numpy as np
from scipy import stats as st

from tempo_jax.research.statistics import category, stability


def _test(d, margin, k=1.0):
    """A stored test of ``d`` by the paired t test and TOST, corrected by a factor ``k``."""
    n = len(d)
    se = d.std(ddof=1) / np.sqrt(n)
    p = 2 * st.t.sf(abs(d.mean() / se), n - 1)
    p_tost = max(st.t.sf((d.mean() + margin) / se, n - 1), st.t.cdf((d.mean() - margin) / se, n - 1))
    return {"estimate": d.mean(), "p": p, "p_adj": min(1, p * k), "p_tost": p_tost,
            "p_tost_adj": min(1, p_tost * k), "margin": margin}


def test_large_effect_is_stable_and_a_borderline_one_is_not():
    rng = np.random.default_rng(0)
    big = rng.normal(1.0, 1.0, 200)
    assert stability(big, _test(big, 0.1), 0.05) > 0.99
    # shift a sample so that its t statistic equals the critical value: half the resamples fall short
    x = rng.normal(0.0, 1.0, 200)
    x = x - x.mean()
    x = x + st.t.ppf(0.975, 199) * x.std(ddof=1) / np.sqrt(200) * 1.001
    t = _test(x, 0.05)
    assert category(t["estimate"], t["p_adj"], t["p_tost_adj"], 0.05) == "differs +"
    assert 0.4 < stability(x, t, 0.05) < 0.6


def test_tight_null_stays_no_effect_and_correction_is_applied():
    rng = np.random.default_rng(1)
    null = rng.normal(0.0, 0.1, 300)
    null = null - null.mean()  # a sample mean of exactly 0: resamples differ only by chance (~5%)
    t = _test(null, 0.1)
    assert category(t["estimate"], t["p_adj"], t["p_tost_adj"], 0.05) == "no effect"
    assert 0.9 < stability(null, t, 0.05) < 0.99
    off = null + 0.0115  # p about 0.05: a "null" that sits on the bar is fragile
    assert stability(off, _test(off, 0.1), 0.05) < 0.7
    # an effect that passes alone (p about 1e-3) but sits near the bar after a x40 correction
    y = rng.normal(0.0, 1.0, 100)
    y = y - y.mean() + 3.3 * y.std(ddof=1) / 10
    alone, corrected = _test(y, 0.01), _test(y, 0.01, k=40)
    assert stability(y, alone, 0.05) > stability(y, corrected, 0.05) + 0.2


def test_too_few_values_give_nan():
    assert np.isnan(stability([1.0, 2.0], _test(np.array([1.0, 2.0, 3.5]), 0.1), 0.05))
    assert stability(np.array([1.0, 2.0, np.nan, 3.5]), _test(np.array([1.0, 2.0, 3.5]), 0.1), 0.05) >= 0


def test_simultaneous_ci_levels():
    """Holm families get Bonferroni intervals (1 - alpha / k), BH families the false-coverage-rate
    level 1 - R alpha / k; both are the t interval at that level, wider than the 95% one."""
    from tempo_jax.research.statistics import simultaneous_ci

    x = np.random.default_rng(2).normal(0.3, 1.0, 50)
    t99 = st.t.interval(0.99, 49, loc=x.mean(), scale=st.sem(x))
    np.testing.assert_allclose(simultaneous_ci(x, 5, "holm", 3), t99, rtol=1e-10)
    np.testing.assert_allclose(simultaneous_ci(x, 10, "fdr_bh", 2), t99, rtol=1e-10)
    np.testing.assert_allclose(simultaneous_ci(x, 10, "fdr_bh", 0),
                               st.t.interval(0.995, 49, loc=x.mean(), scale=st.sem(x)), rtol=1e-10)
    lo95, hi95 = st.t.interval(0.95, 49, loc=x.mean(), scale=st.sem(x))
    assert t99[0] < lo95 and hi95 < t99[1]


def test_resamples_without_spread_follow_the_bounded_tost_rule():
    """Forty 0/1 outcomes that never changed: "no effect within 0.1" (0.9^40 = 0.015) in every
    resample when the column is bounded by 1; with no bound identical values prove nothing."""
    zeros = np.zeros(40)
    stored = {"estimate": 0.0, "p": 1.0, "p_adj": 1.0, "p_tost": 0.9 ** 40, "p_tost_adj": 0.9 ** 40,
              "margin": 0.1}
    assert stability(zeros, stored, 0.05, bound=1.0) == 1.0
    assert stability(zeros, stored, 0.05, bound=None) == 0.0
