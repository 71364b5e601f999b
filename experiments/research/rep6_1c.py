"""Replication of finding 6.1 ("long-range heads, local heads, balanced heads"), confirmatory: do the
CLASSES exist, or is head locality a continuum? The exploratory rep6.1 split heads into forced
tertiles and measured how stable a continuous locality index is (split-half kappa 0.84): reliability,
not categories. Here, on the confirm split and both model families, the primary test asks whether
the heads' locality is multimodal, as classes would make it.

Per prompt (the unit): the locality of every (layer, head) over context slots (rep6.1's sound
measure: :mod:`experiments.research.rep_original`, correct mechanics, mean over steps), and its
bimodality coefficient over heads, BC = (g^2 + 1) / (k + 3 (n - 1)^2 / ((n - 2)(n - 3))) with the
bias-corrected sample skewness g and excess kurtosis k (Pfister et al. 2013). BC is 5/9 for a uniform
distribution; above 5/9 suggests two or more modes (primary ``bc_minus_uniform`` = BC - 5/9, > 0).
BC also rises with skew alone, so a skewed continuum can pass it: a descriptive per-model view (the
head means' Gaussian mixtures with 1-4 components, BIC) is in the notes. Secondary: rep6.1's
held-out gap between tertile classes (reliability of the index) and the split-half kappa.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats as sps

from experiments.research import rep6_1 as X
from experiments.research import rep_original as R
from experiments.research.confirm import confirmatory
from tempo_jax.research import Hypothesis, Output

UNIFORM_BC = 5 / 9

_base = confirmatory(
    X.DESIGN, id="rep6.1c", primary="G", n_per_genre=17,
    title="Confirmatory replication of finding 6.1: are there classes of long-range, balanced and local heads?")
DESIGN = dataclasses.replace(
    _base,
    hypotheses=(Hypothesis("B", "heads' locality is multimodal on a prompt (bimodality coefficient above "
                                "the uniform distribution's 5/9), as distinct classes would make it",
                           "bc_minus_uniform", ">0", family="primary", margin=0.05, sesoi=0.05),)
    + tuple(dataclasses.replace(h, family="secondary") for h in _base.hypotheses),
    primary_metric="bimodality coefficient of the (layer, head) locality index over heads, per prompt, "
                   "minus 5/9 (the uniform distribution's)",
    contrast="the heads' locality distribution against a uniform (flat, unimodal-boundary) one; "
             "secondary: local-class vs long-range-class heads, classes from independent prompts",
    metrics=("bc_minus_uniform", "bc", "gap"),
    margin_note="0.05 of the bimodality coefficient; 0.02 in locality for the held-out gap",
    caveats=_base.caveats + (
        "The bimodality coefficient rises with skewness as well as with modes: a skewed unimodal "
        "continuum can exceed 5/9, so B is necessary for classes, not sufficient; the notes give the "
        "number of Gaussian mixture components BIC prefers for the head means.",
        "Heads whose locality is undefined on a prompt (no recent or no distant context slot) drop out "
        "of that prompt's coefficient."),
)


def bimodality_coefficient(x) -> float:
    """Sample bimodality coefficient of the finite values of ``x`` (NaN below 4 values)."""
    v = np.asarray(x, np.float64).ravel()
    v = v[np.isfinite(v)]
    n = len(v)
    if n < 4 or np.ptp(v) == 0:
        return float("nan")
    g = sps.skew(v, bias=False)
    k = sps.kurtosis(v, fisher=True, bias=False)
    return float((g ** 2 + 1) / (k + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def gmm_bic(x, k: int, seed: int = 0, iters: int = 300) -> float:
    """BIC of a 1-D Gaussian mixture with ``k`` components fitted by EM (quantile starts)."""
    v = np.asarray(x, np.float64)
    v = v[np.isfinite(v)]
    n = len(v)
    mu = np.quantile(v, (np.arange(k) + 0.5) / k)
    sd = np.full(k, v.std() / k + 1e-6)
    w = np.full(k, 1 / k)
    for _ in range(iters):
        dens = w * sps.norm.pdf(v[:, None], mu, sd) + 1e-300
        resp = dens / dens.sum(1, keepdims=True)
        nk = resp.sum(0) + 1e-12
        w, mu = nk / n, (resp * v[:, None]).sum(0) / nk
        sd = np.sqrt((resp * (v[:, None] - mu) ** 2).sum(0) / nk) + 1e-4
    ll = float(np.log((w * sps.norm.pdf(v[:, None], mu, sd)).sum(1) + 1e-300).sum())
    return -2 * ll + (3 * k - 1) * np.log(n)


def run(ctx) -> Output:
    out = X.run(ctx, light=True)
    locs = {p.id: r["loc"] for p, r in R.corpus_measures(ctx, light=True)}
    rows = []
    for r in out.rows:
        bc = bimodality_coefficient(locs[r["prompt_id"]])
        rows.append(r | {"bc": bc, "bc_minus_uniform": bc - UNIFORM_BC})
    mean_loc = np.nanmean(np.stack([v.ravel() for v in locs.values()]), 0)
    bics = {k: gmm_bic(mean_loc, k, ctx.seed) for k in (1, 2, 3, 4)}
    best = min(bics, key=bics.get)
    notes = out.notes + [f"Head means over the prompts ({np.isfinite(mean_loc).sum()} heads): bimodality "
                         f"coefficient {bimodality_coefficient(mean_loc):.3f} (uniform 0.556); Gaussian "
                         f"mixture BIC " + ", ".join(f"k={k}: {b:.1f}" for k, b in bics.items())
                         + f" (descriptive): {best} component(s) preferred."]
    return Output(rows=rows, tests=out.tests, tables=out.tables, notes=notes)


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    b = by["bc_minus_uniform"]
    return (f"On a prompt, the heads' locality has a bimodality coefficient {b.estimate:+.3f} "
            f"[{b.lo:+.3f}, {b.hi:+.3f}] above the uniform distribution's 5/9 ({b.verdict}). "
            + X.answer(tests, design))


def replication(result: dict, folder) -> dict:
    by = {t["column"]: t for t in result["tests"]}
    row = X.replication(result, folder)
    b = by["bc_minus_uniform"]
    row["sound"] = (f"bimodality coefficient - 5/9 {b['estimate']:+.3f} [{b['lo']:+.3f}, {b['hi']:+.3f}] "
                    f"({b['verdict']}); " + row["sound"])
    sound = ("holds" if b["verdict"].startswith("differs (+)") else
             "does not hold" if b["verdict"].startswith(("differs (-)", "no effect")) else "cannot tell")
    row["verdict"] = (R.verdict_line(None, None, sound) + " (classes: multimodality; the held-out gap "
                      "and kappa measure the index's reliability)")
    return row
