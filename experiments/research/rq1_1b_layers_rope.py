"""RQ 1.1b / 1.2 (finish): which layers does the shared position affect most, does RoPE predict which
heads, and the per-layer summary of the critical offset.

Instrument: :mod:`experiments.research.position_probe` (n = 1 and n = 20, every offset delta, probe
at P + 20; see RQ 1.1) and :mod:`experiments.research.rope_spectra` (the probe's pre-RoPE query and
the members' pre-RoPE keys in the shared world, as complex frequency pairs).

Measured per head: ``log(per-member attention at distinct positions / at the shared position)``,
n = 20, mean over prompts. Predicted per head, from the model's inv_freq theta_f and the head's
measured q/k spectra (member j moves from P to P + j; the probe stays at P + 20):
- spectral (phase-aware): ``sum_f Re[C_f * mean_j e^{i theta_f 20} (e^{-i theta_f j} - 1)] / sqrt(D)``
  with ``C_f`` the head's cross-spectrum ``z_q conj(z_k)`` averaged over members and prompts: the
  expected change of the probe-member logit;
- energy (phase-free): ``mean_j sqrt(sum_f E_f (1 - cos theta_f j)) / sqrt(D)`` with the per-pair
  energies ``E_f = mean |z_q,f|^2 * mean |z_k,f|^2``: the RMS logit change if phases were random;
  it predicts the SIZE of the effect, so it is compared with |measured|;
- direct (reference): per prompt, the first-order attention change from rotating each member's own
  key (everything else held), mean over prompts: how much of the effect the probe-member logits alone
  carry, before anything downstream of layer inputs changes.
Rank correlations (Spearman) over the 270 heads, percentile bootstrap over heads; the
``within_layer`` family repeats two of them after removing each layer's mean from both sides (does
the prediction rank heads within a layer, not only layers?).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from tempo_jax.research import Design, Hypothesis, Output, TestResult
from experiments.research.position_probe import measure_prompt
from experiments.research.rope_spectra import logit, probe_qk
from experiments.research.rq1_position_sharing import critical_offsets
from tempo_jax import stats as S

NS = (1, 20)
DELTAS = (0.0, 0.001, 0.01, 0.1, 0.5, 1.0)
GAP = 20
N = 20
MARGIN = float(np.log(1.1))
RHO_MARGIN = 0.1

DESIGN = Design(
    id="rq1.1b",
    questions=("1.1", "1.2"),
    title="Shared RoPE position by layer, predicted from RoPE frequencies, and critical offsets by layer",
    primary_metric="per-member probe attention, distinct (delta 1) vs shared (delta 0) positions, "
                   "n = 20, as a log ratio per layer (mean over heads) and per head",
    contrast="distinct vs shared positions per layer; measured per-head effect vs its RoPE "
             "prediction from the head's q/k frequency spectra (Spearman over heads)",
    hypotheses=(
        Hypothesis("LP", "per layer: distinct positions change per-member attention (n = 20)",
                   "L*_pos", "=0", family="layers_pos"),
        Hypothesis("LT", "per layer: per-member attention at n = 20 vs a single token (dilution)",
                   "L*_tok", "<0", family="layers_tok"),
        Hypothesis("E", "early layers (0-9) minus late layers (20-29): position effect", "early_minus_late_pos",
                   "=0", family="early_late"),
    ),
    margin=MARGIN,
    margin_note="log(1.1): a 10% relative change in attention; 0.1 in Spearman rho for the RoPE "
                "predictions",
    metrics=("L*_pos", "L*_tok", "early_minus_late_pos", "pos_n20"),
    families={"primary": "holm", "within_layer": "holm", "early_late": "holm", "layers_pos": "holm",
              "layers_tok": "holm"},
    n_per_genre=40,
    caveats=(
        "Forced sets of the top-20 tokens at one step, isolated siblings, probe 20 positions later "
        "(as in RQ 1.1, on fewer prompts): distinct positions also bring later members closer to the "
        "probe.",
        "The RoPE predictions hold each head's pre-RoPE q and k fixed; moving the members also "
        "changes their own residual streams (they attend to the prompt from another position) and "
        "so every later layer's keys, values and the probe's queries. Heads within a layer share "
        "inputs, so the 270 heads are not independent: the bootstrap over heads is optimistic.",
        "Layer CIs in the figure and table are Bonferroni-adjusted (99.83%) BCa intervals; the "
        "tests are Holm-corrected within each per-layer family.",
        "Critical offsets are recomputed here on this experiment's prompts (fewer than RQ 1.1's "
        "357), so fewer heads can pass the equivalence test.",
        "One model (SmolLM2-135M-Instruct, Q4_1 GGUF dequantised to float32).",
    ),
    config={"n": NS, "deltas": DELTAS, "probe_gap": GAP, "rho_margin": RHO_MARGIN},
)


def _phase(theta, n=N, gap=GAP):
    """``mean_j e^{i theta gap} (e^{-i theta j} - 1)`` per pair ``[F]``, j = 0..n-1."""
    j = np.arange(n)[:, None]
    return (np.exp(1j * theta * (gap - j)) - np.exp(1j * theta * gap)).mean(0)


def measure(m, ids) -> dict:
    r = measure_prompt(m.params, m.cfg, ids, NS, DELTAS, GAP)
    zq, zk, a = probe_qk(m.params, m.cfg, ids, N, r["probe_token"], GAP)
    theta = np.asarray(m.cfg.inv_freq(), np.float64)
    x = zq[:, :, None, :] * np.conj(zk)  # [L,H,n,F]
    # direct: first-order attention change from rotating each member's key only
    s0 = logit(zq, zk, theta, np.full(N, float(GAP)))
    s1 = logit(zq, zk, theta, GAP - np.arange(N, dtype=np.float64))
    tot = a.sum(-1)
    new = (a * np.exp(s1 - s0)).sum(-1)
    direct = np.log(new / (1 - tot + new)) - np.log(tot)  # log(new per-member / old per-member)
    return {"per_token": r["per_token"], "cross": x.mean(2), "eq": np.abs(zq) ** 2,
            "ek": (np.abs(zk) ** 2).mean(2), "direct": direct, "probe_token": r["probe_token"]}


def run(ctx) -> Output:
    m = ctx.model
    L, H = m.cfg.num_layers, m.cfg.num_heads
    d1, i1, i20 = DELTAS.index(1.0), NS.index(1), NS.index(20)
    rows, heads, offs, cross, eq, ek, direct = [], [], [], [], [], [], []
    for p, r in ctx.map(lambda p: measure(m, m.tokenizer(p.prompt).input_ids)):
        tok = r["per_token"]  # [n, world, L, H]; world len(DELTAS) is the natural probe (unused)
        lt = tok.mean(3)  # [n, world, L]
        row = {"prompt_id": p.id, "genre": p.genre,
               "pos_n20": float(np.log(tok[i20, d1].mean()) - np.log(tok[i20, 0].mean()))}
        lp = np.log(lt[i20, d1]) - np.log(lt[i20, 0])
        for layer in range(L):
            row[f"L{layer:02d}_pos"] = lp[layer]
            row[f"L{layer:02d}_tok"] = float(np.log(lt[i20, 0, layer]) - np.log(lt[i1, 0, layer]))
        row["early_minus_late_pos"] = float(lp[:10].mean() - lp[20:].mean())
        rows.append(row)
        heads.append(np.log(tok[i20, d1]) - np.log(tok[i20, 0]))  # [L,H]
        offs.append(np.log(tok[i20, :len(DELTAS)]) - np.log(tok[i20, d1]))  # [D,L,H]
        cross.append(r["cross"])
        eq.append(r["eq"])
        ek.append(r["ek"])
        direct.append(r["direct"])
    heads = np.stack(heads)
    theta = np.asarray(m.cfg.inv_freq(), np.float64)
    D = 2 * len(theta)
    measured = heads.mean(0)  # [L,H]
    spectral = np.real(np.stack(cross).mean(0) * _phase(theta)).sum(-1) / np.sqrt(D)
    e = np.stack(eq).mean(0) * np.stack(ek).mean(0)  # [L,H,F]
    j = np.arange(N)[:, None]
    energy = np.sqrt((e[:, :, None, :] * (1 - np.cos(theta * j))[None, None]).sum(-1)).mean(-1) / np.sqrt(D)
    direct = np.stack(direct).mean(0)
    within = lambda x: x - x.mean(1, keepdims=True)  # remove each layer's mean: heads vs their layer
    tests = [
        _spearman("R1", "rho_spectral_vs_measured", spectral, measured, ctx.seed),
        _spearman("R2", "rho_energy_vs_abs_measured", energy, np.abs(measured), ctx.seed),
        _spearman("R3", "rho_direct_vs_measured", direct, measured, ctx.seed),
        _spearman("W1", "rho_spectral_vs_measured_within_layer", within(spectral), within(measured),
                  ctx.seed, family="within_layer"),
        _spearman("W2", "rho_energy_vs_abs_measured_within_layer", within(energy),
                  within(np.abs(measured)), ctx.seed, family="within_layer"),
    ]
    head_table = [{"layer": l, "head": h, "measured": measured[l, h], "spectral_dlogit": spectral[l, h],
                   "energy_rms_dlogit": energy[l, h], "direct_pred": direct[l, h]}
                  for l in range(L) for h in range(H)]
    crit, crit_table = critical_offsets(np.stack(offs), ctx.seed)
    layer_crit = _critical_by_layer(crit)
    layer_table = _layer_table(rows, L, ctx.seed)
    _figures(ctx, layer_table, measured, spectral, energy, direct, crit, L)
    rank = sorted(layer_table, key=lambda t: -abs(t["pos"]))[:3]
    notes = [
        "Most affected layers by |log ratio| distinct vs shared (n = 20): " + ", ".join(
            f"layer {t['layer']} {100 * (np.exp(t['pos']) - 1):+.0f}% (Bonferroni 95% CI "
            f"{100 * (np.exp(t['pos_lo']) - 1):+.0f} to {100 * (np.exp(t['pos_hi']) - 1):+.0f})" for t in rank) + ".",
        "Critical offset per layer (heads whose per-member attention at delta is within +-10% of "
        "distinct positions for that delta and every larger one; TOST, BH over heads x deltas): "
        + "; ".join(f"L{r['layer']}: " + ", ".join(f"{k[6:]} {v}" for k, v in r.items()
                                                   if k.startswith("heads_") and v)
                    for r in layer_crit) + ".",
    ]
    return Output(rows=rows, tests=tests, notes=notes,
                  tables={"layers": layer_table, "heads_rope": head_table,
                          "critical_offset_heads": crit_table, "critical_offset_layers": layer_crit})


def _spearman(name, column, x, y, seed, family="primary") -> TestResult:
    """Spearman rho over heads; percentile bootstrap CI over heads; permutation p; Fisher-z TOST."""
    x, y = np.ravel(x), np.ravel(y)
    r = S.cluster_corr(x, y, np.arange(len(x)), "spearman", n_boot=2000, seed=seed)
    rng = np.random.default_rng(seed)
    rx, ry = sps.rankdata(x), sps.rankdata(y)
    rho = r["value"]
    perm = np.array([sps.pearsonr(rx, rng.permutation(ry))[0] for _ in range(4999)])
    p = (1 + np.sum(np.abs(perm) >= abs(rho))) / (1 + len(perm))
    se = np.sqrt(1.06 / (len(x) - 3))
    z, zm = np.arctanh(rho), np.arctanh(RHO_MARGIN)
    p_tost = max(sps.norm.sf((z + zm) / se), sps.norm.cdf((z - zm) / se))
    return TestResult(name, column, family, ">0", len(x), rho, r["lo"], r["hi"], float(p),
                      float(p_tost), margin=RHO_MARGIN,
                      note="Spearman rho over heads; percentile bootstrap over heads (2000); "
                           "permutation p (4999); TOST on Fisher z with se sqrt(1.06/(n-3))")


def _critical_by_layer(crit):
    out = []
    for layer in range(crit.shape[0]):
        row = {"layer": layer}
        for d in DELTAS[:-1]:
            row[f"heads_delta {d:g}"] = int(np.sum(crit[layer] == d))
        row["heads_only delta 1"] = int(np.sum(np.isnan(crit[layer])))
        out.append(row)
    return out


def _layer_table(rows, L, seed):
    lvl = 1 - 0.05 / L
    out = []
    for layer in range(L):
        pos = S.bootstrap_ci([r[f"L{layer:02d}_pos"] for r in rows], n_boot=1999, ci=lvl, seed=seed)
        tok = S.bootstrap_ci([r[f"L{layer:02d}_tok"] for r in rows], n_boot=1999, ci=lvl, seed=seed)
        out.append({"layer": layer, "pos": pos["mean"], "pos_lo": pos["lo"], "pos_hi": pos["hi"],
                    "tok": tok["mean"], "tok_lo": tok["lo"], "tok_hi": tok["hi"]})
    return out


def _figures(ctx, layer_table, measured, spectral, energy, direct, crit, L):
    from experiments.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.6))
    x = np.arange(L)
    for key, lab, off in (("pos", "distinct vs shared positions (n = 20)", -0.15),
                          ("tok", "20 members vs a single token (shared)", 0.15)):
        mean = np.array([t[key] for t in layer_table])
        err = [mean - [t[f"{key}_lo"] for t in layer_table], [t[f"{key}_hi"] for t in layer_table] - mean]
        ax.errorbar(x + off, mean, yerr=err, marker="o", ls="none", capsize=2, label=lab)
    ax.axhspan(-MARGIN, MARGIN, color="grey", alpha=0.2, label="+-10%")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel("log ratio of per-member attention")
    ax.set_title("RQ 1.1b: per-layer effects, Bonferroni-adjusted 95% BCa CIs")
    ax.legend(fontsize=8)
    ctx.figure(fig, "layers")

    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    layer_of = np.repeat(np.arange(L), measured.shape[1])
    for a, pred, y, lab in ((ax[0], spectral, measured, "spectral prediction (d logit)"),
                            (ax[1], energy, np.abs(measured), "energy prediction (RMS d logit)"),
                            (ax[2], direct, measured, "direct first-order prediction")):
        sc = a.scatter(pred.ravel(), y.ravel(), c=layer_of, cmap="viridis", s=10)
        rho = sps.spearmanr(pred.ravel(), y.ravel())[0]
        a.set_xlabel(lab)
        a.set_ylabel("|measured log ratio|" if y is not measured else "measured log ratio")
        a.set_title(f"Spearman rho {rho:.2f}")
    fig.subplots_adjust(wspace=0.3)
    fig.colorbar(sc, ax=ax, label="layer")
    fig.suptitle("RQ 1.1b: per-head effect of distinct positions (n = 20) vs RoPE predictions")
    ctx.figure(fig, "rope_prediction")

    fig, ax = plt.subplots(figsize=(10, 3.6))
    cats = [(d, f"delta {d:g}") for d in DELTAS[:-1]] + [(None, "only delta 1")]
    bottom = np.zeros(L)
    for d, lab in cats:
        cnt = np.array([np.sum(np.isnan(crit[l])) if d is None else np.sum(crit[l] == d) for l in range(L)])
        ax.bar(np.arange(L), cnt, bottom=bottom, label=lab)
        bottom += cnt
    ax.set_xlabel("layer")
    ax.set_ylabel("heads")
    ax.set_title("RQ 1.2: critical offset per layer (n = 20; smallest delta equivalent to distinct)")
    ax.legend(fontsize=8, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ctx.figure(fig, "critical_offset_layers")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    r = lambda c: f"rho {by[c].estimate:+.2f} [{by[c].lo:+.2f}, {by[c].hi:+.2f}] ({by[c].verdict})"
    lp = [t for t in tests if t.family == "layers_pos"]
    up = sorted((t for t in lp if t.verdict.startswith("differs (+)")), key=lambda t: -t.estimate)
    down = [t for t in lp if t.verdict.startswith("differs (-)")]
    eq = [t for t in lp if t.verdict.startswith("no effect")]
    e = by["early_minus_late_pos"]
    top = ", ".join(f"{int(t.column[1:3])} ({100 * (np.exp(t.estimate) - 1):+.0f}%)" for t in up[:3])
    return (f"Distinct positions raise per-member attention at n = 20 in {len(up)} of {len(lp)} layers "
            f"(Holm), lower it in {len(down)}, equivalent within +-10% in {len(eq)}; largest: "
            f"{top or 'none'}; early (0-9) minus late (20-29) layers: {e.estimate:+.2f} "
            f"[{e.lo:+.2f}, {e.hi:+.2f}] ({e.verdict}). Across heads the RoPE spectral prediction "
            f"ranks the measured effect with {r('rho_spectral_vs_measured')}; the phase-free energy "
            f"prediction ranks its size with {r('rho_energy_vs_abs_measured')}; the direct "
            f"first-order probe-member logit change with {r('rho_direct_vs_measured')}; within "
            f"layers (layer means removed) the spectral prediction gives "
            f"{r('rho_spectral_vs_measured_within_layer')} and the energy prediction "
            f"{r('rho_energy_vs_abs_measured_within_layer')}.")
