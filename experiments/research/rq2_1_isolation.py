"""RQ 2.1: what does letting siblings see each other change? Isolated (no sibling attention) vs
visible (members see lower-index siblings) vs full (every sibling), same prompts, same settings.

Per prompt, three TEMPO generations differing ONLY in the sibling rule (tau 0.05, W 8, up to 24
steps, no pruning, summary capture). Measures (``tempo_jax.quality``): self-perplexity of the
clean continuation under the same model (all genres), distinct-2 / repeated 3-grams, paths; facts:
clean-path accuracy and gold coverage; code: parse rate and next-line similarity. Attention: sibling
leakage (attention a member puts on its same-step siblings) and the attention later steps give to
earlier parallel members per token (sink excluded), both averaged over layers, heads and steps.
Contrasts are visible - isolated and full - isolated per prompt (log ratio for perplexity).
Steps diverge once a different set is chosen, so later attention is measured on different
sequences: the quality contrasts are the primary question; attention ones are descriptive.
"""

from __future__ import annotations

import numpy as np

from tempo_jax.research import Design, Hypothesis, Output, quality_of
from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.slots import slot_groups

RULES = ("isolated", "visible", "full")
GEN = dict(max_steps=24, threshold=0.05, max_width=8, prune=False)
PPL_MARGIN = float(np.log(1.1))

DESIGN = Design(
    id="rq2.1",
    questions=("2.1",),
    title="Sibling isolation (isolated / visible / full) and generation quality",
    primary_metric="self-perplexity of the clean continuation under the same model, as a "
                   "per-prompt log ratio of a sibling rule to isolated",
    contrast="visible vs isolated and full vs isolated, same prompt and settings",
    hypotheses=(
        Hypothesis("P", "self-perplexity changes by less than +-10% when siblings see each other",
                   "lppl_*", "=0"),
        Hypothesis("F", "facts: clean-path accuracy changes by less than 10 points", "correct_*",
                   "=0", family="facts", margin=0.10),
        Hypothesis("C", "code: parse rate changes by less than 10 points", "parses_*", "=0",
                   family="code", margin=0.10),
        Hypothesis("R", "repeated 3-gram rate changes by less than 0.05", "repeat3_*", "=0",
                   family="secondary", margin=0.05),
        Hypothesis("S", "mean set size changes by less than 0.2 members", "setsize_*", "=0",
                   family="secondary", margin=0.2),
        Hypothesis("A", "later queries' per-token attention to earlier parallel members changes "
                        "by less than +-10% (log ratio)", "lpar_*", "=0", family="attention"),
    ),
    margin=PPL_MARGIN,
    margin_note="log(1.1) for log ratios; 10 points for accuracy and parse rate; 0.05 for repeat "
                "rate; 0.2 members for set size",
    metrics=("lppl_*", "correct_*", "parses_*", "repeat3_*", "setsize_*", "lpar_*", "leak_*"),
    families={"primary": "holm", "facts": "holm", "code": "holm", "secondary": "holm",
              "attention": "holm"},
    n_per_genre=30,
    quick_n=2,
    caveats=(
        "Isolated is TEMPO's default and the reference; under isolation leakage is 0 by construction.",
        "Facts accuracy and parse rate are 0/1 per prompt: their contrasts are differences of "
        "proportions over prompts of that genre only (n is smaller than for perplexity).",
        "Self-perplexity is the model judging its own text: lower is not the same as better.",
    ),
    config={"generation": GEN, "rules": RULES},
)


def _attention(cap_rows):
    """Mean over steps of (per-token attention to earlier parallel members, sibling leakage)."""
    par = [v for v, _ in cap_rows if np.isfinite(v)]
    leak = [l for _, l in cap_rows]
    return (float(np.mean(par)) if par else np.nan), (float(np.mean(leak)) if leak else np.nan)


