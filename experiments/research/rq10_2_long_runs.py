"""RQ 10.2: do the effects of position sharing compound over long runs?

Per prompt, one TEMPO run (tau 0.1, W 4, no pruning, no EOS stop: ``min_steps = max_steps``) and,
as the control, greedy decoding of the same prompt for the same number of steps, both with summary
capture. Per step (layer means over heads and the step's real queries): sink share (attention on
slot 0), attention entropy (nats), and for TEMPO the per-token attention to earlier parallel members
relative to the per-token attention to non-parallel context (log ratio; the ratio removes the
plain 1/context dilution that every per-token measure shows as the context grows). Raw entropy grows
with the number of visible slots, and TEMPO's context grows up to W times faster per step, so the
tested entropy is normalized: H / log(visible slots) (raw-entropy slopes are kept as columns).

Per prompt, a Theil-Sen slope of each measure against the step index, in units per 100 steps
(steps 0-3 are left out: the first steps are dominated by the prompt). Tests over prompts: the
TEMPO minus greedy slope for sink share and entropy (primary), the TEMPO slopes themselves, and the
drift of the repeated 3-gram rate of each method's clean path (last quarter minus first quarter of
the steps) as a degeneration check. Compute budget (2 CPU cores, <= 4 minutes for the full run)
forces 192 steps (not 512) and 4 prompts of each of 2 genres: a small-n pilot.
"""

from __future__ import annotations

import numpy as np

from tempo_jax.research import Design, Hypothesis, Output
from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.slots import slot_groups

STEPS = 192
QUICK_STEPS = 32
SKIP = 4  # first steps left out of the slope fits
WINDOW = 16  # steps per bin in the figure
GEN = dict(threshold=0.1, max_width=4, prune=False)
METHODS = ("tempo", "greedy")

DESIGN = Design(
    id="rq10.2",
    questions=("10.2",),
    title="Long runs: do sink share, attention entropy and attention to parallel members drift with "
          "step under TEMPO more than under greedy?",
    primary_metric="per-prompt Theil-Sen slope vs step (per 100 steps) of the layer-mean sink share "
                   "and normalized attention entropy (H / log visible slots), TEMPO minus greedy",
    contrast="TEMPO (tau 0.1, W 4) vs greedy on the same prompt, same number of steps, no EOS stop",
    hypotheses=(
        Hypothesis("DS", "TEMPO minus greedy slope of sink share is within +-0.02 per 100 steps",
                   "dslope_sink", "=0", margin=0.02),
        Hypothesis("DE", "TEMPO minus greedy slope of normalized attention entropy (H / log of the "
                         "visible slots) is within +-0.02 per 100 steps", "dslope_nentropy", "=0",
                   margin=0.02),
        Hypothesis("TS", "TEMPO sink-share slope is within +-0.02 per 100 steps", "slope_sink_tempo",
                   "=0", family="tempo", margin=0.02),
        Hypothesis("TE", "TEMPO normalized-entropy slope is within +-0.02 per 100 steps",
                   "slope_nentropy_tempo", "=0", family="tempo", margin=0.02),
        Hypothesis("TP", "TEMPO slope of log(per-token attention to parallel / to non-parallel "
                         "context) is within +-log(1.1) per 100 steps", "slope_lpar_tempo", "=0",
                   family="tempo", margin=float(np.log(1.1))),
        Hypothesis("R", "repeated 3-gram rate, last quarter minus first quarter, is within +-0.1",
                   "rep3_drift_*", "=0", family="degeneration", margin=0.1),
    ),
    margin=0.02,
    margin_note="0.02 / 100 steps for sink share and for normalized entropy; log(1.1) / 100 steps "
                "for the parallel-attention log ratio; 0.1 for repeat-rate drift",
    metrics=("dslope_*", "slope_*", "rep3_drift_*", "rep3_q*"),
    families={"primary": "holm", "tempo": "holm", "degeneration": "holm"},
    genres=("prose", "code"),
    n_per_genre=4,
    quick_n=1,
    caveats=(
        "Pilot size: 8 prompts (4 prose, 4 code) and 192 steps, fixed by the CPU budget (about "
        "0.1-0.2 s per step per run on 2 cores); the issue asked for 512+ steps, so drift that only "
        "appears later is not tested. n = 8 is the least n at which the exact sign-flip test can "
        "reach Holm-corrected significance; equivalence within the margins needs small spread.",
        "TEMPO and greedy produce different texts, so the per-step measures compare different "
        "sequences; a drift difference may come from content (e.g. a repetition loop) rather than "
        "from shared positions. The repeat-rate drift is reported to show that confound.",
        "Theil-Sen slopes summarize a monotone trend; a drift that saturates early is understated.",
    ),
    config={"generation": GEN, "steps": STEPS, "quick_steps": QUICK_STEPS, "skip": SKIP,
            "window": WINDOW},
)


