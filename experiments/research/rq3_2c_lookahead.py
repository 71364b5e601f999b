"""RQ 3.2 and 3.3, confirmatory: which layers' look-ahead attention, and how many look-ahead queries,
pick the token the reference continues with?

The exploratory rq3.2 judged branches by the model's own continuation likelihood or by short greedy
branches (few sets decided gold or parse), and rq3.3 measured how much each window prunes, not
whether it prunes the right member. Here the outcome is outside the pruning rule and outside the
model's own judgement, as in rq3.1c: a judged set (teacher-forced along the human text or the gold
answer; >= 2 members, one of them the reference token) is read by K = 5 look-ahead queries, TEMPO's
clean path after the set (:mod:`experiments.research.reference_sets`, ``lookahead``), and every
query's attention on every member is kept per layer (mean over heads).

A pruning score is a mean of that attention over a set of layers and the first k queries. Its
quality on a set is the within-set concordance of the reference member (share of its pairs with its
siblings in which it scores higher, ties 1/2) minus 1/2; it does not depend on how many members a
rule prunes. Per prompt (the unit): the mean over its judged sets.

- 3.2 (layers; window 2, the engine default): early / middle / late thirds of the model's layers
  (L // 3, 2 L // 3) and all layers. Primary ``d_late_early``: late third minus early third (the
  question's hypothesis: late layers are the most predictive).
- 3.3 (look-ahead window; all layers): windows of 1, 2, 3, 5 queries. Primary ``d_w5_w1``: five
  queries minus one. Secondary: 2 and 3 vs 1, the relative rule's reference retention at 5 vs 1
  (rho 0.8), a decaying weighting of the five queries (weights 1/2^(i-1)) vs the uniform mean, and
  five queries vs the selection probability.
"""

from __future__ import annotations

import numpy as np

from experiments.research.reference_sets import JudgedSets, measure
from experiments.research.rq3_1c_reference import reference_ids
from tempo_jax.research import Design, Hypothesis, Output

TAU = 0.05
WIDTH = 8
HORIZON = 32
K = 5
WINDOWS = (1, 2, 3, 5)
LAYER_WINDOW = 2
RHO = 0.8
MARGIN = 0.05
GROUPS = ("early", "middle", "late", "all")

