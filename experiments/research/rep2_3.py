"""Replication of finding 2.3, "head entropy ranges from 0.40 (focused) to 1.21 (diffuse); layer
entropy shows a funnel: explore -> focus" (issue 15). The original figures are per-layer and
per-head means of one query's attention entropy at step 1 of "The cat sat on the".

1. original procedure: the range of layer means and head means (nats) of that query on an
   upstream-compatible run, and the funnel as Spearman rho of entropy vs layer index over the
   middle and late bands (negative = entropy falls towards the output);
2. the same on correct mechanics (the step that feeds set 0);
3. sound design: per test prompt (correct-mode run, all steps), the same rho (tested < 0), and
   the question's own link to uncertainty: Spearman rho over steps between attention entropy and
   set size (tested > 0, secondary). The entropy range per prompt is reported (rows).
"""

from __future__ import annotations

import csv

import numpy as np
from scipy import stats as sps

from experiments.research import rep_original as R
from tempo_jax.research import Design, Hypothesis, Output

DESIGN = Design(
    id="rep2.3",
    questions=("2.3",),
    title="Replication of finding 2.3: head entropy 0.40-1.21 and an explore-to-focus funnel",
    primary_metric="Spearman rho between layer index and layer attention entropy over the middle "
                   "and late bands, per prompt (a falling funnel is rho < 0)",
    contrast="within prompt, across layers; secondary: across steps, entropy vs set size",
    hypotheses=(
        Hypothesis("F", "entropy falls from the middle to the last layers (rho < 0)", "funnel_rho", "<0"),
        Hypothesis("U", "steps with more attention entropy select larger sets (rho > 0)",
                   "uncert_rho", ">0", family="uncertainty"),
    ),
    margin=0.1,
    margin_note="0.1 in Spearman rho",
    metrics=("funnel_rho", "uncert_rho"),
    families={"primary": "holm", "uncertainty": "holm"},
    n_per_genre=8,
    quick_n=2,
    caveats=(
        "Absolute entropy ranges depend on how many keys a query sees, so the original's 0.40-1.21 "
        "is compared only descriptively (range columns), not tested.",
        "uncert_rho is undefined (dropped) for a prompt whose sets all have one size.",
        "Verdict rule: columns 1-2 show the funnel when their rho < 0; the sound design holds when "
        "F differs (-), does not hold when it differs (+) or is equivalent within +-0.1, else "
        "cannot tell.",
    ),
    config={"tau": R.ORIGINAL_TAU, "steps": R.ORIGINAL_STEPS, "width": R.WIDTH,
            "prompt": R.ORIGINAL_PROMPT},
)


def funnel_rho(per_layer) -> float:
    """Spearman rho of entropy vs layer index over the middle and late bands."""
    x = np.asarray(per_layer, np.float64)
    keep = R.bands(len(x)) >= 1
    return float(sps.spearmanr(np.flatnonzero(keep), x[keep])[0])


def run(ctx, light: bool = False) -> Output:
    """``light``: the corpus prompts' correct isolated run only (the confirmatory replication)."""
    o = R.original_measure(ctx)
    rows = []
    for p, r in R.corpus_measures(ctx, light):
        he = r["head_ent"]
        sizes = np.asarray(r["sizes"], float)
        ur = float(sps.spearmanr(r["step_ent"], sizes)[0]) if np.ptp(sizes) > 0 else np.nan
        rows.append({"prompt_id": p.id, "genre": p.genre, "funnel_rho": funnel_rho(r["layer_ent"]),
                     "uncert_rho": ur, "head_ent_min": float(he.min()), "head_ent_max": float(he.max()),
                     "layer_ent_min": float(r["layer_ent"].min()), "layer_ent_max": float(r["layer_ent"].max())})
    table = []
    for name, le, he in (("original procedure", o["up_layer_ent"], o["up_head_ent"]),
                         ("correct mechanics", o["step0_layer_ent"], o["corr_head_ent"])):
        table.append({"column": name, "layer_min": float(le.min()), "layer_max": float(le.max()),
                      "head_min": float(he.min()), "head_max": float(he.max()), "funnel_rho": funnel_rho(le)})
    return Output(rows=rows, tables={"original_prompt": table})


def replication(result: dict, folder) -> dict:
    by = {t["column"]: t for t in result["tests"]}
    with open(folder / "table_original_prompt.csv") as f:
        cols = [{k: (float(v) if k != "column" else v) for k, v in c.items()} for c in csv.DictReader(f)]
    fmt = lambda c: (f"layer means {c['layer_min']:.2f}-{c['layer_max']:.2f}, head means "
                     f"{c['head_min']:.2f}-{c['head_max']:.2f} nats; funnel rho {c['funnel_rho']:+.2f}")
    t, u = by["funnel_rho"], by["uncert_rho"]
    sound = ("holds" if t["verdict"].startswith("differs (-)") else
             "does not hold" if t["verdict"].startswith(("differs (+)", "no effect")) else "cannot tell")
    return {
        "finding": "2.3 head entropy 0.40-1.21, funnel explore -> focus",
        "original": fmt(cols[0]),
        "correct": fmt(cols[1]),
        "sound": f"n = {result['provenance']['n_prompts']}: funnel rho {t['estimate']:+.2f} "
                 f"[{t['lo']:+.2f}, {t['hi']:+.2f}] ({t['verdict']}); entropy vs set size rho "
                 f"{u['estimate']:+.2f} [{u['lo']:+.2f}, {u['hi']:+.2f}] ({u['verdict']})",
        "verdict": R.verdict_line(cols[0]["funnel_rho"] < 0, None, sound),
    }


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    d = lambda t: f"{t.estimate:+.2f} [{t.lo:+.2f}, {t.hi:+.2f}] ({t.verdict})"
    return (f"Over the test prompts, Spearman rho of layer entropy vs depth in the middle and late "
            f"layers is {d(by['funnel_rho'])}; rho of step attention entropy vs set size is "
            f"{d(by['uncert_rho'])}.")
