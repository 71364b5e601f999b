"""RQ 1.1 / 1.2: how much attention do the members of a parallel set receive from a later query, how
does it depend on the set size n, and does the shared RoPE position (rather than the set itself)
change it? Which offset delta restores the distinct-position attention?

Instrument: :mod:`experiments.research.position_probe`. Per prompt the prompt's top-n next tokens
(n in 1, 2, 3, 5, 10, 20; n = 1 is the control: a single token at the same step) are written as one
isolated set at positions ``P + i * delta``; a probe query with a FIXED token (the greedy next
token after the top-1 member) at a FIXED position (P + 20, after every member in every condition)
reads them. Same slots, same mask, same probe in every condition; only n or delta changes.
Per-prompt statistics are log ratios of attention averaged over all layers and heads (so a value
of -0.69 means half the attention). Per-layer and per-head versions are secondary families.
Causal check: KL between the probe's next-token distribution with and without its edges to the
members (an ablated probe in the same forward), shared vs distinct positions.
"""

from __future__ import annotations

import numpy as np

from tempo_jax.research import Design, Hypothesis, Output, TestResult
from experiments.research.position_probe import measure_prompts
from tempo_jax import stats as S

NS = (1, 2, 3, 5, 10, 20)
DELTAS = (0.0, 0.001, 0.01, 0.1, 0.5, 1.0)
PROBE_GAP = 20
MARGIN = float(np.log(1.1))

DESIGN = Design(
    id="rq1.1",
    questions=("1.1", "1.2"),
    title="Attention to parallel members: set size vs shared RoPE position",
    primary_metric="probe attention on the set's members, per member token and summed over the "
                   "set, mean over all layers and heads, as a per-prompt log ratio between conditions",
    contrast="n members vs a single token at the same step (n = 1); distinct positions (delta 1) "
             "vs a shared position (delta 0) at equal n",
    hypotheses=(
        Hypothesis("H1", "per-token attention falls as n grows (dilution among siblings)",
                   "tok_n*", "<0"),
        Hypothesis("H2", "the set's summed attention stays within +-10% of a single token's",
                   "set_n*", "=0"),
        Hypothesis("H3", "distinct positions change per-token attention by less than +-10% "
                         "(the shared position is not the cause)", "pos_n*", "=0"),
        Hypothesis("H4", "what the members change in the probe's prediction (KL to the ablated "
                         "probe) is the same within +-10% at shared and distinct positions",
                   "klpos_n*", "=0", family="causal"),
        Hypothesis("O", "1.2: per-token attention at offset delta vs shared (n = 20)", "off_n20_d*",
                   "=0", family="offsets"),
        Hypothesis("N", "dilution with the probe at the natural next position P + 1", "nat_tok_n*",
                   "<0", family="natural"),
        Hypothesis("LT", "per-layer dilution at n = 20 (per-token, vs n = 1)", "L*_tok_n20", "<0",
                   family="layers_tok"),
        Hypothesis("LP", "per-layer position effect at n = 20 (distinct vs shared)", "L*_pos_n20",
                   "=0", family="layers_pos"),
    ),
    margin=MARGIN,
    margin_note="log(1.1): a 10% relative change in attention",
    metrics=("tok_n*", "set_n*", "pos_n*", "klpos_n*", "off_n20_d*", "nat_tok_n*", "L*_tok_n20",
             "L*_pos_n20"),
    families={"primary": "holm", "causal": "holm", "offsets": "holm", "natural": "holm",
              "layers_tok": "holm", "layers_pos": "holm", "heads_pos": "fdr_bh"},
    caveats=(
        "Forced sets of the top-n tokens, one step, isolated siblings: real TEMPO sets are smaller "
        "(mean 1.8-2 at tau 0.1) and later steps see several sets.",
        "The probe sits 20 positions after the set so that every condition keeps it after every "
        "member; the natural family repeats the set-size contrast with the probe at P + 1.",
        "At distinct positions later members are also closer to the probe: H3 measures the whole "
        "effect of giving members their own positions, recency included.",
        "One model (SmolLM2-135M-Instruct, Q4_1 GGUF dequantised to float32).",
    ),
    config={"n": NS, "deltas": DELTAS, "probe_gap": PROBE_GAP, "siblings": "isolated"},
)


