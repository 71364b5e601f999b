"""RQ 3.1: what predicts whether a member survives retroactive pruning? Do its own residual streams
(at the time it is written) carry that information beyond what selection already knows (its
probability, rank and set size)? How early can survival be predicted (first look-ahead step only)?

Data: :mod:`experiments.research.pruning_data` (TEMPO with pruning and summary capture). Every
judged member is one row; rows are clustered by prompt, so every predictor is fitted and scored in
prompt-grouped 5-fold cross-validation (out-of-fold scores), and every CI is a cluster bootstrap
over prompts. Predictors (logistic, optax): ``selection`` = [prob, rank, set size, prob relative to
the set]; ``early`` = attention received from the first look-ahead step alone; ``resid_L<l>`` = the
member's residual stream after layer l. Contrast: out-of-fold AUROC of a predictor minus that of the
selection baseline (margin 0.05 AUROC for "no better").

Survival curve and attention threshold: survival rate in ten quantile bins of the received attention
(first look-ahead step; whole window = the engine's score), each with a prompt-cluster bootstrap CI;
the attention level at which a logistic fit P(survive) = sigmoid(a + b log10 x) crosses 0.5,
x50 = 10^(-a/b), with a prompt-cluster bootstrap CI. Early prediction: the first look-ahead step's
attention alone, relative to its set's mean, and together with the selection features.
"""

from __future__ import annotations

import re

import numpy as np

from tempo_jax.research import Design, Hypothesis, Output, TestResult
from experiments.research.pruning_data import judged_members
from tempo_jax import stats as S
from tempo_jax.engine import GenerationConfig
from tempo_jax.probes import fit_logistic

LAYERS = (0, 10, 20, 29)
MARGIN = 0.05
GEN = dict(max_steps=24, min_steps=24, threshold=0.05, max_width=8, prune=True, prune_window=2,
           prune_rule="relative", prune_rho=0.8, siblings="isolated")
N_BOOT = 1000

DESIGN = Design(
    id="rq3.1",
    questions=("3.1",),
    title="Predicting pruning survival: selection features, first look-ahead attention, residual streams",
    primary_metric="out-of-fold AUROC for survival (prompt-grouped 5-fold CV), difference to the "
                   "selection baseline",
    contrast="each predictor vs the selection baseline [prob, rank, set size, relative prob], same rows",
    hypotheses=(
        Hypothesis("A", "within a prompt, survivors received more attention from the first "
                        "look-ahead step than pruned members (per-prompt mean difference)",
                   "early_gap", ">0", family="within_prompt", margin=0.005),
    ),
    # precomputed (cluster bootstrap over prompts): primary S, E, R (AUROC differences); family
    # "early": E2 = AUROC(early + selection) - AUROC(early), E3 = AUROC(early relative to its set's
    # mean, no fitting) - AUROC(early); family "threshold": slope b of the logistic survival curve
    # on log10 attention (first step; whole window), expected > 0, with x50 in the table.
    margin=MARGIN,
    margin_note="0.05 AUROC; for the within-prompt attention gap 0.005 attention",
    metrics=("early_gap", "n_judged", "survival_rate"),
    families={"primary": "holm", "within_prompt": "holm", "early": "holm", "threshold": "holm"},
    genres=("prose", "code", "facts"),
    n_per_genre=30,
    quick_n=2,
    caveats=(
        "The pruning rule is relative with rho = 0.8 (chosen on three smoke prompts, not on test, "
        "because the engine default 0.5 pruned almost nothing on this model: 97-100% survival).",
        "Survival is decided by attention from the look-ahead window; 'early' uses the first of its "
        "two steps, so it shares half its data with the label's mechanism by design.",
        "Rows are members, clustered by prompt; n in the table is the number of prompts.",
        "The whole-window score decides pruning together with the set's other members (relative "
        "rule), so its x50 is a population summary, not the rule's cut-off; the rule's own cut-off "
        "(0.8 of the set mean) is checked in the notes.",
    ),
    config={"generation": GEN, "layers": LAYERS, "folds": 5, "n_boot": N_BOOT},
)


def _oof(x, y, groups, seed) -> np.ndarray:
    """Out-of-fold logistic scores under prompt-grouped 5-fold CV (constant score if a training
    fold has one class)."""
    out = np.zeros(len(y))
    for tr, te in S.grouped_cv_splits(groups, 5, seed):
        if len(np.unique(y[tr])) < 2:
            out[te] = y[tr].mean()
            continue
        out[te] = fit_logistic(x[tr], y[tr], steps=300, l2=1e-2).score(x[te])
    return out


