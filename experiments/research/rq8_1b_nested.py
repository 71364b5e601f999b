"""RQ 8.1b: NESTED hierarchical positions. Members of a second set placed at fractional
sub-positions of their own parent in the first set, against TEMPO's shared positions and against
a flat (rank-order, not parent-aware) spread, under a mixture mask (TEMPO: every child sees every
parent) and a tree mask (each child sees only its parent).

Under TEMPO's mixture rule a step's members have no single parent, so the hierarchy is built:
  level 1: the prompt's top-m next tokens a_0..a_{m-1} (m = 3), one isolated set;
  level 2: for each parent a_k its top-c continuations (c = 2) on the parent's own path
           (prompt + a_k); the m*c children are isolated from each other;
  probe:   the greedy next token after the top parent's top child, reading everything.
One batched forward per prompt holds all 8 worlds (4 position designs x 2 masks): same tokens,
slots and probe token; only member positions and the child rows of the mask differ.

Positions (parent rank k, child rank j within its parent, r = the child's rank among all m*c
children by joint weight; probe at P + 2 in every world):
  shared: parents P,         children P + 1                       (TEMPO)
  flat:   parents P + k/m,   children P + 1 + r/(m c)             (rq8.1's "hier" at both levels)
  nested: parents P + k/m,   children P + 1 + k/m + j/(m c)       (a child sits one step after
                                                                   its parent's sub-position)
  shifted (control): parents P + k/m, children P + 1 + ((k+1) mod m)/m + j/(m c): the nested
          geometry with every sibling pair moved under the WRONG parent's sub-position
Flat and nested use the same offsets at level 2 in a different order; where the joint-weight
rank order is parent-major they coincide (the row's ``same_order`` flag).

Primary metric (readout fidelity, as rq8.1): KL(p_mix || q) in nats, q the probe's next-token
distribution in a world and p_mix = sum_kj w_kj p_kj, p_kj the probe's distribution after the
path prompt + a_k + child_kj alone at ordinary positions, w_kj = parent prob x child prob within
its parent, renormalised over the m*c children. Per prompt log(KL_world / KL_shared_mixture).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.research import Design, Hypothesis, Output
from experiments.research.position_probe import pad, prompt_state
from experiments.research.rq8_1_positions import _broadcast
from tempo_jax.config import ModelConfig
from tempo_jax.model import KVCache, TapsSpec, forward

M, C = 3, 2
DESIGNS = ("shared", "flat", "nested", "shifted")
MASKS = ("mixture", "tree")
WORLDS = tuple((d, mk) for mk in MASKS for d in DESIGNS)  # index = mask * len(DESIGNS) + design
MARGIN = float(np.log(1.1))

DESIGN = Design(
    id="rq8.1b",
    questions=("8.1",),
    title="Nested hierarchical positions: children at sub-positions of their own parent, "
          "under mixture and tree masks",
    primary_metric="readout fidelity: KL(p_mix || q) (nats) between the weighted mixture of the "
                   "probe's distributions after each full path prompt + parent + child alone and the "
                   "probe's distribution reading the two-level set; per prompt "
                   "log(KL_world / KL_shared_mixture) or the named pair's log ratio",
    contrast="same tokens, slots, probe: nested vs shared and nested vs flat positions under the "
             "mixture mask; nested vs shared under the tree mask; tree vs mixture mask at shared "
             "positions; control: nested vs shifted (the same geometry with each sibling pair under "
             "the wrong parent's sub-position)",
    hypotheses=(
        Hypothesis("H1", "nested positions bring the readout closer to the mixture of paths than "
                         "shared positions (mixture mask)", "fid_nested_mix", "<0"),
        Hypothesis("H2", "parent-aware placement matters beyond spreading: nested beats flat "
                         "(mixture mask)", "fid_nested_vs_flat_mix", "<0"),
        Hypothesis("H3", "nested beats shared positions under the tree mask",
                   "fid_nested_vs_shared_tree", "<0"),
        Hypothesis("H4", "context: the tree mask (hierarchy in the mask) beats the mixture mask at "
                         "shared positions", "fid_tree_vs_mix_shared", "<0"),
        Hypothesis("S", "flat vs shared positions (mixture mask: rq8.1's spread at two levels; "
                        "tree mask), nested vs flat (tree mask), nested vs the shifted control "
                        "(children under the wrong parent's sub-position; both masks)", "sec_*", "=0",
                   family="secondary"),
        Hypothesis("A", "children's attention share on their own parent (mean over layers, heads, "
                        "children; mixture mask) rises with nested / flat positions vs shared and "
                        "with nested vs the shifted control (and falls with shifted vs shared)",
                   "own_*", ">0", family="attention"),
        Hypothesis("LA", "per-layer own-parent attention share, nested vs shared (mixture mask)",
                   "L*_own_nested", ">0", family="layers"),
    ),
    margin=MARGIN,
    margin_note="log(1.1): a 10% relative change in KL or attention share",
    metrics=("fid_*", "sec_*", "own_*", "L*_own_nested"),
    families={"primary": "holm", "secondary": "holm", "attention": "holm", "layers": "fdr_bh"},
    n_per_genre=40,
    caveats=(
        "Constructed two-level sets: the parents are the prompt's top-3 tokens and each parent's "
        "children its own top-2 continuations, all forced; real TEMPO sets are chosen by threshold "
        "and their members have no single parent.",
        "Flat and nested differ only in the ORDER of the same six child offsets; on prompts where "
        "the children's joint-weight rank is parent-major the two worlds are identical and the "
        "nested-vs-flat log ratio is exactly 0 (the share is reported in the notes).",
        "The probe token continues the top parent's top child; for other paths the reference "
        "p_kj reads an unusual pair, as in rq8.1.",
        "Under the tree mask at shared positions each child's own state equals its ordinary path's "
        "(tested); only the probe reads the parallel set there.",
        "One model (SmolLM2-135M-Instruct, Q4_1 GGUF dequantised to float32); n = 40 prompts per "
        "genre (120), chosen so the run takes a few minutes on 2 CPU cores.",
    ),
    config={"m": M, "c": C, "designs": DESIGNS, "masks": MASKS,
            "probe": "P + 2, greedy token after the top parent's top child",
            "weights": "parent prob x child prob within parent, renormalised over m*c children"},
)


# --- positions ------------------------------------------------------------------------------------
def joint_rank(weights: np.ndarray) -> np.ndarray:
    """Rank ``[m*c]`` (0 = heaviest, stable) of each child (parent-major order) by joint weight."""
    order = np.argsort(-np.asarray(weights, np.float64), kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def design_offsets(design: str, m: int, c: int, rank: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Offsets from P: parents ``[m]`` and children ``[m*c]`` (parent-major: child (k, j) at k*c + j).
    ``rank[m*c]``: each child's joint-weight rank (the flat design's order; default parent-major)."""
    k = np.arange(m, dtype=np.float64)
    kc = np.repeat(k, c)
    j = np.tile(np.arange(c, dtype=np.float64), m)
    rank = np.arange(m * c) if rank is None else np.asarray(rank)
    if sorted(rank.tolist()) != list(range(m * c)):
        raise ValueError(f"rank must be a permutation of 0..{m * c - 1}, got {rank.tolist()}")
    if design == "shared":
        o1, o2 = np.zeros(m), np.ones(m * c)
    elif design == "flat":
        o1, o2 = k / m, 1 + rank / (m * c)
    elif design == "nested":
        o1, o2 = k / m, 1 + kc / m + j / (m * c)
    elif design == "shifted":
        o1, o2 = k / m, 1 + ((kc + 1) % m) / m + j / (m * c)
    else:
        raise ValueError(f"unknown design {design!r}; known: {', '.join(DESIGNS)}")
    return o1.astype(np.float32), o2.astype(np.float32)


