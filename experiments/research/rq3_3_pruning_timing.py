"""RQ 3.3: temporal dynamics of retroactive pruning. How do the look-ahead window (1, 2, 3, 5 steps)
and the timing (decide once when the window closes vs eagerly at every step inside it) change what is
pruned, whether the gold answer survives, and the generation?

Per prompt, five TEMPO runs that differ ONLY in the pruning window/timing (tau 0.05, W 8, up to 24
steps, relative rule rho 0.8 as in rq3.1, isolated siblings); the reference is the engine default,
window 2 with window timing. Per run: the fraction of judged parallel members that were pruned,
mean alive members per step, facts: whether the gold answer's first token is still alive in the
step-0 set (among prompts whose step-0 set contains it), self-perplexity of the clean continuation,
and wall time per step (descriptive: it depends on machine load). Decaying weights over the window
are not an engine option (the score is the mean over the window's queries), so they are not tested.
"""

from __future__ import annotations

import numpy as np

from tempo_jax.research import Design, Hypothesis, Output, quality_of
from tempo_jax.engine import GenerationConfig, generate

BASE = dict(max_steps=24, threshold=0.05, max_width=8, prune=True, prune_rule="relative",
            prune_rho=0.8, siblings="isolated")
CONFIGS = {"w1": dict(prune_window=1), "w2": dict(prune_window=2), "w3": dict(prune_window=3),
           "w5": dict(prune_window=5), "eager2": dict(prune_window=2, prune_timing="eager")}
REF = "w2"
OTHERS = tuple(c for c in CONFIGS if c != REF)

DESIGN = Design(
    id="rq3.3",
    questions=("3.3",),
    title="Pruning window and timing: what is pruned, gold retention, quality",
    primary_metric="fraction of judged parallel members pruned (per prompt), difference to window 2",
    contrast="window 1, 3, 5 and eager timing vs window 2 (window timing), same prompt and settings",
    hypotheses=(
        Hypothesis("F", "the pruned fraction changes by less than 5 points", "dpruned_*", "=0"),
        Hypothesis("G", "facts: gold retention at step 0 changes by less than 10 points",
                   "dgold_*", "=0", family="facts", margin=0.10, bound=1.0),
        Hypothesis("P", "self-perplexity changes by less than +-10%", "lppl_*", "=0",
                   family="quality", margin=float(np.log(1.1))),
        Hypothesis("K", "alive members per step change by less than 0.1", "dkept_*", "=0",
                   family="secondary", margin=0.1),
    ),
    margin=0.05,
    margin_note="5 points of pruned fraction; 10 points of gold retention; log(1.1) for "
                "self-perplexity; 0.1 alive members per step",
    metrics=("dpruned_*", "dgold_*", "lppl_*", "dkept_*"),
    families={"primary": "holm", "facts": "holm", "quality": "holm", "secondary": "holm"},
    n_per_genre=30,
    quick_n=2,
    caveats=(
        "rho 0.8 as in rq3.1 (the default 0.5 prunes almost nothing on this model).",
        "A set is judged only if its window closes inside the run, so longer windows judge fewer "
        "late sets; the pruned fraction is over the sets each configuration judged.",
        "Runs diverge after the first different pruning decision, so later steps compare "
        "different texts (as in any whole-generation contrast).",
    ),
    config={"base": BASE, "configs": CONFIGS, "reference": REF},
)


def _one(m, p, name, seed):
    g = GenerationConfig(**BASE, **CONFIGS[name], seed=seed)
    ids = m.tokenizer(p.prompt).input_ids
    tr = generate(m.params, m.cfg, ids, g)
    a = tr.arrays
    judged, pruned = 0, 0
    for s in range(tr.n_steps):
        n = int(a["set_n"][s])
        if n < 2:
            continue
        slots = a["slots"][s, :n]
        scored = ~np.isnan(a["prune_score"][slots])
        judged += int(scored.sum())
        pruned += int((a["pruned_at"][slots] >= 0).sum())
    alive = [sum(1 for mem in st["members"] if not mem["pruned"]) for st in tr.steps()]
    out = {"pruned": pruned / judged if judged else np.nan, "kept": float(np.mean(alive)),
           "sec_per_step": tr.timings.get("total_s", np.nan) / max(tr.n_steps, 1)}
    q = quality_of(m, p, tr)
    out["self_ppl"] = q.get("self_ppl", np.nan)
    if p.genre == "facts":
        out["gold_any"], out["gold_alive"] = q["coverage_any"], q["coverage_alive"]
    return out


def run(ctx) -> Output:
    m = ctx.model
    rows = []
    for p, q in ctx.map(lambda p: {c: _one(m, p, c, ctx.seed) for c in CONFIGS}):
        row = {"prompt_id": p.id, "genre": p.genre}
        for c in CONFIGS:
            row[f"pruned_{c}"], row[f"kept_{c}"] = q[c]["pruned"], q[c]["kept"]
            row[f"sec_per_step_{c}"] = q[c]["sec_per_step"]
        ref = q[REF]
        for c in OTHERS:
            row[f"dpruned_{c}"] = q[c]["pruned"] - ref["pruned"]
            row[f"dkept_{c}"] = q[c]["kept"] - ref["kept"]
            row[f"lppl_{c}"] = float(np.log(q[c]["self_ppl"]) - np.log(ref["self_ppl"]))
            if p.genre == "facts" and ref["gold_any"] and q[c]["gold_any"]:
                row[f"dgold_{c}"] = q[c]["gold_alive"] - ref["gold_alive"]
        rows.append(row)
    _figure(ctx, rows)
    return Output(rows=rows)


def _figure(ctx, rows):
    from experiments.plotting import condition_boxplots

    condition_boxplots(ctx, rows, list(CONFIGS), [("pruned", "fraction of judged members pruned", False),
                                                  ("kept", "alive members per step", False)],
                       f"RQ 3.3: pruning window / timing over {len(rows)} prompts", "window_timing")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    pts = lambda t: f"{100 * t.estimate:+.1f} points [{100 * t.lo:+.1f}, {100 * t.hi:+.1f}]"
    parts = [f"{c}: pruned fraction {pts(by[f'dpruned_{c}'])} ({by[f'dpruned_{c}'].verdict})"
             for c in OTHERS]
    gold = [f"{c} {pts(by[f'dgold_{c}'])} ({by[f'dgold_{c}'].verdict})" for c in OTHERS
            if f"dgold_{c}" in by and by[f"dgold_{c}"].n]
    ppl = [f"{c} {by[f'lppl_{c}'].verdict}" for c in OTHERS]
    return ("Against window 2: " + "; ".join(parts) + ". Gold retention (facts): "
            + ("; ".join(gold) or "no prompt to compare")
            + ". Self-perplexity: " + ", ".join(ppl) + ".")
