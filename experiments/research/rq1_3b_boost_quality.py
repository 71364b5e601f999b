"""RQ 1.3b: does boosting later queries' attention to earlier parallel members at ONE layer band,
throughout a whole TEMPO generation, change the quality of the continuation?

RQ 1.3 measured the next-token KL of a one-layer boost on a single probe; this runs the boost in
whole generations (:func:`attn_control.bias_worlds`). Per prompt, 7 worlds of one vmapped program,
identical except for the bias the queries of step s add to their attention logits:

- none: no bias (the reference; equals ``generate`` with the same settings);
- boost at band (early 0-9 / mid 10-19 / late 20-29): a FIXED bias of +2 (each slot's attention
  weight times e^2 ~ 7.4 before renormalising; RQ 1.3's fitted single-token biases average 1.4
  over layers, up to 4.4) on the slots of earlier parallel members (alive slots of an earlier step
  whose set had more than one member), recomputed every step from that world's own state, in the
  band's layers only, every head;
- control at band: the same +2 on as many other context slots (prompt tokens and single-member
  steps, never the sink), chosen by a fixed random order per prompt: count-matched, NOT
  mass-matched (the attention they held is not equalised).

Quality of the clean continuation (``tempo_jax.quality``): self-perplexity, repeated 3-gram rate,
facts accuracy, code parse rate; and mean set size.
"""

from __future__ import annotations

import numpy as np

from experiments.research import attn_control as A
from tempo_jax.research import Design, Hypothesis, Output, quality_of

BIAS = 2.0
BANDS = {"early": range(0, 10), "mid": range(10, 20), "late": range(20, 30)}
GEN = dict(max_steps=16, threshold=0.1, max_width=8, prune=False)
PPL_MARGIN = float(np.log(1.1))
WORLDS = ("none",) + tuple(f"boost_{b}" for b in BANDS) + tuple(f"ctrl_{b}" for b in BANDS)

DESIGN = Design(
    id="rq1.3b",
    questions=("1.3",),
    title="One-band attention boost to earlier parallel members in whole generations: quality",
    primary_metric="self-perplexity of the clean continuation, per-prompt log ratio of a boosted "
                   "generation to the unboosted one",
    contrast="fixed +2 bias on earlier parallel members' slots at one layer band (0-9, 10-19, "
             "20-29) vs no bias; and vs the same bias on as many other context slots (count-matched)",
    hypotheses=(
        Hypothesis("P", "boosting parallel members at one band changes self-perplexity by less "
                        "than 10% (log ratio boost / none)", "lppl_boost_*", "=0"),
        Hypothesis("C", "boost vs count-matched control at the same band (log self-perplexity "
                        "ratio; within +-log 1.1)", "lppl_bvc_*", "=0", family="control"),
        Hypothesis("B", "the early band's boost moves log self-perplexity more than the late band's "
                        "(|log ratio| early - late)", "abs_early_minus_late", ">0", family="control"),
        Hypothesis("R", "repeated 3-gram rate, boost - none (within +-0.05)", "rep3_boost_*", "=0",
                   family="secondary", margin=0.05),
        Hypothesis("F", "facts accuracy, boost - none (within +-0.1)", "correct_boost_*", "=0",
                   family="secondary", margin=0.10, bound=1.0),
        Hypothesis("K", "code parse rate, boost - none (within +-0.1)", "parses_boost_*", "=0",
                   family="secondary", margin=0.10),
    ),
    margin=PPL_MARGIN,
    margin_note="log(1.1) for self-perplexity log ratios; 0.05 for repeat rate; 0.1 for facts "
                "accuracy and parse rate",
    metrics=("lppl_boost_*", "lppl_bvc_*", "abs_early_minus_late", "rep3_boost_*",
             "correct_boost_*", "parses_boost_*", "setsize_*", "npar_*", "ppl_*"),
    families={"primary": "holm", "control": "holm", "secondary": "holm"},
    n_per_genre=10,
    quick_n=1,
    caveats=(
        "The bias is fixed (+2), not fitted per layer as in RQ 1.3's probe: one dose, so a null "
        "result says nothing about larger boosts.",
        "The boost applies only once a parallel set exists; prompts whose generation has few "
        "parallel members are barely touched (mean number of boosted slots per step is in the rows, "
        "npar_*). Worlds diverge after the first changed token, so later steps compare different "
        "texts.",
        "The control is count-matched, not mass-matched: its slots held a different share of the "
        "attention before the bias.",
        "Self-perplexity is the model judging its own text; facts accuracy and parse rate come from "
        "their genre's prompts only (n = 10 each).",
        "n = 10 prompts per genre (30) to fit the compute budget (7 generations of 16 steps each).",
    ),
    config={"bias": BIAS, "bands": {k: [v.start, v.stop - 1] for k, v in BANDS.items()},
            "generation": GEN, "control": "count-matched random non-parallel context slots, no sink"},
)


