"""Power before running (tempo_jax.research.power), checked against textbook values and against
simulated designs with known answers: at the n the functions give, the difference test and the
TOST reject in about 80% of simulated studies, and one prompt fewer than needed falls short; the
sign-flip p floor is what the harness's test returns on the most extreme data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from tempo_jax import stats as S
from tempo_jax.research import power as P

SIMS = 4000


def _sim_t_power(n, mean, sd, alpha, rng) -> float:
    d = rng.normal(mean, sd, (SIMS, n))
    t = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(n))
    return float((2 * st.t.sf(np.abs(t), n - 1) < alpha).mean())


def _sim_tost_power(n, mean, sd, margin, alpha, rng) -> float:
    d = rng.normal(mean, sd, (SIMS, n))
    se = d.std(1, ddof=1) / np.sqrt(n)
    p_low = st.t.sf((d.mean(1) + margin) / se, n - 1)
    p_high = st.t.cdf((d.mean(1) - margin) / se, n - 1)
    return float((np.maximum(p_low, p_high) < alpha).mean())


def test_difference_n_matches_the_textbook_and_simulation():
    # one-sample t, d = 0.5, alpha 0.05 two-sided, 80%: 34 (Cohen's tables: 33.4 rounded up)
    assert P.n_for_difference(sd=2.0, effect=1.0, alpha=0.05) == 34
    rng = np.random.default_rng(0)
    n = P.n_for_difference(sd=1.3, effect=0.4, alpha=0.01)  # a Holm family of 5 at 0.05
    assert abs(_sim_t_power(n, 0.4, 1.3, 0.01, rng) - 0.8) < 0.03
    assert _sim_t_power(max(n - 8, 2), 0.4, 1.3, 0.01, rng) < 0.78


def test_tost_n_reaches_its_power_in_simulation():
    rng = np.random.default_rng(1)
    n = P.n_for_tost(sd=1.0, margin=0.4, alpha=0.05)
    assert P.tost_power(n, 1.0, 0.4, 0.05) >= 0.8 > P.tost_power(n - 1, 1.0, 0.4, 0.05)
    assert abs(_sim_tost_power(n, 0.0, 1.0, 0.4, 0.05, rng) - 0.8) < 0.04
    # a true effect inside the margin needs more prompts; one at the margin can never be shown equivalent
    assert P.n_for_tost(1.0, 0.4, 0.05, true_effect=0.1) > n
    assert P.n_for_tost(1.0, 0.4, 0.05, true_effect=0.4) > P.N_MAX


def test_the_referees_figures():
    """rq2.1's ``lppl_visible``: SD about 1.2 (log), TOST within log 1.1 at alpha 0.05 needs about
    1,460 prompts (the review's estimate); rq8.2's exact sign-flip test at n = 5 cannot go below
    p = 0.0625."""
    n = P.n_for_tost(sd=1.2, margin=np.log(1.1), alpha=0.05)
    assert 1300 < n < 1600
    assert P.p_floor(5) == 0.0625
    assert S.sign_flip_test(np.ones(5))["p"] == pytest.approx(P.p_floor(5))
    assert S.sign_flip_test(np.ones(12))["p"] == pytest.approx(P.p_floor(12))
    assert P.p_floor(40) == pytest.approx(2 / 5000)  # random sign vectors: FINDINGS once said 2e-4
    assert S.sign_flip_test(np.ones(40), n_perm=4999)["p"] == pytest.approx(P.p_floor(40))


def test_family_alpha_and_bad_inputs():
    assert P.family_alpha(0.05, 10) == pytest.approx(0.005)
    assert P.n_for_difference(sd=0.0, effect=0.1, alpha=0.05) == 2
    with pytest.raises(ValueError, match="nonzero"):
        P.n_for_difference(1.0, 0.0, 0.05)
    with pytest.raises(ValueError, match="margin"):
        P.n_for_tost(1.0, 0.0, 0.05)


def test_power_where_the_library_root_finder_and_nct_fail():
    """A very precise column in a large family (sd 0.05, effect log 1.1, alpha 0.05/30): statsmodels'
    solve_power does not converge there and its power is NaN at some n; the search here gives the
    smallest n whose simulated power reaches 80%. At 2 values and a huge effect (scipy's nct returns
    NaN) the quadrature matches a simulation."""
    rng = np.random.default_rng(1)
    n = P.n_for_difference(sd=0.05, effect=0.0953, alpha=0.05 / 30)
    assert n == 10
    assert _sim_t_power(n, 0.0953, 0.05, 0.05 / 30, rng) > 0.85 and _sim_t_power(n - 1, 0.0953, 0.05, 0.05 / 30, rng) < 0.82
    assert abs(P.t_power(95.3, 2, 0.0017) - _sim_t_power(2, 95.3, 1.0, 0.0017, rng)) < 0.03
