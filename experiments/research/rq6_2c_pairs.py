"""RQ 6.2, confirmatory: do heads act together differently when the context holds parallel tokens?
Head pairs drawn at random per prompt, teacher-forced pair ablations, on both families.

rq6.2 scored 28 FIXED pairs of 8 dev-selected heads on one model through a closed-form path patch
that assumes the Llama output path, so its CIs reflect prompt variance only and its result cannot
be computed for Gemma 3. Here the pairs are a random factor: per prompt, N_PAIRS pairs of distinct
heads are drawn uniformly from all heads of the model (seeded by the prompt id), and each prompt's
value averages over its own pairs, so the bootstrap over prompts resamples pairs too. The ablation
is an intervention that every family supports (``Interventions.head_scale = 0`` in every step's
forward, prompt prefilled clean), on rq6.1c's teacher-forced instrument: TEMPO forced along the
reference continuation (16 tokens of code or prose: facts' gold answers are 1-3 tokens, too
few ablated predictions), the reference token as member 0, other
candidates >= 0.05 (at most 8) joining it, isolated siblings; NLL_s = -log d_s(R[s]) of member 0's
next distribution. The same worlds run on the reference as ONE causal sequence (the control: same
tokens, same heads, no parallel tokens).

TEMPO's sets are chosen from each world's own distribution, so an ablation also changes WHICH
candidates join (a discrete change that by itself makes effects non-additive). The primary contrast
therefore holds the sets fixed: a first pass runs every world with its own sets ("O") and keeps the
clean world's forced distribution per step; a second pass ("T") puts that distribution in every world,
so all worlds hold the same tokens and only the heads differ.

Per pair (u, v) and condition c in {T, O, S (one sequence)}, with d_x the change of the mean NLL (nats
per token) when x is ablated: the interaction I_c = d_uv - d_u - d_v (zero if the two heads' effects
add). Per prompt, the non-additivity fraction A_c = sum over pairs |I_c| / sum over pairs (|d_u| +
|d_v|). ONE primary test: log(A_T / A_S) > 0 (smallest effect of interest log 1.25): with the same
candidate sets in every world, a head pair's joint effect departs further from the sum of its single
effects when siblings share a position than on the same reference as one sequence. Secondary (Holm):
the mean signed I_T (> 0: the joint ablation costs more than the sum, as for redundant heads) lies
within +-0.01 nats per token, as rq6.2 found for KL on its fixed pairs; log(A_O / A_T) > 0 (sets that
respond to the ablation add non-additivity).
"""

from __future__ import annotations

import zlib

import numpy as np

from experiments.research import attn_control as A
from experiments.research import wording
from experiments.research.rq2_1c_isolation import GEN, HORIZON
from experiments.research.rq3_1c_reference import reference_ids
from experiments.research.rq4_3_error_correction import forced_dist
from experiments.research.rq6_1c_heads import BUCKET, _single_fn
from tempo_jax.research import Design, Hypothesis, Output

N_PAIRS = 6
SESOI = float(np.log(1.25))
MARGIN_I = 0.01

DESIGN = Design(
    id="rq6.2c",
    questions=("6.2",),
    title="Confirmatory: do random head pairs act less additively when the context holds parallel tokens "
          "(teacher-forced pair ablations, pairs drawn per prompt)?",
    primary_metric="per prompt, log of the non-additivity fraction sum|d_uv - d_u - d_v| / sum(|d_u| + |d_v|) "
                   "over random head pairs under TEMPO over the same for the reference as one sequence "
                   "(d: change of mean NLL of the reference, nats per token, under zero ablation)",
    contrast="the same head pairs, tokens and path as a TEMPO lattice (parallel candidates present) vs as one "
             "causal sequence; pairs drawn at random per prompt",
    hypotheses=(
        Hypothesis("P", "random head pairs depart further from additivity when the context holds parallel "
                        "tokens than on the same tokens as one sequence", "log_nonadd_ratio", ">0", sesoi=SESOI),
        Hypothesis("S1", "under TEMPO, a random pair's joint ablation effect equals the sum of its single "
                         "effects on average (within 0.01 nats per token)", "inter_T", "=0",
                   family="secondary", margin=MARGIN_I, bound=1.0),
        Hypothesis("S2", "when each ablated world keeps its own candidate sets (the sets respond to the "
                         "ablation), pairs depart further from additivity than with the clean sets",
                   "log_own_vs_fixed", ">0", family="secondary"),
    ),
    margin=SESOI,
    margin_note="log 1.25 for the non-additivity ratio; 0.01 nats per token for the mean interaction",
    metrics=("log_nonadd_ratio", "log_own_vs_fixed", "inter_*", "nonadd_*", "single_*"),
    families={"primary": "holm", "secondary": "holm"},
    split="confirm",
    genres=("code", "prose"),  # facts' gold answers are 1-3 tokens: with one, no ablated prediction at all
    n_per_genre=59,  # the pilots ask for 117 (SmolLM2 and Gemma 3 dev pilots, 16 prompts each)
    quick_n=8,
    caveats=(
        "Zero ablation in every step's forward (the prompt is prefilled clean); mean ablation is not tested.",
        "Pairs are drawn uniformly from all heads, so most pairs include heads with small effects; the "
        "fraction is a per-prompt ratio of sums, dominated by the pairs whose heads matter.",
        "Teacher-forced along the human text (no pruning, isolated siblings); a free generation's sets "
        "would follow the model's own text.",
        "rq6.2's other readings (weight composition, direct-path patching) assume the Llama output path "
        "and stay exploratory on SmolLM2 only.",
    ),
    config={"generation": GEN, "horizon": HORIZON, "n_pairs": N_PAIRS,
            "pairs": "distinct heads drawn uniformly without replacement from all heads, seeded per prompt",
            "ablation": "zero, every step's forward, prompt clean",
            "sets": "T: the clean world's forced sets in every world; O: each world's own"},
)


