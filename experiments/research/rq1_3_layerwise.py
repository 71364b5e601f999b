"""RQ 1.3: layer by layer, where does a parallel set reach a later query, and at which layer does
boosting the query's attention to the set change the prediction most?

Instrument: :mod:`experiments.research.layer_probe`. Per prompt the top-5 next tokens form one
isolated set at the shared position P; a probe (the greedy next token after the top-1 member) at the
natural next position P + 1 reads it. Three readings, all on the probe's next-token distribution:

1. Causal emergence: the probe sees the members in layers < c only (c = 0..30); the fraction of the
   full effect KL(present || ablated) that layers < c deliver is ``f(c) = 1 - KL(present || c) /
   KL(present || ablated)``; per layer l its increment ``f(l+1) - f(l)``.
2. Logit lens (descriptive): KL between the lens readings of the probe's residual after each layer,
   set present vs ablated; attention to the members per layer.
3. Intervention, ONE layer at a time: a bias on the members' attention logits at layer l, fitted (in
   closed form, exact) so that each member gets the per-token attention a single token at P gets
   there (the dilution of RQ 1.1 undone), vs a control that moves the same attention mass onto 5
   random prompt tokens at that layer. KL(boosted || unboosted) per layer.
"""

from __future__ import annotations

import numpy as np

from tempo_jax.research import Design, Hypothesis, Output
from experiments.research.layer_probe import measure
from experiments.research.tables import ci_cells
from experiments.research.wording import said
from tempo_jax import stats as S

N_SET = 5
EPS = 1e-4  # nats, added to KLs before logs (a KL below it counts as no change)
THIRDS = ((0, 10), (10, 20), (20, 30))  # SmolLM2's 30 layers; thirds(L) in general


def thirds(L: int) -> tuple[tuple[int, int], ...]:
    """Early, middle and late layer ranges of an L-layer model (THIRDS for L = 30)."""
    a, b = L // 3, 2 * L // 3
    return ((0, a), (a, b), (b, L))
LOG15 = float(np.log(1.5))

DESIGN = Design(
    id="rq1.3",
    questions=("1.3",),
    title="Layer-wise processing of a parallel set: where its effect emerges, where a boost matters",
    primary_metric="the probe's next-token distribution: share of the set's effect (KL present vs "
                   "ablated set) delivered by the member edges of a layer range; KL caused by a "
                   "fitted attention boost to the members at one layer",
    contrast="member edges in early (0-9) vs late (20-29) layers; boost at early vs late layers; "
             "member boost vs a mass-matched boost of 5 random prompt tokens at the same layer",
    hypotheses=(
        Hypothesis("H1", "layers 0-9 deliver more of the set's effect on the probe than layers "
                         "20-29 (difference of delivered fractions)", "deliv_early_minus_late", ">0"),
        Hypothesis("H2", "boosting member attention in layers 0-9 changes the prediction more than "
                         "in layers 20-29 (mean log KL, early - late)", "boost_early_minus_late", ">0"),
        Hypothesis("H3", "boosting the members changes the prediction more than moving the same "
                         "attention mass onto other prompt tokens (mean over layers of log KL ratio)",
                   "boost_vs_ctrl", ">0"),
        Hypothesis("LD", "per layer: the share of the set's effect its member edges add (within "
                         "+-0.05 of none)", "L*_deliv", "=0", family="layers_deliv", margin=0.05),
        Hypothesis("LB", "per layer: log KL of the member boost vs the mean over layers (within "
                         "+-log 1.5)", "L*_brel", "=0", family="layers_boost", margin=LOG15),
        Hypothesis("LC", "per layer: member boost vs mass-matched control boost (log KL ratio)",
                   "L*_bvc", ">0", family="layers_ctrl", margin=LOG15),
    ),
    margin=0.05,
    margin_note="0.05 of the set's effect for delivered fractions; log(1.5) for log KL ratios "
                "(per-layer boost families)",
    metrics=("deliv_early_minus_late", "boost_early_minus_late", "boost_vs_ctrl", "L*_deliv",
             "L*_brel", "L*_bvc", "deliv_*", "kl_full", "L*_lens", "L*_kl_boost", "L*_bias"),
    families={"primary": "holm", "layers_deliv": "fdr_bh", "layers_boost": "fdr_bh",
              "layers_ctrl": "fdr_bh"},
    n_per_genre=30,
    caveats=(
        "A forced set of the prompt's top-5 tokens at one step, isolated siblings, probe at P + 1 "
        "carrying the greedy next token after the top-1 member: real TEMPO sets are smaller and "
        "later steps see several sets.",
        "The boost restores each member's attention to the single-token level (RQ 1.1's dilution "
        "undone), so its size differs by layer; the bias is bounded to [-5, 5], and where a single "
        "token draws more than 1/5 of a layer's attention the level is out of reach and the bound "
        "applies (counted in the notes). Where members already get more than a single token the "
        "fitted bias is negative. The control moves the same head-mean attention mass onto 5 random "
        "prompt tokens (never the sink); it cannot always match (bounded too).",
        "KLs get 1e-4 nats added before logs. The logit lens (untrained, final norm + unembedding) "
        "is descriptive only; the causal emergence curve removes member edges per layer range.",
        "No generation-quality measure: a continuation per layer and condition (61 per prompt) "
        "does not fit the compute budget; the KL of the next-token distribution is the outcome.",
        "One model (SmolLM2-135M-Instruct, 30 layers, Q4_1 GGUF dequantised to float32).",
    ),
    config={"n_set": N_SET, "probe": "P + 1, greedy next token after member 0", "eps": EPS,
            "bias_bound": 5.0, "thirds": THIRDS, "control": "5 random prompt slots, mass-matched"},
)


