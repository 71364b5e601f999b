"""Statistics for experiments whose unit of analysis is the PROMPT, on scipy.stats and statsmodels.

Callers reduce each prompt to one value first (e.g. a per-prompt log ratio or difference); values of
one prompt (layers, heads, steps, members) are never pooled as independent samples. Where rows are
clustered by prompt (members, sibling pairs), CIs come from a cluster bootstrap over prompts.
Every random procedure takes an explicit seed.

Which interval each function returns:
  bootstrap_ci        BCa bootstrap CI of the mean (scipy.stats.bootstrap; percentile if BCa is
                      undefined, e.g. all values equal)
  t_ci                Student t interval of the mean (scipy.stats.ttest_1samp)
  summarize_paired    both of the above: BCa (lo, hi) and t (t_lo, t_hi)
  tost                the (1 - 2 alpha) t interval (ci_lo, ci_hi) whose inclusion in +-margin is
                      the TOST decision
  auroc_ci, auroc_diff_ci, cluster_corr, cluster_bootstrap, cv_compare
                      percentile cluster bootstrap (prompts resampled with replacement)
Tests: sign_flip_test (paired permutation, scipy.stats.permutation_test; exact enumeration of all
2^n sign vectors for n <= 12, which gives the same p as enumerating by hand), the one-sample t test
(``p_t`` in summarize_paired), tost (two one-sided t tests for equivalence within +-margin,
statsmodels), correct (Holm / Benjamini-Hochberg, statsmodels.stats.multitest). Effect size
d_z = mean(d) / sd(d) of paired differences (``cohens_d_paired`` is the older name).
Partial correlation: partial_spearman (ranks with covariate ranks regressed out).
Predictors: auroc (Mann-Whitney U / (n1 n0)), grouped_cv_splits (folds of whole prompts),
cv_compare (out-of-fold AUROC of a fitted predictor against baselines, cluster CIs).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
from scipy import stats as sps


def _rng_kw(fn, seed) -> dict:
    """The seed keyword of a scipy.stats resampling function: ``rng`` (scipy >= 1.15) or the
    older ``random_state``; both get a fresh ``numpy.random.Generator(seed)``."""
    name = "rng" if "rng" in inspect.signature(fn).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


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
                          **_rng_kw(sps.bootstrap, seed))
        lo, hi = r.confidence_interval
        if not (np.isfinite(lo) and np.isfinite(hi)):
            r = sps.bootstrap((x,), np.mean, confidence_level=ci, n_resamples=n_boot,
                              method="percentile", **_rng_kw(sps.bootstrap, seed))
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
                             **_rng_kw(sps.permutation_test, seed))
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


def tost(diffs, margin: float, alpha: float = 0.05, bound: float | None = None) -> dict:
    """Equivalence of the mean difference to 0 within ``(-margin, margin)``: two one-sided t tests
    (statsmodels ``DescrStatsW.ttost_mean``) -> ``{p, equivalent, ci_lo, ci_hi, margin, n}``.
    ``p`` is the larger one-sided p; ``equivalent`` = p < alpha, the same decision as the
    (1 - 2 alpha) t interval (ci_lo, ci_hi) lying inside the margin.

    Differences identical on every prompt have no t statistic. What they show about the mean
    depends on how large one prompt's difference could be: with ``bound`` (the largest possible
    ``|difference|`` of one prompt, in the column's units: 1 for differences of 0/1 outcomes or of
    proportions) the mean reaches the margin only if at least a share ``margin / bound`` of prompts
    differ, and p is the exact chance ``(1 - margin / bound)^n`` of seeing none of n prompts differ.
    Without a bound (logits, nats, log ratios) a rare prompt could move the mean by any amount, so
    identical values support no equivalence claim: p = 1."""
    from statsmodels.stats.weightstats import DescrStatsW

    if margin is None or not np.isfinite(margin) or margin <= 0:
        raise ValueError(f"an equivalence margin must be > 0, got {margin}")
    if bound is not None and not bound > 0:
        raise ValueError(f"a bound on |difference| must be > 0, got {bound}")
    d = _clean(diffs)
    n = len(d)
    out = {"p": float("nan"), "equivalent": False, "ci_lo": float("nan"), "ci_hi": float("nan"),
           "margin": float(margin), "n": n}
    if n < 2:
        return out
    if np.ptp(d) == 0:
        inside = bool(abs(d[0]) < margin) and bound is not None
        p = float(max(0.0, 1.0 - margin / bound) ** n) if inside else 1.0  # type: ignore[operator]
        return {**out, "p": p, "equivalent": bool(p < alpha),
                "ci_lo": float(d[0]), "ci_hi": float(d[0])}
    p, _, _ = DescrStatsW(d).ttost_mean(-margin, margin)
    lo, hi = t_ci(d, 1 - 2 * alpha)
    return {**out, "p": float(p), "equivalent": bool(p < alpha), "ci_lo": lo, "ci_hi": hi}


class Corrected(NamedTuple):
    """Adjusted p-values and reject flags of one family (NaN in, NaN / False out)."""

    p_adj: np.ndarray
    reject: np.ndarray


CORRECTIONS = ("holm", "fdr_bh")


def correct(pvalues, method: str = "holm", alpha: float = 0.05) -> Corrected:
    """Multiple-comparison correction over one family: ``holm`` (family-wise error) or ``fdr_bh``
    (Benjamini-Hochberg false discovery rate), statsmodels ``multipletests``.
    -> ``Corrected(p_adj, reject)``. NaN p-values stay NaN (reject False) and do not count in the
    family size."""
    from statsmodels.stats.multitest import multipletests

    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; allowed: {', '.join(CORRECTIONS)}")
    p = np.asarray(pvalues, np.float64)
    p_adj = np.full(p.shape, np.nan)
    reject = np.zeros(p.shape, bool)
    ok = np.isfinite(p)
    if ok.any():
        rej, adj, _, _ = multipletests(p[ok], alpha=alpha, method=method)
        p_adj[ok], reject[ok] = adj, rej
    return Corrected(p_adj, reject)


def summarize_paired(diffs, n_boot: int = 9999, ci: float = 0.95, seed: int = 0,
                     margin: float | None = None, alpha: float = 0.05, bound: float | None = None) -> dict:
    """Everything reported for one paired contrast over prompts (one difference per prompt, NaNs
    dropped): ``n``, ``mean``, ``sd``, ``d_z`` (alias ``d``), BCa bootstrap CI (``lo``, ``hi``),
    t CI (``t_lo``, ``t_hi``), two-sided sign-flip p (``p``, alias ``p_signflip``; ``exact``),
    two-sided one-sample t-test p (``p_t``); with ``margin`` also the TOST p (``p_tost``), the
    verdict ``equivalent`` (p_tost < alpha, uncorrected) and ``margin`` (``bound``: see :func:`tost`)."""
    d = _clean(diffs)
    b = bootstrap_ci(d, n_boot=n_boot, ci=ci, seed=seed)
    sf = sign_flip_test(d, n_perm=n_boot, seed=seed)
    t_lo, t_hi = t_ci(d, ci)
    p_t = float(sps.ttest_1samp(d, 0.0).pvalue) if len(d) >= 2 and np.ptp(d) > 0 else float("nan")
    if len(d) >= 2 and np.ptp(d) == 0:
        p_t = 1.0 if d[0] == 0 else 0.0
    dz = d_z(d)
    out = {**b, "sd": float(d.std(ddof=1)) if len(d) >= 2 else float("nan"), "d_z": dz, "d": dz,
           "t_lo": t_lo, "t_hi": t_hi, "p": sf["p"], "p_signflip": sf["p"], "exact": sf["exact"],
           "p_t": p_t, "ci": ci}
    if margin is not None:
        t = tost(d, margin, alpha, bound)
        out.update(p_tost=t["p"], equivalent=t["equivalent"], margin=float(margin))
    return out


# --- clustered rows: predictors and correlations ------------------------------------------------
def auroc(labels, scores) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative) (+ 1/2 for ties):
    the Mann-Whitney U of the positives over n1 * n0, with U from mid-ranks
    (``scipy.stats.rankdata``; the same U as ``scipy.stats.mannwhitneyu``, without its test
    overhead, which matters inside bootstraps). NaN if a class is missing."""
    y = np.asarray(labels, bool)
    s = np.asarray(scores, np.float64)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    u = sps.rankdata(s)[y].sum() - n1 * (n1 + 1) / 2
    return float(u / (n1 * n0))