def _boot_test(name, column, y, a, b, groups, seed, family="primary") -> TestResult:
    """AUROC(a) - AUROC(b): cluster-bootstrap percentile CI, two-sided bootstrap p for 0 and a
    bootstrap TOST p for the +-MARGIN equivalence."""
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in uniq}
    fn = lambda i: S.auroc(y[i], a[i]) - (S.auroc(y[i], b[i]) if b is not None else 0.5)
    est = fn(np.arange(len(y)))
    rng = np.random.default_rng(seed)
    vals = np.asarray([fn(np.concatenate([members[g] for g in rng.choice(uniq, len(uniq))]))
                       for _ in range(N_BOOT)])
    vals = vals[np.isfinite(vals)]
    lo, hi = np.quantile(vals, [0.025, 0.975])
    p = min(1.0, 2 * min((vals <= 0).mean(), (vals >= 0).mean()))
    p_tost = max((vals >= MARGIN).mean(), (vals <= -MARGIN).mean())
    return TestResult(name, column, family, ">0", len(uniq), float(est), float(lo), float(hi),
                      float(max(p, 1 / N_BOOT)), float(p_tost), margin=MARGIN,
                      note="cluster-bootstrap percentile CI over prompts; bootstrap p and TOST p")


def logistic_fit(x, y, iters: int = 30, ridge: float = 1e-6) -> tuple[float, float]:
    """Maximum-likelihood (a, b) of P(y) = sigmoid(a + b x) by Newton's method (2 parameters;
    tiny ridge for separable data)."""
    X = np.stack([np.ones_like(x), x], 1)
    w = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(X @ w, -30, 30)))
        g = X.T @ (y - p) - ridge * w
        h = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(h, g)
        w = w + step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def _threshold(name, column, x, y, groups, seed) -> tuple[TestResult, dict]:
    """Logistic survival curve on log10 x: the slope's test (cluster bootstrap, > 0 expected) and
    x50 = 10^(-a/b) (attention at 50% survival) with its cluster-bootstrap CI."""
    lx, yf = np.log10(np.maximum(x, 1e-12)), y.astype(np.float64)
    ab = lambda i: logistic_fit(lx[i], yf[i])
    a, b = ab(np.arange(len(y)))
    uniq = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in uniq}
    rng = np.random.default_rng(seed)
    boots = np.asarray([ab(np.concatenate([members[g] for g in rng.choice(uniq, len(uniq))]))
                        for _ in range(N_BOOT)])
    slopes = boots[:, 1]
    x50s = 10 ** (-boots[:, 0] / np.where(boots[:, 1] > 0, boots[:, 1], np.nan))
    lo, hi = np.quantile(slopes, [0.025, 0.975])
    p = min(1.0, 2 * min((slopes <= 0).mean(), (slopes >= 0).mean()))
    x50 = 10 ** (-a / b) if b > 0 else float("nan")
    xlo, xhi = np.nanquantile(x50s, [0.025, 0.975]) if np.isfinite(x50s).any() else (np.nan, np.nan)
    t = TestResult(name, column, "threshold", ">0", len(uniq), b, float(lo), float(hi),
                   float(max(p, 1 / N_BOOT)), 1.0, margin=MARGIN,
                   note=f"logistic slope per log10 attention; x50 = {x50:.4g} [{xlo:.4g}, {xhi:.4g}] "
                        "(cluster-bootstrap percentile CIs)")
    return t, {"signal": column, "a": a, "b": b, "b_lo": lo, "b_hi": hi, "x50": x50, "x50_lo": xlo,
               "x50_hi": xhi, "n_members": len(y), "n_prompts": len(uniq)}


def _set_relative(x, groups, steps) -> np.ndarray:
    """x divided by the mean of x over the member's set (same prompt, same step)."""
    out = np.empty(len(x))
    keys = groups.astype(np.int64) * 100000 + steps.astype(np.int64)
    for k in np.unique(keys):
        i = np.flatnonzero(keys == k)
        out[i] = x[i] / max(x[i].mean(), 1e-12)
    return out