def world_positions(plen: int, rank: np.ndarray, m: int = M, c: int = C) -> np.ndarray:
    """Positions ``[len(WORLDS), m + m*c + 1]`` of parents, children and the probe (at P + 2)."""
    rows = []
    for d, _ in WORLDS:
        o1, o2 = design_offsets(d, m, c, rank)
        rows.append(np.concatenate([plen + o1, plen + o2, [plen + 2.0]]))
    return np.asarray(rows, np.float32)


# --- forwards -------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("mcfg",))
def path_readout(params, mcfg: ModelConfig, cache: KVCache, plen, tokens):
    """W ordinary paths (cache B = 1): tokens[W,T] at positions/slots ``plen..plen+T-1``, causal
    over the prompt. Returns log-probs ``[W,T,V]``."""
    w, t = tokens.shape
    K = cache.capacity
    rel = jnp.arange(K)[None, :] - plen  # [1,K]
    mask = rel <= jnp.arange(t)[:, None]  # [T,K]
    pos = jnp.broadcast_to((plen + jnp.arange(t)).astype(jnp.float32), (w, t))
    slots = jnp.broadcast_to(plen + jnp.arange(t), (w, t))
    logits, _, _ = forward(params, mcfg, tokens, pos, slots, jnp.broadcast_to(mask, (w, t, K)),
                           _broadcast(cache, w))
    return jax.nn.log_softmax(logits, -1)