def measure_prompt(m, p, seed: int) -> dict:
    """The 7 worlds of one prompt -> per-world quality, set size and boosted slot counts."""
    from tempo_jax.engine import GenerationConfig

    ids = list(m.tokenizer(p.prompt).input_ids)
    g = GenerationConfig(**GEN)
    K = A.check_request(m.cfg, g, ids)
    L = m.cfg.num_layers
    priority = np.random.default_rng(seed).random(K)
    counts = np.zeros(len(WORLDS))

    def bias_for(s, h):
        out = np.zeros((len(WORLDS), L, K), np.float32)
        for b, w in enumerate(WORLDS):
            if w == "none" or h["done"][b]:
                continue
            kind, band = w.split("_")
            par = A.parallel_slots(h["slot_step"][b], h["alive"][b], h["set_n"][b], s)
            sl = par if kind == "boost" else A.control_slots(par, h["slot_step"][b], h["alive"][b], s,
                                                             priority)
            counts[b] += sl.sum()
            out[b, BANDS[band].start:BANDS[band].stop] = BIAS * sl
        return out

    traces = A.bias_worlds(m.params, m.cfg, ids, g, len(WORLDS), bias_for)
    res = {}
    for b, (w, tr) in enumerate(zip(WORLDS, traces)):
        q = quality_of(m, p, tr)
        n = max(tr.n_steps, 1)
        res[w] = {"self_ppl": q["self_ppl"], "repeat_3": q["repeat_3"],
                  "correct": q.get("correct", np.nan), "parses": q.get("parses", np.nan),
                  "setsize": float(np.mean(tr.arrays["set_n"])) if tr.n_steps else np.nan,
                  "npar": counts[b] / n}
    return res


def run(ctx) -> Output:
    m = ctx.model
    rows, table = [], []

    def one(p):
        seed = int.from_bytes(p.id.encode()[-8:].rjust(8, b"\0"), "little") ^ ctx.seed
        return measure_prompt(m, p, seed % (2 ** 63))

    for p, r in ctx.map(one):
        base = r["none"]
        row = {"prompt_id": p.id, "genre": p.genre, "ppl_none": base["self_ppl"],
               "setsize_none": base["setsize"]}
        for band in BANDS:
            bo, ct = r[f"boost_{band}"], r[f"ctrl_{band}"]
            row[f"lppl_boost_{band}"] = float(np.log(bo["self_ppl"] / base["self_ppl"]))
            row[f"lppl_bvc_{band}"] = float(np.log(bo["self_ppl"] / ct["self_ppl"]))
            row[f"rep3_boost_{band}"] = bo["repeat_3"] - base["repeat_3"]
            if p.genre == "facts":
                row[f"correct_boost_{band}"] = bo["correct"] - base["correct"]
            if p.genre == "code":
                row[f"parses_boost_{band}"] = bo["parses"] - base["parses"]
            row[f"setsize_boost_{band}"] = bo["setsize"] - base["setsize"]
            row[f"npar_{band}"] = bo["npar"]
            row[f"ppl_boost_{band}"] = bo["self_ppl"]
            row[f"ppl_ctrl_{band}"] = ct["self_ppl"]
        row["abs_early_minus_late"] = abs(row["lppl_boost_early"]) - abs(row["lppl_boost_late"])
        rows.append(row)
        for w, x in r.items():
            table.append({"prompt_id": p.id, "genre": p.genre, "world": w, **x})
    notes = [_note(rows)]
    _figure(ctx, rows)
    return Output(rows=rows, tables={"worlds": table}, notes=notes)


