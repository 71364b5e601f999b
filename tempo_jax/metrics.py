"""Interpretability metrics on explicit slot maps (NumPy in, NumPy out).

Every metric here reads ONE step's attention ``attn[L,H,W,K]`` (the W query rows of step s over all
K cache slots, as streamed by ``generate(..., on_step=...)``) together with the slot maps of
``TempoState`` (see ``semantics.md``); nothing is inferred from positions or sequence indices.

Slot groups (for the key slots k seen by a query of step s):
  - ``visible(k)``: written (``slot_step[k] != -2``) and alive during step s's forward
    (``alive_fwd``: alive now, or pruned at this very step, see :func:`alive_during_forward`).
  - sink: slot 0. Reported separately; it belongs to NO group below.
  - context: visible, k != 0, and ``slot_step[k] < s`` (prompt slots have step -1): what every member
    of step s may see.
  - parallel: context slots whose step's set has more than one member (``set_n[slot_step[k]] > 1``).
  - non-parallel: context slots that are prompt slots, or belong to a single-member set.
  - own step: ``slot_step[k] == s`` (the query's own slot and its siblings); excluded from both
    groups and reported as "self" and "sibling leakage".
Query rows: ``query_slots`` lists the slot each valid row wrote (row i -> ``cache_len[s] + i`` for
``i < fed_n[s]``); rows past it are padding and are ignored.
Missing values (e.g. no parallel slot yet) are NaN.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from tempo_jax.slots import SINK, UNWRITTEN
from tempo_jax.slots import slot_groups as _slot_groups


def alive_during_forward(alive: np.ndarray, pruned_at: np.ndarray, s: int) -> np.ndarray:
    """``alive[K]`` after step s plus the slots pruned at step s (they were visible in its forward)."""
    return np.asarray(alive, bool) | (np.asarray(pruned_at) == s)


def query_slots_of(cache_len: np.ndarray, fed_n: np.ndarray, s: int) -> np.ndarray:
    """Slots written by the valid query rows of step s: ``cache_len[s] + arange(fed_n[s])``."""
    return int(cache_len[s]) + np.arange(int(fed_n[s]))


def slot_groups(slot_step, alive_fwd, set_n, s: int) -> dict[str, np.ndarray]:
    """Boolean masks ``[K]``: sink, context, parallel, nonparallel, own (step s), visible — NumPy
    view of the one definition, :func:`tempo_jax.slots.slot_groups`."""
    g = _slot_groups(slot_step, alive_fwd, np.asarray(set_n), s)
    return {name: np.asarray(getattr(g, name)) for name in
            ("sink", "context", "parallel", "nonparallel", "own", "visible")}


def _rows(attn, query_slots):
    attn = np.asarray(attn, np.float64)
    n = len(query_slots)
    return attn[:, :, :n, :]  # [L,H,n,K]


def parallel_attention(attn, slot_step, alive_fwd, set_n, s: int, query_slots) -> dict[str, np.ndarray | int]:
    """Attention to parallel vs non-parallel context tokens, per layer and head ([L,H] arrays).

    For a query q and group G (parallel or non-parallel context slots, sink excluded):
      ``total_G(q) = sum_{k in G} a[q,k]``;  ``per_token_G(q) = total_G(q) / |G|``.
    Reported values are means over the step's valid queries q:
      ``par_total``, ``par_per_token``, ``nonpar_total``, ``nonpar_per_token``,
      ``sink = mean_q a[q,0]``, ``self = mean_q a[q,q]``, ``sibling = mean_q sum_{siblings} a[q,k]``;
    plus the group sizes ``n_par``, ``n_nonpar`` (scalars). Empty group -> NaN.
    """
    g = slot_groups(slot_step, alive_fwd, set_n, s)
    a = _rows(attn, query_slots)
    L, H = a.shape[:2]
    out = {}
    if a.shape[2] == 0:
        nan = np.full((L, H), np.nan)
        return {k: nan.copy() for k in ("par_total", "par_per_token", "nonpar_total",
                                        "nonpar_per_token", "sink", "self", "sibling")} | {
            "n_par": 0, "n_nonpar": int(g["nonparallel"].sum())}
    for name, m in (("par", g["parallel"]), ("nonpar", g["nonparallel"])):
        n = int(m.sum())
        tot = a[..., m].sum(-1).mean(-1)  # [L,H]
        out[f"{name}_total"] = tot if n else np.full((L, H), np.nan)
        out[f"{name}_per_token"] = tot / n if n else np.full((L, H), np.nan)
        out[f"n_{name}"] = n
    out["sink"] = a[..., SINK].mean(-1)
    qs = np.asarray(query_slots)
    out["self"] = a[:, :, np.arange(len(qs)), qs].mean(-1)
    out["sibling"] = sibling_leakage(attn, slot_step, alive_fwd, s, query_slots).mean(-1)
    return out


def entropy_nats(p, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats of non-negative weights along ``axis`` (0 log 0 = 0), in float64."""
    p = np.asarray(p, np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis)


