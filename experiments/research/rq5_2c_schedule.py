"""RQ 5.2, confirmatory: does the SHAPE of a threshold schedule matter at a matched mean threshold?
Teacher-forced along the human text with rq5.1c's instrument (:mod:`experiments.research.rq5_1c_thresholds`).

The exploratory rq5.2 compared four rising schedules and a dev-learned one with constant 0.1 by
self-perplexity of free generations; a rising schedule then differs from 0.1 in how MANY members it
keeps as well as when. Here two conditions keep the same mean threshold over the 16 steps and differ
only in when the threshold is low: the linear schedule 0.1 -> 0.3 and the constant 0.2 (W 8, isolated
siblings, mixture combining, no pruning). Per prompt: the mean NLL of the reference tokens under
TEMPO's step distributions (primary ``dnll_lin_c020``, linear minus constant; prediction: equivalent
within log(1.1) nats per token) and how often the human token is among the candidates.
"""

from __future__ import annotations

from experiments.research.rq5_1c_thresholds import GEN, HORIZON, MARGIN, run_conditions
from tempo_jax.research import Design, Hypothesis, Output

CONDS = {"lin": dict(threshold=0.1, schedule="linear", threshold_final=0.3), "c020": dict(threshold=0.2)}

DESIGN = Design(
    id="rq5.2c",
    questions=("5.2",),
    title="Confirmatory: a linear threshold schedule vs a constant one at the same mean (teacher-forced)",
    primary_metric="mean NLL (nats per token) of the reference continuation's tokens under TEMPO's step "
                   "distributions (mixture), teacher-forced; per-prompt difference linear 0.1 -> 0.3 minus "
                   "constant 0.2",
    contrast="linear 0.1 -> 0.3 vs constant 0.2 (the same mean threshold over the steps), same prompt, "
             "same reference path",
    hypotheses=(
        Hypothesis("H1", "the linear schedule 0.1 -> 0.3 and the constant 0.2 give the same NLL of the human "
                         "text within +-log(1.1) = 0.095 nats per token", "dnll_lin_c020", "=0"),
        Hypothesis("S1", "the two hold the human token among the candidates equally often within +-10 "
                         "points", "dcov_lin_c020", "=0", family="secondary", bound=1.0, margin=0.10),
        Hypothesis("S2", "the two keep as many members per step within +-0.2", "dsize_lin_c020", "=0",
                   family="secondary", margin=0.2),
    ),
    margin=MARGIN,
    margin_note="log(1.1) = 0.095 nats per reference token (10% perplexity, the exploratory rq5.1's "
                "margin); 10 points of coverage; 0.2 members",
    metrics=("dnll_*", "dcov_*", "dsize_*", "nll_*", "cov_*", "size_*", "n_tokens"),
    families={"primary": "holm", "secondary": "holm"},
    split="confirm",
    n_per_genre=30,  # the pilots ask for 45 (SmolLM2) and 73 (Gemma 3)
    quick_n=10,
    exploratory=False,
    caveats=(
        "Teacher-forced: the reference token is forced in as member 0 at every step, the model's other "
        "candidates >= the step's threshold (at most 8) join it, no pruning.",
        f"The schedule runs over the first {HORIZON} reference tokens; a facts prompt (gold answer, 1-3 "
        "tokens) sees only its start, where the linear threshold is near 0.1.",
        "NLL is the model's probability of text it did not write, the same text in both conditions: a "
        "reference-based likelihood, not self-perplexity of generated text.",
    ),
    config={"generation": GEN, "conditions": CONDS, "horizon": HORIZON, "siblings": "isolated",
            "forcing": "rq4.3 forced_dist, member 0 (rq2.1c forced_run)"},
)


def run(ctx) -> Output:
    return Output(rows=run_conditions(ctx, CONDS))


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    h, c, s = by["dnll_lin_c020"], by["dcov_lin_c020"], by["dsize_lin_c020"]
    return (f"Teacher-forced along the human text, the linear schedule 0.1 -> 0.3 minus the constant 0.2 "
            f"(same mean threshold) changes TEMPO's NLL of the reference by {h.estimate:+.3f} [{h.lo:+.3f}, "
            f"{h.hi:+.3f}] nats/token ({h.verdict}); the human token among the candidates "
            f"{100 * c.estimate:+.1f} points [{100 * c.lo:+.1f}, {100 * c.hi:+.1f}] ({c.verdict}); members "
            f"per step {s.estimate:+.2f} [{s.lo:+.2f}, {s.hi:+.2f}] ({s.verdict}).")
