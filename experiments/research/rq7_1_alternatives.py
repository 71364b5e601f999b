"""RQ 7.1 + 7.2 (+ 4.1): TEMPO against beam search at matched width and against sampling with sample
counts matched to TEMPO's set sizes; semantic spread of the alternatives each decoder explores.

Per prompt (12 logical steps each):
  - TEMPO: threshold 0.1, max width 4, isolated siblings, mixture combining, no pruning (host
    driver, full attention capture of every step);
  - beam search: width 4 (= TEMPO's max width), length penalty 1;
  - sampling: temperature 0.7; temperature 1.0; temperature 1.0 with top-p 0.9; 4 samples each
    (seeds 0-3), run as 12 worlds of one vmapped program.
Measures:
  - facts gold coverage (7.2): is the gold answer's first token among the first tokens a decoder
    explored? TEMPO: the step-0 set C_0. Sampling: the first tokens of the first |C_0| samples
    (count-matched to TEMPO's set size at that step). Beam: the first tokens of its 4 final beams.
  - quality: self-perplexity of the output (TEMPO clean path, best beam, each sample; for beam and
    samples from the model probabilities their traces store, which equals the forward-pass
    self-perplexity); facts clean-path accuracy; code parse rate. Samples: mean over the 4.
  - alternatives (4.1): per logical step, the tokens a decoder computed at that step (TEMPO: the
    set's members; beam: the 4 final beams' tokens; sampling: the tokens of the first |C_s| samples,
    count-matched per step to TEMPO's set size, and, in the table only, of all 4 samples); their
    distinct count, redundancy (share of computed tokens that repeat another) and semantic spread
    (mean pairwise cosine distance of input embeddings, steps with >= 2 distinct tokens).
  - attention (7.1): per layer, sink share and attention entropy of TEMPO's clean-path queries in
    the lattice vs the SAME tokens fed as one causal sequence (what beam search or greedy computes
    for a path: a beam's query sees its own ancestors only), which isolates the effect of the
    alternatives in the context; and the clean-path queries' attention mass on earlier alternatives
    (always 0 for a beam). The best beam's own path replayed gives a descriptive beam reference.
  - cost: forward tokens per logical step (TEMPO: members fed; beam: 4; sampling: 4 worlds) and
    wall time per logical step (descriptive; shared machine).
"""

from __future__ import annotations

import numpy as np

from experiments.research import decoding_alternatives as A
from tempo_jax.research import Design, Hypothesis, Output, quality_of
from tempo_jax import quality
from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.engine.beam import beam_search
from tempo_jax.metrics import entropy_nats

STEPS, WIDTH, TAU = 12, 4, 0.1
N_SAMPLES = 4
SAMPLERS = {"T07": dict(temperature=0.7), "T10": dict(temperature=1.0),
            "P09": dict(temperature=1.0, top_p=0.9)}
METHODS = ("beam", *(f"samp_{k}" for k in SAMPLERS))

