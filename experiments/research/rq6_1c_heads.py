"""RQ 6.1, confirmatory: do the heads that attend most to parallel tokens matter more for TEMPO than
heads drawn at random, and is what they do specific to parallel tokens?

rq6.1b compared 8 screen-selected heads with 2 FIXED control heads in free generations (scored by
self-perplexity; the generations diverge), so "more than random heads" generalised to those two.
Here the controls are drawn at random per prompt, and the outcome is teacher-forced (rq2.1c's
instrument): per prompt, TEMPO runs along the reference continuation (the first 16 tokens; facts: the
gold answer), the reference token forced in as member 0, the model's other candidates >= 0.05 (at most
8) joining it, isolated siblings, member 0's own next distribution; NLL_s = -log d_s(R[s]).

* Selection (inside the run, on 2 dev prompts per genre, the same forced runs): the N_SEL heads whose
  member-0 queries give the most attention PER TOKEN to earlier parallel members (members of sets
  with > 1 member) relative to the other non-sink context tokens (mean log ratio over steps).
* Worlds (one vmapped program, :func:`attn_control.bias_worlds` with one EngineInputs per world):
  clean; each selected head zero-ablated; each of N_CTL control heads zero-ablated, drawn uniformly
  per prompt from the heads not selected (seeded by the prompt id). Heads are ablated in every step's
  forward (the prompt is prefilled clean).
* The same ablations on the reference as ONE causal sequence (prompt clean, reference tokens with the
  head ablated): dS, the head's effect without parallel tokens in the context.

Per head h: dT_h = mean NLL (ablated h) - clean, TEMPO; dS_h the same for the single sequence
(nats per token). ONE primary test: sel_vs_ctl = mean over selected heads of |dT| - mean over this
prompt's control heads of |dT| > 0 (smallest effect of interest 0.02 nats per token). Secondary
(Holm): spec_sel_vs_ctl = the same for |dT - dS| (the part of a head's effect that depends on the
parallel tokens); single_sel_vs_ctl = the same for |dS| (are the selected heads important anyway?).
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

from experiments import corpus
from experiments.research import attn_control as A
from experiments.research.rq2_1c_isolation import GEN, HORIZON
from experiments.research.rq3_1c_reference import reference_ids
from experiments.research.rq4_3_error_correction import forced_dist
from tempo_jax.research import Design, Hypothesis, Output

N_SEL, N_CTL, N_DEV = 4, 4, 2
SESOI = 0.02

DESIGN = Design(
    id="rq6.1c",
    questions=("6.1",),
    title="Confirmatory: heads that attend to parallel tokens vs random heads drawn per prompt "
          "(teacher-forced single-head ablations)",
    primary_metric="per prompt, mean |change in TEMPO's NLL of the reference| (nats per token) when one "
                   "dev-selected parallel-attending head is zero-ablated, minus the same for heads drawn "
                   "at random for this prompt",
    contrast="ablating a dev-selected parallel-attending head vs a random head (per prompt), same prompt "
             "and reference path; TEMPO lattice vs the same tokens as one sequence",
    hypotheses=(
        Hypothesis("P", "ablating a parallel-attending head changes TEMPO's NLL of the human text more than "
                        "ablating a random head", "sel_vs_ctl", ">0", sesoi=SESOI),
        Hypothesis("S1", "the part of a head's ablation effect that depends on the parallel tokens "
                         "(|dT - dS|) is larger for the selected heads than for random ones",
                   "spec_sel_vs_ctl", ">0", family="secondary"),
        Hypothesis("S2", "without parallel tokens (the reference as one sequence), ablating a selected "
                         "head changes the NLL more than ablating a random head", "single_sel_vs_ctl", ">0",
                   family="secondary"),
    ),
    margin=SESOI,
    margin_note="0.02 nats per reference token",
    metrics=("sel_vs_ctl", "spec_sel_vs_ctl", "single_sel_vs_ctl", "sel_T", "ctl_T", "sel_S", "ctl_S",
             "n_tokens"),
    families={"primary": "holm", "secondary": "holm"},
    split="confirm",
    n_per_genre=30,
    quick_n=10,
    # the pilots ask for about 24 (SmolLM2) and 225 (Gemma 3: its random heads vary widely, some matter as
    # much as the selected ones) prompts; 9 teacher-forced worlds per prompt take 10-20 s on 2 cores, so
    # 90 per model is what the session's compute allows: declared exploratory before it runs
    exploratory=True,
    caveats=(
        "Zero ablation of one head at a time, in every step's forward; the prompt is prefilled without "
        "it. Mean ablation and pairs of heads are not tested here.",
        "Teacher-forced along the human text (no pruning, isolated siblings); a free generation's sets "
        "would follow the model's own text.",
        "The selected heads come from 2 dev prompts per genre by one rule (attention per token on earlier "
        "parallel members relative to other context tokens); another rule may select other heads.",
        "Control heads are drawn uniformly from all heads not selected, so they generalise to a random "
        "head of the model, not to a head of the same layer.",
    ),
    config={"generation": GEN, "horizon": HORIZON, "n_sel": N_SEL, "n_ctl": N_CTL,
            "n_dev_per_genre": N_DEV, "ablation": "zero, every step's forward, prompt clean"},
)


def _force(spec, base, ref_ids, nll=None):
    """A ``before_step`` hook: record -log d_s(R[s]) per world in ``nll[B,S]``, force R[s] in."""
    import jax

    count = jax.vmap(lambda d, t: spec.selection.count(d, t), in_axes=(0, None))

    def force(s, st):
        r = int(ref_ids[s])
        if nll is not None:
            nll[:, s] = -np.log(np.maximum(np.asarray(st.dist[:, r], np.float64), 1e-30))
        fd = jax.vmap(lambda x: forced_dist(x, r))(st.dist)
        return st.replace(dist=fd, next_n=count(fd, base.thresholds[s]))

    return force


def parallel_preference(m, prompt_ids, ref_ids) -> np.ndarray:
    """``[L,H]``: along ``ref_ids`` (clean, forced), the mean over steps of log(attention per token on
    earlier parallel members / per token on the other non-sink context tokens) of member 0's query."""
    from tempo_jax.engine import GenerationConfig, generate

    steps = len(ref_ids)
    g = GenerationConfig(**GEN, max_steps=steps, min_steps=steps)
    spec, base = g.static(), g.inputs(m.cfg)
    out = []

    def on_step(s, st, cap):
        a = np.asarray(cap.attn, np.float64)[:, :, 0, :]  # [L,H,K]
        slot_step, alive = np.asarray(st.slot_step), np.asarray(st.alive)
        par = A.parallel_slots(slot_step, alive, np.asarray(st.set_n), s)
        k = np.arange(len(par))
        other = alive & (k != A.SINK) & ~par & ((slot_step == A.PROMPT) | ((slot_step >= 0) & (slot_step < s)))
        if par.any() and other.any():
            out.append(np.log(a[..., par].mean(-1) + 1e-9) - np.log(a[..., other].mean(-1) + 1e-9))

    def force(s, st):
        fd = forced_dist(st.dist, int(ref_ids[s]))
        return st.replace(dist=fd, next_n=spec.selection.count(fd, base.thresholds[s]))

    generate(m.params, m.cfg, list(prompt_ids), g, inputs=base, capture="full", on_step=on_step,
             before_step=force)
    L, H = m.cfg.num_layers, m.cfg.num_heads
    return np.mean(out, 0) if out else np.full((L, H), np.nan)