def _lr(a, b):
    return float(np.log(a) - np.log(b))


def run(ctx) -> Output:
    m = ctx.model
    L, H = m.cfg.num_layers, m.cfg.num_heads
    rows, per_head_pos, per_head_off = [], [], []
    d1, d0 = DELTAS.index(1.0), 0
    nat = len(DELTAS)  # the natural world (probe at P + 1)
    i1, i20 = NS.index(1), NS.index(20)
    sums = {k: [] for k in ("tok", "set")}
    # several prompts per compiled program (position_probe.measure_prompts; the same numbers as
    # measure_prompt one prompt at a time, benchmarks/research.py times both)
    measure = lambda ps: measure_prompts(m.params, m.cfg, [m.tokenizer(p.prompt).input_ids for p in ps], NS,
                                         DELTAS, PROBE_GAP)
    for p, r in ctx.map_batched(measure, batch=8):
        tok, st, kl = r["per_token"], r["per_set"], r["kl"]  # [n, world, L, H], [n, world]
        mt, ms = tok.mean((2, 3)), st.mean((2, 3))  # [n, world]
        row = {"prompt_id": p.id, "genre": p.genre, "probe_token": r["probe_token"]}
        for j, n in enumerate(NS):
            row[f"att_tok_n{n}"] = mt[j, d0]
            row[f"att_set_n{n}"] = ms[j, d0]
            if n == 1:
                continue
            row[f"tok_n{n}"] = _lr(mt[j, d0], mt[i1, d0])
            row[f"set_n{n}"] = _lr(ms[j, d0], ms[i1, d0])
            row[f"pos_n{n}"] = _lr(mt[j, d1], mt[j, d0])
            row[f"klpos_n{n}"] = _lr(kl[j, d1], kl[j, d0])
            row[f"nat_tok_n{n}"] = _lr(mt[j, nat], mt[i1, nat])
        for k, dl in enumerate(DELTAS):
            if 0 < dl < 1:
                row[f"off_n20_d{dl:g}"] = _lr(mt[i20, k], mt[i20, d0])
        lt = tok.mean(3)  # [n, world, L]
        for layer in range(L):
            row[f"L{layer:02d}_tok_n20"] = _lr(lt[i20, d0, layer], lt[i1, d0, layer])
            row[f"L{layer:02d}_pos_n20"] = _lr(lt[i20, d1, layer], lt[i20, d0, layer])
        per_head_pos.append(np.log(tok[i20, d1]) - np.log(tok[i20, d0]))  # [L,H]
        per_head_off.append(np.log(tok[i20, :nat]) - np.log(tok[i20, d1]))  # [D,L,H] vs distinct
        sums["tok"].append(mt[:, d0])
        sums["set"].append(ms[:, d0])
        rows.append(row)
    heads = np.stack(per_head_pos)  # [N,L,H]
    tests, table = [], []
    for layer in range(L):
        for h in range(H):
            s = S.summarize_paired(heads[:, layer, h], n_boot=1999, seed=ctx.seed, margin=MARGIN)
            tests.append(TestResult("HP", f"L{layer:02d}H{h}_pos_n20", "heads_pos", "=0", s["n"],
                                    s["mean"], s["lo"], s["hi"], s["p"], s["p_tost"], s["d_z"],
                                    margin=MARGIN))
            table.append({"layer": layer, "head": h, "mean_log_ratio": s["mean"], "lo": s["lo"],
                          "hi": s["hi"], "p": s["p"], "p_tost": s["p_tost"]})
    crit, crit_table = critical_offsets(np.stack(per_head_off), ctx.seed)
    _figures(ctx, rows, np.stack(sums["tok"]), np.stack(sums["set"]), heads, L)
    _critical_figure(ctx, crit)
    return Output(rows=rows, tests=tests, tables={"heads_pos_n20": table,
                                                  "critical_offset_n20": crit_table},
                  notes=[_critical_note(crit)])