DESIGN = Design(
    id="rq3.2c",
    questions=("3.2", "3.3"),
    title="Confirmatory: which layers' and how many look-ahead queries' attention picks the reference "
          "token",
    primary_metric="within-set concordance of a pruning score with the reference member (the token the "
                   "human text or gold answer continues with) minus 1/2, per-prompt mean over judged sets",
    contrast="3.2: late third vs early third of layers (window 2); 3.3: five look-ahead queries vs one "
             "(all layers); same sets, same queries",
    hypotheses=(
        Hypothesis("H32", "the late third of layers' look-ahead attention ranks the reference member "
                          "above its siblings more often than the early third's (3.2)",
                   "d_late_early", ">0", bound=1.0, sesoi=0.10),
        Hypothesis("H33", "five look-ahead queries rank the reference member above its siblings more "
                          "often than one query (3.3)", "d_w5_w1", ">0", bound=1.0),
        Hypothesis("S32m", "the middle third vs the early third (3.2)", "d_middle_early", "=0",
                   family="secondary", bound=1.0),
        Hypothesis("S32a", "the late third vs all layers (3.2)", "d_late_all", ">0", family="secondary",
                   bound=1.0),
        Hypothesis("S33w", "two and three look-ahead queries vs one (3.3)", "d_w[23]_w1", ">0",
                   family="secondary", bound=1.0),
        Hypothesis("S33k", "the relative rule (rho 0.8) keeps the reference token more often with five "
                           "look-ahead queries than with one (3.3)", "keep_w5_w1", ">0",
                   family="secondary", bound=1.0),
        Hypothesis("S33d", "weighting earlier look-ahead queries more (1/2^(i-1)) ranks as the uniform "
                           "mean of five does (3.3, decay)", "d_decay", "=0", family="secondary", bound=1.0),
        Hypothesis("S33p", "five look-ahead queries rank the reference member above its siblings more "
                           "often than the selection probability does", "d_w5_prob", ">0",
                   family="secondary", bound=1.0),
    ),
    margin=MARGIN,
    # H32's smallest effect of interest is 0.10 of concordance: a layer third must pick the reference
    # member 10 points more often than another to be worth a layer-specific pruning weight (the
    # exploratory rq3.2's layer contrasts were 0.1-0.15 where they showed); at 0.05 the dev pilots ask
    # for about 660 prompts (SmolLM2; Gemma 3 about 380): about an hour of Gemma 3 on 2 cores at ~5 s per
    # prompt per model, which this session does not have
    margin_note="0.05 of concordance (probability that the reference member outranks a sibling) or of "
                "reference retention",
    metrics=("d_*", "keep_*", "conc_*", "n_judged"),
    families={"primary": "holm", "secondary": "holm"},
    split="confirm",
    n_per_genre=80,  # the pilots ask for 209 (H32, SmolLM2); a few prompts have no judged set
    quick_n=10,
    exploratory=False,
    caveats=(
        "Teacher-forced: each set stands in for the one TEMPO would build at that reference position, "
        "with the reference text as context; the look-ahead queries are TEMPO's clean path after the set "
        "(greedy from the top-1 member), siblings isolated, no pruning before the set.",
        f"Sets: tau {TAU}, at most {WIDTH} members, the first {HORIZON} reference tokens; a prompt with no "
        "judged set has no row values and drops out of the tests.",
        "Layer thirds are L // 3 and 2 L // 3 of each model's L layers (SmolLM2 0-9 / 10-19 / 20-29; "
        "Gemma 3 270M 0-5 / 6-11 / 12-17); attention is the mean over heads of each layer.",
        "Facts references are the gold answer (1-3 tokens), so facts prompts contribute few sets.",
    ),
    config={"tau": TAU, "width": WIDTH, "horizon": HORIZON, "lookahead": K, "windows": list(WINDOWS),
            "layer_window": LAYER_WINDOW, "rho": RHO, "siblings": "isolated"},
)


def concordance(x: np.ndarray, ref: int) -> float:
    """Share of member ``ref``'s pairs with its siblings in which ``x`` is higher for it (ties 1/2)."""
    others = np.arange(len(x)) != ref
    return float(np.mean((x[ref] > x[others]) + 0.5 * (x[ref] == x[others])))


def groups(L: int) -> dict[str, slice]:
    a, b = L // 3, 2 * L // 3
    return {"early": slice(0, a), "middle": slice(a, b), "late": slice(b, L), "all": slice(0, L)}