def run(ctx) -> Output:
    m = ctx.model
    L = m.cfg.num_layers
    rows, recs = [], []

    def one(p):
        seed = int.from_bytes(p.id.encode()[-8:].rjust(8, b"\0"), "little") ^ ctx.seed
        return measure(m.params, m.cfg, m.tokenizer(p.prompt).input_ids, N_SET,
                       np.random.default_rng(seed % (2 ** 63)))

    for p, r in ctx.map(one):
        row = {"prompt_id": p.id, "genre": p.genre, "probe_token": r.probe_token, "kl_full": r.kl_full}
        f = 1 - r.kl_edges / r.kl_full if r.kl_full > EPS else np.full(L + 1, np.nan)
        (a, b), (c, d), (e, g) = thirds(L)
        row["deliv_early"], row["deliv_mid"], row["deliv_late"] = f[b] - f[a], f[d] - f[c], f[g] - f[e]
        row["deliv_early_minus_late"] = row["deliv_early"] - row["deliv_late"]
        lb = np.log(np.maximum(r.kl_boost, 0) + EPS)
        lc = np.log(np.maximum(r.kl_ctrl, 0) + EPS)
        row["boost_early_minus_late"] = lb[a:b].mean() - lb[e:g].mean()
        row["boost_vs_ctrl"] = float(np.mean(lb - lc))
        for layer in range(L):
            row[f"L{layer:02d}_deliv"] = f[layer + 1] - f[layer]
            row[f"L{layer:02d}_brel"] = lb[layer] - lb.mean()
            row[f"L{layer:02d}_bvc"] = lb[layer] - lc[layer]
            row[f"L{layer:02d}_lens"] = r.lens_kl[layer]
            row[f"L{layer:02d}_kl_boost"] = r.kl_boost[layer]
            row[f"L{layer:02d}_bias"] = r.bias[layer]
        rows.append(row)
        recs.append(r)
    f_all = np.stack([1 - r.kl_edges / r.kl_full for r in recs if r.kl_full > EPS])  # [N,L+1]
    table, notes = _layer_table(recs, f_all, L, ctx.seed), []
    em = _emergence(f_all, ctx.seed)
    lens_first = _lens_emergence(recs)
    kb = np.stack([r.kl_boost for r in recs])
    top = _top_layer(kb, ctx.seed)
    bound = np.mean([np.abs(r.bias) >= 5.0 - 1e-6 for r in recs])
    notes.append(f"Causal emergence: the member edges of layers below c deliver half of the set's effect "
                 f"on the probe from c = {em['c']} on (mean delivered fraction; 95% percentile "
                 f"bootstrap over prompts {em['lo']}-{em['hi']}); layer 0 alone delivers "
                 f"{np.mean(f_all[:, 1]):.2f}, layers 0-1 {np.mean(f_all[:, 2]):.2f}.")
    notes.append(f"Logit lens (descriptive): the median lens KL(present || ablated) first reaches half of "
                 f"its final-layer value after layer {lens_first}.")
    notes.append(f"The single-layer member boost with the largest mean KL is layer {top['layer']} "
                 f"(mean {kb.mean(0)[top['layer']]:.3g} nats; it is the top layer in "
                 f"{100 * top['share']:.0f}% of prompt bootstrap resamples; runners-up "
                 f"{', '.join(str(x) for x in top['next'])}).")
    notes.append(f"The fitted bias hit its bound of +-5 in {100 * bound:.1f}% of prompt x layer cases.")
    _figures(ctx, rows, recs, f_all, L)
    return Output(rows=rows, tables={"layers": table}, notes=notes)


