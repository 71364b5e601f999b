"""RQ 6.1, whole generations: every single head zero-ablated through a whole TEMPO generation, as ONE
compiled sweep program (``tempo_jax.sweeps``, heads axis ``[(), "each"]``: 1 + L x H worlds per prompt).

The exploratory rq6.1 screened all heads on ONE step; rq6.1b and rq6.1c ablated a few chosen heads.
Here every head is ablated on every forward (prompt and all STEPS steps) of a TEMPO generation (tau 0.1,
max width 4, isolated siblings, no pruning), on facts prompts so a gold answer judges the text.

Per prompt and head h (ablated world minus the unablated world of the same prompt):
* ``screen``: |change of the step-0 entropy of the next-token distribution| (what a one-step screen sees);
* ``diverge``: 1 - (common prefix of the two clean paths) / STEPS (0: same text; 1: differs from step 0);
* ``correct``: gold-answer correctness of the clean path (the corpus gold and aliases), ablated minus not;
* ``size``: mean set size over the steps, ablated minus not.

ONE primary test: per prompt, the Spearman correlation over the heads between ``screen`` and ``diverge``
> 0 (a one-step screen points at the heads whose removal changes the whole generation); smallest effect of
interest 0.1. Secondary (Holm): mean over heads of the accuracy change = 0 within 5 points (one head
rarely matters for gold facts); the share of heads whose ablation changes the text > 1/2. Per-head
accuracy changes are a descriptive map (rows and figure), not tests: at this n no single head's test
could reject.
"""

from __future__ import annotations

import tempfile

import numpy as np
from scipy import stats

from experiments.research import decoding_alternatives as A
from experiments.research import wording
from tempo_jax import quality
from tempo_jax.research import Design, Hypothesis, Output

STEPS, TAU, WIDTH, CHUNK = 16, 0.1, 4, 30
FIXED = {"max_steps": STEPS, "min_steps": STEPS, "max_width": WIDTH, "prune": False}

DESIGN = Design(
    id="rq6.1d",
    questions=("6.1",),
    title="Whole-generation ablation of every single head (one compiled sweep): does a one-step screen find "
          "the heads that change a generation, and does one head change gold facts?",
    primary_metric="per facts prompt, Spearman over all heads between |change of the step-0 entropy| and the "
                   "divergence of the whole clean path when the head is zero-ablated",
    contrast="each head zero-ablated through a whole TEMPO generation vs the same prompt unablated",
    hypotheses=(
        Hypothesis("P", "heads whose ablation moves the step-0 distribution more also change the whole "
                        "generation more (Spearman over heads > 0)", "rho_screen_diverge", ">0", sesoi=0.1),
        Hypothesis("S1", "one head's ablation, averaged over all heads, leaves gold-answer accuracy unchanged "
                         "(within 5 points)", "acc_change_mean", "=0", family="secondary", margin=0.05,
                   bound=1.0),
        Hypothesis("S2", "most single-head ablations change the generated text (share of heads > 1/2)",
                   "changed_share_minus_half", ">0", family="secondary", margin=0.1, bound=0.5),
    ),
    margin=0.1,
    margin_note="0.1 Spearman rho; 5 points for the mean accuracy change over heads",
    metrics=("rho_screen_diverge", "acc_change_mean", "changed_share_minus_half", "acc_L*", "correct0",
             "diverge_mean", "size_change_mean", "n_heads"),
    families={"primary": "holm", "secondary": "holm"},
    split="confirm",
    genres=("facts",),
    n_per_genre=18,  # the SmolLM2 pilot asks for 17 (primary, sesoi 0.1); about 90 s per prompt
    quick_n=6,
    caveats=(
        "Zero ablation (the head's output set to 0) on every forward, prompt included; a mean ablation may "
        "differ.",
        "Facts prompts only (a gold answer judges the text); 16 steps; no pruning.",
        "Divergence counts the clean path's common prefix: once the paths part, later steps differ by "
        "construction, so the outcome is 'how early', not 'how much'. The step-0 entropy change feeds the "
        "step-0 token, so part of the correlation is the first step's own effect.",
        "First registered for SmolLM2-135M only (271 worlds per prompt, about 90 s each on 2 cores); Gemma "
        "3 270M (72 heads, 73 worlds) was added by an amendment with its own dev pilot AFTER the SmolLM2 "
        "result had been seen; the hypotheses, margins and n are unchanged.",
        "Per-head accuracy changes are a map over few prompts (a head changes the answer of few prompts), "
        "not findings about single heads.",
    ),
    config={"generation": {**FIXED, "threshold": TAU, "siblings": "isolated"}, "chunk": CHUNK,
            "ablation": "zero, every forward", "heads": "every (layer, head)"},
)


def clean_paths(tokens, valid, pruned_at) -> np.ndarray:
    """Sweep outputs ``[B,S,W]`` -> the clean path ``[B,S]``: per step the first (most probable) member
    that is not pruned, else the first member (``Trace.clean_ids`` without EOS)."""
    alive = np.asarray(valid, bool) & (np.asarray(pruned_at) < 0)
    first = np.where(alive.any(-1), alive.argmax(-1), 0)
    return np.take_along_axis(np.asarray(tokens), first[..., None], -1)[..., 0]


def common_prefix(a, b) -> int:
    """Length of the common prefix of two equal-length sequences."""
    diff = np.flatnonzero(np.asarray(a) != np.asarray(b))
    return int(diff[0]) if len(diff) else len(a)


