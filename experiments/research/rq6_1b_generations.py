"""RQ 6.1, stage 2: whole TEMPO generations with single heads zero- or mean-ablated on every forward.

Stage 1 (rq6.1) ablated each of the 270 heads on ONE step. Here a few heads chosen FROM THE STAGE-1
TABLE (``experiments/results/rq6.1/table_heads.csv``) are ablated through the prompt forward and all
16 steps, and the effects on parallel-token attention, pruning and the text are measured.

Pre-registered head rule (zero-ablation columns of the stage-1 table): the 4 heads with the largest
|mean effect| on (c) the log-probability of the clean top next token, then the 4 heads with the
largest |mean effect| on (a) log parallel / non-parallel attention per token that are not already
chosen (K = 8 selected heads). Controls: 2 heads drawn uniformly (numpy default_rng(design seed))
from the other 262 heads.

Prompts: test split, 10 per genre by the corpus' hash order, minus the 15 stage-1 prompts (read from
``experiments/results/rq6.1/rows.csv``), prompts of <= 64 tokens -> up to 5 new prompts per genre.

Per prompt, 1 + 2 (K + 2) worlds run together (vmapped, one jitted step per logical step): clean, each
selected head zero-ablated, each control head zero-ablated, then the same K + 2 heads mean-ablated
(the head's output replaced by its mean output over the dev prompts' tokens, computed as in stage 1:
2 dev prompts per genre of <= 64 tokens, prompt forward). The mean arm was added in a second run,
after the zero-ablation results had been seen; its hypotheses (suffix "m", columns prefixed "m")
repeat the zero arm's in their own families. The zero arm is unchanged. TEMPO: tau 0.1, W 4, 16 steps,
retroactive pruning on as in stage 1 (relative rule, rho 0.5, window 1), isolated siblings.
Per world and per head (ablated minus clean, per prompt):
- ppl: log(self-perplexity of the world's clean continuation / that of the clean world's clean
  continuation), both scored by the UNABLATED model (a fixed judge of the text the world wrote);
- pruned: percentage of members of multi-member sets that were pruned (points);
- attn: mean over steps of log(mean attention per parallel token / per other context token), mean
  over layers and heads (the summary capture of every step);
- correct (facts) / parses (code): quality.measure on the world's clean continuation.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math

import numpy as np

from experiments.research import PROJECT
from tempo_jax.research import Design, Hypothesis, Output
from experiments.research.rq6_1_head_roles import GEN as GEN1
from experiments.research.rq6_1_head_roles import N_DEV, head_output_sums

STEPS, K_C, K_A, N_CTL = 16, 4, 4, 2
BUCKET, CAPACITY = 64, 136
STAGE1 = PROJECT.results / "rq6.1"
PPL_MARGIN, PRUNED_MARGIN, ATTN_MARGIN, QUAL_MARGIN = math.log(1.1), 5.0, 0.05, 0.1

GEN = {**GEN1, "max_steps": STEPS, "min_steps": STEPS, "prompt_bucket": BUCKET, "capacity": CAPACITY}

_ZERO = (  # the zero-ablation arm
    Hypothesis("H1", "ablating the selected heads changes self-perplexity more than ablating "
               "the control heads (mean |log ppl ratio|, selected - control)",
               "sel_vs_ctl_ppl", ">0", margin=PPL_MARGIN),
    Hypothesis("H2", "ablating the selected heads changes the pruned share more than ablating "
               "the control heads (mean |points|, selected - control)",
               "sel_vs_ctl_pruned", ">0", margin=PRUNED_MARGIN),
    Hypothesis("H3", "ablating the selected heads changes parallel-token attention more than "
               "ablating the control heads (mean |log ratio|, selected - control)",
               "sel_vs_ctl_attn", ">0", margin=ATTN_MARGIN),
    Hypothesis("P", "ablating a selected head raises the self-perplexity of the clean continuation",
               "sel_ppl_*", ">0", family="heads_ppl", margin=PPL_MARGIN),
    Hypothesis("R", "ablating a selected head leaves the pruned share within 5 points",
               "sel_pruned_*", "=0", family="heads_pruned", margin=PRUNED_MARGIN),
    Hypothesis("A", "ablating a selected head leaves parallel-token attention within 0.05",
               "sel_attn_*", "=0", family="heads_attn", margin=ATTN_MARGIN),
    Hypothesis("Cp", "control head: self-perplexity", "ctl_ppl_*", "=0", family="controls",
               margin=PPL_MARGIN),
    Hypothesis("Cr", "control head: pruned share", "ctl_pruned_*", "=0", family="controls",
               margin=PRUNED_MARGIN),
    Hypothesis("Ca", "control head: parallel-token attention", "ctl_attn_*", "=0",
               family="controls", margin=ATTN_MARGIN),
    Hypothesis("Q1", "facts: accuracy change, mean over selected heads, within 10 points",
               "sel_correct", "=0", family="quality", margin=QUAL_MARGIN),
    Hypothesis("Q2", "code: parse-rate change, mean over selected heads, within 10 points",
               "sel_parses", "=0", family="quality", margin=QUAL_MARGIN),
)

_FAMILIES = {"primary": "holm", "heads_ppl": "fdr_bh", "heads_pruned": "fdr_bh",
             "heads_attn": "fdr_bh", "controls": "fdr_bh", "quality": "holm"}


def _mean_arm(h: Hypothesis) -> Hypothesis:
    """The mean-ablation twin of a zero-arm hypothesis (added in a second run, after the
    zero-ablation results were seen): name + "m", column prefixed "m", family + "_mean"."""
    return dataclasses.replace(h, name=h.name + "m", statement=f"as {h.name}, mean ablation",
                               column="m" + h.column, family=h.family + "_mean")


DESIGN = Design(
    id="rq6.1b",
    questions=("6.1",),
    title="Head roles, stage 2: whole TEMPO generations with stage-1-selected heads zero- and mean-ablated",
    primary_metric="per prompt and head, ablated minus clean generation (16 steps): log ratio of the "
                   "clean continuation's self-perplexity (scored by the unablated model), points of "
                   "members pruned, log parallel/other attention per token",
    contrast="each selected head (K = 8, from the stage-1 table) or control head (2 random) "
             "zero-ablated on every forward vs the clean generation, same prompt; selected vs "
             "control by mean |effect| per prompt; the same heads mean-ablated (dev mean output) "
             "in their own families",
    hypotheses=(*_ZERO, *(_mean_arm(h) for h in _ZERO)),
    margin=PPL_MARGIN,
    margin_note="log 1.1 for ppl log ratios, 5 points for the pruned share, 0.05 for the attention "
                "log ratio, 10 points for accuracy / parse rate",
    metrics=(*(h.column for h in _ZERO), "clean_ppl", "clean_pruned", *("m" + h.column for h in _ZERO)),
    families={**_FAMILIES, **{f"{f}_mean": c for f, c in _FAMILIES.items()}},
    n_per_genre=10,
    quick_n=1,
    caveats=(
        "Heads are chosen from the stage-1 one-step screen (test prompts); the prompts here are "
        "disjoint from those 15, so the selection does not see these prompts.",
        "An ablated generation writes different tokens from the clean one, so the attention and "
        "pruning measures compare different contexts: they are whole-generation effects, not "
        "same-state effects (that was stage 1).",
        "Self-perplexity is scored by the unablated model (the text's quality under a fixed judge); "
        "how the ablated model itself scores the text is not measured.",
        "Mean ablation was added in a second run, after the zero-ablation results had been seen "
        "(same heads, prompts, settings and seed; the zero arm's hypotheses are unchanged, and the "
        "mean arm's are the same statements in their own families). The mean is each head's output "
        "averaged over the tokens of 6 dev prompts (prompt forward), the same vector at every position.",
        "About 5 prompts per genre: facts accuracy and code parse rate have very little power "
        "(expect 'cannot tell').",
        "Prompts longer than 64 tokens give no row.",
    ),
    config={"generation": GEN, "k_by_next_token": K_C, "k_by_parallel_attention": K_A,
            "n_controls": N_CTL, "stage1_table": "experiments/results/rq6.1/table_heads.csv",
            "mean_ablation": {"dev_prompts_per_genre": N_DEV, "max_tokens": BUCKET}},
)


# --- head choice from the stage-1 table ----------------------------------------------------------------
def select_heads(table_rows, seed: int, k_c: int = K_C, k_a: int = K_A, n_ctl: int = N_CTL):
    """(selected, controls) head names from the stage-1 table rows (dicts with ``head``,
    ``heads_c_zero_mean``, ``heads_a_zero_mean``): the k_c largest |c| effects, then the k_a largest
    |a| effects not already chosen; n_ctl controls drawn with ``seed`` from the rest."""
    names = [r["head"] for r in table_rows]
    c = np.abs([float(r["heads_c_zero_mean"]) for r in table_rows])
    a = np.abs([float(r["heads_a_zero_mean"]) for r in table_rows])
    sel = [names[i] for i in np.argsort(-c, kind="stable")[:k_c]]
    for i in np.argsort(-a, kind="stable"):
        if len(sel) >= k_c + k_a:
            break
        if names[i] not in sel:
            sel.append(names[i])
    rest = [n for n in names if n not in sel]
    ctl = [rest[i] for i in sorted(np.random.default_rng(seed).choice(len(rest), n_ctl, replace=False))]
    return sel, ctl


def parse_head(name: str) -> tuple[int, int]:
    """'L15H5' -> (15, 5)."""
    layer, head = name[1:].split("H")
    return int(layer), int(head)


def stage1() -> tuple[list[dict], set[str]]:
    """The stage-1 head table rows and the stage-1 prompt ids."""
    from tempo_jax.errors import UsageError

    tab, rows = STAGE1 / "table_heads.csv", STAGE1 / "rows.csv"
    if not tab.exists() or not rows.exists():
        raise UsageError(f"rq6.1b needs the stage-1 results in {STAGE1} (run rq6.1 first)")
    with tab.open() as f:
        table = list(csv.DictReader(f))
    with rows.open() as f:
        ids = {r["prompt_id"] for r in csv.DictReader(f)}
    return table, ids


# --- whole generations in vmapped worlds ------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _fns():
    import jax
    import jax.numpy as jnp

    from tempo_jax.engine import core
    from tempo_jax.engine.outputs import StepRecords
    from tempo_jax.engine.rules import Capture

    def init(params, mcfg, spec, data, prompt, plen, capacity):
        return jax.vmap(lambda d: core.init_state(params, mcfg, spec, d, prompt, plen, capacity))(data)

    def step(params, mcfg, spec, data, st):
        def one(d, s):
            new, cap = core.step(params, mcfg, spec, d, s, capture=Capture.SUMMARY)
            rec = StepRecords.of_step(cap, s.alive, s.slot_step, s.set_n, s.step, new.fed_n[s.step])
            nan = jnp.full_like(rec.par_per_token, jnp.nan)
            par = jnp.where(s.done, nan, rec.par_per_token)
            non = jnp.where(s.done, nan, rec.nonpar_per_token)
            return new, par, non

        new, par, non = jax.vmap(one)(data, st)
        keep = lambda old, nw: jnp.where(st.done.reshape((-1,) + (1,) * (nw.ndim - 1)), old, nw)
        return jax.tree_util.tree_map(keep, st, new), par, non

    return (jax.jit(init, static_argnames=("mcfg", "spec", "capacity")),
            jax.jit(step, static_argnames=("mcfg", "spec")))


def ablation_inputs(base, mcfg, heads, means=None) -> list:
    """One EngineInputs per world: clean (no head scaled), then each (layer, head) zero-ablated,
    then (if ``means`` [L,H,D] is given) each (layer, head) mean-ablated (output -> ``means[l, h]``)."""
    import jax.numpy as jnp

    from tempo_jax.interventions import Interventions

    L, H, D = mcfg.num_layers, mcfg.num_heads, mcfg.head_dim
    zeros = jnp.zeros((L, H, D), jnp.float32)
    worlds = [(None, zeros)] + [(lh, zeros) for lh in heads]
    if means is not None:
        mean = jnp.asarray(np.asarray(means, np.float32))
        if mean.shape != (L, H, D):
            raise ValueError(f"means must have shape {(L, H, D)}, got {mean.shape}")
        worlds += [(lh, mean) for lh in heads]
    out = []
    for lh, hm in worlds:
        sc = np.ones((L, H), np.float32)
        if lh is not None:
            sc[lh] = 0.0
        out.append(base.replace(interventions=Interventions(head_scale=jnp.asarray(sc), head_mean=hm)))
    return out


def dev_head_means(m, genres) -> tuple[np.ndarray, list[str]]:
    """Each head's mean attention output ``[L,H,D]`` over the tokens of the dev prompts (the first
    N_DEV per genre of <= BUCKET tokens, as stage 1 chooses them), and those prompts' ids."""
    from experiments import corpus

    prompts = corpus.load(split="dev", genres=list(genres), limit_per_genre=N_DEV + 2)
    per_genre: dict[str, int] = {}
    sums, count, used = 0.0, 0, []
    for p in prompts:
        ids = m.tokenizer(p.prompt).input_ids
        if len(ids) <= BUCKET and per_genre.get(p.genre, 0) < N_DEV:
            per_genre[p.genre] = per_genre.get(p.genre, 0) + 1
            s, t = head_output_sums(m.params, m.cfg, ids)
            sums, count, used = sums + s, count + t, used + [p.id]
    return sums / count, used