def _cluster_resamples(fn, groups, n_boot: int, seed: int) -> np.ndarray:
    """``fn(index_array)`` on ``n_boot`` resamples of whole clusters (finite values only)."""
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be one label per row, got shape {groups.shape}")
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    vals = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, len(uniq), len(uniq))
        vals[b] = fn(np.concatenate([members[g] for g in pick]))
    return vals[np.isfinite(vals)]


def cluster_bootstrap(fn, groups, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """Percentile CI of ``fn(index_array)`` over bootstrap resamples of whole clusters (prompts):
    ``{value, lo, hi, n_groups}``; resamples where fn is NaN (e.g. one class only) are dropped."""
    groups = np.asarray(groups)
    value = float(fn(np.arange(len(groups))))
    vals = _cluster_resamples(fn, groups, n_boot, seed)
    a = (1 - ci) / 2
    lo, hi = np.quantile(vals, [a, 1 - a]) if len(vals) else (np.nan, np.nan)
    return {"value": value, "lo": float(lo), "hi": float(hi), "n_groups": int(len(np.unique(groups)))}


def auroc_ci(labels, scores, groups, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """AUROC with a percentile cluster-bootstrap CI over prompts (``groups``):
    ``{value, lo, hi, n_groups, n}``."""
    y, s = np.asarray(labels, bool), np.asarray(scores, np.float64)
    r = cluster_bootstrap(lambda i: auroc(y[i], s[i]), groups, n_boot, seed, ci)
    r["n"] = int(len(y))
    return r


def auroc_diff_ci(labels, scores_a, scores_b, groups, n_boot: int = 2000, seed: int = 0,
                  ci: float = 0.95) -> dict:
    """AUROC(a) - AUROC(b) on the same rows, percentile cluster-bootstrap CI over prompts;
    ``p`` = two-sided bootstrap p (twice the smaller share of resampled differences on either
    side of 0, at least 1 / n_boot)."""
    y = np.asarray(labels, bool)
    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    fn = lambda i: auroc(y[i], a[i]) - auroc(y[i], b[i])
    groups = np.asarray(groups)
    vals = _cluster_resamples(fn, groups, n_boot, seed)
    al = (1 - ci) / 2
    lo, hi = np.quantile(vals, [al, 1 - al]) if len(vals) else (np.nan, np.nan)
    p = (min(1.0, max(2 * min((vals <= 0).mean(), (vals >= 0).mean()), 1 / len(vals)))
         if len(vals) else float("nan"))
    return {"value": float(fn(np.arange(len(y)))), "lo": float(lo), "hi": float(hi),
            "p": float(p), "n_groups": int(len(np.unique(groups))), "n": int(len(y))}


def grouped_cv_splits(groups, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """k cross-validation folds over whole groups (prompts), like scikit-learn's GroupKFold but
    seeded: groups are shuffled by ``seed`` and dealt to folds of near-equal group count.
    -> ``[(train_idx, test_idx)]``; every row is in exactly one test fold; no group is on both
    sides of a split. Deterministic for a given (groups, k, seed)."""
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    if k < 2:
        raise ValueError(f"grouped cross-validation needs k >= 2 folds, got {k}")
    if len(uniq) < k:
        raise ValueError(f"grouped {k}-fold cross-validation needs >= {k} groups, got {len(uniq)}")
    order = np.random.default_rng(seed).permutation(uniq)
    folds = np.array_split(order, k)
    return [(np.flatnonzero(~np.isin(groups, f)), np.flatnonzero(np.isin(groups, f))) for f in folds]


grouped_kfold = grouped_cv_splits  # the older name


def fit_logistic_lbfgs(x, y, l2: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """L2-regularised logistic regression on standardised features (scipy L-BFGS, deterministic)
    -> a scorer ``f(x) -> logits``. The default ``fit`` of :func:`cv_compare`."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    x = np.asarray(x, np.float64)
    x = x[:, None] if x.ndim == 1 else x
    y = np.asarray(y, np.float64)
    mu, sd = x.mean(0), x.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    z = (x - mu) / sd
    n, e = z.shape

    def loss(wb):
        w, b = wb[:e], wb[e]
        t = z @ w + b
        nll = -(y * log_expit(t) + (1 - y) * log_expit(-t)).sum()
        g = expit(t) - y
        return (nll + 0.5 * l2 * w @ w) / n, np.append(z.T @ g + l2 * w, g.sum()) / n

    wb = minimize(loss, np.zeros(e + 1), jac=True, method="L-BFGS-B").x
    w, b = wb[:e], wb[e]
    return lambda xn: (((np.asarray(xn, np.float64).reshape(len(xn), -1)) - mu) / sd) @ w + b


def _scorer(fitted):
    return fitted if callable(fitted) else fitted.score


def cv_compare(features, labels, groups, baselines: Mapping[str, np.ndarray] | None = None,
               fit: Callable | None = None, k: int = 5, seed: int = 0, n_boot: int = 2000,
               shuffled_control: bool = True) -> dict:
    """Score a fitted predictor against baselines under grouped cross-validation (folds of whole
    prompts, :func:`grouped_cv_splits`).

    ``features`` [n] or [n, E]: the predictor's inputs; ``fit(x_train, y_train)`` returns a
    scorer ``f(x) -> scores`` (or an object with ``.score``; default :func:`fit_logistic_lbfgs`);
    its out-of-fold scores are pooled. ``baselines``: name -> scores [n] used as they are (higher
    = more likely positive, e.g. a member's probability) or features [n, E] fitted the same way.
    ``shuffled_control`` adds a predictor fitted on labels permuted within each training fold.
    -> ``{"predictor": auroc_ci, "baselines": {name: auroc_ci}, "vs": {name: auroc_diff_ci},
    "oof_scores": [n], "k", "seed"}`` (all CIs: cluster bootstrap over prompts)."""
    fit = fit or fit_logistic_lbfgs
    y = np.asarray(labels, bool)
    groups = np.asarray(groups)
    if len(np.unique(y)) < 2:
        raise ValueError("cv_compare needs both classes among the labels")
    splits = grouped_cv_splits(groups, k, seed)
    rng = np.random.default_rng(seed)

    def oof(x, shuffle=False):
        x = np.asarray(x, np.float64)
        out = np.full(len(y), np.nan)
        for tr, te in splits:
            ytr = rng.permutation(y[tr]) if shuffle else y[tr]
            if len(np.unique(ytr)) < 2:  # a fold with one class: constant score
                out[te] = ytr.mean()
                continue
            out[te] = _scorer(fit(x[tr], ytr))(x[te])
        return out

    pred = oof(features)
    base = {}
    for name, v in (baselines or {}).items():
        v = np.asarray(v, np.float64)
        base[name] = v if v.ndim == 1 else oof(v)
    if shuffled_control:
        base["shuffled labels"] = oof(features, shuffle=True)
    return {"predictor": auroc_ci(y, pred, groups, n_boot, seed),
            "baselines": {n: auroc_ci(y, v, groups, n_boot, seed) for n, v in base.items()},
            "vs": {n: auroc_diff_ci(y, pred, v, groups, n_boot, seed) for n, v in base.items()},
            "oof_scores": pred, "k": k, "seed": seed}


def cluster_corr(x, y, groups, method: str = "spearman", n_boot: int = 2000, seed: int = 0,
                 ci: float = 0.95) -> dict:
    """Correlation of paired observations clustered by prompt (scipy.stats spearmanr or pearsonr)
    with a percentile cluster-bootstrap CI over prompts: ``{value, lo, hi, n_groups, n}``.
    Pass ``groups = arange(n)`` when each observation is its own unit."""
    if method not in ("spearman", "pearson"):
        raise ValueError(f"unknown correlation {method!r}; allowed: spearman, pearson")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, groups = x[ok], y[ok], np.asarray(groups)[ok]
    f = sps.spearmanr if method == "spearman" else sps.pearsonr

    def fn(i):
        if len(np.unique(x[i])) < 2 or len(np.unique(y[i])) < 2:
            return np.nan
        return f(x[i], y[i])[0]

    r = cluster_bootstrap(fn, groups, n_boot, seed, ci)
    r["n"] = int(len(x))
    return r


def partial_spearman(x, y, z) -> float:
    """Partial Spearman rho of ``x[n]`` and ``y[n]`` given covariates ``z[n]`` or ``z[n, c]``: the
    Pearson correlation of the residuals of rank(x) and rank(y) after least-squares regression on
    an intercept and the ranks of each non-constant covariate. Equals scipy's Spearman rho when no
    covariate varies; NaN when a residual is constant (e.g. x is a function of z)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    z = np.asarray(z, np.float64).reshape(len(x), -1)
    design = np.column_stack([np.ones(len(x))] + [sps.rankdata(c) for c in z.T if np.ptp(c) > 0])
    resid = lambda v: v - design @ np.linalg.lstsq(design, v, rcond=None)[0]
    ex, ey = resid(sps.rankdata(x)), resid(sps.rankdata(y))
    den = np.sqrt((ex ** 2).sum() * (ey ** 2).sum())
    return float((ex * ey).sum() / den) if den > 1e-9 * len(x) ** 2 else float("nan")