def nested_mask(capacity: int, plen, tree, m: int, c: int):
    """Mask ``[B,T,K]`` (T = m + m*c + 1; slots plen.. hold parents, children, probe): parents see
    the prompt and themselves; child (k, j) sees the prompt, every parent (``tree[B]`` False) or
    only parent k (True), and itself; the probe sees everything."""
    t = m + m * c + 1
    rel = jnp.arange(capacity)[None, None, :] - plen  # [1,1,K]
    row = jnp.arange(t)[None, :, None]  # [1,T,1]
    base = (rel < 0) | (rel == row)
    parent_of = jnp.concatenate([jnp.full(m, -1), jnp.repeat(jnp.arange(m), c), jnp.full(1, -1)])
    is_child = (row >= m) & (row < m + m * c)
    sees_parent = (rel >= 0) & (rel < m) & (~tree[:, None, None] | (rel == parent_of[None, :, None]))
    probe = (row == t - 1) & (rel < t)
    return base | (is_child & sees_parent) | probe


@functools.partial(jax.jit, static_argnames=("mcfg", "m", "c"))
def nested_readout(params, mcfg: ModelConfig, cache: KVCache, plen, parents, children, probe, pos,
                   tree, m: int, c: int):
    """B worlds (cache [L,B,K,G,D]): parents[m], children[m*c] (parent-major), probe token at
    positions ``pos[B,T]`` in slots ``plen..plen+T-1``, mask :func:`nested_mask` with ``tree[B]``.
    Returns (probe log-probs ``[B,V]``, children's log-probs ``[B,m*c,V]``, children's attention
    on the parent slots ``[L,B,H,m*c,m]``)."""
    b = pos.shape[0]
    t = m + m * c + 1
    K = cache.capacity
    tokens = jnp.broadcast_to(jnp.concatenate([parents, children, probe[None]]), (b, t))
    slots = jnp.broadcast_to(plen + jnp.arange(t), (b, t))
    mask = nested_mask(K, plen, tree, m, c)
    logits, _, taps = forward(params, mcfg, tokens, pos, slots, mask, cache, TapsSpec(attn=True))
    logp = jax.nn.log_softmax(logits, -1)
    a = taps["attn"][:, :, :, m:m + m * c, :]  # children's rows [L,B,H,mc,K]
    on_parents = jax.lax.dynamic_slice_in_dim(a, plen, m, axis=-1)
    return logp[:, t - 1], logp[:, m:m + m * c], on_parents


