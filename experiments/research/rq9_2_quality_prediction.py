"""RQ 9.2: can attention in the first N steps predict whether a generation will turn out well, beyond
what the first steps' token probabilities already say?

Per prompt (facts and code, test split): one TEMPO run (tau 0.05, W 8, 16 steps, no pruning) with
summary capture. Label (binary, per prompt): facts = the clean path is correct; code = prompt +
continuation parses (`tempo_jax.quality`). Features of the first N in {1, 2, 4, 8} steps, averaged
over those steps and over the step's real queries and all heads:
  attention: attention entropy (nats) and attention on the sink (slot 0), each per layer group
             (3 contiguous groups of layers) -> 6 numbers;
  baseline:  log probability of the top member, set size, entropy of d_s -> 3 numbers.
Both feature sets also get the genre indicator (base rates differ by genre). Predictors are L2
logistic regressions (`stats.fit_logistic_lbfgs`) scored out of fold in 5-fold CV grouped by prompt
(`stats.grouped_cv_splits`; one row per prompt). Contrast: AUROC(baseline + attention) - AUROC
(baseline) per N; bootstrap over prompts (percentile CI, two-sided bootstrap p, bootstrap TOST p
against +-0.05 AUROC).
"""

from __future__ import annotations

import numpy as np

from tempo_jax.research import Design, Output, TestResult, quality_of
from tempo_jax import stats as S

GEN = dict(max_steps=16, min_steps=16, threshold=0.05, max_width=8, prune=False)
NS = (1, 2, 4, 8)
GROUPS = 3
MARGIN = 0.05
N_BOOT = 2000

DESIGN = Design(
    id="rq9.2",
    questions=("9.2",),
    title="Early quality prediction: attention of the first N steps vs their token probabilities",
    primary_metric="out-of-fold AUROC (prompt-grouped 5-fold CV) for a good generation (facts "
                   "correct / code parses), baseline + attention minus baseline",
    contrast="logistic model on [first-N token-probability features + attention features + genre] vs "
             "[token-probability features + genre], same prompts and folds",
    hypotheses=(),  # the tests are AUROC differences over prompts, computed in run(); declared here:
    margin=MARGIN,
    margin_note="0.05 AUROC",
    metrics=("auroc_*", "good", "n_steps"),
    families={"primary": "holm", "baseline": "fdr_bh"},
    genres=("facts", "code"),
    n_per_genre=40,
    quick_n=5,
    caveats=(
        "One row per prompt: the label is the prompt's, so grouped CV is plain CV over prompts and "
        "the bootstrap resamples prompts.",
        "Labels are coarse and genre-specific (facts correctness, code parse); the genre indicator is "
        "in every model, so the contrasts are within-genre information.",
        "With 80 prompts and few positives, AUROC CIs are wide: 'cannot tell at this n' is likely.",
        "Continuous quality (self-perplexity, R^2) is left out to keep the run within its budget.",
    ),
    config={"generation": GEN, "first_n": NS, "layer_groups": GROUPS, "folds": 5, "n_boot": N_BOOT,
            "hypotheses": {
                "A (primary, holm over N)": "auroc_plus_attn_minus_base_N<n> > 0: the first N steps' "
                                            "attention features add to the token-probability baseline",
                "B (baseline, fdr_bh)": "auroc_base_minus_chance_N<n> > 0: the baseline beats chance",
                "C (baseline, fdr_bh)": "auroc_attn_minus_chance_N<n> > 0: attention alone (with genre) "
                                        "beats chance"}},
)


def features(m, p):
    """(label, {N: (baseline[3], attention[2*GROUPS])}) of one prompt."""
    from tempo_jax.engine import GenerationConfig, generate
    from tempo_jax.explain import layer_groups

    g = GenerationConfig(**GEN)
    ent, sink = [], []

    def on_step(s, st, cap):
        n = int(np.asarray(st.fed_n)[s])
        ent.append(np.asarray(cap.entropy)[:, :, :n].mean((1, 2)))  # [L]
        sink.append(np.asarray(cap.sink)[:, :, :n].mean((1, 2)))

    tr = generate(m.params, m.cfg, m.tokenizer(p.prompt).input_ids, g, capture="summary", on_step=on_step)
    q = quality_of(m, p, tr)
    label = q["correct"] if p.genre == "facts" else q["parses"]
    a = tr.arrays
    groups = layer_groups(m.cfg.num_layers, GROUPS)
    per_n = {}
    for n in NS:
        k = min(n, tr.n_steps)
        base = [float(np.mean(np.log(a["probs"][:k, 0]))), float(np.mean(a["set_n"][:k])),
                float(np.mean(a["entropy"][:k]))]
        e, s = np.mean(ent[:k], 0), np.mean(sink[:k], 0)
        att = [float(e[lo:hi + 1].mean()) for lo, hi in groups] + [float(s[lo:hi + 1].mean()) for lo, hi in groups]
        per_n[n] = (base, att)
    return float(label), per_n, tr.n_steps


def _oof(x, y, splits) -> np.ndarray:
    out = np.zeros(len(y))
    for tr, te in splits:
        if len(np.unique(y[tr])) < 2:
            out[te] = y[tr].mean()
            continue
        out[te] = S.fit_logistic_lbfgs(x[tr], y[tr])(x[te])
    return out


