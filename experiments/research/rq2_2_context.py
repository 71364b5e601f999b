"""RQ 2.2: do siblings attend to different context, and do similar siblings attend alike?

Per prompt, one TEMPO generation (isolated siblings, tau 0.05, W 8, 16 steps, no pruning, full
capture). At every step s whose set has n >= 2 members, each member's attention row at layer l,
head h is restricted to the CONTEXT slots (prompt and earlier steps; the sink, slot 0, and the
step's own slots excluded) and renormalised to a distribution over them. Under isolation the
siblings of one step see exactly the same keys at the same RoPE position: the only thing that
differs between their queries is the token. The divergence of two members is the Jensen-Shannon
divergence (bits, in [0, 1]) of these distributions, per (layer, head), averaged over heads.

Null (what "different" is measured against): the CROSS-STEP pair. For a multi-member step s and
the nearest earlier multi-member step s' of the same prompt, both sibling pairs (members of s) and
cross pairs (a member of s with a member of s') are compared on the SAME support, the context
slots of s' (slot_step < s'), renormalised. A cross pair differs in token, position and the
recent context the query came from; a sibling pair only in token. log(JS_sibling / JS_cross) per
prompt and layer says how much of a step-to-step change of context use the token alone produces.

Semantic similarity: for every sibling pair, cosine of the two tokens' input embeddings vs their
layer-mean JS. Per prompt Spearman rho over its pairs (prompts with >= 5 pairs), tested over
prompts; also the pooled Spearman rho with a prompt-cluster bootstrap CI, and the same controlling
for the pair's log-probability gap (partial Spearman).
"""

from __future__ import annotations

import itertools

import numpy as np

from tempo_jax.research import Design, Hypothesis, Output, TestResult
from tempo_jax import stats as S
from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.slots import slot_groups

GEN = dict(max_steps=16, threshold=0.05, max_width=8, prune=False, siblings="isolated")
LOG_MARGIN = float(np.log(1.25))
RHO_MARGIN = 0.1
MIN_PAIRS = 5
N_BOOT = 2000

DESIGN = Design(
    id="rq2.2",
    questions=("2.2",),
    title="Context integration: do siblings attend to different context (JS over context slots)",
    primary_metric="Jensen-Shannon divergence (bits) between siblings' attention distributions over "
                   "context slots (sink excluded), head-mean, per layer; as a per-prompt log ratio "
                   "to the cross-step null on the same support",
    contrast="sibling pairs (same step: token differs only) vs cross-step pairs (nearest earlier "
             "multi-member step), same prompt, same slot support",
    hypotheses=(
        Hypothesis("D", "siblings diverge less than cross-step pairs (layer-mean log ratio)",
                   "lratio_mean", "<0"),
        Hypothesis("Dl", "per layer: siblings diverge less than cross-step pairs", "L*_lratio",
                   "<0", family="layers"),
        Hypothesis("Dw", "the same with heads weighted by the pairs' attention mass on the common "
                         "support (robustness to renormalising near-empty rows)", "lratio_w_mean", "<0",
                   family="robustness"),
        Hypothesis("Sem", "semantically closer siblings (input-embedding cosine) attend more alike: "
                          "per-prompt Spearman rho(cosine, JS) < 0", "rho_cos_js", "<0",
                   family="semantic", margin=RHO_MARGIN),
        Hypothesis("SemP", "the same after removing the pair's log-probability gap (per-prompt "
                           "partial Spearman)", "prho_cos_js", "<0", family="semantic",
                   margin=RHO_MARGIN),
    ),
    margin=LOG_MARGIN,
    margin_note="log(1.25) for JS log ratios; 0.1 for Spearman rho",
    metrics=("lratio_mean", "lratio_w_mean", "L*_lratio", "rho_cos_js", "prho_cos_js", "js_sib_mean", "L*_js_sib",
             "n_pairs", "n_multi"),
    families={"primary": "holm", "layers": "fdr_bh", "semantic": "holm", "robustness": "holm"},
    n_per_genre=10,
    quick_n=2,
    caveats=(
        "Attention weights only: this says where siblings look, not what that context DOES for "
        "them (no ablation here).",
        "Distributions are renormalised over context slots; a head that puts almost all its mass "
        "on the sink still gets a full distribution over context, so its JS can be large while "
        "the mass involved is small (context mass per layer is in table_layers; test Dw weights "
        "heads by that mass).",
        "The cross-step null also differs in position (s - s' steps) and in the recent context "
        "slots, which the common support leaves out: it is a reference scale, not a token-only "
        "counterfactual.",
        "Sibling pairs of one step share a member, so pairs are not independent; every test is per "
        "prompt or prompt-cluster bootstrapped.",
        "Not done: whether divergence predicts which sibling's continuation scores higher (needs "
        "forced continuations per sibling).",
    ),
    config={"generation": GEN, "min_pairs": MIN_PAIRS, "n_boot": N_BOOT},
)