def sweep(m, ids) -> dict:
    """Unablated world + every head ablated, one compiled program -> per world: clean path [B,S],
    step-0 entropy [B], mean set size [B]; world 0 unablated, world 1 + l * H + h ablates (l, h)."""
    from tempo_jax.sweeps import SweepSpec, run_sweep

    spec = SweepSpec(prompts=(list(ids),), thresholds=(TAU,), heads=((), "each"), fixed=dict(FIXED),
                     chunk=CHUNK)
    with tempfile.TemporaryDirectory() as out:
        res = run_sweep(spec, out, model=m, progress=False)
    paths = clean_paths(res.flat("tokens"), res.flat("valid"), res.flat("pruned_at"))
    return {"paths": paths, "entropy0": res.flat("entropy")[:, 0].astype(np.float64),
            "size": res.flat("set_n").astype(np.float64).mean(-1)}


def _text_correct(m, p, ids, path) -> float:
    cont = A.cut_at_eos(path, eos_ids=m.cfg.eos_token_ids or ())
    text = quality._continuation_text(m.tokenizer, ids, list(cont))
    return float(quality.clean_path_correct(text, p.reference, p.aliases))


def _one(m, p) -> dict:
    ids = m.tokenizer(p.prompt).input_ids
    r = sweep(m, ids)
    correct = np.asarray([_text_correct(m, p, ids, path) for path in r["paths"]])
    return {**r, "correct": correct}


def row_of(r: dict, L: int, H: int) -> dict:
    """Per-prompt columns from :func:`_one`'s output (world 0 unablated)."""
    paths = r["paths"]
    S = paths.shape[1]
    screen = np.abs(r["entropy0"][1:] - r["entropy0"][0])
    diverge = np.asarray([1 - common_prefix(p, paths[0]) / S for p in paths[1:]])
    dacc = r["correct"][1:] - r["correct"][0]
    rho = stats.spearmanr(screen, diverge).statistic if np.ptp(diverge) > 0 and np.ptp(screen) > 0 else np.nan
    row = {"rho_screen_diverge": float(rho), "acc_change_mean": float(dacc.mean()),
           "changed_share_minus_half": float((diverge > 0).mean() - 0.5), "correct0": float(r["correct"][0]),
           "diverge_mean": float(diverge.mean()), "size_change_mean": float((r["size"][1:] - r["size"][0]).mean()),
           "n_heads": len(diverge)}
    for i, d in enumerate(dacc):
        row[f"acc_L{i // H:02d}H{i % H}"] = float(d)
    return row


def run(ctx) -> Output:
    m = ctx.model
    L, H = m.cfg.num_layers, m.cfg.num_heads
    rows, maps = [], []
    for p, r in ctx.map(lambda p: _one(m, p)):
        rows.append({"prompt_id": p.id, "genre": p.genre, **row_of(r, L, H)})
        S = r["paths"].shape[1]
        maps.append(np.asarray([1 - common_prefix(q, r["paths"][0]) / S for q in r["paths"][1:]]).reshape(L, H))
    mean = lambda k: float(np.nanmean([row[k] for row in rows]))
    n_rho = sum(np.isfinite(row["rho_screen_diverge"]) for row in rows)
    notes = [f"{len(rows)} facts prompts x {L * H} single-head ablations + the unablated world, {STEPS} steps; "
             f"unablated accuracy {100 * mean('correct0'):.1f}%; mean accuracy change per ablated head "
             f"{100 * mean('acc_change_mean'):+.2f} points; share of heads that change the text "
             f"{mean('changed_share_minus_half') + 0.5:.2f}; mean divergence {mean('diverge_mean'):.3f}; "
             f"mean set-size change {mean('size_change_mean'):+.3f}; the Spearman rho is defined on {n_rho} "
             f"prompts (undefined where no head changes the text)."]
    if maps:
        _figure(ctx, np.mean(maps, 0), rows, L, H)
    return Output(rows=rows, notes=notes)


def _figure(ctx, div_map, rows, L, H) -> None:
    from experiments.plotting import pyplot

    plt = pyplot()
    acc = np.asarray([[np.mean([r[f"acc_L{l:02d}H{h}"] for r in rows]) for h in range(H)] for l in range(L)])
    fig, axes = plt.subplots(1, 2, figsize=(10, max(4, L * 0.22)))
    for ax, data, title, cmap in ((axes[0], div_map, "mean divergence of the clean path", "viridis"),
                                  (axes[1], 100 * acc, "gold accuracy change (points)", "coolwarm")):
        lim = np.abs(data).max() or 1.0
        im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=-lim if cmap == "coolwarm" else 0, vmax=lim)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax)
    fig.suptitle(f"RQ 6.1d ({ctx.model.cfg.name}): each head zero-ablated through a whole TEMPO generation "
                 f"({len(rows)} facts prompts)", fontsize=10)
    fig.tight_layout()
    ctx.figure(fig, "heads")


def answer(tests, design) -> str:
    said = {"P": "Primary test P: per prompt, Spearman over heads between the step-0 entropy change and the "
                 "whole clean path's divergence",
            "S1": "mean accuracy change per ablated head", "S2": "share of heads that change the text minus 1/2"}
    return "Every single head zero-ablated through a whole TEMPO generation: " + wording.listed(tests, said) + "."
