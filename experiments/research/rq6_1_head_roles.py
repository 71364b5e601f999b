"""RQ 6.1: head roles. Which of the 270 heads (30 layers x 9), when ablated, change (a) attention to
parallel vs non-parallel tokens, (b) pruning decisions, (c) the next-token output; do head classes
found from data differ in their parallel-token effect?

What is run (a one-step SCREEN of every head, not whole ablated generations: 541 ablated
generations per prompt do not fit the compute budget of 2 shared CPU cores; see caveats):
- TEMPO: tau 0.1, W 4, 6 steps, retroactive pruning on (relative rule, rho 0.5, window 1, so a
  set's members are judged by the queries of the very next step), isolated siblings.
- DEV split (2 prompts per genre): one clean run each with full attention capture -> per head
  (layer, head): sink share (attention on slot 0), locality (attention per recent context key vs
  per distant one; recent = within 3 logical positions of the query), parallel preference
  (attention per token on members of earlier multi-member sets vs on other context tokens). Class
  of a head = the role in which its percentile rank over the 270 heads is highest: long-range
  (low locality), local (high locality), sink, parallel-attending. Also the mean output of every
  head over the dev prompts' tokens (for mean ablation).
- TEST split (5 prompts per genre, prompts of <= 64 tokens): the clean run; branch step b = the
  first step whose set has >= 2 members (b <= 4). From the clean state after step b, step b + 1 is
  run in 541 worlds (vmapped): clean, each head zero-ablated, each head mean-ablated; the ablation
  acts on step b + 1's forward (the cache of the prompt and of steps <= b is the clean one).
  Per world: (a) log(mean attention per parallel slot / per non-parallel context slot), over all
  layers, heads and the step's queries; (b) z_min = the weakest member of set b's pruning score
  divided by the set's mean score (the rule prunes it iff z_min < rho and it is not the best), and
  whether any member's decision flips; (c) log-probability of the clean world's top next token
  under the world's next distribution d_{b+2} (and the KL from the clean d_{b+2}, descriptive).
  Per head and measure: the per-prompt paired difference ablated - clean.
Tests: per head and measure, mean difference over prompts, exact sign-flip p (all 2^n sign
vectors), percentile bootstrap CI (2,000 prompt resamples), TOST (t) against the measure's margin;
BH over the 270 heads within each measure and ablation kind (6 families). Class level
(pre-registered, Holm; zero ablation primary, mean ablation its own family): per prompt, the mean
|difference| over a class's heads minus that over the comparison heads.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from tempo_jax.research import Design, Hypothesis, Output, TestResult
from tempo_jax import stats as S

STEPS, WIDTH, TAU, RHO, RECENT = 6, 4, 0.1, 0.5, 3
BUCKET, CAPACITY = 64, 96
N_DEV, N_DEV_QUICK = 2, 1
CHUNK = 136  # worlds per vmapped call (541 worlds, padded to 4 chunks): bounds memory
N_BOOT = 2000
CLASSES = ("long-range", "local", "sink", "parallel-attending")
MEASURES = {  # name -> (margin, words)
    "a": (0.05, "log parallel / non-parallel attention per token"),
    "b": (0.05, "weakest member's relative pruning score z_min"),
    "c": (0.05, "log-probability (nats) of the clean top next token"),
}
KINDS = ("zero", "mean")
CLASS_MARGIN = 0.01

GEN = dict(max_steps=STEPS, min_steps=STEPS, max_width=WIDTH, threshold=TAU, prune=True,
           prune_window=1, prune_rule="relative", prune_rho=RHO, eos="top",
           prompt_bucket=BUCKET, capacity=CAPACITY)

_CLASS_COLS = ("sink_vs_local_a", "par_vs_rest_a", "par_vs_rest_b")
DESIGN = Design(
    id="rq6.1",
    questions=("6.1",),
    title="Head roles: one-step ablation screen of all 270 heads (zero and mean)",
    primary_metric="per prompt, ablated minus clean world at the step after the first parallel set: "
                   "(a) log parallel/non-parallel attention per token, (b) weakest member's relative "
                   "pruning score, (c) log-probability of the clean top next token",
    contrast="each head ablated (zero or dev-mean) vs no ablation, same prompt and state; classes "
             "(dev split) compared by mean |effect|",
    hypotheses=(
        Hypothesis("H1", "zero-ablating sink heads changes parallel-token attention more than "
                   "zero-ablating local heads", "sink_vs_local_a_zero", ">0"),
        Hypothesis("H2", "zero-ablating parallel-attending heads changes parallel-token attention "
                   "more than zero-ablating the other heads", "par_vs_rest_a_zero", ">0"),
        Hypothesis("H3", "zero-ablating parallel-attending heads changes the pruning score of the "
                   "weakest member more than zero-ablating the other heads", "par_vs_rest_b_zero", ">0"),
        Hypothesis("M1", "as H1, mean ablation", "sink_vs_local_a_mean", ">0", family="class_mean"),
        Hypothesis("M2", "as H2, mean ablation", "par_vs_rest_a_mean", ">0", family="class_mean"),
        Hypothesis("M3", "as H3, mean ablation", "par_vs_rest_b_mean", ">0", family="class_mean"),
    ),
    margin=CLASS_MARGIN,
    margin_note="0.01 in mean |effect| (class contrasts); per-head margins: 0.05 in each measure",
    metrics=tuple(f"{c}_{k}" for c in _CLASS_COLS for k in KINDS) + ("branch_step", "feed_width"),
    families={"primary": "holm", "class_mean": "holm",
              **{f"heads_{m}_{k}": "fdr_bh" for k in KINDS for m in MEASURES}},
    n_per_genre=5,
    quick_n=1,
    caveats=(
        "A SCREEN, not whole ablated generations: each head is ablated on ONE step's forward (the "
        "step after the first multi-member set), from the clean state; effects that need the "
        "ablation on the prompt or on many steps, and quality of whole texts, are not measured. "
        "(c) is a one-step output measure, not text quality.",
        "Pruning uses window 1 (set b judged by step b + 1's queries only) so that the decision "
        "falls inside the screened step; other windows are not tested.",
        "Classes are fixed on 6 dev prompts (2 per genre) with an argmax-of-percentile-rank rule; "
        "'parallel-attending' means attention per token on earlier multi-member sets' members "
        "(siblings are isolated, so no head sees same-step siblings).",
        "Mean ablation replaces a head's output by its mean over the dev prompts' tokens (prompt "
        "forward), the same vector at every position.",
        "Prompts longer than 64 tokens or whose clean run has no multi-member set before step 5 "
        "give no row (NaN).",
        "Per-head p values: exact sign-flip over the n test prompts (smallest p 2/2^n); CIs are "
        "percentile bootstrap over prompts, not BCa.",
    ),
    config={"generation": GEN, "recent": RECENT, "n_dev_per_genre": N_DEV, "worlds_per_call": CHUNK,
            "n_boot": N_BOOT, "classes": CLASSES,
            "measure_margins": {k: v[0] for k, v in MEASURES.items()}},
)


# --- the generation and its clean states ------------------------------------------------------------
def gen_config(**over):
    from tempo_jax.engine import GenerationConfig

    return GenerationConfig(**{**GEN, **over})


@functools.lru_cache(maxsize=None)
def _step_fn():
    import jax

    from tempo_jax.engine import core

    return jax.jit(core.step, static_argnames=("mcfg", "spec", "capture", "feed_width", "view"))


def clean_run(params, mcfg, gcfg, ids, capture: str = "none"):
    """The clean generation step by step -> (states[S+1] (states[s] is the state BEFORE step s),
    attention[S] ``[L,H,W,K]`` per step (capture "full") or None)."""
    import jax
    import jax.numpy as jnp

    from tempo_jax.engine import core
    from tempo_jax.engine.rules import Capture
    from tempo_jax.engine.run import check_request, pad_prompt

    cap = check_request(mcfg, gcfg, ids)
    spec, inputs = gcfg.static(), gcfg.inputs(mcfg)
    init = jax.jit(core.init_state, static_argnames=("mcfg", "spec", "capacity"))
    st = init(params, mcfg, spec, inputs, pad_prompt(gcfg, ids), jnp.int32(len(ids)), cap)
    states, attn = [st], []
    mode = Capture.FULL if capture == "full" else Capture.NONE
    for _ in range(gcfg.max_steps):
        st, c = _step_fn()(params, mcfg, spec, inputs, st, mode)
        states.append(st)
        if mode == Capture.FULL:
            attn.append(np.asarray(c.attn))
        if bool(st.done):
            break
    return states, (attn if mode == Capture.FULL else None)


def branch_step(set_n, steps: int) -> int | None:
    """First step b with >= 2 members such that step b + 1 exists (b <= steps - 2), else None."""
    for s in range(min(len(set_n), steps - 1)):
        if int(set_n[s]) >= 2:
            return s
    return None


def feed_width(n: int, width: int) -> int:
    """Smallest of 1, 2, 4, ..., width that holds n queries (the compiled feed widths)."""
    f = 1
    while f < n:
        f *= 2
    return min(f, width)


# --- dev: head features, classes and mean outputs --------------------------------------------------
def head_features(states, attn) -> dict[str, np.ndarray]:
    """Per head ``[L,H]`` (NaN where undefined), averaged over steps >= 1 and their real queries:
    sink share, locality (per recent context key / (per recent + per distant)), parallel
    preference (per parallel token / (per parallel + per non-parallel token))."""
    from tempo_jax.slots import slot_groups

    final = states[-1]
    set_n = np.asarray(final.set_n)
    feats = {"sink": [], "locality": [], "par_pref": []}
    for s in range(1, len(attn)):
        before = states[s]
        n = int(set_n[s])
        a = attn[s][:, :, :n].mean(2).astype(np.float64)  # [L,H,K]
        alive = np.asarray(before.alive)
        g = slot_groups(np.asarray(before.slot_step), alive, set_n, s)
        ctx_, par, nonpar = (np.asarray(x) for x in (g.context, g.parallel, g.nonparallel))
        pos = np.asarray(before.slot_pos)
        qpos = float(np.asarray(final.positions)[s, 0])
        recent = ctx_ & (pos >= qpos - RECENT)
        distant = ctx_ & ~recent
        feats["sink"].append(a[..., 0])
        if recent.any() and distant.any():
            r, d = a[..., recent].mean(-1), a[..., distant].mean(-1)
            feats["locality"].append(r / np.maximum(r + d, 1e-12))
        if par.any() and nonpar.any():
            p, q = a[..., par].mean(-1), a[..., nonpar].mean(-1)
            feats["par_pref"].append(p / np.maximum(p + q, 1e-12))
    L, H = attn[0].shape[:2]
    return {k: (np.nanmean(v, 0) if v else np.full((L, H), np.nan)) for k, v in feats.items()}


def percentile_rank(x) -> np.ndarray:
    """Rank of each value in (0, 1], ties averaged; NaN stays NaN."""
    from scipy.stats import rankdata

    x = np.asarray(x, np.float64).ravel()
    out = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    out[ok] = rankdata(x[ok]) / ok.sum()
    return out


def classify(sink, locality, par_pref) -> np.ndarray:
    """Class index per head (flattened ``[L*H]``) into CLASSES: the role whose percentile rank over
    the heads is highest (long-range = low locality). A NaN feature never wins."""
    loc = percentile_rank(locality)
    ranks = np.stack([1.0 - loc + 1.0 / np.isfinite(loc).sum(), loc, percentile_rank(sink),
                      percentile_rank(par_pref)])
    return np.argmax(np.where(np.isfinite(ranks), ranks, -1.0), axis=0)


def head_output_sums(params, mcfg, ids) -> tuple[np.ndarray, int]:
    """Sum over the prompt's tokens of every head's attention output (before o_proj) ``[L,H,D]``,
    and the token count, from one causal forward (GQA: head h reads kv group h // (H / G))."""
    import jax.numpy as jnp

    from tempo_jax.model import TapsSpec, causal_mask, forward, init_cache

    t = len(ids)
    cache = init_cache(mcfg, 1, t, params["embed"].dtype)
    ar = jnp.arange(t)
    _, cache, taps = forward(params, mcfg, jnp.asarray(ids, jnp.int32)[None],
                             ar[None].astype(jnp.float32), ar[None], causal_mask(1, t, t), cache,
                             TapsSpec(attn=True))
    p = np.asarray(taps["attn"][:, 0], np.float64)  # [L,H,T,K]
    v = np.asarray(cache.v[:, 0], np.float64)  # [L,K,G,D]
    r = mcfg.num_heads // mcfg.num_kv_heads
    v_h = np.repeat(v, r, axis=2)  # [L,K,H,D]
    out = np.einsum("lhtk,lkhd->lhd", p, v_h)
    return out, t


# --- the screen ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _screen_fn():
    import jax

    from tempo_jax.engine import core
    from tempo_jax.engine.outputs import StepRecords
    from tempo_jax.engine.rules import Capture

    def chunk(params, mcfg, spec, data, st, feed):
        def one(d):
            new, cap = core.step(params, mcfg, spec, d, st, capture=Capture.SUMMARY, feed_width=feed)
            rec = StepRecords.of_step(cap, st.alive, st.slot_step, st.set_n, st.step,
                                      new.fed_n[st.step])
            return new.dist, new.prune_score, new.pruned_at, rec.par_per_token, rec.nonpar_per_token
        return jax.vmap(one)(data)

    return jax.jit(chunk, static_argnames=("mcfg", "spec", "feed"))


def world_inputs(base, mcfg, means) -> list:
    """1 + 2 L H worlds: clean, each head zero-ablated (layer-major), each head mean-ablated."""
    import jax.numpy as jnp

    from tempo_jax.interventions import Interventions

    L, H, D = mcfg.num_layers, mcfg.num_heads, mcfg.head_dim
    zeros = np.zeros((L, H, D), np.float32)
    means = np.asarray(means, np.float32)
    out = [base.replace(interventions=Interventions(head_scale=jnp.ones((L, H)), head_mean=zeros))]
    for mean in (zeros, means):
        for i in range(L * H):
            sc = np.ones((L, H), np.float32)
            sc[i // H, i % H] = 0.0
            out.append(base.replace(interventions=Interventions(head_scale=sc, head_mean=mean)))
    return out


@dataclasses.dataclass
class Screen:
    """Per world ``[1 + 2 L H]`` (world 0 clean): a = log parallel / non-parallel attention per
    token; z_min = weakest member's relative pruning score; flips = set-b members whose decision
    differs from the clean world; logp_top = log-prob of the clean top next token; kl = KL(clean
    next || world next)."""

    a: np.ndarray
    z_min: np.ndarray
    flips: np.ndarray
    logp_top: np.ndarray
    kl: np.ndarray


def screen_measures(dist, score, pruned_at, par, nonpar, set_slots, step: int) -> Screen:
    """Measures from the screen's raw outputs (world axis first; world 0 is the clean one):
    dist[B,V], score/pruned_at[B,K], par/nonpar[B,L,H]; ``set_slots``: slots of set b."""
    dist = np.asarray(dist, np.float64)
    a = np.log(np.nanmean(np.asarray(par, np.float64), (1, 2))) - \
        np.log(np.nanmean(np.asarray(nonpar, np.float64), (1, 2)))
    sc = np.asarray(score, np.float64)[:, set_slots]
    z_min = sc.min(1) / np.maximum(sc.mean(1), 1e-30)
    pruned = np.asarray(pruned_at)[:, set_slots] == step
    flips = (pruned != pruned[0]).sum(1)
    top = int(np.argmax(dist[0]))
    logp = np.log(np.maximum(dist, 1e-45))
    kl = np.sum(np.where(dist[0] > 0, dist[0] * (logp[0] - logp), 0.0), axis=1)
    return Screen(a=a, z_min=z_min, flips=flips, logp_top=logp[:, top], kl=kl)


def run_screen(params, mcfg, gcfg, states, b: int, data_chunks) -> Screen:
    """Step b + 1 from the clean state before it, in every world (chunks of stacked inputs)."""
    import jax

    spec = gcfg.static()
    st = states[b + 1]
    set_n = np.asarray(states[-1].set_n)
    feed = feed_width(int(set_n[b + 1]), gcfg.max_width)
    outs = [jax.device_get(_screen_fn()(params, mcfg, spec, d, st, feed)) for d in data_chunks]
    dist, score, pruned_at, par, nonpar = (np.concatenate(x) for x in zip(*outs))
    slots = np.asarray(states[-1].slots)[b, : int(set_n[b])]
    return screen_measures(dist, score, pruned_at, par, nonpar, slots, b + 1)


# --- statistics over heads -------------------------------------------------------------------------
def sign_flip_p(d) -> np.ndarray:
    """Exact two-sided sign-flip p of the mean for every column of ``d[N,M]`` (all 2^N sign vectors;
    NaN rows of a column are dropped by treating them as 0, which never makes it more extreme).
    N <= 20."""
    d = np.asarray(d, np.float64)
    n = d.shape[0]
    if n > 20:
        raise ValueError("sign_flip_p enumerates 2^n sign vectors: n <= 20")
    x = np.nan_to_num(d)
    signs = 1.0 - 2.0 * ((np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1)  # [2^n, N]
    obs = np.abs(x.sum(0))
    null = np.abs(signs @ x)  # [2^n, M]
    return (null >= obs[None, :] - 1e-12 * np.maximum(obs, 1.0)).mean(0)


def head_tests(d, family: str, margin: float, names, seed: int) -> list[TestResult]:
    """One TestResult per column of ``d[N,M]`` (paired differences over prompts)."""
    d = np.asarray(d, np.float64)
    ok = np.isfinite(d).all(1)
    d = d[ok]
    n = len(d)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (N_BOOT, n)) if n else np.zeros((0, 0), int)
    boot = d[idx].mean(1) if n else np.zeros((0, d.shape[1]))
    p = sign_flip_p(d) if n >= 2 else np.full(d.shape[1], np.nan)
    out = []
    for j, name in enumerate(names):
        col = d[:, j]
        lo, hi = (np.percentile(boot[:, j], [2.5, 97.5]) if n >= 2 else (np.nan, np.nan))
        pt = S.tost(col, margin)["p"] if n >= 2 else float("nan")
        out.append(TestResult(hypothesis=name, column=f"{family}:{name}", family=family, expect="",
                              n=n, estimate=float(col.mean()) if n else float("nan"), lo=float(lo),
                              hi=float(hi), p=float(p[j]), p_tost=float(pt), d_z=S.d_z(col),
                              margin=margin,
                              note="exact sign-flip p; percentile bootstrap CI; TOST (t)"))
    return out


def class_contrast(abs_eff, classes, a: int, b: int | None) -> float:
    """Mean |effect| over heads of class ``a`` minus over class ``b`` (None: every other head)."""
    in_a = classes == a
    in_b = ~in_a if b is None else classes == b
    if not in_a.any() or not in_b.any():
        return float("nan")
    return float(np.mean(abs_eff[in_a]) - np.mean(abs_eff[in_b]))


# --- the experiment --------------------------------------------------------------------------------
def dev_pass(ctx, gcfg):
    """Head features (mean over dev prompts), classes and mean head outputs from the dev split."""
    from experiments import corpus

    m = ctx.model
    n = N_DEV_QUICK if ctx.quick else N_DEV
    prompts = [p for p in corpus.load(split="dev", genres=list(ctx.design.genres), limit_per_genre=n + 2)]
    by_genre: dict[str, list] = {}
    for p in prompts:
        ids = m.tokenizer(p.prompt).input_ids
        if len(ids) <= BUCKET and len(by_genre.setdefault(p.genre, [])) < n:
            by_genre[p.genre].append((p, ids))
    feats, sums, count, used = [], 0.0, 0, []
    for p, ids in (x for v in by_genre.values() for x in v):
        states, attn = clean_run(m.params, m.cfg, gcfg, ids, capture="full")
        feats.append(head_features(states, attn))
        s, t = head_output_sums(m.params, m.cfg, ids)
        sums, count = sums + s, count + t
        used.append(p.id)
    f = {k: np.nanmean([x[k] for x in feats], 0) for k in feats[0]}
    classes = classify(f["sink"], f["locality"], f["par_pref"])
    return f, classes, sums / count, used


def run(ctx) -> Output:
    from tempo_jax.engine.inputs import stack

    m = ctx.model
    L, H = m.cfg.num_layers, m.cfg.num_heads
    gcfg = gen_config()
    feats, classes, means, dev_ids = dev_pass(ctx, gcfg)
    worlds = world_inputs(gcfg.inputs(m.cfg), m.cfg, means)
    worlds += [worlds[0]] * (-len(worlds) % CHUNK)
    chunks = [stack(worlds[i:i + CHUNK]) for i in range(0, len(worlds), CHUNK)]
    nw = 1 + 2 * L * H

    def measure(p):
        ids = m.tokenizer(p.prompt).input_ids
        if len(ids) > BUCKET:
            return None
        states, _ = clean_run(m.params, m.cfg, gcfg, ids)
        set_n = np.asarray(states[-1].set_n)
        b = branch_step(set_n, len(states) - 1)
        if b is None:
            return None
        sc = run_screen(m.params, m.cfg, gcfg, states, b, chunks)
        trim = lambda x: np.asarray(x)[:nw]
        return {"b": b, "feed": feed_width(int(set_n[b + 1]), WIDTH), "n_b": int(set_n[b]),
                **{k: trim(v) for k, v in dataclasses.asdict(sc).items()}}

    rows, kept = [], []
    for p, r in ctx.map(measure):
        row = {"prompt_id": p.id, "genre": p.genre}
        if r is not None:
            kept.append(r)
            row.update(branch_step=r["b"], feed_width=r["feed"])
            effs = _effects(r, L * H)
            for k in KINDS:
                ab = {mm: np.abs(effs[k][mm]) for mm in MEASURES}
                row[f"sink_vs_local_a_{k}"] = class_contrast(ab["a"], classes, 2, 1)
                row[f"par_vs_rest_a_{k}"] = class_contrast(ab["a"], classes, 3, None)
                row[f"par_vs_rest_b_{k}"] = class_contrast(ab["b"], classes, 3, None)
        rows.append(row)
    names = [f"L{i // H}H{i % H}" for i in range(L * H)]
    tests, per_head = [], {}
    if kept:
        for k in KINDS:
            for mm, (margin, _) in MEASURES.items():
                d = np.stack([_effects(r, L * H)[k][mm] for r in kept])  # [N, L*H]
                fam = f"heads_{mm}_{k}"
                t = head_tests(d, fam, margin, names, ctx.seed)
                per_head[fam] = t
                tests += sorted(t, key=lambda x: (np.nan_to_num(x.p, nan=2.0), -abs(x.estimate)))
    table = _head_table(names, classes, feats, kept, per_head, L * H)
    notes = [f"Classes from {len(dev_ids)} dev prompts: " + ", ".join(
        f"{c} {int((classes == i).sum())}" for i, c in enumerate(CLASSES)) + " heads.",
        f"{len(kept)} of {len(rows)} test prompts screened (others: longer than {BUCKET} tokens or no "
        f"multi-member set before step {STEPS - 1})."]
    if kept:
        _figures(ctx, kept, classes, per_head, L, H)
    return Output(rows=rows, tests=tests, tables={"heads": table}, notes=notes)


def _effects(r, n_heads: int) -> dict:
    """Per ablation kind and measure, ablated - clean ``[L*H]`` from one prompt's screen."""
    sl = {"zero": slice(1, 1 + n_heads), "mean": slice(1 + n_heads, 1 + 2 * n_heads)}
    src = {"a": r["a"], "b": r["z_min"], "c": r["logp_top"]}
    return {k: {mm: src[mm][sl[k]] - src[mm][0] for mm in MEASURES} for k in KINDS}


def _head_table(names, classes, feats, kept, per_head, nh) -> list[dict]:
    from tempo_jax.stats import correct

    q = {fam: correct([t.p for t in ts], "fdr_bh").p_adj for fam, ts in per_head.items()}  # BH per family
    rows = []
    for i, name in enumerate(names):
        row = {"head": name, "layer": i // 9, "index": i % 9, "class": CLASSES[classes[i]],
               "sink": float(feats["sink"].ravel()[i]), "locality": float(feats["locality"].ravel()[i]),
               "par_pref": float(feats["par_pref"].ravel()[i])}
        for fam, ts in per_head.items():
            row[f"{fam}_mean"] = ts[i].estimate
            row[f"{fam}_q"] = float(q[fam][i])
        for k, off in (("zero", 1), ("mean", 1 + nh)):
            fl = np.array([r["flips"][off + i] for r in kept])
            row[f"prompts_with_flip_{k}"] = int((fl > 0).sum())
            row[f"kl_{k}"] = float(np.mean([r["kl"][off + i] for r in kept]))
        rows.append(row)
    return rows


def _figures(ctx, kept, classes, per_head, L, H):
    from experiments.plotting import pyplot
    from tempo_jax.stats import correct

    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 12), sharey=True)
    fig.subplots_adjust(wspace=0.5, hspace=0.25)
    for r_i, k in enumerate(KINDS):
        for c_i, mm in enumerate(MEASURES):
            ts = per_head[f"heads_{mm}_{k}"]
            est = np.array([t.estimate for t in ts]).reshape(L, H)
            q = correct([t.p for t in ts], "fdr_bh").p_adj.reshape(L, H)
            lim = np.nanmax(np.abs(est)) or 1.0
            ax = axes[r_i, c_i]
            im = ax.imshow(est, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
            yy, xx = np.nonzero(q < 0.05)
            ax.scatter(xx, yy, marker="o", s=10, facecolors="none", edgecolors="k", linewidths=0.8)
            ax.set_title(f"({mm}) {k} ablation\n{MEASURES[mm][1]}", fontsize=8)
            ax.set_xlabel("head")
            if c_i == 0:
                ax.set_ylabel("layer")
            fig.colorbar(im, ax=ax, fraction=0.05)
    fig.suptitle(f"RQ 6.1: mean effect of ablating each head on the next step (ablated - clean, "
                 f"n = {len(kept)} prompts); circles: BH q < 0.05", fontsize=10)
    ctx.figure(fig, "head_effects")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    cmap = plt.get_cmap("tab10", len(CLASSES))
    ax = axes[0]
    ax.imshow(classes.reshape(L, H), cmap=cmap, vmin=-0.5, vmax=len(CLASSES) - 0.5, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("head classes (dev split)")
    for i, c in enumerate(CLASSES):
        ax.plot([], [], "s", color=cmap(i), label=c)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, -0.35), ncol=2)
    ax = axes[1]
    for j, k in enumerate(KINDS):
        ts = per_head[f"heads_a_{k}"]
        est = np.abs(np.array([t.estimate for t in ts]))
        for i, c in enumerate(CLASSES):
            v = est[classes == i]
            x = i + (j - 0.5) * 0.35
            ax.scatter(np.full(len(v), x) + np.random.default_rng(i).uniform(-0.08, 0.08, len(v)), v,
                       s=6, color=cmap(i), alpha=0.6, marker="o" if k == "zero" else "^")
            if len(v):
                ax.plot([x - 0.12, x + 0.12], [np.mean(v)] * 2, "k-", lw=2)
    ax.set_xticks(range(len(CLASSES)))
    ax.set_xticklabels(CLASSES, fontsize=8)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("|mean effect on (a)| per head")
    ax.set_title("parallel-token effect by class\n(left o: zero ablation, right ^: mean ablation; bar: class mean)",
                 fontsize=9)
    ctx.figure(fig, "class_effects")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests if t.family in ("primary", "class_mean")}
    fams = {}
    for t in tests:
        if t.family.startswith("heads_"):
            fams.setdefault(t.family, []).append(t)
    n = next((t.n for t in tests if t.family.startswith("heads_")), 0)
    parts = []
    for fam in sorted(fams):
        sig = [t for t in fams[fam] if t.p_adj < design.alpha]
        top = sorted(sig, key=lambda t: t.p_adj)[:3]
        _, m, k = fam.split("_")
        parts.append(f"({m}) {k}: {len(sig)}/270" + (f" (e.g. {', '.join(t.hypothesis for t in top)})"
                                                      if top else ""))
    out = (f"One-step ablation screen on {n} test prompts: heads whose ablation changes the measure "
           f"(BH q < 0.05) — " + "; ".join(parts) + ". Class contrasts: ")
    out += "; ".join(f"{h}: {by[c].estimate:+.3g} [{by[c].lo:+.3g}, {by[c].hi:+.3g}] ({by[c].verdict})"
                     for h, c in (("sink vs local on (a), zero", "sink_vs_local_a_zero"),
                                  ("parallel-attending vs rest on (a), zero", "par_vs_rest_a_zero"),
                                  ("parallel-attending vs rest on (b), zero", "par_vs_rest_b_zero"))
                     if c in by)
    return out + "."
