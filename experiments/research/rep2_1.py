"""Replication of finding 2.1, "isolation has minimal effect on attention to prior parallel tokens
(~10% difference)" (issue 15). The original compared the 1.1 ratio (parallel / non-parallel
attention per key) between its isolated and visible runs of "The cat sat on the": 0.482 vs 0.577.

1. original procedure: that ratio on the original loop with its isolated mask (reconstructed,
   :func:`rep_original.original_isolation_hidden`) vs the upstream-compatible (visible) run;
2. the same ratio on correct mechanics (slot maps, sink separate), isolated vs visible siblings;
3. the sound design: RQ 2.1's attention family (experiments/results/rq2.1), reused.
Per prompt the contrast is the difference of ratios, isolated - visible, in ratio points.
"""

from __future__ import annotations

import csv
import json

import numpy as np

from experiments.research import rep_original as R
from experiments.research import PROJECT
from tempo_jax.research import Design, Hypothesis, Output

MARGIN = 0.10  # "~10%": ten ratio points

DESIGN = Design(
    id="rep2.1",
    questions=("2.1",),
    title="Replication of finding 2.1: isolation barely changes attention to prior parallel tokens",
    primary_metric="per prompt, the 1.1 ratio (parallel / non-parallel attention per key) of the "
                   "isolated run minus that of the visible run (ratio points)",
    contrast="isolated vs visible runs of the same prompt and settings",
    hypotheses=(
        Hypothesis("O", "original procedure: isolated and visible ratios differ by less than 0.10",
                   "orig_d", "=0"),
        Hypothesis("C", "correct mechanics (sink separate): the ratios differ by less than 0.10",
                   "corr_d", "=0"),
    ),
    margin=MARGIN,
    margin_note="0.10 ratio points (the claim's ~10%)",
    metrics=("orig_d", "corr_d"),
    n_per_genre=8,
    quick_n=2,
    caveats=(
        "The two runs of a prompt diverge after their first different choice, so later steps "
        "compare different sequences (true of the original study too); RQ 2.1 has the same "
        "limitation and says so.",
        "The original isolated mask is reconstructed from its AttentionMaskBuilder: the fed token's "
        "row of a displayed-index mask applied to cache slots (see rep_original).",
        "Verdict rule: column 1 reproduces the claim when the single-prompt difference is within "
        "+-0.10 (the claim was made on that prompt; the corpus test is reported beside it); the sound design is RQ 2.1's "
        "attention test (visible vs isolated, +-10%): no effect -> holds, differs -> does not hold.",
    ),
    config={"tau": R.ORIGINAL_TAU, "steps": R.ORIGINAL_STEPS, "width": R.WIDTH,
            "prompt": R.ORIGINAL_PROMPT, "sound": "experiments/results/rq2.1"},
)


def run(ctx) -> Output:
    o = R.original_measure(ctx)
    rows = []
    for p, r in R.corpus_measures(ctx):
        rows.append({"prompt_id": p.id, "genre": p.genre, "orig_iso": r["up_iso"], "orig_vis": r["up"],
                     "corr_iso": r["iso"], "corr_vis": r["vis"],
                     "orig_d": r["up_iso"] - r["up"], "corr_d": r["iso"] - r["vis"]})
    table = [{"prompt": R.ORIGINAL_PROMPT, "orig_iso": o["up_iso"], "orig_vis": o["up"],
              "corr_iso": o["iso"], "corr_vis": o["vis"], "orig_iso_sets": str(o["up_iso_sizes"]),
              "orig_vis_sets": str(o["up_sizes"])}]
    return Output(rows=rows, tables={"original_prompt": table},
                  notes=[f"Original prompt: original procedure isolated {o['up_iso']:.3f} vs visible "
                         f"{o['up']:.3f} (original: 0.482 vs 0.577); correct mechanics isolated "
                         f"{o['iso']:.3f} vs visible {o['vis']:.3f}."])


def registered_equivalent(t: dict, alpha: float) -> bool:
    """Whether a stored "=0" test's equivalence (TOST, corrected) holds."""
    return t.get("p_tost_adj") is not None and t["p_tost_adj"] < alpha


def replication(result: dict, folder) -> dict:
    by = {t["column"]: t for t in result["tests"]}
    with open(folder / "table_original_prompt.csv") as f:
        o = {k: float(v) for k, v in next(csv.DictReader(f)).items() if k.startswith(("orig_", "corr_")) and "sets" not in k}
    n = result["provenance"]["n_prompts"]
    d = lambda t: f"{t['estimate']:+.3f} [{t['lo']:+.3f}, {t['hi']:+.3f}] ({t['verdict']})"
    rq_path = PROJECT.results / "rq2.1" / "result.json"
    sound, text = "cannot tell", "RQ 2.1 result missing"
    if rq_path.exists():
        rq = json.loads(rq_path.read_text())
        t = {x["column"]: x for x in rq["tests"]}["lpar_visible"]
        pct = lambda x: f"{100 * (np.exp(x) - 1):+.1f}%"
        text = (f"RQ 2.1 (n = {rq['provenance']['n_prompts']}): per-token attention to earlier parallel "
                f"members, visible vs isolated {pct(t['estimate'])} [{pct(t['lo'])}, {pct(t['hi'])}] "
                f"({t['verdict']})")
        # rq2.1 calls its attention contrasts descriptive (its registered question is quality), so
        # this contrast cannot make the claim "hold" in a sound design
        sound = "descriptive"
    return {
        "finding": "2.1 isolation barely changes attention to prior parallel tokens (~10%)",
        "original": f"original prompt: ratio isolated {o['orig_iso']:.2f} vs visible {o['orig_vis']:.2f}; "
                    f"{n} test prompts, isolated - visible {d(by['orig_d'])}",
        "correct": f"original prompt: {o['corr_iso']:.2f} vs {o['corr_vis']:.2f}; {n} test prompts "
                   f"{d(by['corr_d'])}",
        "sound": text,
        # the registered test is the test prompts' "= 0 within 0.10" (orig_d), not the one prompt
        "verdict": R.verdict_line(registered_equivalent(by["orig_d"], result["design"]["alpha"]), None, sound)
                   + f"; the original prompt alone: |isolated - visible| = {abs(o['orig_iso'] - o['orig_vis']):.2f} "
                     "(one prompt, descriptive)",
    }


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    d = lambda t: f"{t.estimate:+.3f} [{t.lo:+.3f}, {t.hi:+.3f}] ratio points ({t.verdict})"
    return (f"Isolated minus visible parallel/non-parallel ratio over the test prompts: original "
            f"procedure {d(by['orig_d'])}; correct mechanics {d(by['corr_d'])}.")
