"""RQ 1.3 ("can we intervene at specific layers to modify behavior?"), rq1.3b's quality question,
confirmatory and teacher-forced: does a fixed attention boost toward earlier parallel members at ONE
layer band change how well TEMPO predicts human text, more than the same boost on as many other
context tokens?

rq1.3b boosted whole free generations and judged them by self-perplexity; boosted and unboosted
texts drifted apart, so every band's CI spanned about +-0.5. Here every world follows the same text:
along the prompt's reference continuation (rq2.1c's design, :func:`rq2_1c.forced_run`), at each
step the engine's distribution scores the reference token, which is then forced into the step's set
as member 0 (the model's other candidates >= tau join it); member 0's own next-token distribution
is the next step's (``combine="top"``). Seven worlds of one vmapped program
(:func:`attn_control.bias_worlds`), identical except for the bias the step's queries add to their
attention logits in one band of layers (thirds by depth), every head:

- none: no bias;
- boost at band (early / middle / late third): +2 on the slots of earlier parallel members (alive
  slots of an earlier step whose set had more than one member), recomputed every step;
- control at band: +2 on as many other context slots (prompt tokens and single-member steps, never
  the sink), in a fixed random order per prompt (count-matched, not mass-matched).

Outcome per world: the mean NLL (nats per token) of the reference tokens. ONE primary test: boost
minus control at the early third, 0 within +-0.1 nats per token (TOST; either direction of a
difference is a finding; rq2.1c's margin: at +-0.05 the dev pilots' SD, 0.28 nats on SmolLM2, asks
for about 270 prompts). The early third because rq1.3c found a set's effect on a later query's
prediction enters mostly there on both families. Secondary (Holm): boost minus control at the
middle and late thirds; boost minus none at each third.
"""

from __future__ import annotations

import numpy as np

from experiments.research import attn_control as A
from experiments.research.rq2_1c_isolation import GEN, HORIZON
from experiments.research.rq3_1c_reference import reference_ids
from experiments.research.rq4_3_error_correction import forced_dist
from tempo_jax.research import Design, Hypothesis, Output

BIAS = 2.0
BANDS = ("early", "mid", "late")
WORLDS = ("none",) + tuple(f"boost_{b}" for b in BANDS) + tuple(f"ctrl_{b}" for b in BANDS)
MARGIN = 0.1  # nats per token (about 10% perplexity; rq2.1c's margin)

DESIGN = Design(
    id="rq1.3bc",
    questions=("1.3",),
    title="Confirmatory: a one-band attention boost to earlier parallel members and TEMPO's likelihood "
          "of human text (teacher-forced)",
    primary_metric="mean NLL (nats per token) of the reference continuation's tokens under TEMPO, "
                   "teacher-forced, with a +2 attention-logit boost at one third of the layers",
    contrast="boost on earlier parallel members' slots vs the same boost on as many other context "
             "slots (count-matched), same band, same text; and boost vs no bias",
    hypotheses=(
        Hypothesis("P", "a +2 boost to earlier parallel members in the first third of layers changes the "
                        "NLL of human text as much as the same boost on other context tokens (boost - "
                        "control, within +-0.1 nats per token)", "bvc_early", "=0"),
        Hypothesis("CM", "boost - control at the middle third (within +-0.1)", "bvc_mid", "=0",
                   family="secondary"),
        Hypothesis("CL", "boost - control at the last third (within +-0.1)", "bvc_late", "=0",
                   family="secondary"),
        Hypothesis("B", "boost - no bias at each third (within +-0.1)", "boost_*", "=0", family="secondary"),
    ),
    margin=MARGIN,
    margin_note="0.1 nats per token (about 10% in perplexity; rq2.1c's margin)",
    metrics=("bvc_*", "boost_*", "ctrl_*", "nll_*", "npar_*", "n_tokens"),
    families={"primary": "holm", "secondary": "holm"},
    split="confirm",
    n_per_genre=62,  # the pilots ask for 70 (SmolLM2) and 178 (Gemma 3)
    quick_n=10,
    caveats=(
        "The bias is fixed (+2: each slot's attention weight times e^2 before renormalising), one dose; "
        "a null result says nothing about larger boosts.",
        "The boost acts only once a parallel set exists, and earlier sets hold the reference token "
        "itself as member 0 beside its siblings: the boost raises attention to the text's own earlier "
        "tokens at those steps as well as to the alternatives. The control is count-matched, not "
        "mass-matched.",
        "Bands are thirds of the layers by depth (SmolLM2: 0-9 / 10-19 / 20-29; Gemma 3 270M: 0-5 / "
        "6-11 / 12-17).",
        f"The first {HORIZON} reference tokens (facts: the gold answer, 1-3 tokens).",
        "NLL of a text the model did not write, so it does not come from the model's own choices; it "
        "is still the model's probability of that text, not an outside judge.",
    ),
    config={"bias": BIAS, "generation": GEN, "horizon": HORIZON, "worlds": WORLDS,
            "control": "count-matched random non-parallel context slots, no sink",
            "forcing": "rq4.3 forced_dist, member 0, every world"},
)


def bands(n_layers: int) -> dict[str, range]:
    """Thirds of the layers by depth: ``{"early": range, "mid": range, "late": range}``."""
    sizes = [len(p) for p in np.array_split(np.arange(n_layers), 3)]
    ends = np.cumsum(sizes)
    return {b: range(int(e - n), int(e)) for b, n, e in zip(BANDS, sizes, ends)}