DESIGN = Design(
    id="rq7.1",
    questions=("7.1", "7.2", "4.1"),
    title="TEMPO vs beam search and sampling: coverage, quality, alternatives, attention, cost",
    primary_metric="facts gold coverage of the explored first tokens (TEMPO minus other, count-"
                   "matched for sampling) and self-perplexity of the output (log ratio other/TEMPO)",
    contrast="TEMPO (tau 0.1, W 4) vs beam search (width 4) and vs sampling (T 0.7, T 1.0, T 1.0 "
             "top-p 0.9; 4 samples), same prompt and step budget",
    hypotheses=(
        Hypothesis("GS", "facts: TEMPO's step-0 set holds the gold first token more often than the "
                         "first tokens of as many samples (cov = TEMPO - sampling)",
                   "cov_samp_*", ">0", margin=0.10),
        Hypothesis("GB", "facts: TEMPO's step-0 set holds the gold first token more often than the "
                         "first tokens of beam search's 4 final beams (cov = TEMPO - beam)",
                   "cov_beam", ">0", margin=0.10),
        Hypothesis("QS", "samples have higher self-perplexity than TEMPO's clean path "
                         "(log ratio sample / TEMPO)", "lppl_samp_*", ">0"),
        Hypothesis("QB", "the best beam has lower self-perplexity than TEMPO's clean path "
                         "(log ratio beam / TEMPO)", "lppl_beam", "<0"),
        Hypothesis("SS", "TEMPO's members are semantically closer (lower embedding spread) than the "
                         "tokens as many samples write at the same step (TEMPO - sampling)",
                   "spread_samp_*", "<0", family="alternatives", margin=0.05),
        Hypothesis("SB", "TEMPO's members are semantically more spread than the tokens beam "
                         "search's final beams hold at the same step (TEMPO - beam)",
                   "spread_beam", ">0", family="alternatives", margin=0.05),
        Hypothesis("AS", "alternatives in the context lower the clean-path queries' sink share "
                         "(lattice - same path as one causal sequence, mean over layers)",
                   "dsink", "<0", family="attention", margin=0.01),
        Hypothesis("AE", "alternatives in the context raise the clean-path queries' attention "
                         "entropy (nats; lattice - causal replay)", "dent", ">0",
                   family="attention", margin=0.05),
        Hypothesis("BS", "sink share of TEMPO's clean-path queries minus the best beam's queries",
                   "bsink", "<0", family="attention", margin=0.01),
        Hypothesis("BE", "attention entropy of TEMPO's clean-path queries minus the best beam's",
                   "bent", ">0", family="attention", margin=0.05),
        Hypothesis("LS", "per layer: lattice - causal replay sink share", "L*_dsink", "<0",
                   family="layers", margin=0.01),
        Hypothesis("LE", "per layer: lattice - causal replay attention entropy", "L*_dent", ">0",
                   family="layers", margin=0.05),
        Hypothesis("F", "facts: clean-path accuracy of TEMPO minus the other decoder's (samples: "
                        "mean over 4) within +-10 points", "correct_*", "=0", family="quality",
                   margin=0.10),
        Hypothesis("K", "code: parse rate of TEMPO minus the other decoder's within +-10 points",
                   "parses_*", "=0", family="quality", margin=0.10),
    ),
    margin=float(np.log(1.1)),
    margin_note="log(1.1) for self-perplexity log ratios; 10 points for coverage, accuracy and parse "
                "rate; 0.05 cosine distance for spread; 0.01 for sink share; 0.05 nats for entropy",
    metrics=("cov_*", "lppl_*", "spread_*", "dsink", "dent", "bsink", "bent", "L*_dsink", "L*_dent",
             "correct_*", "parses_*"),
    families={"primary": "holm", "alternatives": "holm", "attention": "holm", "layers": "fdr_bh",
              "quality": "holm"},
    n_per_genre=12,
    quick_n=2,
    caveats=(
        "12 logical steps and 12 test prompts per genre (36 in all) to fit the shared compute "
        "budget; coverage and accuracy tests use the 12 facts prompts only and have little power.",
        "Coverage is by construction a comparison of explored FIRST tokens: TEMPO's C_0 is the "
        "top-|C_0| tokens, so TEMPO can only miss a gold token that sampling reaches in the tail.",
        "TEMPO's redundancy is 0 by construction (a set holds distinct tokens); beam and sample "
        "paths can write the same token at a step.",
        "Spread compares tokens written at the same logical step; for beam and sampling they follow "
        "different prefixes, for TEMPO they share one mixture context.",
        "The lattice-vs-replay attention contrast keeps the tokens fixed; the TEMPO-vs-best-beam "
        "attention contrast does not (different tokens and contexts), so it is descriptive.",
        "Wall time is from a 2-core machine shared with other jobs and includes compilation on the "
        "first prompt of each prompt-length bucket; it is reported as medians, not tested.",
    ),
    config={"steps": STEPS, "width": WIDTH, "tau": TAU, "n_samples": N_SAMPLES, "samplers": SAMPLERS,
            "beam_width": WIDTH},
)