def attention_entropy(attn, slot_step, alive_fwd, query_slots) -> np.ndarray:
    """Entropy in nats of each valid query's attention over the visible slots: ``[L,H,n]``.

    ``H(q) = -sum_{k visible, a[q,k] > 0} a[q,k] log a[q,k]`` (rows sum to 1 over visible slots).
    """
    a = _rows(attn, query_slots)
    vis = (np.asarray(slot_step) != UNWRITTEN) & np.asarray(alive_fwd, bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        return entropy_nats(np.where(vis, a, 0.0))


def sibling_leakage(attn, slot_step, alive_fwd, s: int, query_slots) -> np.ndarray:
    """Mass each valid query puts on its same-step siblings: ``[L,H,n]``.

    ``leak(q) = sum_{k: slot_step[k] == s, k != q, visible(k)} a[q,k]`` (0 under ``isolated``).
    """
    g = slot_groups(slot_step, alive_fwd, np.zeros(0, int), s)
    a = _rows(attn, query_slots)
    qs = np.asarray(query_slots, int)
    m = np.broadcast_to(g["own"], (len(qs), len(g["own"]))).copy()  # [n,K]
    m[np.arange(len(qs)), qs] = False
    return (a * m).sum(-1)


def _js(p, q):
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = lambda x: np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0) / np.where(m > 0, m, 1.0)), 0.0).sum(-1)
        return 0.5 * kl(p) + 0.5 * kl(q)


def sibling_js(attn, slot_step, alive_fwd, s: int, query_slots) -> np.ndarray:
    """Jensen-Shannon divergence (nats, in [0, log 2]) between siblings' attention over the shared
    context (sink, prompt and earlier-step slots visible at step s), mean over sibling pairs: ``[L,H]``.

    Each row is renormalised over the context: ``p_i(k) = a[i,k] / sum_{k' in ctx} a[i,k']``;
    ``JS(p,q) = 1/2 KL(p||m) + 1/2 KL(q||m)``, ``m = (p+q)/2``. Fewer than 2 members -> NaN.
    """
    g = slot_groups(slot_step, alive_fwd, np.zeros(0, int), s)
    ctx = g["context"] | g["sink"]
    a = _rows(attn, query_slots)[..., ctx]
    L, H, n = a.shape[:3]
    if n < 2:
        return np.full((L, H), np.nan)
    p = a / np.maximum(a.sum(-1, keepdims=True), 1e-30)
    vals = [_js(p[:, :, i], p[:, :, j]) for i, j in itertools.combinations(range(n), 2)]
    return np.mean(vals, axis=0)


def semantic_diversity(embed, tokens) -> float:
    """Mean pairwise cosine distance ``1 - cos(e_i, e_j)`` of the members' input embeddings
    ``embed[tokens]``; NaN for fewer than 2 members."""
    tokens = np.asarray(tokens).ravel()
    if len(tokens) < 2:
        return float("nan")
    e = np.asarray(embed[np.asarray(tokens)], np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-30)
    c = e @ e.T
    iu = np.triu_indices(len(tokens), 1)
    return float(np.mean(1.0 - c[iu]))


def tree_stats(set_n) -> dict[str, float]:
    """Token-tree statistics of a run from ``set_n[S]`` (e.g. ``trace.arrays["set_n"]``):
    ``branching = mean_s set_n[s]``, ``parallel_fraction = mean_s [set_n[s] > 1]``, ``steps``,
    ``max_width``."""
    n = np.asarray(set_n)
    if n.size == 0:
        return {"branching": float("nan"), "parallel_fraction": float("nan"), "steps": 0, "max_width": 0}
    return {"branching": float(n.mean()), "parallel_fraction": float((n > 1).mean()),
            "steps": int(n.size), "max_width": int(n.max())}


def convergence_depth(set_n) -> np.ndarray:
    """Per parallel step t: ``depth(t) = u - t`` for the first later step u with a single member
    (the paths collapse to one token); NaN when no later step is single. Non-parallel steps: NaN.
    Returns ``[S]`` float."""
    n = np.asarray(set_n)
    out = np.full(n.shape, np.nan)
    for t in np.flatnonzero(n > 1):
        later = np.flatnonzero(n[t + 1:] == 1)
        if later.size:
            out[t] = later[0] + 1
    return out


def pruning_survival(trace_arrays) -> dict[str, np.ndarray]:
    """Survival of parallel members by member rank, from a trace's arrays:
    ``survived[i] = #(parallel members of rank i never pruned) / #(parallel members of rank i)``,
    ``count[i]`` the denominator (rank 0 = most probable member)."""
    a = trace_arrays
    width = a["tokens"].shape[1] if a["tokens"].ndim == 2 else 0
    alive = np.zeros(width)
    count = np.zeros(width)
    for s in range(len(a["set_n"])):
        n = int(a["set_n"][s])
        if n < 2:
            continue
        for i in range(n):
            slot = int(a["slots"][s, i])
            count[i] += 1
            alive[i] += slot >= 0 and a["pruned_at"][slot] < 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"survived": alive / count, "count": count}


def step_metrics(attn, slot_step, alive, pruned_at, set_n, cache_len, fed_n, tokens, s: int,
                 embed=None) -> dict[str, np.ndarray | int | float]:
    """All per-step metrics from one ``on_step`` call (NumPy versions of the state's fields).

    Returns ``[L,H]`` arrays (means over the step's valid queries) for parallel/non-parallel
    attention (see :func:`parallel_attention`), ``entropy``, ``leakage``, ``js``; scalars ``set_n``,
    ``n_par``, ``n_nonpar``, ``diversity`` (when ``embed`` is given).
    """
    alive_fwd = alive_during_forward(alive, pruned_at, s)
    qs = query_slots_of(cache_len, fed_n, s)
    out: dict[str, Any] = dict(parallel_attention(attn, slot_step, alive_fwd, set_n, s, qs))
    ent = attention_entropy(attn, slot_step, alive_fwd, qs)
    out["entropy"] = ent.mean(-1) if ent.shape[-1] else np.full(ent.shape[:2], np.nan)
    out["leakage"] = out.pop("sibling")
    out["js"] = sibling_js(attn, slot_step, alive_fwd, s, qs)
    n = int(np.asarray(set_n)[s])
    out["set_n"] = n
    if embed is not None:
        out["diversity"] = semantic_diversity(embed, np.asarray(tokens)[s, :n])
    return out