def run_worlds(params, mcfg, gcfg, ids, data):
    """Whole generations of one prompt in every world -> (traces, attention log ratio per world
    ``[B]``: mean over steps of log(mean_LH parallel per token / mean_LH other per token))."""
    import jax

    from tempo_jax.engine.run import check_request, pad_prompt
    from tempo_jax.trace import Trace

    init, step = _fns()
    spec = gcfg.static()
    cap = check_request(mcfg, gcfg, ids)
    st = init(params, mcfg, spec, data, pad_prompt(gcfg, ids), np.int32(len(ids)), cap)
    pars, nons = [], []
    for _ in range(spec.steps):
        st, par, non = step(params, mcfg, spec, data, st)
        pars.append(np.asarray(par, np.float64))
        nons.append(np.asarray(non, np.float64))
        if bool(np.all(np.asarray(st.done))):
            break
    ratio = attention_log_ratio(np.stack(pars, 1), np.stack(nons, 1))
    traces = [Trace.from_state(jax.tree_util.tree_map(lambda x, b=b: x[b], st), gcfg, list(map(int, ids)))
              for b in range(np.asarray(st.done).shape[0])]
    return traces, ratio


def attention_log_ratio(par, non) -> np.ndarray:
    """``par``/``non`` [B,S,L,H] per-token attention (NaN where undefined) -> [B]: mean over steps
    with both defined of log(mean over L,H of par / of non); NaN if no step qualifies."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = np.log(np.nanmean(par, (2, 3))) - np.log(np.nanmean(non, (2, 3)))  # [B,S]
        return np.nanmean(np.where(np.isfinite(r), r, np.nan), 1)


def pruned_share(trace) -> float:
    """Percent of the members of multi-member steps that were pruned (NaN: no such step)."""
    tot = pru = 0
    for st in trace.steps():
        if len(st["members"]) >= 2:
            tot += len(st["members"])
            pru += sum(bool(m["pruned"]) for m in st["members"])
    return 100.0 * pru / tot if tot else float("nan")


# --- the experiment ----------------------------------------------------------------------------------
def run(ctx) -> Output:
    from tempo_jax import quality
    from tempo_jax.engine import GenerationConfig
    from tempo_jax.engine.inputs import stack

    table, s1_ids = stage1()
    sel, ctl = select_heads(table, ctx.seed)
    heads = sel + ctl
    m = ctx.model
    gcfg = GenerationConfig(**GEN)
    means, dev_ids = dev_head_means(m, ctx.design.genres)
    data = stack(ablation_inputs(gcfg.inputs(m.cfg), m.cfg, [parse_head(h) for h in heads], means))
    nh = len(heads)
    eos = m.cfg.eos_token_ids or ()
    # in place, so the run's provenance (n, prompt ids) lists the prompts actually used
    ctx.prompts[:] = [p for p in ctx.prompts if p.id not in s1_ids]

    def measure(p):
        ids = m.tokenizer(p.prompt).input_ids
        if len(ids) > BUCKET:
            return None
        traces, attn = run_worlds(m.params, m.cfg, gcfg, ids, data)
        out = {"attn": attn, "ppl": [], "pruned": [], "q": [], "text": []}
        for tr in traces:
            cont = quality.clean_continuation_ids(tr, eos)
            out["ppl"].append(quality.self_perplexity(m.params, m.cfg, ids, cont))
            out["pruned"].append(pruned_share(tr))
            q = quality.measure(tr, genre=p.genre, reference=p.reference, aliases=p.aliases,
                                tokenizer=m.tokenizer, prompt_text=p.prompt, eos_ids=eos)
            out["q"].append(q.get("correct", q.get("parses", float("nan"))))
            out["text"].append(m.tokenizer.decode(cont))
        return out

    rows, worlds, changed, changed_m = [], [], [], []
    ns = len(sel)
    for p, r in ctx.map(measure):
        row = {"prompt_id": p.id, "genre": p.genre}
        if r is not None:
            lp = np.log(np.asarray(r["ppl"], np.float64))
            d = {"ppl": lp[1:] - lp[0], "pruned": np.asarray(r["pruned"][1:]) - r["pruned"][0],
                 "attn": np.asarray(r["attn"][1:]) - r["attn"][0],
                 "q": np.asarray(r["q"][1:], np.float64) - r["q"][0]}  # [2 nh]: zero arm, mean arm
            for pre, arm in (("", slice(0, nh)), ("m", slice(nh, 2 * nh))):
                for k in ("ppl", "pruned", "attn"):
                    dk = d[k][arm]
                    for j, h in enumerate(heads):
                        row[f"{pre}{'sel' if j < ns else 'ctl'}_{k}_{h}"] = float(dk[j])
                    ab = np.abs(dk)
                    row[f"{pre}sel_vs_ctl_{k}"] = float(np.nanmean(ab[:ns]) - np.nanmean(ab[ns:])) \
                        if np.isfinite(ab).any() else float("nan")
                qcol = {"facts": "sel_correct", "code": "sel_parses"}.get(p.genre)
                if qcol:
                    row[pre + qcol] = float(np.nanmean(d["q"][arm][:ns]))
            changed.append([t != r["text"][0] for t in r["text"][1:1 + nh]])
            changed_m.append([t != r["text"][0] for t in r["text"][1 + nh:]])
            row["clean_ppl"] = float(r["ppl"][0])
            row["clean_pruned"] = float(r["pruned"][0])
            labels = [("clean", "none")] + [(h, "zero") for h in heads] + [(h, "mean") for h in heads]
            for j, (h, kind) in enumerate(labels):
                jj = (j - 1) % nh
                worlds.append({"prompt_id": p.id, "genre": p.genre, "head": h, "ablation": kind,
                               "role": "clean" if j == 0 else ("selected" if jj < ns else "control"),
                               "self_ppl": float(r["ppl"][j]), "pruned_pct": float(r["pruned"][j]),
                               "attn_log_ratio": float(r["attn"][j]), "quality": float(r["q"][j]),
                               "text": r["text"][j][:160]})
        rows.append(row)
    kept = [r for r in rows if "clean_ppl" in r]
    notes = [f"Selected heads (stage-1 rule): {', '.join(sel)}; controls (seed {ctx.seed}): {', '.join(ctl)}.",
             f"{len(kept)} of {len(rows)} prompts generated ({'dev smoke' if ctx.quick else 'test, not in stage 1'}: "
             f"{', '.join(r['prompt_id'] for r in rows)}); others longer than {BUCKET} tokens.",
             f"Mean ablation (added in a second run after the zero-ablation results were seen): head "
             f"outputs averaged over the tokens of {len(dev_ids)} dev prompts ({', '.join(dev_ids)})."]
    if kept:
        for arm, pre, cl in (("zero", "", changed), ("mean", "m", changed_m)):
            ch = np.asarray(cl, bool)  # [N, K + N_CTL]
            sp = np.array([[r[f"{pre}sel_ppl_{h}"] for h in sel] for r in kept])
            notes.append(f"Descriptive (not pre-registered), {arm} ablation: the ablated world's clean "
                         f"continuation differs from the clean world's in {ch[:, :ns].mean():.0%} of "
                         f"(prompt, selected head) pairs and {ch[:, ns:].mean():.0%} of (prompt, control "
                         f"head) pairs; signed mean log self-ppl ratio over selected heads and prompts "
                         f"{np.nanmean(sp):+.3f}.")
        _figure(ctx, kept, sel, ctl)
    return Output(rows=rows, tables={"worlds": worlds}, notes=notes)


def _figure(ctx, kept, sel, ctl):
    from experiments.plotting import pyplot

    plt = pyplot()
    heads = sel + ctl
    order = sorted(range(len(heads)), key=lambda j: parse_head(heads[j]))
    fig, axes2 = plt.subplots(2, 3, figsize=(14, 8.4))
    specs = (("ppl", "log self-ppl ratio (ablated / clean)", PPL_MARGIN),
             ("pruned", "members pruned, points (ablated - clean)", PRUNED_MARGIN),
             ("attn", "log parallel / other attention, ablated - clean", ATTN_MARGIN))
    rng = np.random.default_rng(0)
    cells = [(ax, spec, pre, arm) for axes, pre, arm in zip(axes2, ("", "m"), ("zero", "mean"))
             for ax, spec in zip(axes, specs)]
    for ax, (k, label, margin), pre, arm in cells:
        for x, j in enumerate(order):
            h = heads[j]
            col = f"{pre}{'sel' if j < len(sel) else 'ctl'}_{k}_{h}"
            v = np.array([r.get(col, np.nan) for r in kept], np.float64)
            v = v[np.isfinite(v)]
            c = "C0" if j < len(sel) else "C3"
            ax.scatter(x + rng.uniform(-0.15, 0.15, len(v)), v, s=10, color=c, alpha=0.5)
            if len(v):
                ax.plot([x - 0.3, x + 0.3], [v.mean()] * 2, color="k", lw=2)
        ax.axhspan(-margin, margin, color="0.9", zorder=0)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xticks(range(len(heads)))
        ax.set_xticklabels([heads[j] for j in order], rotation=60, fontsize=8)
        for t, j in zip(ax.get_xticklabels(), order):
            t.set_color("C0" if j < len(sel) else "C3")
        ax.set_title(f"{arm} ablation: {label}", fontsize=9)
    for axes, arm in zip(axes2, ("zero", "mean")):
        axes[0].set_ylabel(f"{arm} ablation\nper prompt (dots), mean (bar); grey: margin", fontsize=9)
    fig.suptitle(f"RQ 6.1b: whole 16-step generations with one head ablated (top: zero, bottom: dev-mean; "
                 f"n = {len(kept)} prompts); blue: selected from stage 1, red: random controls", fontsize=10)
    fig.tight_layout()
    ctx.figure(fig, "head_generation_effects")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    fam = {}
    for t in tests:
        fam.setdefault(t.family, []).append(t)

    def arm(pre, suf):
        parts = []
        for col, words in (("sel_vs_ctl_ppl", "self-perplexity"), ("sel_vs_ctl_pruned", "pruned share (points)"),
                           ("sel_vs_ctl_attn", "parallel-token attention")):
            t = by.get(pre + col)
            if t is not None:
                parts.append(f"{words}: {t.estimate:+.3g} [{t.lo:+.3g}, {t.hi:+.3g}] ({t.verdict})")
        per = []
        for f, words in (("heads_ppl", "self-perplexity"), ("heads_pruned", "pruned share"),
                         ("heads_attn", "parallel attention")):
            ts = fam.get(f + suf, [])
            sig = [t.column.rsplit("_", 1)[-1] for t in ts if t.p_adj < design.alpha]
            eq = sum(t.verdict.startswith("no effect") for t in ts)
            per.append(f"{words}: {len(sig)}/{len(ts)} differ (BH){' (' + ', '.join(sig) + ')' if sig else ''}, "
                       f"{eq}/{len(ts)} within the margin")
        return "; ".join(parts) + ". Per selected head: " + "; ".join(per) + "."

    n = next((t.n for t in tests if t.family == "primary"), 0)
    out = (f"Whole 16-step TEMPO generations on {n} prompts (test: disjoint from stage 1's). Zero ablation, "
           f"selected minus control heads in mean |ablated - clean|: " + arm("", ""))
    if "primary_mean" in fam:
        out += (" Mean ablation (dev-mean head output; added in a second run after the zero results were "
                "seen), selected minus control (Holm within its own family): " + arm("m", "_mean"))
    return out