def _tempo(m, ids, seed):
    """TEMPO trace plus per-layer sink [L], entropy [L], alternatives mass [L] of the clean-path
    (member 0) queries, averaged over steps."""
    g = GenerationConfig(max_steps=STEPS, max_width=WIDTH, threshold=TAU, prune=False, seed=seed)
    sink, ent, alt = [], [], []

    def on_step(s, st, cap):
        a = np.asarray(cap.attn, np.float64)[:, :, 0, :]  # [L,H,K] the clean-path query
        step, member = np.asarray(st.slot_step), np.asarray(st.slot_member)
        off = (step >= 0) & (step < s) & (member != 0)
        sink.append(a[..., 0].mean(-1))
        ent.append(entropy_nats(a).mean(-1))
        alt.append(a[..., off].sum(-1).mean(-1))

    tr = generate(m.params, m.cfg, ids, g, capture="full", on_step=on_step)
    return tr, np.mean(sink, 0), np.mean(ent, 0), np.mean(alt, 0)


def _one(m, p, seed) -> dict:
    ids = m.tokenizer(p.prompt).input_ids
    eos = m.cfg.eos_token_ids or ()
    embed = np.asarray(m.params["embed"])
    kw = dict(genre=p.genre, reference=p.reference, aliases=p.aliases, tokenizer=m.tokenizer,
              prompt_text=p.prompt, eos_ids=eos)
    out: dict = {}
    tr, sink_lat, ent_lat, alt_lat = _tempo(m, ids, seed)
    q = quality_of(m, p, tr)
    clean = [int(t) for t in tr.arrays["tokens"][:, 0]]
    sink_rep, ent_rep = A.replay_attention(m.params, m.cfg, ids, clean)
    sets = [[mm["token"] for mm in st["members"] if not mm["pruned"]] for st in tr.steps()]
    set_sizes = [len(x) for x in sets]
    out["tempo"] = dict(q, ppl=q["self_ppl"], alt=A.alternatives(sets, embed), fwd=float(np.mean(tr.arrays["set_n"])),
                        ms=1000 * tr.timings["total_s"] / tr.n_steps, first=set(sets[0]), n0=len(sets[0]))
    out["attn"] = dict(sink_lat=sink_lat, ent_lat=ent_lat, alt_lat=alt_lat, sink_rep=sink_rep,
                       ent_rep=ent_rep)

    bt = beam_search(m.params, m.cfg, ids, width=WIDTH, max_steps=STEPS)
    bpaths = [A.cut_at_eos(b, eos_ids=eos) for b in A.beam_paths(bt)]
    qb = quality.measure(bt, **kw)
    best = [int(t) for t in bt.arrays["tokens"][:, 0]]
    out["attn"]["sink_beam"], out["attn"]["ent_beam"] = A.replay_attention(m.params, m.cfg, ids, best)
    out["beam"] = dict(qb, ppl=A.path_ppl(bt, eos), alt=A.alternatives(A.paths_by_step(bpaths), embed),
                       fwd=float(WIDTH), ms=1000 * bt.timings["total_s"] / STEPS,
                       first={b[0] for b in bpaths if b})

    cfgs = [GenerationConfig(method="sample", max_steps=STEPS, seed=seed * 1000 + j, **kw_s)
            for kw_s in SAMPLERS.values() for j in range(N_SAMPLES)]
    import time
    t0 = time.perf_counter()
    traces = A.sample_worlds(m.params, m.cfg, ids, cfgs)
    ms = 1000 * (time.perf_counter() - t0) / STEPS
    for i, k in enumerate(SAMPLERS):
        trs = traces[i * N_SAMPLES:(i + 1) * N_SAMPLES]
        paths = [A.cut_at_eos(t.arrays["tokens"][:, 0], eos_ids=eos) for t in trs]
        qs = [quality.measure(t, **kw) for t in trs]
        mean = {key: float(np.nanmean([x[key] for x in qs])) for key in qs[0]}
        firsts = [int(t.arrays["tokens"][0, 0]) for t in trs]
        # count-matched per step: at step s the tokens of the first |C_s| samples (TEMPO's set size)
        matched = [[pp[s] for pp in paths[:n_s] if len(pp) > s] for s, n_s in enumerate(set_sizes)]
        out[f"samp_{k}"] = dict(mean, ppl=float(np.exp(np.nanmean([np.log(A.path_ppl(t, eos)) for t in trs]))),
                                alt=A.alternatives(matched, embed),
                                alt4=A.alternatives(A.paths_by_step(paths), embed), fwd=float(N_SAMPLES),
                                ms=ms, first=set(firsts[:out["tempo"]["n0"]]), first_all=set(firsts))
    if p.genre == "facts":
        gold = quality.gold_first_token(m.tokenizer, p.reference)
        for meth in ("tempo", *METHODS):
            out[meth]["cov"] = float(gold in out[meth]["first"])
            if "first_all" in out[meth]:
                out[meth]["cov_all"] = float(gold in out[meth]["first_all"])
    return out


