"""RQ 2.3 and 10.1: attention entropy and uncertainty.

Per prompt, one TEMPO generation (isolated siblings, tau 0.05, W 8, 16 steps, retroactive pruning
relative rho 0.8 over a 2-step window as in RQ 3.1, summary capture). At step s the members of set
C_s are the queries of one forward; that forward's output is the next distribution d_{s+1}, whose
entropy and candidate-set size |C_{s+1}| are the "uncertainty" the attention of step s feeds.

- Attention entropy A_l(s): the engine's per-query attention entropy (nats, over every visible slot,
  sink included) averaged over heads and the step's members, per layer l.
- 10.1 / 2.3a: A_l(s) vs H(d_{s+1}) and vs |C_{s+1}|. Attention entropy grows with the number of
  visible slots, so the tests are PARTIAL Spearman correlations controlling for the step index and
  the prompt length (ranks regressed out). Two estimators: pooled over steps with a prompt-cluster
  bootstrap CI (one test per layer, BH), and within-prompt (per-prompt partial Spearman controlling
  for the step index, then tested over prompts; prompt length is constant within a prompt).
  The chain's last link is checked too: A vs |C_{s+1}| controlling also for H(d_{s+1}).
- 2.3b visible vs isolated: at the FIRST multi-member step s* of each prompt the two rules have
  identical histories and identical members, so the members' attention entropy differs only by
  sibling visibility. Per head: entropy(visible) - entropy(isolated) at s*. "High-entropy heads" are
  fixed BEFORE the test data are read: the top 10% of heads by attention entropy of the last prompt
  token over 30 dev-split prompts. Contrast: mean change in high-entropy heads minus other heads.
- 2.3c pruning: judged members (set size >= 2, window closed): does the member's own attention
  entropy predict survival (prompt-grouped 5-fold CV logistic, out-of-fold AUROC), and does it add
  to the selection baseline [prob, rank, set size, relative prob]?
"""

from __future__ import annotations

import numpy as np

from tempo_jax.research import Design, Hypothesis, Output, TestResult
from tempo_jax import stats as S
from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.metrics import entropy_nats

GEN = dict(max_steps=16, min_steps=16, threshold=0.05, max_width=8, prune=True, prune_window=2,
           prune_rule="relative", prune_rho=0.8, siblings="isolated")
RHO_MARGIN = 0.1
AUC_MARGIN = 0.05
N_BOOT = 1000
N_BOOT_LAYER = 400
DEV_N = 10  # per genre, for choosing the high-entropy heads
HIGH_FRAC = 0.10
BUCKET = 64

DESIGN = Design(
    id="rq2.3",
    questions=("2.3", "10.1"),
    title="Attention entropy vs next-token entropy and set size; visible vs isolated; pruning",
    primary_metric="partial Spearman rho (step index and prompt length controlled) of layer-mean "
                   "attention entropy at step s with the entropy of d_{s+1} and with |C_{s+1}|, "
                   "pooled over steps, prompt-cluster bootstrap",
    contrast="correlation vs 0; visible - isolated at the first multi-member step (high-entropy "
             "heads minus the rest); AUROC of entropy vs the selection baseline",
    hypotheses=(
        Hypothesis("Wn", "within a prompt, higher layer-mean attention entropy goes with higher "
                         "next-token entropy (per-prompt partial Spearman, step controlled)",
                   "rho_next", ">0", margin=RHO_MARGIN),
        Hypothesis("Ws", "within a prompt, higher layer-mean attention entropy goes with a larger "
                         "next set", "rho_size", ">0", margin=RHO_MARGIN),
        Hypothesis("Wl", "per layer, within-prompt partial Spearman with next-token entropy",
                   "L*_rho_next", ">0", family="layers_within", margin=RHO_MARGIN),
        Hypothesis("V", "visible siblings raise attention entropy more in high-entropy heads than in "
                        "the rest (nats, first multi-member step)", "dvis_high_minus_rest", ">0",
                   family="visible", margin=0.05),
        Hypothesis("Va", "visible siblings change attention entropy (all heads, nats)", "dvis_all",
                   ">0", family="visible", margin=0.05),
    ),
    margin=RHO_MARGIN,
    margin_note="0.1 for Spearman rho; 0.05 nats for entropy changes; 0.05 AUROC",
    metrics=("rho_next", "rho_size", "L*_rho_next", "dvis_high_minus_rest", "dvis_all", "dvis_high",
             "n_steps", "s_star", "n_judged"),
    families={"primary": "holm", "layers_pooled": "fdr_bh", "layers_within": "fdr_bh",
              "visible": "holm", "pruning": "holm"},
    n_per_genre=10,
    quick_n=2,
    caveats=(
        "Correlational except 2.3b: attention entropy and next-token entropy are both outputs of one "
        "forward; a correlation says nothing about attention entropy CAUSING uncertainty.",
        "Attention entropy is over every visible slot with the sink included (the engine's capture); "
        "it rises with context length, which the partial correlations control for only through the "
        "ranks of step index and prompt length (a monotone, linear-in-ranks adjustment).",
        "The next set's size is a step function of d_{s+1} under a fixed threshold, so the size "
        "correlation largely restates the next-token-entropy one; the chain test (size controlling "
        "for next-token entropy) is the part attention could add.",
        "2.3b uses one step per prompt (the first multi-member step): the only step whose history is "
        "identical under both rules. Part of the change is mechanical: under 'visible' the query has "
        "more slots to spread over.",
        "Pruning rule as in RQ 3.1 (relative, rho 0.8, 2-step window), chosen on smoke prompts.",
    ),
    config={"generation": GEN, "n_boot": N_BOOT, "n_boot_layer": N_BOOT_LAYER, "dev_n_per_genre": DEV_N,
            "high_fraction": HIGH_FRAC},
)