def set_stats(s: JudgedSets, rho: float = RHO) -> dict:
    """Per-prompt statistics of its judged sets read by K look-ahead queries (``s.steps[S,K,L,W]``);
    NaN where it has none. ``layer_l``: concordance of layer l alone at the layer window (descriptive)."""
    L = s.steps.shape[2]
    g = groups(L)
    decay = 0.5 ** np.arange(K)
    keys = ([f"conc_{n}" for n in GROUPS] + [f"conc_w{w}" for w in WINDOWS]
            + ["conc_decay", "conc_prob", "keep_w1", "keep_w5"] + [f"layer_{i:02d}" for i in range(L)])
    vals: dict[str, list[float]] = {k: [] for k in keys}
    for i, n in enumerate(s.n):
        a = s.steps[i, :, :, :n]  # [K,L,n]
        ref = int(np.flatnonzero(s.is_ref[i, :n])[0])
        for name, sl in g.items():
            vals[f"conc_{name}"].append(concordance(a[:LAYER_WINDOW, sl].mean((0, 1)), ref))
        for w in WINDOWS:
            vals[f"conc_w{w}"].append(concordance(a[:w].mean((0, 1)), ref))
        vals["conc_decay"].append(concordance(np.tensordot(decay / decay.sum(), a.mean(1), 1), ref))
        vals["conc_prob"].append(concordance(s.prob[i, :n], ref))
        for w in (1, 5):
            score = a[:w].mean((0, 1))
            vals[f"keep_w{w}"].append(float(score[ref] >= rho * score.mean()))
        for layer in range(L):
            vals[f"layer_{layer:02d}"].append(concordance(a[:LAYER_WINDOW, layer].mean(0), ref))
    if len(s.n) == 0:
        m = {k: float("nan") for k in keys}
    else:
        m = {k: float(np.mean(v)) for k, v in vals.items()}
    out = {k: v - 0.5 if k.startswith(("conc_", "layer_")) else v for k, v in m.items()}
    out |= {"d_late_early": m["conc_late"] - m["conc_early"], "d_middle_early": m["conc_middle"] - m["conc_early"],
            "d_late_all": m["conc_late"] - m["conc_all"], "d_w5_w1": m["conc_w5"] - m["conc_w1"],
            "d_w2_w1": m["conc_w2"] - m["conc_w1"], "d_w3_w1": m["conc_w3"] - m["conc_w1"],
            "keep_w5_w1": m["keep_w5"] - m["keep_w1"], "d_decay": m["conc_decay"] - m["conc_w5"],
            "d_w5_prob": m["conc_w5"] - m["conc_prob"], "n_judged": int(len(s.n))}
    return out


def run(ctx) -> Output:
    m = ctx.model

    def one(p):
        pi, ri = reference_ids(m.tokenizer, p.prompt, p.reference, p.genre)
        return measure(m.params, m.cfg, pi, ri, TAU, WIDTH, HORIZON, lookahead=K)

    rows = [{"prompt_id": p.id, "genre": p.genre, **set_stats(s)} for p, s in ctx.map(one)]
    _figure(ctx, rows, m.cfg.num_layers)
    return Output(rows=rows, notes=[f"{sum(r['n_judged'] for r in rows)} judged sets over {len(rows)} "
                                    f"prompts; {sum(r['n_judged'] == 0 for r in rows)} prompts had none."])


def _figure(ctx, rows, L: int):
    from experiments.plotting import pyplot

    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for genre in sorted({r["genre"] for r in rows}):
        rs = [r for r in rows if r["genre"] == genre and r["n_judged"]]
        if not rs:
            continue
        a1.plot(range(L), [np.mean([r[f"layer_{i:02d}"] for r in rs]) for i in range(L)], label=genre)
        a2.plot(WINDOWS, [np.mean([r[f"conc_w{w}"] for r in rs]) for w in WINDOWS], marker="o", label=genre)
    for ax in (a1, a2):
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel("concordance with the reference - 1/2")
        ax.legend(fontsize=8)
    a1.set_xlabel(f"layer (attention of the first {LAYER_WINDOW} look-ahead queries)")
    a2.set_xlabel("look-ahead queries (all layers)")
    a1.set_title("RQ 3.2c: per layer")
    a2.set_title("RQ 3.3: per window")
    fig.tight_layout()
    ctx.figure(fig, "layers_windows")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}

    def f(col):
        t = by[col]
        return f"{t.estimate:+.3f} [{t.lo:+.3f}, {t.hi:+.3f}] ({t.verdict})"

    return (f"3.2: the late third of layers' look-ahead attention ranks the reference member above its "
            f"siblings {f('d_late_early')} more (concordance) than the early third's; middle vs early "
            f"{f('d_middle_early')}, late vs all layers {f('d_late_all')}. 3.3: five look-ahead queries vs "
            f"one {f('d_w5_w1')}; two {f('d_w2_w1')}, three {f('d_w3_w1')}; the relative rule keeps the "
            f"reference token {f('keep_w5_w1')} more often with five; decaying weights vs uniform "
            f"{f('d_decay')}; five queries vs selection probability {f('d_w5_prob')}.")