# --- one prompt -----------------------------------------------------------------------------------
def prepare(params, mcfg: ModelConfig, ids, m: int = M, c: int = C) -> dict:
    """The constructed two-level set and its references for one prompt: ``cache`` (B = 1),
    ``plen``, ``parents[m]``, ``children[m*c]`` (parent-major), ``weights[m*c]`` (joint,
    renormalised), ``rank[m*c]``, ``probe``, ``ref[m*c,V]`` (probe log-probs after each path alone),
    ``child_ref[m*c,V]`` (log-probs after each child on its path), ``logp_mix[V]``."""
    prompt, P = pad(ids)
    t = m + m * c + 1
    dist, cache = prompt_state(params, mcfg, jnp.asarray(prompt), jnp.int32(P), len(prompt) + t)
    dist = np.asarray(dist, np.float64)
    parents = np.argsort(-dist, kind="stable")[:m].astype(np.int32)
    after = np.asarray(path_readout(params, mcfg, cache, jnp.int32(P), jnp.asarray(parents)[:, None])[:, 0],
                       np.float64)  # [m,V]
    kids = np.argsort(-after, axis=-1, kind="stable")[:, :c].astype(np.int32)  # [m,c]
    joint = dist[parents][:, None] * np.exp(np.take_along_axis(after, kids.astype(np.int64), -1))
    weights = (joint / joint.sum()).reshape(-1)
    children = kids.reshape(-1)
    paths = np.stack([np.repeat(parents, c), children, np.zeros(m * c, np.int32)], 1)
    first = np.asarray(path_readout(params, mcfg, cache, jnp.int32(P), jnp.asarray(paths)), np.float64)
    probe = int(np.argmax(first[0, 1]))  # greedy after the top parent's top child
    paths[:, 2] = probe
    ref = np.asarray(path_readout(params, mcfg, cache, jnp.int32(P), jnp.asarray(paths)), np.float64)
    logp_mix = np.logaddexp.reduce(ref[:, 2] + np.log(weights)[:, None], axis=0)
    return {"cache": cache, "plen": P, "parents": parents, "children": children, "weights": weights,
            "rank": joint_rank(weights), "probe": probe, "ref": ref[:, 2], "child_ref": ref[:, 1],
            "logp_mix": logp_mix}


def measure(params, mcfg: ModelConfig, ids, m: int = M, c: int = C) -> dict:
    """All worlds on one prompt: ``kl_mix[W]`` (W = len(WORLDS)), ``kl_top[W]`` (from the top path),
    ``own_share[W,L]`` (children's attention on their own parent / on all parents, mean over heads
    and children), ``same_order`` (flat == nested), ``weights``."""
    p = prepare(params, mcfg, ids, m, c)
    nw = len(WORLDS)
    pos = world_positions(p["plen"], p["rank"], m, c)
    tree = jnp.asarray([mk == "tree" for _, mk in WORLDS])
    logq, _, att = nested_readout(params, mcfg, _broadcast(p["cache"], nw), jnp.int32(p["plen"]),
                                  jnp.asarray(p["parents"]), jnp.asarray(p["children"]),
                                  jnp.int32(p["probe"]), jnp.asarray(pos), tree, m=m, c=c)
    logq = np.asarray(logq, np.float64)
    kl_np = lambda lp: np.sum(np.exp(lp) * (lp - logq), -1)
    att = np.asarray(att, np.float64)  # [L,W,H,mc,m]
    own = np.take_along_axis(att, np.repeat(np.arange(m), c)[None, None, None, :, None], -1)[..., 0]
    share = (own / att.sum(-1)).mean((2, 3))  # [L,W]
    return {"kl_mix": kl_np(p["logp_mix"]), "kl_top": kl_np(p["ref"][0]), "own_share": share.T,
            "same_order": bool(np.all(p["rank"] == np.arange(m * c))), "weights": p["weights"]}


# --- experiment -----------------------------------------------------------------------------------
def _w(design: str, mask: str) -> int:
    return WORLDS.index((design, mask))