class _Stop(Exception):
    """Raised from ``on_step`` to end a generation once the step of interest is captured."""


def high_entropy_heads(m, prompts) -> np.ndarray:
    """Boolean ``[L,H]``: the top HIGH_FRAC of heads by mean attention entropy of the last prompt
    token over ``prompts`` (one causal forward each, padded to BUCKET)."""
    import jax
    import jax.numpy as jnp

    from tempo_jax.model import TapsSpec, causal_mask, forward, init_cache

    run = jax.jit(forward, static_argnames=("cfg", "taps"))
    ents = []
    for p in prompts:
        ids = m.tokenizer(p.prompt).input_ids[:BUCKET]
        t = len(ids)
        tok = jnp.asarray([ids + [0] * (BUCKET - t)])
        _, _, taps = run(m.params, m.cfg, tok, jnp.arange(BUCKET, dtype=jnp.float32)[None],
                         jnp.arange(BUCKET)[None], causal_mask(1, BUCKET, BUCKET),
                         init_cache(m.cfg, 1, BUCKET), TapsSpec(attn=True),
                         key_pos=jnp.arange(BUCKET, dtype=jnp.float32)[None] if m.cfg.has_window else None)
        a = np.asarray(taps["attn"][:, 0, :, t - 1, :], np.float64)  # [L,H,K]
        ents.append(entropy_nats(a))
    ent = np.mean(ents, 0)
    return ent >= np.quantile(ent, 1 - HIGH_FRAC)


def _member_entropy(m, ids, gcfg, stop_at=None):
    """Generate; -> (trace or None, {step: entropy[L,H,n] of the step's members})."""
    ent = {}

    def on_step(s, st, cap):
        n = int(np.asarray(st.set_n)[s])
        ent[s] = np.asarray(cap.entropy)[:, :, :n].astype(np.float32)
        if stop_at is not None and s >= stop_at:
            raise _Stop

    try:
        tr = generate(m.params, m.cfg, ids, gcfg, capture="summary", on_step=on_step)
    except _Stop:
        tr = None
    return tr, ent


def prompt_data(m, p, seed) -> dict:
    """One prompt: step-level rows, judged members, first-multi-step entropies under both rules."""
    ids = m.tokenizer(p.prompt).input_ids
    g = GenerationConfig(**GEN, seed=seed)
    tr, ent = _member_entropy(m, ids, g)
    a = tr.arrays
    T = tr.n_steps
    steps = [{"s": s, "attn_ent": ent[s].mean((1, 2)), "next_ent": float(a["entropy"][s + 1]),
              "next_size": int(a["set_n"][s + 1]), "plen": len(ids)} for s in range(T - 1)]
    judged = []
    for s in range(T - GEN["prune_window"]):
        n = int(a["set_n"][s])
        if n < 2:
            continue
        probs = a["probs"][s, :n]
        for i in range(n):
            judged.append({"survived": bool(a["pruned_at"][int(a["slots"][s, i])] < 0),
                           "prob": float(probs[i]), "rank": i, "set_size": n,
                           "rel_prob": float(probs[i] / probs.sum()), "ent": ent[s][:, :, i].mean(1)})
    multi = [s for s in range(T) if a["set_n"][s] >= 2]
    vis = None
    if multi:
        s_star = multi[0]
        gv = GenerationConfig(**{**GEN, "siblings": "visible"}, seed=seed)
        _, ent_v = _member_entropy(m, ids, gv, stop_at=s_star)
        vis = {"s_star": s_star, "iso": ent[s_star].mean(2), "vis": ent_v[s_star].mean(2)}
    return {"steps": steps, "judged": judged, "vis": vis}