def critical_offsets(x, seed):
    """1.2's critical offset per head at n = 20: the smallest delta whose per-token attention is
    TOST-equivalent (within +-log 1.1, Benjamini-Hochberg over every head x delta) to the distinct
    positions (delta 1). ``x[N,D,L,H]`` = per-prompt log(attention at delta / at delta 1).
    Returns (``crit[L,H]``, NaN where no delta below 1 qualifies, and the per-head table)."""
    N, D, L, H = x.shape
    p = np.full((D, L, H), np.nan)
    for k in range(D - 1):  # the last world is delta 1 itself
        for layer in range(L):
            for h in range(H):
                p[k, layer, h] = S.tost(x[:, k, layer, h], MARGIN)["p"]
    padj = S.correct(p.ravel(), "fdr_bh").p_adj.reshape(p.shape)
    crit = np.full((L, H), np.nan)
    table = []
    for layer in range(L):
        for h in range(H):
            ok = [k for k in range(D - 1) if padj[k, layer, h] < 0.05]
            # the smallest delta from which every larger delta is also equivalent
            first = next((k for k in range(D - 1) if all(j in ok for j in range(k, D - 1))), None)
            crit[layer, h] = DELTAS[first] if first is not None else np.nan
            table.append({"layer": layer, "head": h, "critical_delta": crit[layer, h],
                          **{f"mean_log_ratio_d{DELTAS[k]:g}": float(np.mean(x[:, k, layer, h]))
                             for k in range(D - 1)}})
    return crit, table


def _critical_note(crit) -> str:
    vals, counts = np.unique(np.where(np.isnan(crit), -1.0, crit), return_counts=True)
    parts = [f"{'none < 1' if v < 0 else f'delta {v:g}'}: {c} heads" for v, c in zip(vals, counts)]
    return ("Critical offset at n = 20 (smallest delta whose per-token attention is within +-10% of "
            "distinct positions, TOST, BH over heads x deltas): " + ", ".join(parts) + ".")