def run(ctx) -> Output:
    m = ctx.model
    layers = tuple(l for l in LAYERS if l < m.cfg.num_layers) or (m.cfg.num_layers - 1,)
    g = GenerationConfig(**GEN, seed=ctx.seed)
    rows, parts = [], []
    judge = lambda p: judged_members(m.params, m.cfg, m.tokenizer(p.prompt).input_ids, g, layers)[0]
    for k, (p, j) in enumerate(ctx.map(judge)):
        row = {"prompt_id": p.id, "genre": p.genre, "n_judged": len(j.survived),
               "survival_rate": float(j.survived.mean()) if len(j.survived) else np.nan}
        surv, pr = j.early_attn[j.survived], j.early_attn[~j.survived]
        row["early_gap"] = float(surv.mean() - pr.mean()) if len(surv) and len(pr) else np.nan
        rows.append(row)
        if len(j.survived):
            parts.append((k, j))
    y = np.concatenate([j.survived for _, j in parts])
    groups = np.concatenate([np.full(len(j.survived), k) for k, j in parts])
    sel = np.concatenate([np.stack([j.prob, j.rank, j.set_size, j.rel_prob], 1) for _, j in parts])
    early = np.concatenate([j.early_attn for _, j in parts])[:, None]
    window = np.concatenate([j.score for _, j in parts])
    steps = np.concatenate([j.step for _, j in parts])
    resid = np.concatenate([j.resid for _, j in parts])  # [N, layers, E]
    notes = [f"{len(y)} judged members from {len(parts)} prompts; {100 * y.mean():.1f}% survived."]
    if len(np.unique(y)) < 2 or len(np.unique(groups)) < 5:
        notes.append("one class only or fewer than 5 prompts: no predictor can be scored")
        return Output(rows=rows, notes=notes)
    scores = {"selection": _oof(sel, y, groups, ctx.seed), "early": _oof(early, y, groups, ctx.seed)}
    for i, l in enumerate(layers):
        scores[f"resid_L{l}"] = _oof(resid[:, i], y, groups, ctx.seed)
    scores["rank_only"] = -sel[:, 1]  # no fitting: lower rank survives
    scores["early_relative"] = _set_relative(early[:, 0], groups, steps)  # no fitting
    scores["early+selection"] = _oof(np.concatenate([np.log10(early), sel], 1), y, groups, ctx.seed)
    tests = [_boot_test("S", "auroc_selection_vs_chance", y, scores["selection"], None, groups, ctx.seed),
             _boot_test("E", "auroc_early_minus_selection", y, scores["early"], scores["selection"],
                        groups, ctx.seed)]
    for l in layers:
        tests.append(_boot_test("R", f"auroc_resid_L{l}_minus_selection", y, scores[f"resid_L{l}"],
                                scores["selection"], groups, ctx.seed))
    tests += [_boot_test("E2", "auroc_early_plus_selection_minus_early", y, scores["early+selection"],
                         scores["early"], groups, ctx.seed, family="early"),
              _boot_test("E3", "auroc_early_relative_minus_early", y, scores["early_relative"],
                         scores["early"], groups, ctx.seed, family="early")]
    thr = []
    for name, col, x in (("T1", "slope_survival_log10_early_attn", early[:, 0]),
                         ("T2", "slope_survival_log10_window_score", window)):
        ok = np.isfinite(x)
        t, row = _threshold(name, col, x[ok], y[ok], groups[ok], ctx.seed)
        tests.append(t)
        thr.append(row)
        notes.append(f"{col.replace('slope_survival_log10_', '')}: survival crosses 0.5 at "
                     f"{row['x50']:.4g} [{row['x50_lo']:.4g}, {row['x50_hi']:.4g}] attention "
                     f"(logistic on log10, cluster-bootstrap CI over {row['n_prompts']} prompts).")
    rel = _set_relative(window, groups, steps)
    rule = rel < GEN["prune_rho"]
    notes.append(f"Rule check: of {rule.sum()} members whose window score was below "
                 f"{GEN['prune_rho']} x their set's mean, {100 * (~y[rule]).mean():.1f}% were pruned; "
                 f"of the others {100 * y[~rule].mean():.1f}% survived.")
    table = []
    for name, s in scores.items():
        r = S.auroc_ci(y, s, groups, n_boot=N_BOOT, seed=ctx.seed)
        table.append({"predictor": name, "auroc": r["value"], "lo": r["lo"], "hi": r["hi"],
                      "n_members": len(y), "n_prompts": r["n_groups"]})
    curves = _figures(ctx, table, y, {"first look-ahead step": early[:, 0],
                                      "whole window = pruning score": window}, groups, thr)
    return Output(rows=rows, tests=tests, tables={"auroc": table, "threshold": thr,
                                                  "survival_curve": curves}, notes=notes)


