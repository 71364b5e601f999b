"""The declared tests computed from an experiment's per-prompt rows, corrected within each family,
and worded as verdicts (see :mod:`tempo_jax.research`)."""

from __future__ import annotations

import fnmatch

import numpy as np

from tempo_jax import stats as S
from tempo_jax.research.design import Design, Hypothesis, Output, TestResult


def paired_test(h: Hypothesis, column: str, values, margin: float, seed: int) -> TestResult:
    d = np.asarray(values, np.float64)
    d = d[np.isfinite(d)]
    r = S.summarize_paired(d, n_boot=4999, seed=seed, margin=margin, bound=h.bound)
    return TestResult(hypothesis=h.name, column=column, family=h.family, expect=h.expect, n=r["n"],
                      estimate=r["mean"], lo=r["lo"], hi=r["hi"], p=r["p"], p_tost=r["p_tost"],
                      d_z=r["d_z"], margin=margin)


def verdict(t: TestResult, alpha: float) -> str:
    m = f"+-{t.margin:.3g}"
    if t.p_adj < alpha:
        sign = "+" if t.estimate > 0 else "-"
        inside = np.isfinite(t.lo) and -t.margin < t.lo and t.hi < t.margin
        return f"differs ({sign}), within {m}" if inside else f"differs ({sign})"
    if t.p_tost_adj < alpha:
        return f"no effect within {m}"
    return "cannot tell at this n"


def evaluate(design: Design, out: Output) -> list[TestResult]:
    """All declared tests from the rows, plus the precomputed ones; corrected per family."""
    cols = sorted({k for r in out.rows for k in r})
    tests = []
    for h in design.hypotheses:
        matched = [c for c in cols if fnmatch.fnmatchcase(c, h.column)]
        if not matched:  # no prompt produced this statistic: reported, not dropped
            nan = float("nan")
            tests.append(TestResult(h.name, h.column, h.family, h.expect, 0, nan, nan, nan, nan, nan,
                                    margin=design.margin if h.margin is None else h.margin,
                                    note="no prompt produced this statistic"))
            continue
        for c in matched:
            vals = [r.get(c, np.nan) for r in out.rows]
            margin = design.margin if h.margin is None else h.margin
            tests.append(paired_test(h, c, vals, margin, design.seed))
    for t in out.tests:
        if t.family not in design.families:
            raise ValueError(f"{design.id}: precomputed test {t.hypothesis} in undeclared family {t.family}")
        tests.append(t)
    for fam, method in design.families.items():
        idx = [i for i, t in enumerate(tests) if t.family == fam]
        if not idx:
            continue
        p = S.correct([tests[i].p for i in idx], method).p_adj
        pt = S.correct([tests[i].p_tost for i in idx], method).p_adj
        for j, i in enumerate(idx):
            tests[i].p_adj, tests[i].p_tost_adj = float(p[j]), float(pt[j])
    for t in tests:
        t.verdict = verdict(t, design.alpha)
    return tests


def category(estimate: float, p_adj: float, p_tost_adj: float, alpha: float) -> str:
    """The verdict's kind: "differs +", "differs -", "no effect" or "cannot tell" (as :func:`verdict`)."""
    if p_adj < alpha:
        return "differs +" if estimate > 0 else "differs -"
    if p_tost_adj < alpha:
        return "no effect"
    return "cannot tell"


def stability(values, t: dict, alpha: float, n_resamples: int = 1000, seed: int = 0,
              bound: float | None = None) -> float:
    """Share of prompt-bootstrap resamples (prompts drawn with replacement, same n) in which the test
    ``t`` (a stored test: estimate, p, p_adj, p_tost, p_tost_adj, margin) keeps its kind of verdict.
    Each resample is tested with the paired t test and TOST (fast stand-ins for the sign-flip test)
    and its p multiplied by the family correction the test received (p_adj / p), so the resamples
    face the same bar; a resample without spread gets :func:`stats.tost`'s rule (``bound``). NaN
    when the test has fewer than 3 finite values. Below 0.8: fragile."""
    d = np.asarray(values, np.float64)
    d = d[np.isfinite(d)]
    n = len(d)
    if n < 3 or not np.isfinite(t.get("p_adj", np.nan)):
        return float("nan")
    from scipy import stats as st

    want = category(t["estimate"], t["p_adj"], t["p_tost_adj"], alpha)
    ratio = lambda adj, raw: adj / raw if raw and np.isfinite(raw) and raw > 0 else 1.0
    k, k_tost = ratio(t["p_adj"], t["p"]), ratio(t["p_tost_adj"], t["p_tost"])
    rng = np.random.default_rng(seed)
    r = d[rng.integers(0, n, (n_resamples, n))]
    mean, sd = r.mean(1), r.std(1, ddof=1)
    se = np.where(sd > 0, sd / np.sqrt(n), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(sd > 0, 2 * st.t.sf(np.abs(mean / se), n - 1), np.where(mean != 0, 0.0, 1.0))
        m = t["margin"]
        p_tost = np.where(sd > 0, np.maximum(st.t.sf((mean + m) / se, n - 1), st.t.cdf((mean - m) / se, n - 1)),
                          np.where((np.abs(mean) < m) & (bound is not None),
                                   max(0.0, 1.0 - m / (bound or 1.0)) ** n, 1.0))
    p_adj, p_tost_adj = np.minimum(1.0, p * k), np.minimum(1.0, p_tost * k_tost)
    kinds = np.where(p_adj < alpha, np.where(mean > 0, "differs +", "differs -"),
                     np.where(p_tost_adj < alpha, "no effect", "cannot tell"))
    return float((kinds == want).mean())


def simultaneous_ci(values, k: int, method: str, rejected: int, alpha: float = 0.05) -> tuple[float, float]:
    """A t interval of the mean of ``values`` at the level a family of ``k`` tests corrected by
    ``method`` implies: Holm -> Bonferroni (1 - alpha / k); "fdr_bh" -> the Benjamini-Yekutieli
    false-coverage-rate level 1 - R alpha / k (``rejected`` = R, at least 1). NaNs for < 2 values."""
    from tempo_jax import stats as S

    level = alpha * (max(int(rejected), 1) if method == "fdr_bh" else 1) / max(int(k), 1)
    return S.t_ci(values, 1 - level)