def _note(rows) -> str:
    f = lambda k: np.nanmean([r[k] for r in rows])
    touched = np.mean([r["npar_early"] > 0 for r in rows])
    return (f"Boosted slots per step (mean over prompts): early {f('npar_early'):.2f}, mid "
            f"{f('npar_mid'):.2f}, late {f('npar_late'):.2f}; {100 * touched:.0f}% of prompts had at "
            f"least one boosted slot in the early-band world; mean set size without boost "
            f"{f('setsize_none'):.2f}.")


def _figure(ctx, rows):
    from experiments.plotting import ci_bars, pyplot
    from tempo_jax import stats as S

    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    x = np.arange(len(BANDS))
    for key, off, lab in (("lppl_boost", -0.1, "boost parallel members vs none"),
                          ("lppl_bvc", 0.1, "boost vs count-matched control")):
        st = [S.bootstrap_ci([r[f"{key}_{b}"] for r in rows], n_boot=1999) for b in BANDS]
        mean, err = ci_bars(st)
        ax[0].errorbar(x + off, mean, yerr=err, marker="o", ls="none", capsize=3, label=lab)
    ax[0].axhline(0, color="grey", lw=0.8)
    for s in (-1, 1):
        ax[0].axhline(s * PPL_MARGIN, color="grey", ls=":", lw=0.8)
    ax[0].set_xticks(x, [f"{b} ({BANDS[b].start}-{BANDS[b].stop - 1})" for b in BANDS])
    ax[0].set_xlabel("layer band of the +2 bias")
    ax[0].set_ylabel("log self-perplexity ratio")
    ax[0].set_title("Self-perplexity (mean, 95% BCa CI; dotted: +-log 1.1)", fontsize=10)
    ax[0].legend(fontsize=8)
    st = [S.bootstrap_ci([r[f"rep3_boost_{b}"] for r in rows], n_boot=1999) for b in BANDS]
    mean, err = ci_bars(st)
    ax[1].errorbar(x, mean, yerr=err, marker="o", ls="none", capsize=3)
    ax[1].axhline(0, color="grey", lw=0.8)
    ax[1].set_xticks(x, list(BANDS))
    ax[1].set_xlabel("layer band of the +2 bias")
    ax[1].set_ylabel("repeated 3-gram rate, boost - none")
    ax[1].set_title("Repetition", fontsize=10)
    fig.suptitle(f"RQ 1.3b: {len(rows)} prompts, whole TEMPO generations (16 steps, tau 0.1)", y=1.02)
    fig.tight_layout()
    ctx.figure(fig, "band_boost")


def answer(tests, design) -> str:
    ci = lambda t: f"{t.estimate:+.3f} [{t.lo:+.3f}, {t.hi:+.3f}]"
    by = {t.column: t for t in tests}
    band = lambda c: c.rsplit("_", 1)[1]

    def group(prefix):
        order = {b: i for i, b in enumerate(BANDS)}
        ts = sorted((t for t in tests if t.column.startswith(prefix)),
                    key=lambda t: order.get(band(t.column), 9))
        return "; ".join(f"{band(t.column)} {ci(t)} ({t.verdict})" for t in ts)

    b = by.get("abs_early_minus_late")
    tail = (f" The early band moves self-perplexity {'more' if b.verdict.startswith('differs (+)') else 'less' if b.verdict.startswith('differs (-)') else 'not detectably more'} than the late band (|log ratio| difference {ci(b)}, {b.verdict})."
            if b is not None else "")
    return ("A fixed +2 attention-logit boost to earlier parallel members at one layer band during "
            "whole TEMPO generations changes log self-perplexity vs no boost by: " + group("lppl_boost_")
            + "; vs the same bias on as many other context slots: " + group("lppl_bvc_") + "." + tail)