def js_bits(p, q):
    """Jensen-Shannon divergence in bits of distributions ``p[..., C]`` and ``q[..., C]`` -> ``[...]``."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = 0.5 * (p + q)
    kl = lambda a: np.where(a > 0, a * (np.log2(np.where(a > 0, a, 1.0)) -
                                        np.log2(np.where(m > 0, m, 1.0))), 0.0).sum(-1)
    return np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, 1.0)


def renorm(a):
    """Rows ``a[..., C]`` divided by their sum (uniform where the sum is 0)."""
    tot = a.sum(-1, keepdims=True)
    return np.where(tot > 0, a / np.where(tot > 0, tot, 1.0), 1.0 / a.shape[-1])


def _steps(m, p, seed):
    """Multi-member steps of one generation: list of (s, tokens[n], logprobs[n], slot_step of the
    context slots [C], raw attention over context slots [L,H,n,C])."""
    ids = m.tokenizer(p.prompt).input_ids
    out = []

    def on_step(s, st, cap):
        n = int(np.asarray(st.set_n)[s])
        if n < 2:
            return
        slot_step = np.asarray(st.slot_step)
        g = slot_groups(slot_step, np.asarray(st.alive), np.asarray(st.set_n), s)
        ctx_idx = np.flatnonzero(np.asarray(g.context))
        a = np.asarray(cap.attn)[:, :, :n][..., ctx_idx]  # [L,H,n,C]
        out.append((s, np.asarray(st.tokens)[s, :n], np.log(np.asarray(st.probs)[s, :n]),
                    slot_step[ctx_idx], a.astype(np.float32)))

    generate(m.params, m.cfg, ids, GenerationConfig(**GEN, seed=seed), capture="full", on_step=on_step)
    return out


def prompt_stats(steps, embed) -> dict:
    """Per-prompt reductions of :func:`_steps` output (``embed[V, E]`` input embeddings)."""
    js_sib, js_sib_head, mass, sib_S, cross_S, top_sib, top_cross, pairs = [], [], [], [], [], [], [], []
    sib_W, cross_W = [], []
    prev = None
    for s, tok, lp, ss, a in steps:
        n = a.shape[2]
        q = renorm(a.astype(np.float64))
        I, J = map(np.asarray, zip(*itertools.combinations(range(n), 2)))
        js = js_bits(q[:, :, I], q[:, :, J])  # [L,H,P]
        js_sib.append(js.mean((1, 2)))
        js_sib_head.append(js.mean(2))
        mass.append(a.sum(-1).mean((1, 2)))  # [L] context mass of the step's members
        e = embed[tok].astype(np.float64)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        for k, (i, j) in enumerate(zip(I, J)):
            pairs.append((s, float(e[i] @ e[j]), abs(float(lp[i] - lp[j])), js[:, :, k].mean(1)))
        if prev is not None:
            s0, a0, ss0 = prev
            keep = ss < s0  # the context of the earlier step, as columns of this step's context
            keep0 = ss0 < s0  # all of them (context of s0 is slot_step < s0)
            if keep.sum() >= 2 and keep.sum() == keep0.sum():
                qs, q0 = renorm(a[..., keep].astype(np.float64)), renorm(a0[..., keep0].astype(np.float64))
                js_s = js_bits(qs[:, :, I], qs[:, :, J])  # [L,H,P]
                sib_S.append(js_s.mean((1, 2)))
                # robustness: heads weighted by the pair's attention mass on the common support
                ms, m0 = a[..., keep].sum(-1).astype(np.float64), a0[..., keep0].sum(-1).astype(np.float64)
                sib_W.append(_wmean(js_s, 0.5 * (ms[:, :, I] + ms[:, :, J])))
                ci, cj = map(np.ravel, np.meshgrid(np.arange(n), np.arange(q0.shape[2]), indexing="ij"))
                js_c = js_bits(qs[:, :, ci], q0[:, :, cj])
                cross_S.append(js_c.mean((1, 2)))
                cross_W.append(_wmean(js_c, 0.5 * (ms[:, :, ci] + m0[:, :, cj])))
                top = lambda x, y: (x.argmax(-1) == y.argmax(-1)).mean((1, 2))
                top_sib.append(top(qs[:, :, I], qs[:, :, J]))
                top_cross.append(top(qs[:, :, ci], q0[:, :, cj]))
        prev = (s, a, ss)
    mean = lambda xs: np.mean(xs, 0) if xs else None
    return {"js_sib": mean(js_sib), "js_sib_head": mean(js_sib_head), "ctx_mass": mean(mass),
            "js_sib_S": mean(sib_S), "js_cross_S": mean(cross_S), "top_sib": mean(top_sib),
            "top_cross": mean(top_cross), "pairs": pairs, "n_multi": len(steps),
            "n_null": len(sib_S), "js_sib_W": mean(sib_W), "js_cross_W": mean(cross_W)}


def _wmean(js, w):
    """Mean of ``js[L,H,P]`` over heads and pairs weighted by ``w[L,H,P]`` -> ``[L]``."""
    return (js * w).sum((1, 2)) / np.maximum(w.sum((1, 2)), 1e-12)


def run(ctx) -> Output:
    m = ctx.model
    embed = np.asarray(m.params["embed"], np.float32)
    L = m.cfg.num_layers
    rows, per, pair_rows = [], [], []
    for k, (p, r) in enumerate(ctx.map(lambda p: prompt_stats(_steps(m, p, ctx.seed), embed))):
        row = {"prompt_id": p.id, "genre": p.genre, "n_multi": r["n_multi"], "n_pairs": len(r["pairs"])}
        if r["js_sib"] is not None:
            row["js_sib_mean"] = float(r["js_sib"].mean())
            for l in range(L):
                row[f"L{l}_js_sib"] = float(r["js_sib"][l])
        if r["js_cross_S"] is not None:
            lr = np.log(r["js_sib_S"]) - np.log(r["js_cross_S"])
            row["lratio_mean"] = float(np.log(r["js_sib_S"].mean()) - np.log(r["js_cross_S"].mean()))
            row["lratio_w_mean"] = float(np.log(r["js_sib_W"].mean()) - np.log(r["js_cross_W"].mean()))
            for l in range(L):
                row[f"L{l}_lratio"] = float(lr[l])
        if len(r["pairs"]) >= MIN_PAIRS:
            cos = np.array([x[1] for x in r["pairs"]])
            gap = np.array([x[2] for x in r["pairs"]])
            js = np.array([x[3].mean() for x in r["pairs"]])
            if np.ptp(cos) > 0 and np.ptp(js) > 0:
                from scipy.stats import spearmanr

                row["rho_cos_js"] = float(spearmanr(cos, js)[0])
                row["prho_cos_js"] = S.partial_spearman(cos, js, gap[:, None])
        for s, c, g, jl in r["pairs"]:
            pair_rows.append({"prompt": k, "step": s, "cos": c, "lp_gap": g, "js": float(jl.mean()),
                              **{f"js_L{l}": float(jl[l]) for l in range(L)}})
        rows.append(row)
        per.append(r)
    tests, tables, notes = _pooled(pair_rows, ctx.seed, L)
    tables["layers"] = _layer_table(per, L)
    notes.insert(0, f"{sum(r['n_multi'] for r in per)} multi-member steps, {len(pair_rows)} sibling "
                    f"pairs over {len(per)} prompts; {sum(r['n_null'] for r in per)} steps with a "
                    "cross-step null.")
    _figures(ctx, per, tables["layers"], pair_rows, L)
    return Output(rows=rows, tests=tests, tables=tables, notes=notes)


def _pooled(pair_rows, seed, L):
    """Pooled Spearman over sibling pairs with prompt-cluster bootstrap CIs (family semantic)."""
    if len({r["prompt"] for r in pair_rows}) < 5:
        return [], {}, ["fewer than 5 prompts with sibling pairs: no pooled correlation"]
    cos = np.array([r["cos"] for r in pair_rows])
    js = np.array([r["js"] for r in pair_rows])
    gap = np.array([r["lp_gap"] for r in pair_rows])
    grp = np.array([r["prompt"] for r in pair_rows])
    from scipy.stats import spearmanr

    tests = []
    for name, col, fn in (("SemPool", "pooled_rho_cos_js", lambda i: spearmanr(cos[i], js[i])[0]),
                          ("SemPoolP", "pooled_prho_cos_js", lambda i: S.partial_spearman(cos[i], js[i], gap[i, None]))):
        est = float(fn(np.arange(len(cos))))
        vals = S._cluster_resamples(fn, grp, N_BOOT, seed)
        if len(vals) == 0:  # every resample undefined (e.g. constant measures on a tiny model)
            continue
        lo, hi = np.quantile(vals, [0.025, 0.975])
        p = max(2 * min((vals <= 0).mean(), (vals >= 0).mean()), 1 / len(vals))
        p_tost = max((vals >= RHO_MARGIN).mean(), (vals <= -RHO_MARGIN).mean())
        tests.append(TestResult(name, col, "semantic", "<0", len(np.unique(grp)), est, float(lo), float(hi),
                                float(min(p, 1.0)), float(p_tost), margin=RHO_MARGIN,
                                note="pooled over sibling pairs; percentile cluster bootstrap over prompts, "
                                     "bootstrap p and bootstrap TOST p"))
    table = []
    for l in range(L):
        jl = np.array([r[f"js_L{l}"] for r in pair_rows])
        c = S.cluster_corr(cos, jl, grp, n_boot=500, seed=seed)
        table.append({"layer": l, "rho_cos_js": c["value"], "lo": c["lo"], "hi": c["hi"], "n_pairs": c["n"],
                      "n_prompts": c["n_groups"]})
    return tests, {"semantic_by_layer": table}, []


def _layer_table(per, L):
    """Per-layer means over prompts with BCa CIs (descriptive)."""
    out = []
    get = lambda key: np.array([r[key] for r in per if r[key] is not None])
    sib, cross, ssib, mass = get("js_sib"), get("js_cross_S"), get("js_sib_S"), get("ctx_mass")
    tsib, tcross = get("top_sib"), get("top_cross")
    for l in range(L):
        row = {"layer": l}
        for name, arr in (("js_sib", sib), ("js_sib_S", ssib), ("js_cross_S", cross), ("ctx_mass", mass),
                          ("top1_agree_sib", tsib), ("top1_agree_cross", tcross)):
            if len(arr) >= 3:
                ci = S.bootstrap_ci(arr[:, l], n_boot=999, seed=0)
                row[name], row[f"{name}_lo"], row[f"{name}_hi"] = float(arr[:, l].mean()), ci["lo"], ci["hi"]
        out.append(row)
    return out


def _figures(ctx, per, table, pair_rows, L):
    from experiments.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(17, 4.2))
    fig.subplots_adjust(wspace=0.38)
    x = np.arange(L)
    for name, lab, c in (("js_sib", "siblings, full context", "C0"), ("js_sib_S", "siblings, common support", "C2"),
                         ("js_cross_S", "cross-step null, common support", "C3")):
        if name in table[0]:
            v = np.array([t[name] for t in table])
            ax[0].plot(x, v, marker="o", ms=3, label=lab, color=c)
            ax[0].fill_between(x, [t[f"{name}_lo"] for t in table], [t[f"{name}_hi"] for t in table],
                               alpha=0.2, color=c)
    ax[0].set_xlabel("layer")
    ax[0].set_ylabel("JS divergence (bits), head mean")
    ax[0].set_title("Sibling divergence over context (sink excluded)")
    ax[0].legend(fontsize=8)
    heads = np.array([r["js_sib_head"] for r in per if r["js_sib_head"] is not None])
    if len(heads):
        im = ax[1].imshow(heads.mean(0).T, aspect="auto", cmap="viridis", origin="lower")
        fig.colorbar(im, ax=ax[1], label="JS (bits)")
        ax[1].set_xlabel("layer")
        ax[1].set_ylabel("head")
        ax[1].set_title(f"Sibling JS per head (mean of {len(heads)} prompts)")
    if pair_rows:
        cos = np.array([r["cos"] for r in pair_rows])
        js = np.array([r["js"] for r in pair_rows])
        ax[2].scatter(cos, js, s=6, alpha=0.4)
        ax[2].set_xlabel("input-embedding cosine of the two siblings")
        ax[2].set_ylabel("JS (bits), layer and head mean")
        ax[2].set_title(f"Semantic similarity vs divergence ({len(pair_rows)} pairs)")
    ctx.figure(fig, "divergence")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    d = by.get("lratio_mean")
    if d is None or d.n == 0:
        return "cannot tell: no prompt had two multi-member steps."
    pct = lambda t: f"{100 * (np.exp(t.estimate) - 1):+.0f}% [{100 * (np.exp(t.lo) - 1):+.0f}, {100 * (np.exp(t.hi) - 1):+.0f}]"
    lay = [t for c, t in by.items() if c.endswith("_lratio")]
    n_less = sum(t.verdict.startswith("differs (-)") for t in lay)
    n_more = sum(t.verdict.startswith("differs (+)") for t in lay)
    r, pr = by["rho_cos_js"], by["prho_cos_js"]
    f = lambda t: f"{t.estimate:+.2f} [{t.lo:+.2f}, {t.hi:+.2f}]"
    w = by.get("lratio_w_mean")
    wtxt = f", mass-weighted {pct(w)} ({w.verdict})" if w is not None and w.n else ""
    return (f"Siblings' Jensen-Shannon divergence over context slots differs by {pct(d)} from that of cross-step pairs on the same "
            f"support (layer mean; {d.verdict}{wtxt}); per layer, siblings diverge less in {n_less} and more in "
            f"{n_more} of {len(lay)} layers (BH). Semantic similarity: mean per-prompt Spearman "
            f"rho(embedding cosine, JS) {f(r)} ({r.verdict}), controlling for the probability gap "
            f"{f(pr)} ({pr.verdict}).")
