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
    r = S.summarize_paired(d, n_boot=4999, seed=seed, margin=margin)
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
