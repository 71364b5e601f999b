"""Measures the experiments share: divergences between next-token distributions and rank
correlation. (Mean + BCa CI cells and per-genre tables are in ``tables.py``, the words of an answer
in ``wording.py``.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def kl(lp, lq) -> np.ndarray:
    """KL(p || q) in nats over the last axis, from log-probabilities, in float64."""
    lp, lq = np.asarray(lp, np.float64), np.asarray(lq, np.float64)
    return np.sum(np.exp(lp) * (lp - lq), -1)


def sym_kl(lp, lq) -> np.ndarray:
    """Symmetric KL, KL(p || q) + KL(q || p), in nats over the last axis, from log-probs, in float64."""
    lp, lq = np.asarray(lp, np.float64), np.asarray(lq, np.float64)
    return np.sum((np.exp(lp) - np.exp(lq)) * (lp - lq), -1)


def kl_traced(lp: jax.Array, lq: jax.Array) -> jax.Array:
    """:func:`kl` inside a traced (jit / grad) program, in the inputs' dtype."""
    return jnp.sum(jnp.exp(lp) * (lp - lq), -1)


def spearman(x, y) -> float:
    """Spearman's rho over the pairs where both values are finite; NaN with fewer than 3 such pairs
    or when either side is constant on them."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok]).statistic)