def run(ctx) -> Output:
    m_ = ctx.model
    L = m_.cfg.num_layers
    rows = []
    lr_ = lambda a, b: float(np.log(a) - np.log(b))
    for p, r in ctx.map(lambda p: measure(m_.params, m_.cfg, m_.tokenizer(p.prompt).input_ids)):
        km, sh = r["kl_mix"], r["own_share"]
        row = {"prompt_id": p.id, "genre": p.genre, "same_order": int(r["same_order"]),
               "top_weight": float(r["weights"].max())}
        for i, (d, mk) in enumerate(WORLDS):
            row[f"kl_mix_{d}_{mk}"] = km[i]
            row[f"kl_top_{d}_{mk}"] = r["kl_top"][i]
            row[f"share_{d}_{mk}"] = float(sh[i].mean())
        base = km[_w("shared", "mixture")]
        for i, (d, mk) in enumerate(WORLDS):
            row[f"vs_base_{d}_{mk}"] = lr_(km[i], base)  # the figure's quantity
        row["fid_nested_mix"] = lr_(km[_w("nested", "mixture")], base)
        row["fid_nested_vs_flat_mix"] = lr_(km[_w("nested", "mixture")], km[_w("flat", "mixture")])
        row["fid_nested_vs_shared_tree"] = lr_(km[_w("nested", "tree")], km[_w("shared", "tree")])
        row["fid_tree_vs_mix_shared"] = lr_(km[_w("shared", "tree")], base)
        row["sec_flat_vs_shared_mix"] = lr_(km[_w("flat", "mixture")], base)
        row["sec_flat_vs_shared_tree"] = lr_(km[_w("flat", "tree")], km[_w("shared", "tree")])
        row["sec_nested_vs_flat_tree"] = lr_(km[_w("nested", "tree")], km[_w("flat", "tree")])
        row["sec_nested_vs_shifted_mix"] = lr_(km[_w("nested", "mixture")], km[_w("shifted", "mixture")])
        row["sec_nested_vs_shifted_tree"] = lr_(km[_w("nested", "tree")], km[_w("shifted", "tree")])
        s0 = sh[_w("shared", "mixture")]
        row["own_nested"] = lr_(sh[_w("nested", "mixture")].mean(), s0.mean())
        row["own_flat"] = lr_(sh[_w("flat", "mixture")].mean(), s0.mean())
        row["own_shifted"] = lr_(sh[_w("shifted", "mixture")].mean(), s0.mean())
        row["own_nested_vs_shifted"] = lr_(sh[_w("nested", "mixture")].mean(),
                                           sh[_w("shifted", "mixture")].mean())
        for layer in range(L):
            row[f"L{layer:02d}_own_nested"] = lr_(sh[_w("nested", "mixture"), layer], s0[layer])
            row[f"share_L{layer:02d}_shared"] = float(s0[layer])
            row[f"share_L{layer:02d}_flat"] = float(sh[_w("flat", "mixture"), layer])
            row[f"share_L{layer:02d}_nested"] = float(sh[_w("nested", "mixture"), layer])
            row[f"share_L{layer:02d}_shifted"] = float(sh[_w("shifted", "mixture"), layer])
        rows.append(row)
    _figures(ctx, rows, L)
    same = np.mean([r["same_order"] for r in rows])
    notes = [
        "Median KL(p_mix || q) by world: " + ", ".join(
            f"{d}/{mk} {np.median([r[f'kl_mix_{d}_{mk}'] for r in rows]):.3f}" for d, mk in WORLDS) + " nats.",
        f"Flat and nested worlds coincide (children's joint-weight order is parent-major) on "
        f"{100 * same:.0f}% of prompts; there the nested-vs-flat log ratio is exactly 0.",
        "Children's mean attention share on their own parent (mixture mask; 1/3 = no preference): "
        + ", ".join(f"{d} {np.mean([r[f'share_{d}_mixture'] for r in rows]):.3f}" for d in DESIGNS) + ".",
    ]
    table = [{"design": d, "mask": mk,
              "median_kl_mix": float(np.median([r[f"kl_mix_{d}_{mk}"] for r in rows])),
              "mean_log_kl_vs_shared_mixture": float(np.mean([r[f"vs_base_{d}_{mk}"] for r in rows])),
              "median_kl_top": float(np.median([r[f"kl_top_{d}_{mk}"] for r in rows])),
              "mean_own_parent_share": float(np.mean([r[f"share_{d}_{mk}"] for r in rows]))}
             for d, mk in WORLDS]
    return Output(rows=rows, tables={"worlds": table}, notes=notes)


