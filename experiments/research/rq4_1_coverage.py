"""RQ 4.1: semantic coverage of TEMPO's parallel tokens against beam search and sampling at MATCHED
budgets (embedding spread, clusters, redundancy, facts gold coverage).

Embedding: the model's input embedding rows ``params["embed"]`` (SmolLM2 ties them to the LM head),
cosine distance 1 - cos. Per prompt (12 logical steps):
  - TEMPO: threshold 0.1, max width 4, isolated siblings, mixture combining, no pruning; C_s = the
    members of step s, n_s = |C_s|; forward tokens F = sum_s n_s.
  - beam search (width 4) and sampling (temperature 1.0, 4 independent samples, seeds 0-3).
Two matchings of the tokens a decoder explores at logical step s:
  (a) alternatives per step: the same count n_s as TEMPO's set: the tokens of the n_s best beams at
      step s (beams are ranked by score at every step), the step-s tokens of the first n_s samples;
  (b) forward tokens: B = round(F / S) in [1, 4] paths for the whole run (F/S = TEMPO's mean set
      size): a beam search of width B (B tokens per step, all of them) and the first B samples (B
      tokens per step), so each decoder computes ~F token-forwards in S steps.
Per step (over the DISTINCT tokens, steps with >= 2 of them): spread = mean pairwise cosine
distance; clusters = average-linkage clusters at a cosine-distance cut, as a ratio to the distinct
count (1: every token its own region; 1/n: one region). The cut is the 5th percentile of the cosine
distance of 20,000 random vocabulary pairs (seeded), fixed before any prompt is seen; the random
pairs' mean distance is the "random tokens" reference. Redundancy: share of a step's computed tokens
that repeat another (0 for TEMPO by construction). Facts coverage@3: is the gold answer's first
token among the tokens explored in steps 0-2?
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.research import decoding_alternatives as A
from tempo_jax.research import Design, Hypothesis, Output
from tempo_jax import metrics, quality

STEPS, WIDTH, TAU, N_SAMPLES, TEMP = 12, 4, 0.1, 4, 1.0
COVER_STEPS = 3
CUT_PCT, N_PAIRS = 5.0, 20000
ARMS = ("beam_a", "samp_a", "beam_b", "samp_b")

DESIGN = Design(
    id="rq4.1",
    questions=("4.1",),
    title="Semantic coverage of TEMPO's parallel tokens vs beam search and sampling at matched budgets",
    primary_metric="embedding spread of the tokens explored at a step (mean pairwise cosine distance "
                   "of input embeddings; TEMPO minus the other decoder, per prompt)",
    contrast="TEMPO (tau 0.1, W 4) vs beam search and vs sampling (T 1.0) with (a) the same number "
             "of alternatives per step, (b) the same number of forward tokens; and TEMPO vs random "
             "vocabulary pairs",
    hypotheses=(
        Hypothesis("R", "TEMPO's members are semantically closer than random vocabulary tokens "
                        "(spread TEMPO - random-pair mean)", "spread_rand", "<0"),
        Hypothesis("SA", "(a) alternatives matched: TEMPO's members are less spread than the step's "
                         "tokens of as many beams / samples (TEMPO - other)", "spread_*_a", "<0"),
        Hypothesis("SB", "(b) forward tokens matched: TEMPO's members are less spread than the tokens "
                         "of a width-B beam / B samples (TEMPO - other)", "spread_*_b", "<0"),
        Hypothesis("K", "cluster ratio (clusters per distinct token) of TEMPO minus the other "
                        "decoder's", "clus_*", "<0", family="clusters", margin=0.10),
        Hypothesis("V", "facts: gold first token among the tokens explored in steps 0-2, TEMPO "
                        "minus the other decoder", "cov_*", ">0", family="coverage", margin=0.10, bound=1.0),
    ),
    margin=0.05,
    margin_note="0.05 cosine distance for spread; 0.10 for cluster ratio; 10 points for coverage",
    metrics=("spread_rand", "spread_*_a", "spread_*_b", "clus_*", "cov_*"),
    families={"primary": "holm", "clusters": "holm", "coverage": "holm"},
    n_per_genre=8,
    quick_n=2,
    caveats=(
        "The input embedding space is anisotropic (random vocabulary pairs have a mean cosine "
        "similarity of about 0.44, noted from the --quick smoke run), so the random-pair reference is "
        "close, and the cut (5th percentile of random pairs) merges only near-duplicates; embeddings "
        "are not centred (as registered).",
        "Input embeddings are a static, context-free view of a token: two tokens can be close in it and "
        "lead to different meanings in context (and vice versa).",
        "TEMPO's members share one context; beam and sample tokens at a step follow different "
        "prefixes, so part of their spread comes from the prefixes having diverged.",
        "Spread and cluster ratio average over the steps where a decoder explored >= 2 distinct tokens; "
        "those steps differ between decoders. A width-1 beam (B = 1) explores none and drops out of "
        "the (b) beam contrasts for that prompt.",
        "(b) matches forward tokens only approximately: B is TEMPO's mean set size rounded; the forward "
        "tokens of each decoder are in table by_arm.",
        "Coverage uses the 8 facts prompts only (little power); the random-pair reference includes "
        "rare and junk tokens of the vocabulary.",
        "12 logical steps and 8 test prompts per genre (24) to fit the shared 3-minute compute budget.",
    ),
    config={"steps": STEPS, "width": WIDTH, "tau": TAU, "n_samples": N_SAMPLES, "temperature": TEMP,
            "cover_steps": COVER_STEPS, "cut_percentile": CUT_PCT, "random_pairs": N_PAIRS,
            "embedding": "input embedding (tied), cosine distance"},
)


# --- pure helpers (tested on hand-made cases) ------------------------------------------------------
def _unit(embed, tokens) -> np.ndarray:
    e = np.asarray(embed[np.asarray(tokens, int)], np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-30)


def spread(embed, tokens) -> float:
    """Mean pairwise cosine distance of ``embed[tokens]`` (NaN for < 2 tokens)."""
    return metrics.semantic_diversity(embed, tokens)


def n_clusters(embed, tokens, cut: float) -> int:
    """Clusters of ``embed[tokens]`` by average-linkage agglomeration on cosine distance, cut at
    distance ``cut``."""
    if len(tokens) < 2:
        return len(tokens)
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    e = _unit(embed, tokens)
    d = np.clip(1.0 - e @ e.T, 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    z = linkage(squareform(d, checks=False), method="average")
    return int(len(np.unique(fcluster(z, t=cut, criterion="distance"))))


@dataclasses.dataclass(frozen=True)
class StepSummary:
    """Means over steps: distinct tokens and redundancy (steps with >= 1 token); spread and cluster
    ratio (steps with >= 2 distinct tokens; NaN if none); branching = share of steps with >= 2."""

    distinct: float
    redundancy: float
    spread: float
    cluster_ratio: float
    branching: float


def summarize(step_tokens, embed, cut: float) -> StepSummary:
    """``step_tokens[s]``: every token a decoder computed at logical step s. Distinct count,
    redundancy, spread and branching are :func:`decoding_alternatives.alternatives`'; the cluster
    ratio is added here."""
    a = A.alternatives(step_tokens, embed)
    clu = [n_clusters(embed, u, cut) / len(u) for u, _ in A.distinct_per_step(step_tokens) if len(u) >= 2]
    return StepSummary(a.distinct, a.redundancy, a.spread, float(np.mean(clu)) if clu else float("nan"),
                       a.branching)


def first_n_per_step(beam_tokens, ns) -> list[list[int]]:
    """Tokens of the first ``ns[s]`` beams at step s (beams ranked by score at every step; -1 =
    a finished beam's "stay" entry, skipped)."""
    out = []
    for s, n in enumerate(ns):
        if s >= len(beam_tokens):
            break
        out.append([int(t) for t in beam_tokens[s, :n] if t >= 0])
    return out


def _reference(embed, seed: int) -> tuple[float, float]:
    """(mean, CUT_PCT-th percentile) of the cosine distance of N_PAIRS random distinct token pairs."""
    rng = np.random.default_rng(seed)
    v = embed.shape[0]
    a = rng.integers(0, v, N_PAIRS)
    b = (a + rng.integers(1, v, N_PAIRS)) % v
    ea, eb = _unit(embed, a), _unit(embed, b)
    d = 1.0 - np.sum(ea * eb, -1)
    return float(d.mean()), float(np.percentile(d, CUT_PCT))


# --- the experiment -------------------------------------------------------------------------------
def _one(m, p, seed, embed, cut) -> dict:
    from tempo_jax.engine import GenerationConfig, generate
    from tempo_jax.engine.beam import beam_search

    ids = m.tokenizer(p.prompt).input_ids
    eos = m.cfg.eos_token_ids or ()
    g = GenerationConfig(max_steps=STEPS, max_width=WIDTH, threshold=TAU, prune=False, seed=seed)
    tr = generate(m.params, m.cfg, ids, g)
    sets = [[mm["token"] for mm in st["members"]] for st in tr.steps()]
    ns = [len(x) for x in sets]
    S = len(sets)
    F = int(sum(ns))
    B = int(min(WIDTH, max(1, round(F / S))))
    explored = {"tempo": sets}
    fwd = {"tempo": F / S}
    bt = beam_search(m.params, m.cfg, ids, width=WIDTH, max_steps=STEPS)
    explored["beam_a"] = first_n_per_step(bt.arrays["beam_tokens"], ns)
    fwd["beam_a"] = float(WIDTH)
    btb = bt if B == WIDTH else beam_search(m.params, m.cfg, ids, width=B, max_steps=STEPS)
    explored["beam_b"] = [[int(t) for t in row if t >= 0] for row in btb.arrays["beam_tokens"]]
    fwd["beam_b"] = float(B)
    cfgs = [GenerationConfig(method="sample", max_steps=STEPS, temperature=TEMP, seed=seed * 1000 + j)
            for j in range(N_SAMPLES)]
    paths = [A.cut_at_eos(t.arrays["tokens"][:, 0], eos_ids=eos)
             for t in A.sample_worlds(m.params, m.cfg, ids, cfgs)]
    explored["samp_a"] = [[pp[s] for pp in paths[:n] if len(pp) > s] for s, n in enumerate(ns)]
    explored["samp_b"] = [[pp[s] for pp in paths[:B] if len(pp) > s] for s in range(STEPS)]
    fwd["samp_a"], fwd["samp_b"] = float(N_SAMPLES), float(B)
    out = {"B": B, "F": F, "S": S, "fwd": fwd,
           "sum": {k: summarize(v, embed, cut) for k, v in explored.items()}}
    if p.genre == "facts":
        gold = quality.gold_first_token(m.tokenizer, p.reference)
        out["cov"] = {k: float(any(gold in set(x) for x in v[:COVER_STEPS])) for k, v in explored.items()}
    return out


def run(ctx) -> Output:
    m = ctx.model
    embed = np.asarray(m.params["embed"], np.float64)
    rand_mean, cut = _reference(embed, ctx.seed)
    rows, per = [], []
    for p, r in ctx.map(lambda p: _one(m, p, ctx.seed, embed, cut)):
        t = r["sum"]["tempo"]
        row = {"prompt_id": p.id, "genre": p.genre, "B": r["B"], "fwd_tempo": r["fwd"]["tempo"],
               "spread_rand": t.spread - rand_mean}
        for arm in ARMS:
            o = r["sum"][arm]
            kind, match = arm.split("_")
            row[f"spread_{kind}_{match}"] = t.spread - o.spread
            row[f"clus_{kind}_{match}"] = t.cluster_ratio - o.cluster_ratio
            if "cov" in r:
                row[f"cov_{kind}_{match}"] = r["cov"]["tempo"] - r["cov"][arm]
        for arm, o in r["sum"].items():
            row.update({f"v_spread_{arm}": o.spread, f"v_clus_{arm}": o.cluster_ratio,
                        f"v_distinct_{arm}": o.distinct, f"v_redund_{arm}": o.redundancy,
                        f"v_branch_{arm}": o.branching})
            if "cov" in r:
                row[f"v_cov_{arm}"] = r["cov"][arm]
        rows.append(row)
        per.append(r)
    table = _arm_table(rows, per, rand_mean, cut)
    _figures(ctx, rows, table, rand_mean)
    notes = [f"Random vocabulary pairs: mean cosine distance {rand_mean:.3f}; cluster cut (5th "
             f"percentile) {cut:.3f}. Forward-token match (b): B = "
             + ", ".join(f"{b}: {sum(r['B'] == b for r in per)} prompts" for b in sorted({r['B'] for r in per}))
             + "."]
    return Output(rows=rows, tables={"by_arm": table}, notes=notes)


def _arm_table(rows, per, rand_mean, cut) -> list[dict]:
    out = []
    for arm in ("tempo", *ARMS):
        rec = {"arm": arm, "fwd_tokens_per_step": float(np.mean([r["fwd"][arm] for r in per]))}
        for col in ("spread", "clus", "distinct", "redund", "branch", "cov"):
            v = np.array([r.get(f"v_{col}_{arm}", np.nan) for r in rows], np.float64)
            v = v[np.isfinite(v)]
            rec[f"{col}_mean"] = float(v.mean()) if len(v) else float("nan")
            rec[f"{col}_n"] = int(len(v))
        out.append(rec)
    out.append({"arm": "random_pairs", "spread_mean": rand_mean, "cluster_cut": cut})
    return out


LABELS = {"tempo": "TEMPO", "beam_a": "beam (a)", "samp_a": "sampling (a)", "beam_b": "beam (b)",
          "samp_b": "sampling (b)"}


def _figures(ctx, rows, table, rand_mean):
    from experiments.plotting import pyplot

    plt = pyplot()
    arms = ["tempo", *ARMS]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.2))
    for ax, (col, label) in zip(axes[:2], (("spread", "embedding spread of a step's tokens\n(mean "
                                                      "pairwise cosine distance)"),
                                           ("clus", "clusters per distinct token at the cut"))):
        data = [[r[f"v_{col}_{a}"] for r in rows if np.isfinite(r[f"v_{col}_{a}"])] for a in arms]
        ax.boxplot(data, tick_labels=[LABELS[a] for a in arms], showfliers=False)
        for i, d in enumerate(data):
            ax.scatter(np.full(len(d), i + 1) + np.random.default_rng(i).uniform(-0.12, 0.12, len(d)),
                       d, s=8, alpha=0.5, color="tab:blue")
        if col == "spread":
            ax.axhline(rand_mean, color="tab:red", ls="--", lw=1, label="random vocabulary pairs")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    ax = axes[2]
    recs = {t["arm"]: t for t in table if "fwd_tokens_per_step" in t}
    for a in arms:
        sim = [1 - r[f"v_spread_{a}"] for r in rows if r["genre"] == "facts" and np.isfinite(r[f"v_spread_{a}"])]
        cov = [r[f"v_cov_{a}"] for r in rows if f"v_cov_{a}" in r]
        if not cov or not sim:
            continue
        ax.errorbar(np.mean(sim), np.mean(cov), xerr=np.std(sim) / np.sqrt(len(sim)),
                    yerr=np.std(cov) / np.sqrt(len(cov)), fmt="o", capsize=3,
                    label=f"{LABELS[a]} ({recs[a]['fwd_tokens_per_step']:.2f} fwd tok/step)")
    ax.set_xlabel("mean pairwise cosine similarity of a step's tokens (facts prompts)")
    ax.set_ylabel(f"gold first token explored in steps 0-{COVER_STEPS - 1}")
    ax.set_title("coverage vs redundancy (facts; mean +- s.e.)", fontsize=10)
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7)
    fig.suptitle(f"RQ 4.1: tokens explored per step over {len(rows)} prompts; (a) same alternatives per "
                 "step as TEMPO, (b) same forward tokens")
    fig.tight_layout()
    ctx.figure(fig, "coverage")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    ok = lambda c: c in by and np.isfinite(by[c].estimate)
    num = lambda t: f"{t.estimate:+.3f} [{t.lo:+.3f}, {t.hi:+.3f}] ({t.verdict})"
    pts = lambda t: f"{100 * t.estimate:+.0f} points [{100 * t.lo:+.0f}, {100 * t.hi:+.0f}] ({t.verdict})"
    parts = []
    if ok("spread_rand"):
        t = by["spread_rand"]
        side = ("more spread than" if t.estimate > 0 else "closer than") if t.verdict.startswith("differs") \
            else "not distinguishable from"
        parts.append(f"TEMPO's members are {side} random vocabulary pairs in input-embedding cosine "
                     f"distance ({num(t)})")
    for match, words in (("a", "same alternatives per step"), ("b", "same forward tokens")):
        s = [f"{k} {num(by[f'spread_{k}_{match}'])}" for k in ("beam", "samp") if ok(f"spread_{k}_{match}")]
        if s:
            parts.append(f"spread TEMPO minus ({match}, {words}) " + ", ".join(s))
    c = [f"{k[5:]} {num(by[k])}" for k in sorted(by) if k.startswith("clus_") and ok(k)]
    if c:
        parts.append("cluster ratio TEMPO minus " + ", ".join(c))
    v = [f"{k[4:]} {pts(by[k])}" for k in sorted(by) if k.startswith("cov_") and ok(k)]
    if v:
        parts.append(f"facts gold coverage in steps 0-{COVER_STEPS - 1} TEMPO minus " + ", ".join(v))
    return "; ".join(parts).replace("samp_", "sampling_").replace("samp ", "sampling ") + "."