def _boot(name, column, family, y, a, b, seed) -> TestResult:
    """AUROC(a) - AUROC(b) (b None: 0.5): bootstrap over prompts; percentile CI, two-sided p, TOST p."""
    fn = lambda i: S.auroc(y[i], a[i]) - (S.auroc(y[i], b[i]) if b is not None else 0.5)
    est = fn(np.arange(len(y)))
    rng = np.random.default_rng(seed)
    vals = np.asarray([fn(rng.integers(0, len(y), len(y))) for _ in range(N_BOOT)])
    vals = vals[np.isfinite(vals)]
    lo, hi = np.quantile(vals, [0.025, 0.975])
    p = max(min(1.0, 2 * min((vals <= 0).mean(), (vals >= 0).mean())), 1 / len(vals))
    p_tost = max((vals >= MARGIN).mean(), (vals <= -MARGIN).mean())
    return TestResult(name, column, family, ">0", len(y), float(est), float(lo), float(hi), float(p),
                      float(p_tost), margin=MARGIN,
                      note="bootstrap over prompts: percentile CI, two-sided bootstrap p and TOST p")


def run(ctx) -> Output:
    m = ctx.model
    rows, data = [], []
    for p, (label, per_n, n_steps) in ctx.map(lambda p: features(m, p)):
        rows.append({"prompt_id": p.id, "genre": p.genre, "good": label, "n_steps": n_steps})
        data.append((p, per_n))
    y = np.array([r["good"] for r in rows]) > 0
    genre = np.array([[float(p.genre == "code")] for p, _ in data])
    notes = [f"{len(y)} prompts, {int(y.sum())} good ({', '.join(f'{g}: {int(y[[p.genre == g for p, _ in data]].sum())}/{sum(p.genre == g for p, _ in data)}' for g in DESIGN.genres)})."]
    if len(np.unique(y)) < 2 or len(y) < 10:
        notes.append("one class only or fewer than 10 prompts: nothing can be scored")
        return Output(rows=rows, notes=notes)
    splits = S.grouped_cv_splits(np.arange(len(y)), 5, ctx.seed)
    tests, table = [], []
    for n in NS:
        base = np.hstack([np.array([d[n][0] for _, d in data]), genre])
        att = np.hstack([np.array([d[n][1] for _, d in data]), genre])
        both = np.hstack([base[:, :-1], att])
        sc = {"baseline": _oof(base, y, splits), "attention": _oof(att, y, splits),
              "baseline+attention": _oof(both, y, splits), "genre only": _oof(genre, y, splits)}
        tests.append(_boot("A", f"auroc_plus_attn_minus_base_N{n}", "primary", y, sc["baseline+attention"],
                           sc["baseline"], ctx.seed))
        tests.append(_boot("B", f"auroc_base_minus_chance_N{n}", "baseline", y, sc["baseline"], None, ctx.seed))
        tests.append(_boot("C", f"auroc_attn_minus_chance_N{n}", "baseline", y, sc["attention"], None, ctx.seed))
        for name, s in sc.items():
            r = S.cluster_bootstrap(lambda i, s=s: S.auroc(y[i], s[i]), np.arange(len(y)), N_BOOT, ctx.seed)
            table.append({"first_n": n, "predictor": name, "auroc": r["value"], "lo": r["lo"], "hi": r["hi"],
                          "n_prompts": len(y)})
    _figure(ctx, table)
    return Output(rows=rows, tests=tests, tables={"auroc": table}, notes=notes)


def _figure(ctx, table):
    from experiments.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    names = list(dict.fromkeys(t["predictor"] for t in table))
    for k, name in enumerate(names):
        t = [r for r in table if r["predictor"] == name]
        x = np.arange(len(t)) + (k - 1.5) * 0.08
        v = np.array([r["auroc"] for r in t])
        ax.errorbar(x, v, yerr=[v - [r["lo"] for r in t], [r["hi"] for r in t] - v], marker="o",
                    capsize=3, label=name)
    ax.set_xticks(range(len(NS)), [str(n) for n in NS])
    ax.axhline(0.5, color="grey", ls="--")
    ax.set_xlabel("first N steps used")
    ax.set_ylabel("out-of-fold AUROC (95% bootstrap CI)")
    ax.set_title("Predicting a good generation (facts correct / code parses)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ctx.figure(fig, "auroc_by_n")


def answer(tests, design) -> str:
    prim = [t for t in tests if t.family == "primary"]
    if not prim:
        return "cannot tell: one class only among the labels."
    f = lambda t: f"N={t.column.rsplit('N', 1)[1]}: {t.estimate:+.3f} [{t.lo:+.3f}, {t.hi:+.3f}] ({t.verdict})"
    base = [t for t in tests if t.column.startswith("auroc_base")]
    return ("Adding the first N steps' attention entropy and sink attention to their token "
            "probabilities changes the out-of-fold AUROC for a good generation by "
            + "; ".join(f(t) for t in prim) + ". The probability baseline alone vs chance: "
            + "; ".join(f(t) for t in base) + ".")