def _figures(ctx, rows, L):
    from experiments.plotting import ci_bars, pyplot
    from tempo_jax import stats as S

    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(12, 3.8))
    width = 0.38  # two mask arms per design
    x = np.arange(len(DESIGNS))
    for i, mk in enumerate(MASKS):
        mean, err = ci_bars([S.bootstrap_ci([r[f"vs_base_{d}_{mk}"] for r in rows], n_boot=1999)
                             for d in DESIGNS])
        ax[0].bar(x + (i - 0.5) * width, mean, width, yerr=err, capsize=3, label=f"{mk} mask")
    ax[0].axhspan(-MARGIN, MARGIN, color="grey", alpha=0.2, label="+-10%")
    ax[0].axhline(0, color="k", lw=0.8)
    ax[0].set_xticks(x, ["shared\n(shared/mixture\n= 0 by definition)", "flat", "nested",
                         "shifted\n(control)"])
    ax[0].set_xlabel("position design")
    ax[0].set_ylabel("log KL(p_mix||q) vs shared/mixture")
    ax[0].set_title("Readout fidelity (<0: closer to the paths' mixture)")
    ax[0].legend(fontsize=8)
    for d, mk, dx in (("shared", "o", -0.24), ("flat", "s", -0.08), ("nested", "^", 0.08),
                      ("shifted", "v", 0.24)):
        vals = np.asarray([[r[f"share_L{l:02d}_{d}"] for l in range(L)] for r in rows])
        mean, err = ci_bars([S.bootstrap_ci(vals[:, l], n_boot=999) for l in range(L)])
        ax[1].errorbar(np.arange(L) + dx, mean, yerr=err, fmt=mk + "-", ms=3, capsize=2, lw=0.8, label=d)
    ax[1].axhline(1 / M, color="grey", ls=":", lw=1, label="no preference (1/m)")
    ax[1].set_xlabel("layer")
    ax[1].set_ylabel("child's attention on own parent / all parents")
    ax[1].set_title("Own-parent attention share per layer (mixture mask)")
    ax[1].legend(fontsize=8)
    fig.suptitle(f"RQ 8.1b: nested positions, {len(rows)} prompts, 95% BCa CIs", y=1.03)
    ctx.figure(fig, "nested")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    pct = lambda t: (f"{100 * (np.exp(t.estimate) - 1):+.0f}% [{100 * (np.exp(t.lo) - 1):+.0f}, "
                     f"{100 * (np.exp(t.hi) - 1):+.0f}]")
    prim = [("fid_nested_mix", "nested vs shared positions under the mixture mask"),
            ("fid_nested_vs_flat_mix", "nested vs flat"),
            ("fid_nested_vs_shared_tree", "nested vs shared under the tree mask"),
            ("fid_tree_vs_mix_shared", "tree vs mixture mask at shared positions")]
    s = ("Readout KL to the weighted mixture of the two-level paths: "
         + "; ".join(f"{w} {pct(by[c])} ({by[c].verdict})" for c, w in prim)
         + f"; children's own-parent attention share, nested vs shared {pct(by['own_nested'])} "
           f"({by['own_nested'].verdict}), flat vs shared {pct(by['own_flat'])} ({by['own_flat'].verdict}), "
           f"nested vs the shifted control {pct(by['own_nested_vs_shifted'])} "
           f"({by['own_nested_vs_shifted'].verdict}); readout KL nested vs shifted, mixture mask "
           f"{pct(by['sec_nested_vs_shifted_mix'])} ({by['sec_nested_vs_shifted_mix'].verdict}).")
    return s