def _critical_figure(ctx, crit):
    from experiments.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 8))
    shown = np.log10(np.where(np.isnan(crit), 1.0, np.where(crit == 0, 1e-4, crit)))
    im = ax.imshow(shown, cmap="viridis", vmin=-4, vmax=0, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("RQ 1.2: critical offset per head, n = 20\n(log10 delta; 0 = only delta 1; -4 = delta 0)")
    fig.colorbar(im, ax=ax)
    ctx.figure(fig, "critical_offset_n20")


def _figures(ctx, rows, tok, st, heads, L):
    from experiments.plotting import ci_bars, pyplot

    plt = pyplot()

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for a, x, name in ((ax[0], tok, "per member token"), (ax[1], st, "summed over the set")):
        mean, err = ci_bars([S.bootstrap_ci(x[:, j], n_boot=1999) for j in range(len(NS))])
        a.errorbar(NS, mean, yerr=err, marker="o", capsize=3)
        a.set_xscale("log")
        a.set_xticks(NS, [str(n) for n in NS])
        a.set_xlabel("set size n (shared position)")
        a.set_ylabel("probe attention (mean over L, H)")
        a.set_title(f"Attention {name}")
    fig.suptitle(f"RQ 1.1: mean over {len(rows)} prompts, 95% BCa CI")
    ctx.figure(fig, "attention_vs_n")

    fig, ax = plt.subplots(figsize=(10, 3.4))
    vals = np.asarray([[r[f"L{l:02d}_pos_n20"] for l in range(L)] for r in rows])
    mean, err = ci_bars([S.bootstrap_ci(vals[:, l], n_boot=1999) for l in range(L)])
    ax.bar(range(L), mean, yerr=err, capsize=2)
    ax.axhspan(-MARGIN, MARGIN, color="grey", alpha=0.2, label="+-10% margin")
    ax.set_xlabel("layer")
    ax.set_ylabel("log(distinct / shared)")
    ax.set_title("RQ 1.1: per-layer effect of distinct positions on per-token attention, n = 20")
    ax.legend()
    ctx.figure(fig, "layers_position_n20")

    fig, ax = plt.subplots(figsize=(6, 3.4))
    ds = [d for d in DELTAS if d > 0]
    means = [0.0] + [np.mean([r[f"off_n20_d{d:g}"] for r in rows]) for d in ds if d < 1]
    means.append(np.mean([r["pos_n20"] for r in rows]))
    ax.plot([1e-4] + ds, means, marker="o")
    ax.set_xscale("log")
    ax.axhspan(-MARGIN, MARGIN, color="grey", alpha=0.2)
    ax.set_xlabel("offset delta (member i at P + i*delta; 1e-4 marks delta 0)")
    ax.set_ylabel("log(per-token / shared)")
    ax.set_title("RQ 1.2: offsets, n = 20")
    ctx.figure(fig, "offsets_n20")

    fig, ax = plt.subplots(figsize=(4.5, 8))
    im = ax.imshow(heads.mean(0), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("log(distinct / shared), n = 20")
    fig.colorbar(im, ax=ax)
    ctx.figure(fig, "heads_position_n20")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    pct = lambda t: f"{100 * (np.exp(t.estimate) - 1):+.0f}% [{100 * (np.exp(t.lo) - 1):+.0f}, {100 * (np.exp(t.hi) - 1):+.0f}]"
    tok = [by[f"tok_n{n}"] for n in NS[1:]]
    st = [by[f"set_n{n}"] for n in NS[1:]]
    pos = [by[f"pos_n{n}"] for n in NS[1:]]
    first_tok = next((n for n, t in zip(NS[1:], tok) if t.verdict.startswith("differs (-)")), None)
    eq_pos = [n for n, t in zip(NS[1:], pos) if t.verdict.startswith("no effect")]
    diff_pos = [n for n, t in zip(NS[1:], pos) if t.verdict.startswith("differs")]
    lp = [t for t in tests if t.family == "layers_pos" and t.verdict.startswith("differs (+)")]
    parts = [
        f"Per-token attention to members falls with set size (n = 20 vs a single token: "
        f"{pct(tok[-1])}; significant from n = {first_tok})" if first_tok else
        f"Per-token attention to members does not fall significantly with n (n = 20: {pct(tok[-1])})",
        f"the set's summed attention is not conserved but grows (n = 2: {pct(st[0])}, n = 20: {pct(st[-1])})"
        if all(t.verdict.startswith("differs (+)") for t in st) else
        "set totals: " + ", ".join(f"n={n} {t.verdict}" for n, t in zip(NS[1:], st)),
        (f"distinct positions are equivalent to the shared one within +-10% for n = "
         f"{', '.join(map(str, eq_pos))}" if eq_pos else "no set size is equivalent within +-10%")
        + (f", but raise per-token attention for n = {', '.join(map(str, diff_pos))} "
           f"(n = 20: {pct(pos[-1])}; {len(lp)} of 30 layers significant after Holm)" if diff_pos else ""),
        f"causally, what the members change in the probe's next-token distribution (KL to the "
        f"probe without member edges), distinct vs shared: n = 2 {pct(by['klpos_n2'])} "
        f"({by['klpos_n2'].verdict}), n = 20 {pct(by['klpos_n20'])} ({by['klpos_n20'].verdict})",
    ]
    return "; ".join(parts) + "."