def run(ctx) -> Output:
    from experiments import corpus

    m = ctx.model
    L = m.cfg.num_layers
    dev = corpus.load(split="dev", genres=list(ctx.design.genres), limit_per_genre=2 if ctx.quick else DEV_N)
    high = high_entropy_heads(m, dev)
    rows, data = [], []
    for k, (p, d) in enumerate(ctx.map(lambda p: prompt_data(m, p, ctx.seed))):
        st = d["steps"]
        A = np.array([r["attn_ent"] for r in st])  # [T-1, L]
        nxt = np.array([r["next_ent"] for r in st])
        size = np.array([r["next_size"] for r in st])
        sidx = np.array([r["s"] for r in st], np.float64)
        row = {"prompt_id": p.id, "genre": p.genre, "n_steps": len(st), "n_judged": len(d["judged"])}
        row["rho_next"] = S.partial_spearman(A.mean(1), nxt, sidx[:, None])
        row["rho_size"] = S.partial_spearman(A.mean(1), size, sidx[:, None])
        for l in range(L):
            row[f"L{l}_rho_next"] = S.partial_spearman(A[:, l], nxt, sidx[:, None])
        if d["vis"] is not None:
            dv = d["vis"]["vis"] - d["vis"]["iso"]  # [L,H]
            row["s_star"] = d["vis"]["s_star"]
            row["dvis_all"] = float(dv.mean())
            row["dvis_high"] = float(dv[high].mean())
            row["dvis_high_minus_rest"] = float(dv[high].mean() - dv[~high].mean())
        rows.append(row)
        data.append((k, p, d))
    tests, tables, notes = [], {}, []
    pooled = _pooled_tests(data, L, ctx.seed)
    tests += pooled["tests"]
    tables["layers"] = pooled["table"]
    pr = _pruning_tests(data, L, ctx.seed)
    tests += pr["tests"]
    tables["pruning"] = pr["table"]
    notes += pr["notes"]
    tables["visible_heads"] = _visible_table(data, high, L)
    notes.append(f"high-entropy heads (top {HIGH_FRAC:.0%} on {len(dev)} dev prompts): "
                 + ", ".join(f"L{l}H{h}" for l, h in zip(*np.nonzero(high))))
    _figures(ctx, pooled["table"], tables["visible_heads"], high, L)
    return Output(rows=rows, tests=tests, tables=tables, notes=notes)


def _boot(name, col, family, fn, groups, seed, n_boot, margin, expect, note):
    """A TestResult from a statistic ``fn(index_array)`` with a prompt-cluster bootstrap."""
    groups = np.asarray(groups)
    est = float(fn(np.arange(len(groups))))
    vals = S._cluster_resamples(fn, groups, n_boot, seed)
    lo, hi = np.quantile(vals, [0.025, 0.975]) if len(vals) else (np.nan, np.nan)
    p = max(2 * min((vals <= 0).mean(), (vals >= 0).mean()), 1 / max(len(vals), 1)) if len(vals) else np.nan
    p_tost = max((vals >= margin).mean(), (vals <= -margin).mean()) if len(vals) else np.nan
    return TestResult(name, col, family, expect, int(len(np.unique(groups))), est, float(lo), float(hi),
                      float(min(p, 1.0)), float(p_tost), margin=margin, note=note)