def survival_curve(x, y, groups, n_bins: int = 10, seed: int = 0) -> list[dict]:
    """Survival rate in ``n_bins`` quantile bins of x, each with a prompt-cluster bootstrap CI."""
    qs = np.quantile(x, np.linspace(0, 1, n_bins + 1))
    bins = np.clip(np.searchsorted(qs, x, side="right") - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        idx = np.flatnonzero(bins == b)
        if len(idx) < 2:
            continue
        r = S.cluster_bootstrap(lambda i, idx=idx: y[idx][i].mean(), groups[idx], 300, seed)
        out.append({"bin": b, "x_lo": float(qs[b]), "x_hi": float(qs[b + 1]), "x_mean": float(x[idx].mean()),
                    "survival": r["value"], "lo": r["lo"], "hi": r["hi"], "n_members": len(idx),
                    "n_prompts": r["n_groups"]})
    return out


def _figures(ctx, table, y, signals: dict, groups, thr) -> list[dict]:
    from experiments.plotting import pyplot

    from matplotlib.ticker import NullFormatter

    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(16, 4))
    names = [t["predictor"] for t in table]
    ax[0].barh(names, [t["auroc"] for t in table],
               xerr=[[t["auroc"] - t["lo"] for t in table], [t["hi"] - t["auroc"] for t in table]],
               capsize=3)
    ax[0].axvline(0.5, color="grey", ls="--")
    ax[0].set_xlabel("out-of-fold AUROC (95% cluster-bootstrap CI)")
    ax[0].set_title("Predicting survival of a member")
    rows = []
    for a, (label, x), th in zip(ax[1:], signals.items(), thr):
        ok = np.isfinite(x)
        curve = survival_curve(x[ok], y[ok], groups[ok], seed=ctx.seed)
        rows += [{"signal": label, **c} for c in curve]
        a.errorbar([c["x_mean"] for c in curve], [c["survival"] for c in curve],
                   yerr=[[c["survival"] - c["lo"] for c in curve], [c["hi"] - c["survival"] for c in curve]],
                   marker="o", capsize=3, label="decile bins (cluster-bootstrap CI)")
        grid = np.geomspace(np.quantile(x[ok], 0.01), np.quantile(x[ok], 0.99), 100)
        a.plot(grid, 1 / (1 + np.exp(-(th["a"] + th["b"] * np.log10(grid)))), color="C1",
               label="logistic on log10 attention")
        if np.isfinite(th["x50"]):
            a.axvspan(th["x50_lo"], th["x50_hi"], color="C1", alpha=0.2)
            a.axvline(th["x50"], color="C1", ls="--", label=f"50% survival at {th['x50']:.3g}")
        a.set_xscale("log")
        ticks = [t for t in (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2) if grid[0] <= t <= grid[-1]]
        a.set_xticks(ticks, [f"{t:g}" for t in ticks])
        a.xaxis.set_minor_formatter(NullFormatter())
        a.set_ylim(0, 1.02)
        a.set_xlabel(f"attention received, {label}")
        a.set_ylabel("survival rate")
        a.set_title(f"Survival vs attention ({label})")
        a.legend(fontsize=8, loc="lower right")
    ctx.figure(fig, "survival")
    return rows


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    if not by:
        return "cannot tell: too few judged members in both classes."
    f = lambda t: f"{t.estimate:+.3f} [{t.lo:+.3f}, {t.hi:+.3f}]"
    sel = by["auroc_selection_vs_chance"]
    early = by["auroc_early_minus_selection"]
    res = [t for c, t in by.items() if c.startswith("auroc_resid")]
    best = max(res, key=lambda t: t.estimate)
    resid_word = ("adds to selection" if any(t.verdict.startswith("differs (+)") for t in res)
                  else "adds nothing within +-0.05 AUROC" if all(t.verdict.startswith("no effect") for t in res)
                  else "cannot be told apart from selection at this n")
    out = (f"Selection features alone predict survival above chance (AUROC - 0.5 = {f(sel)}, "
           f"{sel.verdict}); attention from the first look-ahead step {early.verdict} relative to "
           f"them ({f(early)}); the member's own residual stream {resid_word} (best layer "
           f"{best.column.split('_')[2]}: {f(best)}).")
    e2, e3 = by.get("auroc_early_plus_selection_minus_early"), by.get("auroc_early_relative_minus_early")
    if e2 is not None and e3 is not None:
        out += (f" Early prediction: adding the selection features to the first step's attention "
                f"{e2.verdict} ({f(e2)} AUROC); that attention relative to its set's mean {e3.verdict} "
                f"against the absolute value ({f(e3)}).")
    for col, what in (("slope_survival_log10_early_attn", "first-step attention"),
                      ("slope_survival_log10_window_score", "whole-window attention (the pruning score)")):
        t = by.get(col)
        m = re.search(r"x50 = (\S+) \[(\S+), (\S+)\]", t.note or "") if t is not None else None
        if m:
            out += (f" Survival rises with {what} (logistic slope per log10 {f(t)}, {t.verdict}); "
                    f"it crosses 50% at {m.group(1)} [{m.group(2)}, {m.group(3)}].")
    return out