def forced_worlds(m, prompt_ids, ref_ids, seed: int) -> dict:
    """The seven worlds of one prompt along ``ref_ids`` -> per world: NLL per reference token ``[S]``,
    set sizes ``[S]`` and boosted (or control) slots per step."""
    import jax

    from tempo_jax.engine import GenerationConfig

    steps = len(ref_ids)
    g = GenerationConfig(**GEN, max_steps=steps, min_steps=steps)
    spec, inputs = g.static(), g.inputs(m.cfg)
    K = A.check_request(m.cfg, g, list(prompt_ids))
    L = m.cfg.num_layers
    band = bands(L)
    priority = np.random.default_rng(seed).random(K)
    B = len(WORLDS)
    nll = np.full((B, steps), np.nan)
    counts = np.zeros((B, steps))
    count = jax.vmap(lambda d, t: spec.selection.count(d, t), in_axes=(0, None))

    def force(s, st):
        r = int(ref_ids[s])
        nll[:, s] = -np.log(np.maximum(np.asarray(st.dist[:, r], np.float64), 1e-30))
        fd = jax.vmap(lambda d: forced_dist(d, r))(st.dist)
        return st.replace(dist=fd, next_n=count(fd, inputs.thresholds[s]))

    def bias_for(s, h):
        out = np.zeros((B, L, K), np.float32)
        for b, w in enumerate(WORLDS):
            if w == "none":
                continue
            kind, where = w.split("_")
            par = A.parallel_slots(h["slot_step"][b], h["alive"][b], h["set_n"][b], s)
            sl = par if kind == "boost" else A.control_slots(par, h["slot_step"][b], h["alive"][b], s, priority)
            counts[b, s] = sl.sum()
            out[b, band[where].start:band[where].stop] = BIAS * sl
        return out

    traces = A.bias_worlds(m.params, m.cfg, list(prompt_ids), g, B, bias_for, before_step=force)
    out = {}
    for b, (w, tr) in enumerate(zip(WORLDS, traces)):
        tokens = np.asarray(tr.arrays["tokens"])[:steps, 0]
        if not np.array_equal(tokens, np.asarray(ref_ids)):
            raise RuntimeError(f"world {w} left the reference ({tokens.tolist()} vs {list(ref_ids)})")
        out[w] = {"nll": nll[b], "size": np.asarray(tr.arrays["set_n"])[:steps].astype(np.float64),
                  "slots": counts[b]}
    return out


def run(ctx) -> Output:
    m = ctx.model

    def one(p):
        pi, ri = reference_ids(m.tokenizer, p.prompt, p.reference, p.genre)
        seed = int.from_bytes(p.id.encode()[-8:].rjust(8, b"\0"), "little") ^ ctx.seed
        return forced_worlds(m, pi, ri[:HORIZON], seed % (2 ** 63))

    rows = []
    for p, r in ctx.map(one):
        nll = {w: float(np.mean(r[w]["nll"])) for w in WORLDS}
        row = {"prompt_id": p.id, "genre": p.genre, "n_tokens": len(r["none"]["nll"]),
               **{f"nll_{w}": v for w, v in nll.items()}}
        for b in BANDS:
            row[f"bvc_{b}"] = nll[f"boost_{b}"] - nll[f"ctrl_{b}"]
            row[f"boost_{b}"] = nll[f"boost_{b}"] - nll["none"]
            row[f"ctrl_{b}"] = nll[f"ctrl_{b}"] - nll["none"]
            row[f"npar_{b}"] = float(np.mean(r[f"boost_{b}"]["slots"]))
        rows.append(row)
    _figure(ctx, rows)
    return Output(rows=rows)


def _figure(ctx, rows):
    from experiments.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(BANDS))
    for i, (pre, label) in enumerate((("boost", "boost - none"), ("ctrl", "control - none"),
                                      ("bvc", "boost - control"))):
        vals = [np.asarray([r[f"{pre}_{b}"] for r in rows], np.float64) for b in BANDS]
        ax.errorbar(x + (i - 1) * 0.2, [v.mean() for v in vals],
                    yerr=[1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0 for v in vals],
                    fmt="o", capsize=3, label=label)
    ax.axhspan(-MARGIN, MARGIN, color="0.85", label=f"+-{MARGIN} nats")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, ["first third", "middle third", "last third"])
    ax.set_ylabel("NLL of the human text (nats/token)")
    ax.set_title(f"+{BIAS:g} attention boost by layer band, teacher-forced ({len(rows)} prompts; mean, 95% t CI)")
    ax.legend(fontsize=8)
    ctx.figure(fig, "bands")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    d = lambda c: (f"{by[c].estimate:+.3f} [{by[c].lo:+.3f}, {by[c].hi:+.3f}] ({by[c].verdict})"  # noqa: E731
                   if c in by else "n/a")
    return (f"Primary test P (boost on earlier parallel members minus the same boost on other context "
            f"tokens, first third of layers): {d('bvc_early')} nats per token. Middle third "
            f"{d('bvc_mid')}, last third {d('bvc_late')}. Boost minus no bias: first {d('boost_early')}, "
            f"middle {d('boost_mid')}, last {d('boost_late')}.")