def _pooled_tests(data, L, seed):
    """Pooled partial Spearman over steps (step index, prompt length controlled), cluster bootstrap."""
    st = [(k, r) for k, _, d in data for r in d["steps"]]
    if len({k for k, _ in st}) < 5:
        return {"tests": [], "table": []}
    grp = np.array([k for k, _ in st])
    A = np.array([r["attn_ent"] for _, r in st])
    nxt = np.array([r["next_ent"] for _, r in st])
    size = np.array([r["next_size"] for _, r in st], np.float64)
    cov = np.array([[r["s"], r["plen"]] for _, r in st], np.float64)
    note = "pooled over steps; partial Spearman (ranks of step index and prompt length regressed out); " \
           "percentile prompt-cluster bootstrap CI, bootstrap p and TOST p"
    am = A.mean(1)
    tests = [
        _boot("Pn", "pooled_prho_next", "primary", lambda i: S.partial_spearman(am[i], nxt[i], cov[i]), grp,
              seed, N_BOOT, RHO_MARGIN, ">0", note),
        _boot("Ps", "pooled_prho_size", "primary", lambda i: S.partial_spearman(am[i], size[i], cov[i]), grp,
              seed, N_BOOT, RHO_MARGIN, ">0", note),
        _boot("Pc", "pooled_prho_size_given_next", "primary",
              lambda i: S.partial_spearman(am[i], size[i], np.column_stack([cov[i], nxt[i]])), grp, seed, N_BOOT,
              RHO_MARGIN, ">0", note + "; next-token entropy also controlled"),
    ]
    table = []
    for l in range(L):
        al = A[:, l]
        tn = _boot("Pl", f"L{l}_pooled_prho_next", "layers_pooled", lambda i: S.partial_spearman(al[i], nxt[i], cov[i]),
                   grp, seed, N_BOOT_LAYER, RHO_MARGIN, ">0", note)
        ts = _boot("Pls", f"L{l}_pooled_prho_size", "layers_pooled",
                   lambda i: S.partial_spearman(al[i], size[i], cov[i]), grp, seed, N_BOOT_LAYER, RHO_MARGIN, ">0", note)
        tests += [tn, ts]
        from scipy.stats import spearmanr

        table.append({"layer": l, "raw_rho_next": float(spearmanr(al, nxt)[0]),
                      "prho_next": tn.estimate, "prho_next_lo": tn.lo, "prho_next_hi": tn.hi,
                      "prho_size": ts.estimate, "prho_size_lo": ts.lo, "prho_size_hi": ts.hi,
                      "mean_attn_entropy": float(al.mean()), "n_steps": len(al)})
    return {"tests": tests, "table": table}


def _pruning_tests(data, L, seed):
    """Out-of-fold AUROC of attention entropy for survival, and its gain over selection features."""
    rows = [(k, j) for k, _, d in data for j in d["judged"]]
    y = np.array([j["survived"] for _, j in rows], bool)
    grp = np.array([k for k, _ in rows])
    note = [f"{len(y)} judged members from {len(np.unique(grp))} prompts; {100 * y.mean():.1f}% survived."
            if len(y) else "no judged member"]
    if len(y) == 0 or len(np.unique(y)) < 2 or len(np.unique(grp)) < 5:
        return {"tests": [], "table": [], "notes": note + ["too few judged members in both classes for AUROC"]}
    sel = np.array([[j["prob"], j["rank"], j["set_size"], j["rel_prob"]] for _, j in rows])
    ent = np.array([j["ent"] for _, j in rows])  # [N, L]
    splits = S.grouped_cv_splits(grp, 5, seed)

    def oof(x):
        out = np.zeros(len(y))
        for tr, te in splits:
            out[te] = y[tr].mean() if len(np.unique(y[tr])) < 2 else S.fit_logistic_lbfgs(x[tr], y[tr])(x[te])
        return out

    scores = {"selection": oof(sel), "entropy_layers": oof(ent), "selection+entropy": oof(np.hstack([sel, ent])),
              "entropy_mean (raw)": ent.mean(1), "prob (raw)": sel[:, 0]}
    auroc = lambda s: (lambda i: S.auroc(y[i], s[i]))  # scores -> statistic of row indices
    cnote = "out-of-fold AUROC (prompt-grouped 5-fold CV); percentile prompt-cluster bootstrap"
    tests = [
        _boot("Pe", "auroc_entropy_minus_chance", "pruning", lambda i: auroc(scores["entropy_layers"])(i) - 0.5,
              grp, seed, N_BOOT, AUC_MARGIN, ">0", cnote),
        _boot("Pa", "auroc_sel+entropy_minus_selection", "pruning",
              lambda i: auroc(scores["selection+entropy"])(i) - auroc(scores["selection"])(i), grp, seed, N_BOOT,
              AUC_MARGIN, ">0", cnote),
    ]
    table = []
    for name, s in scores.items():
        r = S.auroc_ci(y, s, grp, n_boot=N_BOOT, seed=seed)
        table.append({"predictor": name, "auroc": r["value"], "lo": r["lo"], "hi": r["hi"], "n_members": len(y),
                      "n_prompts": r["n_groups"]})
    return {"tests": tests, "table": table, "notes": note}