def _emergence(f_all, seed, n_boot=2000):
    """Smallest c with mean f(c) >= 0.5, with a percentile bootstrap over prompts."""
    first = lambda f: int(np.argmax(f.mean(0) >= 0.5)) if (f.mean(0) >= 0.5).any() else f.shape[1]
    rng = np.random.default_rng(seed)
    bs = [first(f_all[rng.integers(0, len(f_all), len(f_all))]) for _ in range(n_boot)]
    lo, hi = np.quantile(bs, [0.025, 0.975])
    return {"c": first(f_all), "lo": int(lo), "hi": int(hi)}


def _lens_emergence(recs) -> int:
    med = np.median(np.stack([r.lens_kl for r in recs]), 0)
    return int(np.argmax(med >= 0.5 * med[-1]))


def _top_layer(kb, seed, n_boot=2000):
    rng = np.random.default_rng(seed)
    best = [int(np.argmax(kb[rng.integers(0, len(kb), len(kb))].mean(0))) for _ in range(n_boot)]
    order = np.argsort(-kb.mean(0))
    return {"layer": int(order[0]), "share": float(np.mean(np.asarray(best) == order[0])),
            "next": [int(x) for x in order[1:3]]}


def _layer_table(recs, f_all, L, seed):
    att_set = np.stack([r.att_set.mean(1) for r in recs])  # [N,L]
    att_single = np.stack([r.att_single.mean(1) for r in recs])
    out = []
    for layer in range(L):
        rec = {"layer": layer}
        for name, x in (("delivered", f_all[:, layer + 1] - f_all[:, layer]),
                        ("kl_boost", np.stack([r.kl_boost[layer] for r in recs])),
                        ("kl_ctrl", np.stack([r.kl_ctrl[layer] for r in recs]))):
            rec.update(ci_cells(name, x, n_boot=1999, seed=seed))
        out.append({**rec,
                    "bias_mean": float(np.mean([r.bias[layer] for r in recs])),
                    "mass_moved": float(np.mean([r.moved[layer] for r in recs])),
                    "ctrl_mass_moved": float(np.mean([r.ctrl_moved[layer] for r in recs])),
                    "att_set": float(att_set[:, layer].mean()),
                    "att_per_member": float(att_set[:, layer].mean() / N_SET),
                    "att_single": float(att_single[:, layer].mean()),
                    "lens_kl_median": float(np.median([r.lens_kl[layer] for r in recs]))})
    return out


