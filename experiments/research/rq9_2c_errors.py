"""RQ 9.2, confirmatory, with a changed design: does TEMPO's attention tell, step by step, where the
model's prediction misses the human text, beyond what the prediction's own probabilities say?

The exploratory rq9.2 had ONE label per prompt (facts correct / code parses): the outcome was not per
prompt-step, the AUROC was across prompts, positives were few, and its probability baseline sat at
chance, so its gains said little. Here the unit stays the prompt but the outcome is within it, and the
quality judge is the human reference text (not the model):

* TEMPO (tau 0.1, max width 4, isolated siblings, no pruning) is forced along the prompt's human
  continuation (its first STEPS tokens; rq10.2c's ``forced_lattice``): at step s the human token is
  member 0 and the model's other candidates >= tau join it, so the context holds TEMPO's alternatives.
* label of step s >= 1: the model's top-1 token of d_s (before forcing) is NOT the human token (a miss);
* baseline features of d_s: log max probability, entropy, set size (tokens >= tau, at most 4);
* attention features of the query that computed d_s (member 0 of step s - 1), mean over heads, per third
  of the layers: sink share, attention entropy, attention on earlier alternatives (9 numbers).

Three L2 logistic models (baseline, attention, baseline + attention) are fitted ONCE on dev prompts
(DEV_N per genre) inside the run and frozen; each confirm prompt gets the within-prompt AUROC of each.
ONE primary test: per prompt, AUROC(baseline + attention) - AUROC(baseline) > 0, smallest effect of
interest 0.02. Secondary (Holm): attention alone > 1/2; the baseline alone > 1/2.
"""

from __future__ import annotations

import numpy as np

from experiments.research import rq10_2c_drift as F
from experiments.research import wording
from experiments.research.rq1_3bc_boost_forced import BANDS, bands
from experiments.research.rq3_1c_reference import reference_ids
from tempo_jax import stats as S
from tempo_jax.metrics import entropy_nats
from tempo_jax.research import Design, Hypothesis, Output

STEPS, MIN_STEPS, DEV_N = 32, 16, 15
TAU, WIDTH = F.TAU, F.WIDTH
BASE = ("logp_max", "entropy", "set_n")
ATTN = tuple(f"{k}_{b}" for k in ("sink", "ent", "alt") for b in BANDS)
MODELS = {"base": BASE, "attn": ATTN, "both": BASE + ATTN}

DESIGN = Design(
    id="rq9.2c",
    questions=("9.2",),
    title="Confirmatory: does TEMPO's attention tell where the model's prediction misses the human text, "
          "beyond the prediction's own probabilities? (per-step, within prompt)",
    primary_metric="per prompt, within-prompt AUROC for 'the model's top-1 token misses the human token' of a "
                   "dev-fitted logistic model on probability + attention features minus that of the model on "
                   "probability features alone",
    contrast="the same steps and labels scored by two frozen predictors that differ only in the attention "
             "features",
    hypotheses=(
        Hypothesis("P", "attention features add to the prediction's probabilities in telling the steps where "
                        "the model misses the human token", "d_auc_attn", ">0", sesoi=0.02),
        Hypothesis("S1", "attention features alone tell misses from hits above chance", "auc_attn_minus_half",
                   ">0", family="secondary", margin=0.05),
        Hypothesis("S2", "the prediction's probabilities alone tell them above chance", "auc_base_minus_half",
                   ">0", family="secondary", margin=0.05),
    ),
    margin=0.02,
    margin_note="0.02 AUROC for the increment; 0.05 AUROC for the secondary tests against chance",
    metrics=("d_auc_attn", "auc_*", "miss_rate", "n_steps"),
    families={"primary": "holm", "secondary": "holm"},
    split="confirm",
    genres=("prose", "code"),
    n_per_genre=30,
    quick_n=6,
    caveats=(
        "Teacher-forced along the human text: the steps are the human text's, not the model's own "
        "generation; a miss is the model's top-1 disagreeing with one human continuation, which other good "
        "continuations also do.",
        "The predictors are fitted on dev prompts of the same model and frozen; the features are summaries "
        "(thirds of the layers, mean over heads), so a finer attention reading could add more.",
        "Set size is computed from d_s (the tokens >= tau): a probability feature, in the baseline.",
        "Prose and code only (their references are long enough); facts answers are a few tokens.",
    ),
    config={"steps": STEPS, "min_steps": MIN_STEPS, "generation": F.GEN, "dev_per_genre": DEV_N,
            "features": {"base": BASE, "attn": ATTN}, "fit": "stats.fit_logistic_lbfgs (L2 1.0, standardised)"},
)