def _visible_table(data, high, L):
    """Per head: mean over prompts of entropy at s* under isolated and visible (nats)."""
    iso = np.array([d["vis"]["iso"] for _, _, d in data if d["vis"] is not None])
    vis = np.array([d["vis"]["vis"] for _, _, d in data if d["vis"] is not None])
    if not len(iso):
        return []
    return [{"layer": l, "head": h, "high_entropy": bool(high[l, h]), "entropy_isolated": float(iso[:, l, h].mean()),
             "entropy_visible": float(vis[:, l, h].mean()), "change": float((vis - iso)[:, l, h].mean()),
             "n_prompts": len(iso)} for l in range(L) for h in range(high.shape[1])]


def _figures(ctx, table, vtab, high, L):
    from experiments.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.2))
    if table:
        x = np.array([t["layer"] for t in table])
        for key, lab, c in (("prho_next", "vs next-token entropy", "C0"), ("prho_size", "vs next set size", "C1")):
            ax[0].errorbar(x + (0.15 if c == "C1" else -0.15), [t[key] for t in table],
                           yerr=[[t[key] - t[f"{key}_lo"] for t in table], [t[f"{key}_hi"] - t[key] for t in table]],
                           fmt="o", ms=3, capsize=2, color=c, label=lab)
        ax[0].plot(x, [t["raw_rho_next"] for t in table], color="grey", lw=1, ls=":",
                   label="raw Spearman vs next-token entropy")
        ax[0].axhline(0, color="k", lw=0.8)
        ax[0].set_xlabel("layer")
        ax[0].set_ylabel("partial Spearman rho (step, prompt length controlled)")
        ax[0].set_title("Attention entropy at step s vs uncertainty at s+1 (95% cluster CI)")
        ax[0].legend(fontsize=8)
    if vtab:
        H = high.shape[1]
        ch = np.array([t["change"] for t in vtab]).reshape(L, H)
        lim = np.abs(ch).max() or 1.0
        im = ax[1].imshow(ch.T, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
        fig.colorbar(im, ax=ax[1], label="entropy visible - isolated (nats)")
        ly, hd = np.nonzero(high)
        ax[1].scatter(ly, hd, marker="s", facecolors="none", edgecolors="k", s=40, label="high-entropy (dev)")
        ax[1].set_xlabel("layer")
        ax[1].set_ylabel("head")
        ax[1].set_title("First multi-member step: visible vs isolated, per head")
        ax[1].legend(fontsize=8, loc="upper right")
    ctx.figure(fig, "entropy")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    f = lambda t: f"{t.estimate:+.2f} [{t.lo:+.2f}, {t.hi:+.2f}]"
    out = []
    if "pooled_prho_next" in by:
        pn, ps, pc = by["pooled_prho_next"], by["pooled_prho_size"], by["pooled_prho_size_given_next"]
        lay = [t for c, t in by.items() if c.endswith("_pooled_prho_next")]
        pos = sum(t.verdict.startswith("differs (+)") for t in lay)
        neg = sum(t.verdict.startswith("differs (-)") for t in lay)
        out.append(f"Layer-mean attention entropy vs next-token entropy, partial Spearman (step, prompt length "
                   f"controlled, pooled) {f(pn)} ({pn.verdict}); vs next set size {f(ps)} ({ps.verdict}); set size "
                   f"beyond next-token entropy {f(pc)} ({pc.verdict}); per layer positive in {pos} and negative in "
                   f"{neg} of {len(lay)} layers (BH)")
    w = by.get("rho_next")
    if w is not None and w.n:
        wl = [t for c, t in by.items() if c.endswith("_rho_next") and not c.startswith("pooled")
              and "_pooled_" not in c and c != "rho_next"]
        wpos = sum(t.verdict.startswith("differs (+)") for t in wl)
        out.append(f"within prompts {f(w)} ({w.verdict}; per layer positive in {wpos} of {len(wl)}, BH)")
    v, va = by.get("dvis_high_minus_rest"), by.get("dvis_all")
    if v is not None and v.n:
        out.append(f"visible siblings change attention entropy by {va.estimate:+.3f} nats over all heads "
                   f"({va.verdict}), high-entropy heads minus the rest {f(v)} nats ({v.verdict})")
    pe, pa = by.get("auroc_entropy_minus_chance"), by.get("auroc_sel+entropy_minus_selection")
    if pe is not None:
        out.append(f"member attention entropy predicts pruning survival at AUROC - 0.5 = {f(pe)} ({pe.verdict}) "
                   f"and adds {f(pa)} AUROC to selection features ({pa.verdict})")
    return ("; ".join(out) + ".") if out else "cannot tell: no data."
