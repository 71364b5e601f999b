"""Clustered statistics for attention experiments (plain NumPy).

The unit of analysis is the PROMPT: callers reduce each prompt to one value first (e.g. the mean over
its steps of a per-layer difference); layer x head x position values of one prompt are never pooled
as independent samples. Every random procedure takes an explicit seed (``numpy.random.Generator``).
"""

from __future__ import annotations

import itertools

import numpy as np


def _clean(x) -> np.ndarray:
    x = np.asarray(x, np.float64).ravel()
    return x[np.isfinite(x)]


def bootstrap_ci(values, n_boot: int = 10000, ci: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap CI of the mean over per-prompt values (NaNs dropped).

    Resample the n prompts with replacement ``n_boot`` times, ``mean*_b``; the CI is the
    ``(1-ci)/2`` and ``(1+ci)/2`` quantiles of ``{mean*_b}``. Returns ``{mean, lo, hi, n}``;
    with fewer than 2 prompts ``lo``/``hi`` are NaN (a CI needs several prompts).
    """
    x = _clean(values)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "lo": float("nan"), "hi": float("nan"), "n": n}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(n_boot, n))].mean(1)
    a = (1.0 - ci) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return {"mean": mean, "lo": float(lo), "hi": float(hi), "n": n}


def sign_flip_test(diffs, n_perm: int = 10000, seed: int = 0, exact_max: int = 12) -> dict:
    """Paired permutation (sign-flip) test over prompts for H0: per-prompt differences are
    symmetric around 0. Statistic ``T = |mean(d)|``; ``p = P(|mean(eps * d)| >= T)`` over random signs
    ``eps``. Exact enumeration of all 2^n sign vectors when ``n <= exact_max``, otherwise Monte Carlo
    with ``p = (1 + #{T_b >= T}) / (1 + n_perm)``. Returns ``{p, stat, n, exact}``; n < 2 -> p NaN.
    """
    d = _clean(diffs)
    n = len(d)
    if n < 2:
        return {"p": float("nan"), "stat": float(d.mean()) if n else float("nan"), "n": n, "exact": False}
    t = abs(d.mean())
    tol = 1e-12 * max(1.0, np.abs(d).max())
    if n <= exact_max:
        signs = np.array(list(itertools.product((-1.0, 1.0), repeat=n)))
        tb = np.abs(signs @ d / n)
        return {"p": float(np.mean(tb >= t - tol)), "stat": float(d.mean()), "n": n, "exact": True}
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(n_perm, n))
    tb = np.abs(signs @ d / n)
    return {"p": float((1 + np.sum(tb >= t - tol)) / (1 + n_perm)), "stat": float(d.mean()), "n": n,
            "exact": False}


def paired_permutation_test(a, b, **kw) -> dict:
    """Sign-flip test of per-prompt pairs ``(a_i, b_i)`` on ``d_i = a_i - b_i`` (pairs with NaN dropped)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return sign_flip_test(a - b, **kw)


def cohens_d_paired(diffs) -> float:
    """Paired Cohen's d: ``mean(d) / sd(d)`` (sd with ddof=1); NaN for n < 2 or sd = 0."""
    d = _clean(diffs)
    if len(d) < 2:
        return float("nan")
    sd = d.std(ddof=1)
    return float(d.mean() / sd) if sd > 0 else float("nan")


def summarize_paired(diffs, n_boot: int = 10000, ci: float = 0.95, seed: int = 0) -> dict:
    """Bootstrap CI, sign-flip p and paired d of per-prompt differences, in one dict."""
    b = bootstrap_ci(diffs, n_boot=n_boot, ci=ci, seed=seed)
    p = sign_flip_test(diffs, n_perm=n_boot, seed=seed)
    return {**b, "p": p["p"], "exact": p["exact"], "d": cohens_d_paired(diffs), "ci": ci}