def select_heads(m, prompts) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The N_SEL heads with the largest mean parallel preference over ``prompts`` (and the [L,H] mean)."""
    prefs = []
    for p in prompts:
        pi, ri = reference_ids(m.tokenizer, p.prompt, p.reference, p.genre)
        prefs.append(parallel_preference(m, pi, ri[:HORIZON]))
    mean = np.nanmean(prefs, 0)
    order = np.argsort(-np.nan_to_num(mean, nan=-np.inf), axis=None)[:N_SEL]
    H = m.cfg.num_heads
    return [(int(i // H), int(i % H)) for i in order], mean


def control_heads(cfg, selected, prompt_id: str, seed: int) -> list[tuple[int, int]]:
    """N_CTL heads drawn uniformly without replacement from the heads not in ``selected``, seeded by
    ``seed`` and the prompt id (so each prompt has its own controls, reproducibly)."""
    H = cfg.num_heads
    pool = [i for i in range(cfg.num_layers * H) if (i // H, i % H) not in set(selected)]
    rng = np.random.default_rng([seed, zlib.crc32(prompt_id.encode())])
    return [(int(i // H), int(i % H)) for i in rng.choice(pool, N_CTL, replace=False)]


def _scale(cfg, head) -> np.ndarray:
    s = np.ones((cfg.num_layers, cfg.num_heads), np.float32)
    if head is not None:
        s[head] = 0.0
    return s


def tempo_ablated(m, prompt_ids, ref_ids, heads) -> np.ndarray:
    """``[1 + len(heads), S]``: NLL of each reference token along the forced TEMPO run, clean (row 0)
    and with each head of ``heads`` zero-ablated in every step (one vmapped program)."""
    import jax.numpy as jnp

    from tempo_jax.engine import GenerationConfig
    from tempo_jax.interventions import Interventions

    steps = len(ref_ids)
    g = GenerationConfig(**GEN, max_steps=steps, min_steps=steps)
    spec, base = g.static(), g.inputs(m.cfg)
    K = A.check_request(m.cfg, g, list(prompt_ids))
    worlds = [None, *heads]
    nll = np.full((len(worlds), steps), np.nan)
    inputs = [base.replace(interventions=Interventions(head_scale=jnp.asarray(_scale(m.cfg, h)))) for h in worlds]
    traces = A.bias_worlds(m.params, m.cfg, list(prompt_ids), g, len(worlds),
                           lambda s, h: np.zeros((len(worlds), m.cfg.num_layers, K), np.float32),
                           before_step=_force(spec, base, ref_ids, nll), inputs=inputs)
    for tr in traces:
        if not np.array_equal(np.asarray(tr.arrays["tokens"])[:steps, 0], np.asarray(ref_ids)):
            raise RuntimeError("an ablated world left the reference")
    return nll


BUCKET = 32


@functools.lru_cache(maxsize=None)
def _single_fn(cfg, pb: int, t: int):
    """jit over (params, prompt[pb], plen, ref[t], scale[B,L,H]) -> logits [B,1+t,V]: the prompt's last
    row (clean) and the reference rows with each scale applied to the reference tokens' forward."""
    import jax
    import jax.numpy as jnp

    from tempo_jax.interventions import Interventions
    from tempo_jax.model import forward, init_cache

    K = pb + t

    def f(params, prompt, plen, ref, scale):
        cache = init_cache(cfg, 1, K, params["embed"].dtype)
        k = jnp.arange(K)
        key_pos = jnp.where(k < pb, k, plen + k - pb).astype(jnp.float32)[None]
        ar = jnp.arange(pb)
        m1 = (k[None, :] <= ar[:, None])[None]
        lp, cache, _ = forward(params, cfg, prompt[None], ar[None].astype(jnp.float32), ar[None], m1, cache,
                               key_pos=key_pos if cfg.has_window else None)
        i = jnp.arange(t)
        m2 = (((k[None, :] < plen) | ((k[None, :] >= pb) & (k[None, :] - pb <= i[:, None]))))[None]
        lr, _, _ = forward(params, cfg, ref[None], (plen + i)[None].astype(jnp.float32), (pb + i)[None], m2, cache,
                           interventions=Interventions(head_scale=scale),
                           key_pos=key_pos if cfg.has_window else None)
        last = jax.lax.dynamic_index_in_dim(lp[0], plen - 1, 0, keepdims=True)
        return jnp.concatenate([last, lr[0]], 0)

    return jax.jit(jax.vmap(f, in_axes=(None, None, None, None, 0)))