def run(ctx) -> Output:
    m = ctx.model
    rows = []
    for p, r in ctx.map(lambda p: _one(m, p, ctx.seed)):
        t, at = r["tempo"], r["attn"]
        row = {"prompt_id": p.id, "genre": p.genre}
        for meth in ("tempo", *METHODS):
            x = r[meth]
            row.update({f"ppl_{meth}": x["ppl"], f"fwd_{meth}": x["fwd"], f"ms_{meth}": x["ms"],
                        f"distinct_{meth}": x["alt"].distinct, f"redund_{meth}": x["alt"].redundancy,
                        f"spreadv_{meth}": x["alt"].spread, f"branch_{meth}": x["alt"].branching})
            if "alt4" in x:
                row[f"spread4_{meth}"], row[f"redund4_{meth}"] = x["alt4"].spread, x["alt4"].redundancy
            for key in ("cov", "cov_all", "correct", "parses", "repeat_3", "distinct_2"):
                if key in x:
                    row[f"q_{key}_{meth}"] = x[key]
            if meth == "tempo":
                continue
            row[f"lppl_{meth}"] = float(np.log(x["ppl"] / t["ppl"]))
            if np.isfinite(t["alt"].spread) and np.isfinite(x["alt"].spread):
                row[f"spread_{meth}"] = t["alt"].spread - x["alt"].spread
            if p.genre == "facts":
                row[f"cov_{meth}"] = t["cov"] - x["cov"]
                row[f"correct_{meth}"] = t["correct"] - x["correct"]
            if p.genre == "code":
                row[f"parses_{meth}"] = t["parses"] - x["parses"]
        d_sink, d_ent = at["sink_lat"] - at["sink_rep"], at["ent_lat"] - at["ent_rep"]
        row["dsink"], row["dent"] = float(d_sink.mean()), float(d_ent.mean())
        row["bsink"] = float((at["sink_lat"] - at["sink_beam"]).mean())
        row["bent"] = float((at["ent_lat"] - at["ent_beam"]).mean())
        row["alt_mass"] = float(at["alt_lat"].mean())
        for l in range(len(d_sink)):
            row[f"L{l:02d}_dsink"], row[f"L{l:02d}_dent"] = float(d_sink[l]), float(d_ent[l])
        rows.append((row, at))
    attn = [a for _, a in rows]
    rows = [r for r, _ in rows]
    table = _table(rows)
    _figures(ctx, rows, attn, table)
    return Output(rows=rows, tables={"by_method": table})


def _table(rows) -> list[dict]:
    """Per method: medians / means over prompts of cost, quality and alternatives."""
    out = []
    for meth in ("tempo", *METHODS):
        rec = {"method": meth}
        for col in ("fwd", "ms", "ppl", "distinct", "redund", "spreadv", "branch", "spread4", "redund4"):
            if f"{col}_{meth}" not in rows[0]:
                continue
            v = np.asarray([r[f"{col}_{meth}"] for r in rows], np.float64)
            v = v[np.isfinite(v)]
            rec[f"{col}_{'median' if col in ('ms', 'ppl') else 'mean'}"] = \
                float(np.median(v) if col in ("ms", "ppl") else v.mean()) if len(v) else float("nan")
        for key in ("cov", "cov_all", "correct", "parses"):
            v = [r[f"q_{key}_{meth}"] for r in rows if f"q_{key}_{meth}" in r]
            if v:
                rec[f"{key}_mean"], rec[f"{key}_n"] = float(np.mean(v)), len(v)
        out.append(rec)
    return out