def _figures(ctx, rows, recs, f_all, L):
    from experiments.plotting import ci_bars, pyplot

    plt = pyplot()
    layers = np.arange(L)
    fig, ax = plt.subplots(2, 2, figsize=(12, 7))
    cs = np.arange(L + 1)
    st = [S.bootstrap_ci(f_all[:, c], n_boot=999) for c in cs]
    mean, err = ci_bars(st)
    ax[0, 0].errorbar(cs, mean, yerr=err, marker=".", capsize=2)
    ax[0, 0].axhline(0.5, color="grey", ls=":")
    ax[0, 0].set_xlabel("c: probe sees the members in layers < c")
    ax[0, 0].set_ylabel("fraction of the set's effect delivered")
    ax[0, 0].set_title("Causal emergence (edges), 95% BCa CI")

    att = np.stack([r.att_set.mean(1) for r in recs]) / N_SET
    single = np.stack([r.att_single.mean(1) for r in recs])
    for x, lab in ((att, "per member (set of 5)"), (single, "single token at P")):
        mean, err = ci_bars([S.bootstrap_ci(x[:, l], n_boot=999) for l in layers])
        ax[0, 1].errorbar(layers, mean, yerr=err, marker=".", capsize=2, label=lab)
    ax[0, 1].set_xlabel("layer")
    ax[0, 1].set_ylabel("probe attention (mean over heads)")
    ax[0, 1].set_title("Attention to the members per layer")
    ax[0, 1].legend(fontsize=8)

    lens = np.stack([r.lens_kl for r in recs])
    ax[1, 0].plot(layers, np.median(lens, 0), marker=".", label="median")
    ax[1, 0].fill_between(layers, np.quantile(lens, 0.25, 0), np.quantile(lens, 0.75, 0), alpha=0.3,
                          label="interquartile")
    ax[1, 0].set_xlabel("layer (residual after it)")
    ax[1, 0].set_ylabel("lens KL present || ablated (nats)")
    ax[1, 0].set_title("Logit lens of the probe (descriptive)")
    ax[1, 0].legend(fontsize=8)

    kb = np.stack([r.kl_boost for r in recs])
    kc = np.stack([r.kl_ctrl for r in recs])
    for x, lab, off in ((kb, "boost members", -0.2), (kc, "control (same mass, prompt tokens)", 0.2)):
        mean, err = ci_bars([S.bootstrap_ci(x[:, l], n_boot=999) for l in layers])
        ax[1, 1].errorbar(layers + off, mean, yerr=err, marker=".", ls="none", capsize=2, label=lab)
    ax[1, 1].set_xlabel("layer of the one-layer intervention")
    ax[1, 1].set_yscale("log")
    ax[1, 1].set_ylabel("KL(intervened || not), nats (log)")
    ax[1, 1].set_title("Boost to single-token attention at ONE layer")
    ax[1, 1].legend(fontsize=8)
    fig.suptitle(f"RQ 1.3: {len(recs)} prompts, set of {N_SET} at P, probe at P + 1")
    fig.tight_layout()
    ctx.figure(fig, "layerwise")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    ci = lambda t: f"{t.estimate:+.2f} [{t.lo:+.2f}, {t.hi:+.2f}]"
    sig = lambda fam, sign: [t for t in tests if t.family == fam and t.verdict.startswith(f"differs ({sign})")]
    layer = lambda t: int(t.column[1:3])
    lay = lambda ts: ", ".join(str(x) for x in sorted(layer(t) for t in ts)) or "none"

    h1, h2, h3 = by["deliv_early_minus_late"], by["boost_early_minus_late"], by["boost_vs_ctrl"]
    ld = sig("layers_deliv", "+")
    top = sorted(ld, key=lambda t: -t.estimate)[:3]
    n_ld = sum(t.family == "layers_deliv" for t in tests)
    return (f"Member edges in layers 0-9 {said(h1, 'deliver more', 'deliver less', 'does not differ detectably')} of the set's "
            f"effect on a later query's prediction than layers 20-29 (difference of delivered "
            f"fractions {ci(h1)}, {h1.verdict}); {len(ld)} of {n_ld} layers add a significant share "
            f"(BH), the largest "
            + ", ".join(f"layer {layer(t)} ({t.estimate:.2f})" for t in top)
            + f". Boosting the query's attention to the members to the single-token level at ONE "
            f"layer moves the prediction {said(h2, 'more', 'less', 'about as much')} in layers 0-9 than "
            f"in 20-29 (mean log KL {ci(h2)}, {h2.verdict}), more than the layer average at layers "
            f"{lay(sig('layers_boost', '+'))} (BH); against moving the same attention mass onto 5 "
            f"other prompt tokens the member boost is {said(h3, 'larger', 'smaller', 'not detectably larger')}"
            f" on average over layers (mean log KL ratio {ci(h3)}, {h3.verdict}) and larger at layers "
            f"{lay(sig('layers_ctrl', '+'))} (BH).")