def draw_pairs(cfg, prompt_id: str, seed: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """N_PAIRS pairs of heads (layer, head): 2 * N_PAIRS distinct heads drawn uniformly from all heads,
    seeded by ``seed`` and the prompt id."""
    H = cfg.num_heads
    rng = np.random.default_rng([seed, zlib.crc32(prompt_id.encode())])
    flat = rng.choice(cfg.num_layers * H, 2 * N_PAIRS, replace=False)
    heads = [(int(i // H), int(i % H)) for i in flat]
    return [(heads[2 * j], heads[2 * j + 1]) for j in range(N_PAIRS)]


def scales(cfg, pairs) -> np.ndarray:
    """``[1 + 3J, L, H]`` head scales: clean, then per pair u alone, v alone, both."""
    worlds = [()] + [w for u, v in pairs for w in ((u,), (v,), (u, v))]
    s = np.ones((len(worlds), cfg.num_layers, cfg.num_heads), np.float32)
    for i, heads in enumerate(worlds):
        for h in heads:
            s[(i, *h)] = 0.0
    return s


def _hook(spec, base, ref_ids, nll, fixed=None, keep=None):
    """A ``before_step`` hook: record -log d_s(R[s]) per world in ``nll[B,S]``, then force R[s] in as
    member 0 (rq4.3's ``forced_dist``) of each world's own d_s, or, with ``fixed[s]`` (``[V]``), put
    that one forced distribution in every world (the same set in all worlds). ``keep`` collects
    world 0's forced distribution per step."""
    import jax
    import jax.numpy as jnp

    count = jax.vmap(lambda d, t: spec.selection.count(d, t), in_axes=(0, None))

    def force(s, st):
        r = int(ref_ids[s])
        nll[:, s] = -np.log(np.maximum(np.asarray(st.dist[:, r], np.float64), 1e-30))
        if fixed is None:
            fd = jax.vmap(lambda x: forced_dist(x, r))(st.dist)
        else:
            fd = jnp.broadcast_to(fixed[s], st.dist.shape)
        if keep is not None:
            keep.append(fd[0])
        return st.replace(dist=fd, next_n=count(fd, base.thresholds[s]))

    return force


def tempo_nll(m, prompt_ids, ref_ids, scale, fixed=None, keep=None) -> np.ndarray:
    """``[B, S]``: NLL of each reference token along the forced TEMPO run, one world per ``scale[b]``
    (``[B,L,H]``) applied in every step (one vmapped program). Each world's sets come from its own
    distribution, or with ``fixed`` (``[S]`` forced distributions, e.g. ``keep`` of a first call)
    every world holds the same sets."""
    import jax.numpy as jnp

    from tempo_jax.engine import GenerationConfig
    from tempo_jax.interventions import Interventions

    steps, B = len(ref_ids), len(scale)
    g = GenerationConfig(**GEN, max_steps=steps, min_steps=steps)
    spec, base = g.static(), g.inputs(m.cfg)
    K = A.check_request(m.cfg, g, list(prompt_ids))
    nll = np.full((B, steps), np.nan)
    inputs = [base.replace(interventions=Interventions(head_scale=jnp.asarray(s))) for s in scale]
    traces = A.bias_worlds(m.params, m.cfg, list(prompt_ids), g, B,
                           lambda s, h: np.zeros((B, m.cfg.num_layers, K), np.float32),
                           before_step=_hook(spec, base, ref_ids, nll, fixed, keep), inputs=inputs)
    for tr in traces:
        if not np.array_equal(np.asarray(tr.arrays["tokens"])[:steps, 0], np.asarray(ref_ids)):
            raise RuntimeError("an ablated world left the reference")
    return nll


def single_nll(m, prompt_ids, ref_ids, scale) -> np.ndarray:
    """``[B, S]``: NLL of each reference token as one causal sequence after the prompt, per world's
    ``scale[b]`` applied to the reference tokens' forward (prompt clean)."""
    import jax
    import jax.numpy as jnp

    P, S = len(prompt_ids), len(ref_ids)
    pb = -(-P // BUCKET) * BUCKET
    prompt = np.zeros(pb, np.int32)
    prompt[:P] = prompt_ids
    logits = _single_fn(m.cfg, pb, S)(m.params, jnp.asarray(prompt), jnp.int32(P),
                                       jnp.asarray(np.asarray(ref_ids, np.int32)), jnp.asarray(scale))
    lp = np.asarray(jax.nn.log_softmax(logits[:, :S], -1), np.float64)
    return -lp[:, np.arange(S), np.asarray(ref_ids)]


def pair_effects(nll: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``nll[1 + 3J, S]`` (worlds as :func:`scales`) -> per pair (d_u, d_v, d_uv), changes of the mean NLL."""
    d = nll[1:].mean(1) - nll[0].mean()
    return d[0::3], d[1::3], d[2::3]


def row_of(nll: dict[str, np.ndarray]) -> dict:
    """Per-prompt columns from the NLL of every world (``[1 + 3J, S]``, worlds as :func:`scales`) per
    condition: "T" TEMPO with the clean world's sets in every world, "O" TEMPO with each world's own
    sets, "S" the reference as one sequence. A prompt whose single effects are all zero (a one-token
    reference: its only prediction is read from the clean prompt) gives NaN ratios."""
    out = {}
    for c, x in nll.items():
        du, dv, duv = pair_effects(x)
        inter = duv - du - dv
        single = float(np.sum(np.abs(du) + np.abs(dv)))
        out[f"inter_{c}"] = float(inter.mean())
        out[f"single_{c}"] = single / len(du)
        out[f"nonadd_{c}"] = float(np.sum(np.abs(inter)) / single) if single > 0 else np.nan
    ratio = lambda a, b: float(np.log(a / b)) if a > 0 and b > 0 else np.nan  # NaN compares False
    out["log_nonadd_ratio"] = ratio(out["nonadd_T"], out["nonadd_S"])
    out["log_own_vs_fixed"] = ratio(out["nonadd_O"], out["nonadd_T"])
    return out


def run(ctx) -> Output:
    m = ctx.model

    def one(p):
        pi, ri = reference_ids(m.tokenizer, p.prompt, p.reference, p.genre)
        ri = ri[:HORIZON]
        s = scales(m.cfg, draw_pairs(m.cfg, p.id, ctx.seed))
        keep: list = []
        own = tempo_nll(m, pi, ri, s, keep=keep)
        return {"O": own, "T": tempo_nll(m, pi, ri, s, fixed=keep[:len(ri)]), "S": single_nll(m, pi, ri, s)}

    rows = [{"prompt_id": p.id, "genre": p.genre, **row_of(n)} for p, n in ctx.map(one)]
    mean = lambda k: float(np.nanmean([r[k] for r in rows]))
    cond = (("T", "TEMPO, fixed sets"), ("O", "TEMPO, own sets"), ("S", "one sequence"))
    notes = [f"{N_PAIRS} random head pairs per prompt; {sum(np.isfinite(r['log_nonadd_ratio']) for r in rows)} "
             f"of {len(rows)} prompts give a ratio. Mean single-head effect |d| (nats per token), non-additivity "
             "fraction and interaction: " + "; ".join(
                 f"{name} {mean(f'single_{c}') / 2:.4f}, {mean(f'nonadd_{c}'):.3f}, {mean(f'inter_{c}'):+.4f}"
                 for c, name in cond) + "."]
    return Output(rows=rows, notes=notes)


def answer(tests, design) -> str:
    said = {"P": "Primary test P: random head pairs' non-additivity (|joint - sum of singles| over the singles) "
                 "under TEMPO relative to the same tokens as one sequence, log ratio",
            "S1": "the mean interaction under TEMPO (nats per token)",
            "S2": "sets that follow the ablation relative to the clean sets, log ratio of non-additivity"}
    return wording.listed(tests, said, lambda t: wording.ci(t, 3, 1, "")) + "."