def single_ablated(m, prompt_ids, ref_ids, heads) -> np.ndarray:
    """``[1 + len(heads), S]``: NLL of each reference token as one causal sequence after the prompt,
    clean (row 0) and with each head zero-ablated in the reference tokens' forward (prompt clean)."""
    import jax
    import jax.numpy as jnp

    P, S = len(prompt_ids), len(ref_ids)
    pb = -(-P // BUCKET) * BUCKET
    prompt = np.zeros(pb, np.int32)
    prompt[:P] = prompt_ids
    scales = np.stack([_scale(m.cfg, h) for h in [None, *heads]])
    logits = _single_fn(m.cfg, pb, S)(m.params, jnp.asarray(prompt), jnp.int32(P),
                                       jnp.asarray(np.asarray(ref_ids, np.int32)), jnp.asarray(scales))
    lp = np.asarray(jax.nn.log_softmax(logits[:, :S], -1), np.float64)  # row j predicts ref[j]
    return -lp[:, np.arange(S), np.asarray(ref_ids)]


def run(ctx) -> Output:
    m = ctx.model
    dev = corpus.load(split="dev", genres=list(ctx.design.genres), limit_per_genre=N_DEV)
    selected, pref = select_heads(m, dev)

    def one(p):
        pi, ri = reference_ids(m.tokenizer, p.prompt, p.reference, p.genre)
        ri = ri[:HORIZON]
        ctl = control_heads(m.cfg, selected, p.id, ctx.seed)
        heads = selected + ctl
        return tempo_ablated(m, pi, ri, heads), single_ablated(m, pi, ri, heads)

    rows = []
    for p, (nt, ns) in ctx.map(one):
        dT = nt[1:].mean(1) - nt[0].mean()
        dS = ns[1:].mean(1) - ns[0].mean()
        sel, ctl = slice(0, N_SEL), slice(N_SEL, N_SEL + N_CTL)
        a, b, c = np.abs(dT), np.abs(dT - dS), np.abs(dS)
        rows.append({"prompt_id": p.id, "genre": p.genre, "n_tokens": nt.shape[1],
                     "sel_vs_ctl": float(a[sel].mean() - a[ctl].mean()),
                     "spec_sel_vs_ctl": float(b[sel].mean() - b[ctl].mean()),
                     "single_sel_vs_ctl": float(c[sel].mean() - c[ctl].mean()),
                     "sel_T": float(a[sel].mean()), "ctl_T": float(a[ctl].mean()),
                     "sel_S": float(c[sel].mean()), "ctl_S": float(c[ctl].mean())})
    _figure(ctx, pref, selected, rows)
    notes = [f"Selected heads (dev, {len(dev)} prompts): " + ", ".join(
        f"L{l}H{h} ({pref[l, h]:+.2f})" for l, h in selected) +
        " (mean log per-token attention ratio, earlier parallel members / other context); "
        f"over all heads the ratio's median is {np.nanmedian(pref):+.2f}.",
        "Mean |change in NLL| (nats per token): selected heads "
        f"{np.mean([r['sel_T'] for r in rows]):.4f} under TEMPO, {np.mean([r['sel_S'] for r in rows]):.4f} as "
        f"one sequence; random heads {np.mean([r['ctl_T'] for r in rows]):.4f}, "
        f"{np.mean([r['ctl_S'] for r in rows]):.4f}."]
    return Output(rows=rows, notes=notes)


def _figure(ctx, pref, selected, rows) -> None:
    from experiments.plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    im = axes[0].imshow(pref.T, aspect="auto", cmap="coolwarm", vmin=-np.nanmax(np.abs(pref)),
                        vmax=np.nanmax(np.abs(pref)))
    for l, h in selected:
        axes[0].plot(l, h, "k*", ms=9)
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("head")
    axes[0].set_title("dev: log per-token attention, earlier parallel members / other context\n(*: selected)",
                      fontsize=9)
    fig.colorbar(im, ax=axes[0])
    cols = [("sel_T", "selected, TEMPO"), ("ctl_T", "random, TEMPO"), ("sel_S", "selected, one sequence"),
            ("ctl_S", "random, one sequence")]
    axes[1].boxplot([[r[c] for r in rows] for c, _ in cols], tick_labels=[lab for _, lab in cols],
                    showfliers=False)
    axes[1].set_ylabel("|change in NLL of the reference|\n(nats per token, mean over heads)")
    axes[1].tick_params(axis="x", labelsize=8)
    axes[1].set_title(f"{len(rows)} prompts; random heads drawn per prompt", fontsize=9)
    fig.suptitle(f"RQ 6.1c ({ctx.model.cfg.name}): single-head ablations, teacher-forced")
    fig.tight_layout()
    ctx.figure(fig, "heads")


def answer(tests, design) -> str:
    by = {t.hypothesis: t for t in tests}
    num = lambda t: f"{t.estimate:+.4f} [{t.lo:+.4f}, {t.hi:+.4f}] nats/token ({t.verdict})"
    said = {"P": "Primary test P: ablating a dev-selected parallel-attending head minus a random head (drawn "
                 "per prompt), mean |change in TEMPO's NLL of the human text|",
            "S1": "the parallel-specific part |dT - dS|", "S2": "the same ablations on the text as one sequence"}
    return "; ".join(f"{said[h]} {num(by[h])}" for h in said if h in by) + "."