def _figures(ctx, rows, attn, table):
    from experiments.plotting import pyplot

    plt = pyplot()
    L = len(attn[0]["sink_lat"])
    layers = np.arange(L)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, (key, label) in zip(axes[:2], (("sink", "sink share"), ("ent", "attention entropy (nats)"))):
        for src, name, style in (("lat", "TEMPO lattice (clean-path queries)", "-o"),
                                 ("rep", "same path as one causal sequence", "--s"),
                                 ("beam", "best beam (causal)", ":^")):
            v = np.stack([a[f"{key}_{src}"] for a in attn])
            ax.plot(layers, v.mean(0), style, ms=3, label=name)
        ax.set_xlabel("layer")
        ax.set_title(f"{label}, mean over {len(attn)} prompts and heads", fontsize=10)
        ax.legend(fontsize=7)
    v = np.stack([a["alt_lat"] for a in attn])
    axes[2].plot(layers, v.mean(0), "-o", ms=3)
    axes[2].set_xlabel("layer")
    axes[2].set_title("TEMPO clean-path queries: attention on earlier alternatives\n(beam: 0 by "
                      "construction)", fontsize=10)
    fig.suptitle("RQ 7.1: attention of TEMPO vs single-path decoding, per layer")
    fig.tight_layout()
    ctx.figure(fig, "attention_layers")

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    meths = ["tempo", *METHODS]
    labels = ["TEMPO", "beam", "T0.7", "T1.0", "T1 p.9"]
    for ax, (col, label, log) in zip(axes, (("ppl", "self-perplexity (log scale)", True),
                                            ("spreadv", "embedding spread of a step's tokens", False),
                                            ("distinct", "distinct tokens per step", False),
                                            ("redund", "redundancy (repeated computed tokens)", False))):
        data = [[r[f"{col}_{mm}"] for r in rows if np.isfinite(r[f"{col}_{mm}"])] for mm in meths]
        ax.boxplot(data, tick_labels=labels, showfliers=False)
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        if log:
            ax.set_yscale("log")
    fig.suptitle(f"RQ 7.2 / 4.1: decoders over {len(rows)} prompts; samples count-matched per step to "
                 f"TEMPO's set size (fwd tokens per step: "
                 + ", ".join(f"{lab} {rec['fwd_mean']:.2f}" for lab, rec in zip(labels, table)) + ")")
    fig.tight_layout()
    ctx.figure(fig, "decoders")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    pts = lambda t: f"{100 * t.estimate:+.0f} points [{100 * t.lo:+.0f}, {100 * t.hi:+.0f}] ({t.verdict})"
    pct = lambda t: f"{100 * (np.exp(t.estimate) - 1):+.0f}% [{100 * (np.exp(t.lo) - 1):+.0f}, {100 * (np.exp(t.hi) - 1):+.0f}] ({t.verdict})"
    num = lambda t: f"{t.estimate:+.3f} [{t.lo:+.3f}, {t.hi:+.3f}] ({t.verdict})"
    ok = lambda c: c in by and np.isfinite(by[c].estimate)
    parts = []
    cov = [f"{c[4:]} {pts(by[c])}" for c in ("cov_beam", *(f"cov_samp_{k}" for k in SAMPLERS)) if ok(c)]
    if cov:
        parts.append("facts gold-first-token coverage, TEMPO minus " + ", ".join(cov))
    ppl = [f"{c[5:]} {pct(by[c])}" for c in ("lppl_beam", *(f"lppl_samp_{k}" for k in SAMPLERS)) if ok(c)]
    if ppl:
        parts.append("self-perplexity of the other decoder relative to TEMPO: " + ", ".join(ppl))
    spr = [f"{c[7:]} {num(by[c])}" for c in ("spread_beam", *(f"spread_samp_{k}" for k in SAMPLERS)) if ok(c)]
    if spr:
        parts.append("embedding spread of a step's tokens, TEMPO minus " + ", ".join(spr))
    if ok("dsink") and ok("dent"):
        parts.append(f"alternatives in the context change the clean-path queries' sink share by "
                     f"{num(by['dsink'])} and attention entropy by {num(by['dent'])} nats "
                     "(lattice vs the same path as one sequence)")
    return "; ".join(parts) + "."
