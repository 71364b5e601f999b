"""Replication of finding 1.3, the layer-entropy pattern "early layers mixed, middle layers high
entropy (exploratory), late layers low (focused)" (issue 15). The original read one query over
about eight keys at step 1 of "The cat sat on the" (layers 0-5 / 6-15 / 16-27 of 28).

1. original procedure: layer entropy (nats; mean over heads) of the upstream-compatible run's
   step-1 query, band means with the bands mapped by relative depth;
2. the same on correct mechanics: the queries of the step that feeds set 0;
3. sound design: per test prompt, attention entropy per layer (mean over heads, queries and the
   10 steps of a correct-mode run); middle band minus late band and middle minus early, tested
   over prompts; secondary: the same with the sink removed and the rows renormalised.
"""

from __future__ import annotations

import csv

import numpy as np

from experiments.research import rep_original as R
from tempo_jax.research import Design, Hypothesis, Output

MARGIN = 0.05

DESIGN = Design(
    id="rep1.3",
    questions=("1.3",),
    title="Replication of finding 1.3: early mixed, middle high, late low layer entropy",
    primary_metric="attention entropy (nats) per layer, mean over heads, queries and steps; band "
                   "means (early / middle / late = 0-5 / 6-15 / 16-27 of 28 layers by relative depth)",
    contrast="middle band vs late band, middle band vs early band, within prompt",
    hypotheses=(
        Hypothesis("ML", "middle layers have higher entropy than late layers", "mid_minus_late", ">0"),
        Hypothesis("ME", "middle layers have higher entropy than early layers", "mid_minus_early", ">0"),
        Hypothesis("NL", "sink removed: middle higher than late", "ns_mid_minus_late", ">0",
                   family="nosink"),
        Hypothesis("NE", "sink removed: middle higher than early", "ns_mid_minus_early", ">0",
                   family="nosink"),
    ),
    margin=MARGIN,
    margin_note="0.05 nats",
    metrics=("mid_minus_late", "mid_minus_early", "ns_mid_minus_late", "ns_mid_minus_early"),
    families={"primary": "holm", "nosink": "holm"},
    n_per_genre=8,
    quick_n=2,
    caveats=(
        "Absolute entropies depend on how many keys a query sees (prompt length, step), so only "
        "within-prompt band contrasts are tested.",
        "Bands of SmolLM2's 30 layers: early 0-5, middle 6-16, late 17-29 (relative depth of the "
        "original's 0-5 / 6-15 / 16-27 of 28).",
        "Verdict rule: columns 1-2 show the pattern when the middle band's mean is the highest; "
        "the sound design holds when both primary tests differ (+), does not hold when either "
        "differs (-) or is equivalent within +-0.05 nats, else cannot tell.",
    ),
    config={"tau": R.ORIGINAL_TAU, "steps": R.ORIGINAL_STEPS, "width": R.WIDTH,
            "prompt": R.ORIGINAL_PROMPT, "bands": "relative depth 6/28, 16/28"},
)


def run(ctx, light: bool = False) -> Output:
    """``light``: the corpus prompts' correct isolated run only (the confirmatory replication)."""
    o = R.original_measure(ctx)
    rows, per_layer = [], []
    for p, r in R.corpus_measures(ctx, light):
        e, m, l = R.band_means(r["layer_ent"])
        ne, nm, nl = R.band_means(r["layer_ent_nosink"])
        rows.append({"prompt_id": p.id, "genre": p.genre, "early": e, "middle": m, "late": l,
                     "mid_minus_late": m - l, "mid_minus_early": m - e,
                     "ns_mid_minus_late": nm - nl, "ns_mid_minus_early": nm - ne})
        per_layer.append(r["layer_ent"])
    table = []
    for name, x in (("original procedure", o["up_layer_ent"]), ("correct mechanics", o["step0_layer_ent"])):
        b = R.band_means(x)
        table.append({"column": name, "early": b[0], "middle": b[1], "late": b[2],
                      "middle_highest": R.funnel(x), "min": float(np.min(x)), "max": float(np.max(x))})
    _figure(ctx, np.asarray(per_layer), o)
    return Output(rows=rows, tables={"original_prompt": table, "layers": [
        {"layer": i, "original_procedure": o["up_layer_ent"][i], "correct_step0": o["step0_layer_ent"][i],
         "corpus_mean": float(np.mean(np.asarray(per_layer)[:, i]))} for i in range(len(o["up_layer_ent"]))]})


def _figure(ctx, per_layer, o):
    from experiments.plotting import ci_bars, pyplot
    from tempo_jax import stats as S

    plt = pyplot()
    L = per_layer.shape[1]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    mean, err = ci_bars([S.bootstrap_ci(per_layer[:, i], n_boot=999) for i in range(L)])
    ax.errorbar(range(L), mean, yerr=err, marker="o", ms=3, capsize=2,
                label=f"sound: {len(per_layer)} test prompts, all steps (95% BCa CI)")
    ax.plot(range(L), o["up_layer_ent"], "s--", ms=3, label="original procedure, one query (step 1)")
    ax.plot(range(L), o["step0_layer_ent"], "^:", ms=3, label="correct mechanics, step feeding set 0")
    b = R.bands(L)
    for edge in np.flatnonzero(np.diff(b)) + 0.5:
        ax.axvline(edge, color="grey", lw=0.8)
    ax.set_xlabel("layer (bands: early | middle | late)")
    ax.set_ylabel("attention entropy (nats)")
    ax.set_title(f'Finding 1.3 replicated: layer entropy ("{R.ORIGINAL_PROMPT}" and test prompts)')
    ax.legend(fontsize=8)
    ctx.figure(fig, "layer_entropy")


def _sound(by) -> str:
    prim = [by["mid_minus_late"], by["mid_minus_early"]]
    if all(t["verdict"].startswith("differs (+)") for t in prim):
        return "holds"
    if any(t["verdict"].startswith(("differs (-)", "no effect")) for t in prim):
        return "does not hold"
    return "cannot tell"


def replication(result: dict, folder) -> dict:
    by = {t["column"]: t for t in result["tests"]}
    with open(folder / "table_original_prompt.csv") as f:
        cols = list(csv.DictReader(f))
    fmt = lambda c: (f"early {float(c['early']):.2f} / middle {float(c['middle']):.2f} / late "
                     f"{float(c['late']):.2f} nats")
    d = lambda t: f"{t['estimate']:+.3f} [{t['lo']:+.3f}, {t['hi']:+.3f}] ({t['verdict']})"
    return {
        "finding": "1.3 layer entropy: early mixed, middle high, late low",
        "original": fmt(cols[0]),
        "correct": fmt(cols[1]),
        "sound": f"n = {result['provenance']['n_prompts']}: middle - late {d(by['mid_minus_late'])}; "
                 f"middle - early {d(by['mid_minus_early'])}; sink removed: middle - late "
                 f"{d(by['ns_mid_minus_late'])}",
        "verdict": R.verdict_line(cols[0]["middle_highest"] == "True", None, _sound(by))
                   + f"; correct mechanics, one query: middle band {'highest' if cols[1]['middle_highest'] == 'True' else 'not highest'}",
    }


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    d = lambda t: f"{t.estimate:+.3f} nats [{t.lo:+.3f}, {t.hi:+.3f}] ({t.verdict})"
    return (f"Over the test prompts, middle minus late layer entropy is {d(by['mid_minus_late'])} "
            f"and middle minus early {d(by['mid_minus_early'])}; with the sink removed "
            f"{d(by['ns_mid_minus_late'])} and {d(by['ns_mid_minus_early'])}.")
