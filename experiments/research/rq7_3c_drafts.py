"""RQ 7.3, confirmatory: do early-exit drafts (self-speculative decoding) fail where TEMPO branches?

rq7.3 pooled 563 judged steps of 30 prompts of one model into one AUROC (prompt-cluster bootstrap),
so its primary had no per-prompt outcome and its n was not planned by power. Here the quantity is
teacher-forced on the greedy path, per prompt, on both families:

* path: the model's greedy continuation (STEPS tokens, cut at EOS);
* one forward over prompt + path with the residual stream after every layer: at each step s the full
  distribution d_s and the early exit's argmax after the first k layers (final norm + LM head), k =
  round(22/30 of the layers) (rq7.3's k = 22 on SmolLM2; 13 of Gemma 3's 18). A draft at step s is
  REJECTED when that argmax differs from the greedy token: exactly what self-speculative decoding's
  verifier decides for a draft token whose earlier drafts were accepted (rq7.3 checked the engine's
  drafts against this early exit: 0 differences);
* TEMPO's set size at step s on the same path: #{tokens with d_s >= 0.1}, capped at width 8.

Per prompt: the AUROC of set size for "draft rejected" over the prompt's steps (ties count 1/2), minus
1/2. ONE primary test: > 0 (smallest effect of interest 0.05). Secondary (Holm): the rejection rate
where TEMPO branches (set size > 1) minus where it keeps one token, > 0. Prompts whose steps are all
rejected or all accepted have no AUROC (no row for that column).
"""

from __future__ import annotations

import functools

import numpy as np

from experiments.research import decoding_alternatives as A
from tempo_jax.research import Design, Hypothesis, Output

STEPS, TAU, WIDTH = 32, 0.1, 8
DEPTH = 22 / 30  # rq7.3's draft depth on SmolLM2, as a fraction of the layers
MIN_STEPS = 8
BUCKET = 32

DESIGN = Design(
    id="rq7.3c",
    questions=("7.3",),
    title="Confirmatory: do early-exit drafts fail where TEMPO branches? (per prompt, on the greedy path)",
    primary_metric="per prompt, AUROC of TEMPO's set size on the greedy path for 'the early-exit draft "
                   "is rejected' over the prompt's steps, minus 1/2",
    contrast="steps where the depth-k early exit disagrees with the full model vs steps where it agrees, "
             "same prompt and path",
    hypotheses=(
        Hypothesis("P", "drafts are rejected more where TEMPO's set is larger (per-prompt AUROC > 1/2)",
                   "auroc_minus_half", ">0", sesoi=0.05),
        Hypothesis("S1", "the rejection rate is higher where TEMPO branches (set size > 1) than where it "
                         "keeps one token (difference in points)", "reject_branch_minus_single", ">0",
                   family="secondary", margin=0.10),
    ),
    margin=0.05,
    margin_note="0.05 AUROC (rq7.3's); 10 points for the rejection-rate difference",
    metrics=("auroc_minus_half", "reject_branch_minus_single", "reject_rate", "branch_rate", "n_steps"),
    families={"primary": "holm", "secondary": "holm"},
    split="confirm",
    n_per_genre=30,  # the pilots ask for 65 / 39
    quick_n=10,
    caveats=(
        "Teacher-forced on the greedy path: every step is judged as the first draft of a round after an "
        "accepted prefix; speculative decoding itself judges only the steps its rounds reach, and its "
        "cost (rq7.3: 2.64x TEMPO's token-forwards) is not re-measured here.",
        "One draft depth per model (22/30 of the layers, rq7.3's); the early exit is untrained (the final "
        "norm and LM head read an intermediate residual stream).",
        "TEMPO's set size is read from the full distribution on the greedy path (threshold 0.1, width 8), "
        "not from TEMPO's own run.",
    ),
    config={"steps": STEPS, "tau": TAU, "width": WIDTH, "depth_fraction": DEPTH, "min_steps": MIN_STEPS},
)


def draft_depth(n_layers: int) -> int:
    """The early exit's depth k for a model of ``n_layers`` (30 -> 22, 18 -> 13)."""
    return int(round(DEPTH * n_layers))