def step_features(m, ids, path) -> dict:
    """TEMPO forced along ``path`` -> per step s >= 1: ``base [S-1,3]``, ``attn [S-1,9]``, ``miss [S-1]``."""
    n = len(path)
    L = m.cfg.num_layers
    thirds = [list(bands(L)[b]) for b in BANDS]
    base, miss, attn = np.zeros((n, len(BASE))), np.zeros(n, bool), np.zeros((n, len(ATTN)))

    def before(s, dist):
        d = np.asarray(dist, np.float64)
        base[s] = (np.log(d.max()), float(entropy_nats(d)), min(WIDTH, max(1, int((d >= TAU).sum()))))
        miss[s] = int(np.argmax(d)) != int(path[s])

    def on_step(s, st, cap):
        a = np.asarray(cap.attn, np.float64)[:, :, 0, :]  # [L,H,K] member 0's query
        off = F.earlier_alternatives(st, s)
        per = (a[..., 0].mean(-1), entropy_nats(a).mean(-1), a[..., off].sum(-1).mean(-1))  # each [L]
        attn[s] = [x[t].mean() if t else np.nan for x in per for t in thirds]  # NaN: a third without layers

    F.forced_lattice(m, ids, path, on_step, before)
    return {"base": base[1:], "attn": attn[:-1], "miss": miss[1:]}  # d_s is read by step s - 1's query


def _one(m, p) -> dict | None:
    ids, ref = reference_ids(m.tokenizer, p.prompt, p.reference, p.genre)
    ref = ref[:STEPS]
    return step_features(m, ids, ref) if len(ref) >= MIN_STEPS else None


def design_matrix(r: dict, cols) -> np.ndarray:
    """Rows of :func:`step_features` with the named feature columns."""
    table = dict(zip(BASE, r["base"].T)) | dict(zip(ATTN, r["attn"].T))
    return np.stack([table[c] for c in cols], 1)


def fit_predictors(recs) -> dict:
    """The three frozen predictors fitted on pooled dev step rows -> ``{model: scorer}``."""
    recs = [r for r in recs if r is not None]
    y = np.concatenate([r["miss"] for r in recs])
    return {k: S.fit_logistic_lbfgs(np.concatenate([design_matrix(r, cols) for r in recs]), y)
            for k, cols in MODELS.items()}


def row_of(r: dict, predictors) -> dict:
    """Per-prompt AUROCs of the frozen predictors (NaN when a prompt has one class only)."""
    auc = {k: S.auroc(r["miss"], predictors[k](design_matrix(r, cols))) for k, cols in MODELS.items()}
    return {"d_auc_attn": auc["both"] - auc["base"], "auc_attn_minus_half": auc["attn"] - 0.5,
            "auc_base_minus_half": auc["base"] - 0.5, "auc_both": auc["both"], "miss_rate": float(r["miss"].mean()),
            "n_steps": len(r["miss"])}


def run(ctx) -> Output:
    from experiments import corpus

    m = ctx.model
    dev = corpus.load(split="dev", genres=list(DESIGN.genres), limit_per_genre=DEV_N)
    predictors = fit_predictors([_one(m, p) for p in ctx.progress(dev, "dev prompts (fit)")])
    rows = []
    for p, r in ctx.map(lambda p: _one(m, p)):
        row = {"prompt_id": p.id, "genre": p.genre, **dict.fromkeys(("d_auc_attn", "auc_attn_minus_half",
                                                                     "auc_base_minus_half", "auc_both",
                                                                     "miss_rate", "n_steps"), np.nan)}
        if r is not None:
            row.update(row_of(r, predictors))
        rows.append(row)
    ok = [r for r in rows if np.isfinite(r["d_auc_attn"])]
    mean = lambda k: float(np.mean([r[k] for r in ok])) if ok else float("nan")
    notes = [f"{len(ok)} of {len(rows)} prompts scored (a reference of at least {MIN_STEPS} tokens and both hits "
             f"and misses); predictors fitted on {len(dev)} dev prompts; miss rate {mean('miss_rate'):.2f}; mean "
             f"within-prompt AUROC: baseline {mean('auc_base_minus_half') + 0.5:.3f}, attention "
             f"{mean('auc_attn_minus_half') + 0.5:.3f}, both {mean('auc_both'):.3f}."]
    return Output(rows=rows, notes=notes)


def answer(tests, design) -> str:
    said = {"P": "Primary test P: per prompt, within-prompt AUROC for the steps where the model's top-1 misses the "
                 "human token, probabilities + TEMPO attention minus probabilities alone",
            "S1": "attention alone minus chance", "S2": "probabilities alone minus chance"}
    return "Teacher-forced along the human text: " + wording.listed(tests, said) + "."
