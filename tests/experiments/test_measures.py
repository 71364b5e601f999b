"""experiments/research/measures.py against scipy and hand cases."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from scipy.special import log_softmax
from scipy.stats import entropy, spearmanr

from experiments.research.measures import kl, kl_traced, spearman, sym_kl


def test_divergences_match_scipy():
    rng = np.random.default_rng(0)
    lp, lq = log_softmax(rng.normal(size=(3, 11)), -1), log_softmax(rng.normal(size=(3, 11)), -1)
    want = [entropy(np.exp(a), np.exp(b)) for a, b in zip(lp, lq)]
    np.testing.assert_allclose(kl(lp, lq), want, rtol=1e-12)
    np.testing.assert_allclose(sym_kl(lp, lq), kl(lp, lq) + kl(lq, lp), rtol=1e-12)
    np.testing.assert_allclose(kl_traced(jnp.asarray(lp, jnp.float32), jnp.asarray(lq, jnp.float32)), want,
                               rtol=1e-5)
    assert np.all(kl(lp, lp) == 0)


def test_spearman_uses_finite_pairs_and_refuses_degenerate_ones():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    y = np.array([2.0, 1.0, 3.0, np.inf, 5.0, 7.0])
    ok = np.isfinite(x) & np.isfinite(y)
    assert spearman(x, y) == spearmanr(x[ok], y[ok]).statistic
    assert np.isnan(spearman([1, 2], [3, 4]))  # fewer than 3 pairs
    assert np.isnan(spearman([1, 2, 3], [5, 5, 5]))  # constant side
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