@functools.lru_cache(maxsize=None)
def _lens_fn(cfg, k: int):
    """jit: (params, tokens[T]) -> (full logits [T,V], argmax [T] of the early exit after k layers)."""
    import jax
    import jax.numpy as jnp

    from tempo_jax.model import TapsSpec, causal_mask, forward, init_cache, unembed

    def fn(params, tokens):
        t = tokens.shape[0]
        ar = jnp.arange(t)
        key_pos = ar[None].astype(jnp.float32) if cfg.has_window else None  # sliding-window models
        logits, _, taps = forward(params, cfg, tokens[None], ar[None].astype(jnp.float32), ar[None],
                                  causal_mask(1, t, t), init_cache(cfg, 1, t, params["embed"].dtype),
                                  TapsSpec(resid=True), key_pos=key_pos)
        resid = taps["resid"][k - 1, 0]  # [T,E] after layer k
        return logits[0], jnp.argmax(unembed(params, cfg, resid), -1).astype(jnp.int32)

    return jax.jit(fn)


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + 1/2 P(tie); NaN without both classes."""
    pos, neg = score[label], score[~label]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def steps_of(m, ids) -> dict | None:
    """On the greedy path of ``ids``: per step, TEMPO's set size and whether the early exit's draft is
    rejected; None when the path is shorter than MIN_STEPS."""
    import jax

    from tempo_jax.engine import GenerationConfig, generate

    tr = generate(m.params, m.cfg, list(ids), GenerationConfig(method="greedy", max_steps=STEPS))
    path = A.cut_at_eos(np.asarray(tr.arrays["tokens"])[:, 0], eos_ids=m.cfg.eos_token_ids or ())
    if len(path) < MIN_STEPS:
        return None
    seq = list(ids) + list(path)
    t = -(-len(seq) // BUCKET) * BUCKET
    tokens = np.zeros(t, np.int32)
    tokens[:len(seq)] = seq
    logits, lens = jax.device_get(_lens_fn(m.cfg, draft_depth(m.cfg.num_layers))(m.params, tokens))
    rows = slice(len(ids) - 1, len(seq) - 1)  # the query whose output is d_s
    d = np.asarray(jax.nn.softmax(np.asarray(logits[rows], np.float64), -1))
    greedy = np.asarray(path)
    if not np.array_equal(d.argmax(-1), greedy):
        agree = float(np.mean(d.argmax(-1) == greedy))
        if agree < 0.95:  # padding or position bug, not a floating-point near-tie
            raise RuntimeError(f"teacher-forced argmax agrees with greedy on {agree:.0%} of steps")
    return {"set_n": np.clip((d >= TAU).sum(-1), 1, WIDTH), "rejected": np.asarray(lens[rows]) != greedy}


def run(ctx) -> Output:
    rows = []
    for p, r in ctx.map(lambda p: steps_of(ctx.model, ctx.model.tokenizer(p.prompt).input_ids)):
        row = {"prompt_id": p.id, "genre": p.genre, **dict.fromkeys(DESIGN.metrics, np.nan)}
        if r is not None:
            n, rej = r["set_n"].astype(float), r["rejected"]
            br = n > 1
            row.update(auroc_minus_half=auroc(n, rej) - 0.5, reject_rate=float(rej.mean()),
                       branch_rate=float(br.mean()), n_steps=len(rej),
                       reject_branch_minus_single=float(rej[br].mean() - rej[~br].mean())
                       if br.any() and (~br).any() else np.nan)
        rows.append(row)
    ok = [r for r in rows if np.isfinite(r["n_steps"])]
    k = draft_depth(ctx.model.cfg.num_layers)
    notes = [f"Draft depth k = {k} of {ctx.model.cfg.num_layers} layers. {len(ok)} of {len(rows)} prompts gave "
             f"a greedy path of at least {MIN_STEPS} steps (mean {np.mean([r['n_steps'] for r in ok]):.0f}); "
             f"drafts rejected on {100 * np.mean([r['reject_rate'] for r in ok]):.0f}% of steps (mean over "
             f"prompts), TEMPO branches on {100 * np.mean([r['branch_rate'] for r in ok]):.0f}%; "
             f"{sum(np.isfinite(r['auroc_minus_half']) for r in ok)} prompts have both rejected and accepted "
             "steps (an AUROC)."]
    return Output(rows=rows, notes=notes)


def answer(tests, design) -> str:
    by = {t.hypothesis: t for t in tests}
    out = []
    if "P" in by:
        t = by["P"]
        out.append(f"Primary test P: per prompt, TEMPO's set size on the greedy path separates rejected from "
                   f"accepted early-exit drafts with AUROC 0.5 {t.estimate:+.3f} [{t.lo:+.3f}, {t.hi:+.3f}] "
                   f"({t.verdict})")
    if "S1" in by:
        t = by["S1"]
        out.append(f"the rejection rate where TEMPO branches minus where it does not "
                   f"{100 * t.estimate:+.1f} points [{100 * t.lo:+.1f}, {100 * t.hi:+.1f}] ({t.verdict})")
    return "; ".join(out) + "."
