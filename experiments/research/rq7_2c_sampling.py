"""RQ 7.2, confirmatory: does threshold selection beat random sampling on quality judged outside the
model, and does it explore the gold answer more often?

rq7.1 answered 7.2 with self-perplexity (the model judging its own text) and 12 facts prompts for
coverage ("cannot tell"). Here, on facts prompts only (a gold answer and its aliases judge every
output; nothing comes from the model under test), per prompt:

* TEMPO: threshold 0.1, max width 4, isolated siblings, no pruning, 8 steps; its clean path;
* sampling: 4 samples at temperature 1.0 (seeds 0-3; one vmapped program), the model's own
  distribution without a threshold.

Outcomes: ``correct`` (the gold answer or an alias in the output, :func:`tempo_jax.quality.measure`);
coverage: is the gold answer's first token among the step-0 tokens a method explored (TEMPO: its
step-0 set C_0; sampling: the first tokens of the first |C_0| samples, count-matched).
ONE primary test: TEMPO's accuracy minus the samples' mean accuracy > 0 (smallest effect of interest
10 points). Secondary (Holm): coverage, TEMPO minus count-matched samples, > 0.
"""

from __future__ import annotations

import numpy as np

from experiments.research import decoding_alternatives as A
from tempo_jax import quality
from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.research import Design, Hypothesis, Output, quality_of

STEPS, WIDTH, TAU, N_SAMPLES, TEMP = 8, 4, 0.1, 4, 1.0

DESIGN = Design(
    id="rq7.2c",
    questions=("7.2",),
    title="Confirmatory: TEMPO vs sampling on facts, judged by gold answers (accuracy and coverage)",
    primary_metric="per facts prompt, gold-answer accuracy of TEMPO's clean path minus the mean accuracy "
                   "of 4 samples at temperature 1.0",
    contrast="TEMPO (tau 0.1, width 4) vs sampling (T 1.0, 4 samples), same prompt and step budget",
    hypotheses=(
        Hypothesis("P", "TEMPO's clean path gives the gold answer more often than a sample at T 1.0",
                   "acc_diff", ">0", sesoi=0.10, bound=1.0),
        Hypothesis("S1", "TEMPO's step-0 set holds the gold first token more often than the first tokens of "
                         "as many samples", "cov_diff", ">0", family="secondary", bound=1.0),
    ),
    margin=0.10,
    margin_note="10 points of accuracy or coverage",
    metrics=("acc_diff", "cov_diff", "acc_tempo", "acc_sample", "cov_tempo", "cov_sample", "n0"),
    families={"primary": "holm", "secondary": "holm"},
    split="confirm",
    genres=("facts",),
    n_per_genre=60,  # the pilots ask for 38 / 25 (coverage, secondary: 115 / 148)
    quick_n=30,
    caveats=(
        "Facts prompts only: gold answers judge the outputs; prose and code have no model-independent "
        "correctness here.",
        "TEMPO's clean path takes the most probable member at each step, so the contrast is largely a "
        "most-probable path vs independent samples; TEMPO's other members do not change the clean path "
        "without pruning.",
        "Coverage compares explored FIRST tokens: C_0 is the top-|C_0| tokens, so TEMPO misses a gold token "
        "only where sampling reaches it in the tail.",
    ),
    config={"steps": STEPS, "width": WIDTH, "tau": TAU, "n_samples": N_SAMPLES, "temperature": TEMP},
)


def _one(m, p, seed) -> dict:
    ids = m.tokenizer(p.prompt).input_ids
    tr = generate(m.params, m.cfg, ids, GenerationConfig(max_steps=STEPS, max_width=WIDTH, threshold=TAU,
                                                         prune=False, seed=seed))
    c0 = [mm["token"] for mm in tr.steps()[0]["members"]]
    cfgs = [GenerationConfig(method="sample", max_steps=STEPS, temperature=TEMP, seed=seed * 1000 + j)
            for j in range(N_SAMPLES)]
    samples = A.sample_worlds(m.params, m.cfg, ids, cfgs)
    gold = quality.gold_first_token(m.tokenizer, p.reference)
    firsts = [int(t.arrays["tokens"][0, 0]) for t in samples]
    acc_s = float(np.mean([quality_of(m, p, t)["correct"] for t in samples]))
    return {"acc_tempo": float(quality_of(m, p, tr)["correct"]), "acc_sample": acc_s,
            "cov_tempo": float(gold in c0), "cov_sample": float(gold in firsts[:len(c0)]), "n0": len(c0)}


def run(ctx) -> Output:
    rows = []
    for p, r in ctx.map(lambda p: _one(ctx.model, p, ctx.seed)):
        rows.append({"prompt_id": p.id, "genre": p.genre, **r, "acc_diff": r["acc_tempo"] - r["acc_sample"],
                     "cov_diff": r["cov_tempo"] - r["cov_sample"]})
    mean = lambda c: 100 * np.mean([r[c] for r in rows])
    notes = [f"Accuracy: TEMPO {mean('acc_tempo'):.1f}%, samples {mean('acc_sample'):.1f}%; gold first token "
             f"explored at step 0: TEMPO {mean('cov_tempo'):.1f}%, count-matched samples {mean('cov_sample'):.1f}%; "
             f"mean |C_0| {np.mean([r['n0'] for r in rows]):.2f}."]
    return Output(rows=rows, notes=notes)


def answer(tests, design) -> str:
    by = {t.hypothesis: t for t in tests}
    pts = lambda t: f"{100 * t.estimate:+.1f} points [{100 * t.lo:+.1f}, {100 * t.hi:+.1f}] ({t.verdict})"
    out = []
    if "P" in by:
        out.append(f"Primary test P: on facts, TEMPO's clean path minus a T 1.0 sample in gold-answer accuracy "
                   f"{pts(by['P'])}")
    if "S1" in by:
        out.append(f"gold first token among the step-0 tokens explored, TEMPO minus as many samples {pts(by['S1'])}")
    return "; ".join(out) + "."
