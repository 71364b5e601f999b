"""Statistics for experiments whose unit of analysis is the PROMPT, on scipy.stats and statsmodels.

Callers reduce each prompt to one value first (e.g. a per-prompt log ratio or difference); values of
one prompt (layers, heads, steps, members) are never pooled as independent samples. Where rows are
clustered by prompt (members, sibling pairs), CIs come from a cluster bootstrap over prompts.
Every random procedure takes an explicit seed.

Which interval each function returns:
  bootstrap_ci        BCa bootstrap CI of the mean (scipy.stats.bootstrap; percentile if BCa is
                      undefined, e.g. all values equal)
  t_ci                Student t interval of the mean (scipy.stats.ttest_1samp)
  auroc_ci, cluster_corr, cluster_bootstrap
                      percentile cluster bootstrap (prompts resampled with replacement)
Tests: sign_flip_test (paired permutation, scipy.stats.permutation_test; exact for n <= 12),
tost (two one-sided t tests for equivalence within +-margin, statsmodels), correct (Holm /
Benjamini-Hochberg, statsmodels.stats.multitest). Effect size d_z = mean(d) / sd(d) of paired
differences.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats as sps


def _clean(x) -> np.ndarray:
    x = np.asarray(x, np.float64).ravel()
    return x[np.isfinite(x)]


def bootstrap_ci(values, n_boot: int = 9999, ci: float = 0.95, seed: int = 0) -> dict:
    """BCa bootstrap CI of the mean over per-prompt values (NaNs dropped) -> ``{mean, lo, hi, n}``.
    Fewer than 2 values: lo/hi NaN. Constant values: lo = hi = the value."""
    x = _clean(values)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "lo": float("nan"), "hi": float("nan"), "n": n}
    if np.ptp(x) == 0:
        return {"mean": mean, "lo": mean, "hi": mean, "n": n}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = sps.bootstrap((x,), np.mean, confidence_level=ci, n_resamples=n_boot, method="BCa",
                          random_state=np.random.default_rng(seed))
        lo, hi = r.confidence_interval
        if not (np.isfinite(lo) and np.isfinite(hi)):
            r = sps.bootstrap((x,), np.mean, confidence_level=ci, n_resamples=n_boot,
                              method="percentile", random_state=np.random.default_rng(seed))
            lo, hi = r.confidence_interval
    return {"mean": mean, "lo": float(lo), "hi": float(hi), "n": n}


def t_ci(values, ci: float = 0.95) -> tuple[float, float]:
    """Student t interval of the mean (NaN, NaN for fewer than 2 values)."""
    x = _clean(values)
    if len(x) < 2:
        return float("nan"), float("nan")
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0])
    lo, hi = sps.ttest_1samp(x, 0.0).confidence_interval(ci)
    return float(lo), float(hi)


def sign_flip_test(diffs, n_perm: int = 9999, seed: int = 0, exact_max: int = 12) -> dict:
    """Paired permutation (sign-flip) test of H0: per-prompt differences symmetric around 0,
    statistic mean(d), two-sided -> ``{p, stat, n, exact}``. Exact over all 2^n sign vectors when
    n <= exact_max, else ``n_perm`` random flips (p = (1 + #extreme) / (1 + n_perm))."""
    d = _clean(diffs)
    n = len(d)
    if n < 2:
        return {"p": float("nan"), "stat": float(d.mean()) if n else float("nan"), "n": n,
                "exact": False}
    exact = n <= exact_max
    if np.all(d == 0):
        return {"p": 1.0, "stat": 0.0, "n": n, "exact": exact}
    r = sps.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                             n_resamples=np.inf if exact else n_perm, alternative="two-sided",
                             random_state=np.random.default_rng(seed))
    return {"p": float(min(1.0, r.pvalue)), "stat": float(d.mean()), "n": n, "exact": exact}


def paired_permutation_test(a, b, **kw) -> dict:
    """Sign-flip test of per-prompt pairs ``(a_i, b_i)`` on ``d_i = a_i - b_i`` (NaN pairs dropped)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return sign_flip_test(a - b, **kw)


def d_z(diffs) -> float:
    """Effect size of paired differences: ``mean(d) / sd(d)`` (ddof 1); NaN for n < 2 or sd = 0."""
    d = _clean(diffs)
    if len(d) < 2:
        return float("nan")
    sd = d.std(ddof=1)
    return float(d.mean() / sd) if sd > 0 else float("nan")


cohens_d_paired = d_z  # the older name


def tost(diffs, margin: float) -> dict:
    """Equivalence of the mean difference to 0 within ``(-margin, margin)``: two one-sided t tests
    (statsmodels ``DescrStatsW.ttost_mean``). ``p`` is the larger one-sided p; ``equivalent`` at
    the caller's alpha means p < alpha."""
    from statsmodels.stats.weightstats import DescrStatsW

    d = _clean(diffs)
    if margin is None or margin <= 0:
        raise ValueError(f"an equivalence margin must be > 0, got {margin}")
    if len(d) < 2:
        return {"p": float("nan"), "margin": float(margin), "n": len(d)}
    if np.ptp(d) == 0:
        return {"p": 0.0 if abs(d[0]) < margin else 1.0, "margin": float(margin), "n": len(d)}
    p, _, _ = DescrStatsW(d).ttost_mean(-margin, margin)
    return {"p": float(p), "margin": float(margin), "n": len(d)}


def correct(pvalues, method: str = "holm") -> np.ndarray:
    """Adjusted p-values for a family (``holm`` or ``fdr_bh``, statsmodels ``multipletests``);
    NaN entries stay NaN and do not count in the family size."""
    from statsmodels.stats.multitest import multipletests

    if method not in ("holm", "fdr_bh"):
        raise ValueError(f"unknown correction {method!r}; allowed: holm, fdr_bh")
    p = np.asarray(pvalues, np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method=method)[1]
    return out


def summarize_paired(diffs, n_boot: int = 9999, ci: float = 0.95, seed: int = 0,
                     margin: float | None = None) -> dict:
    """Everything reported for one paired contrast over prompts:
    mean, sd, d_z (alias d), BCa CI (lo, hi), t CI (t_lo, t_hi), sign-flip p (``p``, ``exact``),
    t-test p (``p_t``), and with ``margin`` the TOST p (``p_tost``) for equivalence."""
    d = _clean(diffs)
    b = bootstrap_ci(d, n_boot=n_boot, ci=ci, seed=seed)
    sf = sign_flip_test(d, n_perm=n_boot, seed=seed)
    t_lo, t_hi = t_ci(d, ci)
    p_t = float(sps.ttest_1samp(d, 0.0).pvalue) if len(d) >= 2 and np.ptp(d) > 0 else float("nan")
    out = {**b, "sd": float(d.std(ddof=1)) if len(d) >= 2 else float("nan"), "d_z": d_z(d),
           "d": d_z(d), "t_lo": t_lo, "t_hi": t_hi, "p": sf["p"], "exact": sf["exact"], "p_t": p_t,
           "ci": ci}
    if margin is not None:
        out["p_tost"] = tost(d, margin)["p"]
        out["margin"] = float(margin)
    return out


# --- clustered rows: predictors and correlations ------------------------------------------------
def auroc(labels, scores) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative) (+ 1/2 for ties),
    from the Mann-Whitney U statistic. NaN if a class is missing."""
    y = np.asarray(labels, bool)
    s = np.asarray(scores, np.float64)
    n1, n0 = y.sum(), (~y).sum()
    if n1 == 0 or n0 == 0:
        return float("nan")
    u = sps.mannwhitneyu(s[y], s[~y], alternative="two-sided").statistic
    return float(u / (n1 * n0))


def cluster_bootstrap(fn, groups, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """Percentile CI of ``fn(index_array)`` over bootstrap resamples of whole clusters (prompts):
    ``{value, lo, hi, n_groups}``; resamples where fn is NaN are dropped."""
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in uniq}
    value = float(fn(np.arange(len(groups))))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        pick = rng.choice(uniq, size=len(uniq), replace=True)
        vals.append(fn(np.concatenate([members[g] for g in pick])))
    vals = np.asarray(vals, np.float64)
    vals = vals[np.isfinite(vals)]
    a = (1 - ci) / 2
    lo, hi = (np.quantile(vals, [a, 1 - a]) if len(vals) else (np.nan, np.nan))
    return {"value": value, "lo": float(lo), "hi": float(hi), "n_groups": int(len(uniq))}


def auroc_ci(labels, scores, groups, n_boot: int = 2000, seed: int = 0) -> dict:
    """AUROC with a cluster-bootstrap CI over prompts (``groups``)."""
    y, s = np.asarray(labels, bool), np.asarray(scores, np.float64)
    return cluster_bootstrap(lambda i: auroc(y[i], s[i]), groups, n_boot, seed)


def auroc_diff_ci(labels, scores_a, scores_b, groups, n_boot: int = 2000, seed: int = 0) -> dict:
    """AUROC(a) - AUROC(b) on the same rows, cluster-bootstrap CI; ``p`` = two-sided bootstrap p
    (twice the smaller share of resampled differences on either side of 0)."""
    y = np.asarray(labels, bool)
    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    fn = lambda i: auroc(y[i], a[i]) - auroc(y[i], b[i])
    groups = np.asarray(groups)
    r = cluster_bootstrap(fn, groups, n_boot, seed)
    # reuse the same resampling for a p-value
    uniq = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in uniq}
    rng = np.random.default_rng(seed)
    vals = np.asarray([fn(np.concatenate([members[g] for g in rng.choice(uniq, len(uniq))]))
                       for _ in range(n_boot)])
    vals = vals[np.isfinite(vals)]
    r["p"] = float(min(1.0, 2 * min((vals <= 0).mean(), (vals >= 0).mean()))) if len(vals) else float("nan")
    return r


def grouped_kfold(groups, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """k folds over whole groups (prompts): ``[(train_idx, test_idx)]``; groups shuffled by seed."""
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    if len(uniq) < k:
        raise ValueError(f"grouped {k}-fold cross-validation needs >= {k} groups, got {len(uniq)}")
    order = np.random.default_rng(seed).permutation(uniq)
    folds = np.array_split(order, k)
    return [(np.flatnonzero(~np.isin(groups, f)), np.flatnonzero(np.isin(groups, f))) for f in folds]


def cluster_corr(x, y, groups, method: str = "spearman", n_boot: int = 2000, seed: int = 0) -> dict:
    """Correlation of paired observations clustered by prompt, with a cluster-bootstrap CI:
    ``{value, lo, hi, n_groups, n}`` (spearman or pearson, scipy.stats)."""
    if method not in ("spearman", "pearson"):
        raise ValueError(f"unknown correlation {method!r}; allowed: spearman, pearson")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    f = sps.spearmanr if method == "spearman" else sps.pearsonr

    def fn(i):
        if len(np.unique(x[i])) < 2 or len(np.unique(y[i])) < 2:
            return np.nan
        return f(x[i], y[i])[0]

    r = cluster_bootstrap(fn, groups, n_boot, seed)
    r["n"] = int(len(x))
    return r