def _one(m, p, rule, seed):
    g = GenerationConfig(**GEN, siblings=rule, seed=seed)
    ids = m.tokenizer(p.prompt).input_ids
    rows = []

    def on_step(s, st, cap):
        n = int(np.asarray(st.fed_n)[s])
        alive = np.asarray(st.alive) | (np.asarray(st.pruned_at) == s)
        grp = slot_groups(np.asarray(st.slot_step), alive, np.asarray(st.set_n), s)
        par = np.asarray(grp.parallel)
        recv = np.asarray(cap.received)  # [L,H,K] summed over the step's queries
        per_tok = (recv[..., par].sum(-1) / (n * par.sum())).mean() if par.any() else np.nan
        leak = np.asarray(cap.leakage)[..., :n].mean()
        rows.append((per_tok, leak))

    tr = generate(m.params, m.cfg, ids, g, capture="summary", on_step=on_step)
    q = quality_of(m, p, tr)
    q["set_size"] = float(np.mean(tr.arrays["set_n"]))
    q["par_attn"], q["leak"] = _attention(rows)
    return q


def run(ctx) -> Output:
    m = ctx.model
    rows = []
    for p, q in ctx.map(lambda p: {r: _one(m, p, r, ctx.seed) for r in RULES}):
        row = {"prompt_id": p.id, "genre": p.genre}
        for r in RULES:
            row[f"ppl_{r}"] = q[r].get("self_ppl", np.nan)
            row[f"set_size_{r}"] = q[r]["set_size"]
            row[f"leak_{r}"] = q[r]["leak"]
            row[f"par_attn_{r}"] = q[r]["par_attn"]
        for r in RULES[1:]:
            row[f"lppl_{r}"] = float(np.log(q[r]["self_ppl"]) - np.log(q["isolated"]["self_ppl"]))
            row[f"repeat3_{r}"] = q[r]["repeat_3"] - q["isolated"]["repeat_3"]
            row[f"setsize_{r}"] = q[r]["set_size"] - q["isolated"]["set_size"]
            row[f"lpar_{r}"] = float(np.log(q[r]["par_attn"]) - np.log(q["isolated"]["par_attn"]))
            if p.genre == "facts":
                row[f"correct_{r}"] = q[r]["correct"] - q["isolated"]["correct"]
            if p.genre == "code":
                row[f"parses_{r}"] = q[r]["parses"] - q["isolated"]["parses"]
        for key in ("correct", "parses", "coverage_any", "next_line_sim", "repeat_3", "distinct_2"):
            for r in RULES:
                if key in q[r]:
                    row[f"q_{key}_{r}"] = q[r][key]
        rows.append(row)
    _figure(ctx, rows)
    return Output(rows=rows)


def _figure(ctx, rows):
    from experiments.plotting import condition_boxplots

    condition_boxplots(ctx, rows, RULES, [("ppl", "self-perplexity (log scale)", True),
                                          ("leak", "sibling leakage", False),
                                          ("par_attn", "per-token attention to earlier members", False)],
                       f"RQ 2.1: sibling rules over {len(rows)} prompts (test split)", "rules")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    pct = lambda t: f"{100 * (np.exp(t.estimate) - 1):+.1f}% [{100 * (np.exp(t.lo) - 1):+.1f}, {100 * (np.exp(t.hi) - 1):+.1f}]"
    pts = lambda t: f"{100 * t.estimate:+.1f} points [{100 * t.lo:+.1f}, {100 * t.hi:+.1f}]"
    out = []
    for r in RULES[1:]:
        out.append(f"{r} vs isolated: self-perplexity {pct(by[f'lppl_{r}'])} ({by[f'lppl_{r}'].verdict}), "
                   f"facts accuracy {pts(by[f'correct_{r}'])} ({by[f'correct_{r}'].verdict}), "
                   f"code parse rate {pts(by[f'parses_{r}'])} ({by[f'parses_{r}'].verdict}), "
                   f"attention to earlier members {pct(by[f'lpar_{r}'])} ({by[f'lpar_{r}'].verdict})")
    return "; ".join(out) + "."