def _one(m, p, method, steps, seed):
    """Per-step layer curves: sink [S,L], entropy [S,L], lpar [S] (NaN without parallel members),
    and the clean-path token ids."""
    g = GenerationConfig(**GEN, max_steps=steps, min_steps=steps, method=method, seed=seed)
    ids = m.tokenizer(p.prompt).input_ids
    sink, ent, lpar, nvis = [], [], [], []

    def on_step(s, st, cap):
        n = int(np.asarray(st.fed_n)[s])
        sink.append(np.asarray(cap.sink)[..., :n].mean((1, 2)))
        ent.append(np.asarray(cap.entropy)[..., :n].mean((1, 2)))
        alive = np.asarray(st.alive) | (np.asarray(st.pruned_at) == s)
        grp = slot_groups(np.asarray(st.slot_step), alive, np.asarray(st.set_n), s)
        par, non = np.asarray(grp.parallel), np.asarray(grp.nonparallel)
        nvis.append(float(np.asarray(grp.context).sum() + 2))  # context + sink + the query itself
        recv = np.asarray(cap.received)  # [L,H,K] summed over the step's queries
        if par.any() and non.any():
            pt = recv[..., par].sum(-1) / par.sum()
            nt = recv[..., non].sum(-1) / non.sum()
            lpar.append(float(np.log(pt.mean() / nt.mean())))
        else:
            lpar.append(np.nan)

    tr = generate(m.params, m.cfg, ids, g, capture="summary", on_step=on_step)
    ent = np.array(ent)
    return dict(sink=np.array(sink), entropy=ent, nentropy=ent / np.log(np.array(nvis))[:, None],
                lpar=np.array(lpar),
                tokens=np.array(tr.clean_ids()), set_n=np.asarray(tr.arrays["set_n"]))


def slope_per_100(y) -> float:
    """Theil-Sen slope of ``y[S]`` against step index s >= SKIP, times 100 (NaN-safe)."""
    from scipy.stats import theilslopes

    x = np.arange(len(y), dtype=float)
    ok = np.isfinite(y) & (x >= SKIP)
    if ok.sum() < 3:
        return float("nan")
    return float(100.0 * theilslopes(np.asarray(y, float)[ok], x[ok])[0])


def rep3_quarters(tokens) -> list[float]:
    """Repeated 3-gram rate in each quarter of the clean path."""
    from tempo_jax.quality import repeated_ngram_rate

    q = np.array_split(np.asarray(tokens), 4)
    return [float(repeated_ngram_rate(list(map(int, c)), 3)) if len(c) >= 3 else np.nan for c in q]


def run(ctx) -> Output:
    m = ctx.model
    steps = QUICK_STEPS if ctx.quick else STEPS
    rows, curves = [], []
    for p, r in ctx.map(lambda p: {k: _one(m, p, k, steps, ctx.seed) for k in METHODS}):
        row = {"prompt_id": p.id, "genre": p.genre}
        for k in METHODS:
            row[f"slope_sink_{k}"] = slope_per_100(r[k]["sink"].mean(1))
            row[f"slope_entropy_{k}"] = slope_per_100(r[k]["entropy"].mean(1))
            row[f"slope_nentropy_{k}"] = slope_per_100(r[k]["nentropy"].mean(1))
            q = rep3_quarters(r[k]["tokens"])
            for i, v in enumerate(q):
                row[f"rep3_q{i + 1}_{k}"] = v
            row[f"rep3_drift_{k}"] = q[3] - q[0]
        row["slope_lpar_tempo"] = slope_per_100(r["tempo"]["lpar"])
        row["dslope_sink"] = row["slope_sink_tempo"] - row["slope_sink_greedy"]
        row["dslope_entropy"] = row["slope_entropy_tempo"] - row["slope_entropy_greedy"]
        row["dslope_nentropy"] = row["slope_nentropy_tempo"] - row["slope_nentropy_greedy"]
        row["mean_set_size_tempo"] = float(np.mean(r["tempo"]["set_n"]))
        rows.append(row)
        curves.append(r)
    layer_rows = _layer_slopes(curves)
    _figures(ctx, curves, layer_rows, steps)
    return Output(rows=rows, tables={"layer_slopes": layer_rows})


def _layer_slopes(curves) -> list[dict]:
    """Per layer: mean over prompts of the TEMPO minus greedy slope (sink, entropy), BCa CI."""
    from tempo_jax import stats as S

    out = []
    L = curves[0]["tempo"]["sink"].shape[1]
    for l in range(L):
        row = {"layer": l}
        for meas in ("sink", "nentropy"):
            d = [slope_per_100(c["tempo"][meas][:, l]) - slope_per_100(c["greedy"][meas][:, l])
                 for c in curves]
            r = S.summarize_paired(np.asarray(d), n_boot=1999, seed=0)
            row[f"d_{meas}"], row[f"d_{meas}_lo"], row[f"d_{meas}_hi"] = r["mean"], r["lo"], r["hi"]
        out.append(row)
    return out


def _binned(y, width):
    n = len(y) // width
    return np.array([np.nanmean(y[i * width:(i + 1) * width]) for i in range(n)])


def _band(mat, seed=0, n_boot=999):
    """Mean over prompts (rows) and a percentile CI from resampling prompts (cluster bootstrap)."""
    rng = np.random.default_rng(seed)
    mean = np.nanmean(mat, 0)
    idx = rng.integers(0, mat.shape[0], (n_boot, mat.shape[0]))
    boots = np.stack([np.nanmean(mat[i], 0) for i in idx])
    return mean, np.nanpercentile(boots, 2.5, 0), np.nanpercentile(boots, 97.5, 0)


def _figures(ctx, curves, layer_rows, steps):
    import warnings

    from experiments.plotting import pyplot

    plt = pyplot()
    width = max(1, min(WINDOW, steps // 8))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = [("sink", "sink share (layer mean)"),
              ("nentropy", "attention entropy / log(visible slots) (layer mean)"),
              ("lpar", "TEMPO: log(per-token attn parallel / non-parallel)"), ("rep3", "repeated 3-gram rate")]
    colours = {"tempo": "tab:blue", "greedy": "tab:orange"}
    for ax, (meas, label) in zip(axes.flat, panels):
        for k in METHODS:
            if meas == "lpar" and k == "greedy":
                continue
            if meas == "rep3":
                mat = np.array([rep3_quarters(c[k]["tokens"]) for c in curves])
                x = (np.arange(4) + 0.5) * steps / 4
            else:
                ys = [c[k][meas].mean(1) if c[k][meas].ndim == 2 else c[k][meas] for c in curves]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mat = np.array([_binned(y, width) for y in ys])
                x = (np.arange(mat.shape[1]) + 0.5) * width
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mu, lo, hi = _band(mat)
            ax.plot(x, mu, "-o", ms=3, color=colours[k], label=k)
            ax.fill_between(x, lo, hi, color=colours[k], alpha=0.2)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"RQ 10.2: measures vs step over {len(curves)} prompts (mean, 95% prompt-bootstrap "
                 f"band; bins of {width} steps; repeat rate per quarter)", fontsize=10)
    fig.tight_layout()
    ctx.figure(fig, "measures_vs_step")

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ls = [r["layer"] for r in layer_rows]
    for ax, meas, unit in zip(axes, ("sink", "nentropy"), ("share", "normalized")):
        mu = np.array([r[f"d_{meas}"] for r in layer_rows])
        lo = np.array([r[f"d_{meas}_lo"] for r in layer_rows])
        hi = np.array([r[f"d_{meas}_hi"] for r in layer_rows])
        ax.axhline(0, color="grey", lw=0.8)
        ax.errorbar(ls, mu, yerr=[np.nan_to_num(mu - lo), np.nan_to_num(hi - mu)], fmt="o", ms=3,
                    capsize=2)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"TEMPO - greedy slope ({unit} / 100 steps)")
        ax.set_title(f"{meas}: per-layer slope difference (BCa 95% CI)", fontsize=10)
    fig.tight_layout()
    ctx.figure(fig, "layer_slope_diff")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    f = lambda c, u: (f"{by[c].estimate:+.3g}{' ' + u if u else ''} [{by[c].lo:+.3g}, {by[c].hi:+.3g}] "
                      f"({by[c].verdict})" if c in by else "n/a")
    return (f"Over {by['dslope_sink'].n} prompts, per 100 steps: TEMPO minus greedy slope of sink share "
            f"{f('dslope_sink', '')}, of normalized attention entropy {f('dslope_nentropy', '')}; "
            f"TEMPO's own slopes: sink {f('slope_sink_tempo', '')}, normalized entropy "
            f"{f('slope_nentropy_tempo', '')}, "
            f"log parallel/non-parallel per-token attention {f('slope_lpar_tempo', '')}; repeated "
            f"3-gram drift (last - first quarter) TEMPO {f('rep3_drift_tempo', '')}, greedy "
            f"{f('rep3_drift_greedy', '')}" + (
                "; both methods drift into repetition, so any attention drift is confounded with "
                "degeneration." if all(by.get(f"rep3_drift_{k}") is not None and
                                       by[f"rep3_drift_{k}"].verdict.startswith("differs (+)")
                                       for k in METHODS) else "."))
