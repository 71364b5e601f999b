"""TEMPO sets along a reference text, each read by one look-ahead query: the instrument behind the
confirmatory RQ 3.1 (an outcome the pruning rule does not define: which member the human text, or
the gold answer, continues with).

For one prompt (P tokens) and its reference continuation R, one causal forward of ``prompt + R[:J]``
gives the next-token distribution at every position. At position j (context ``prompt + R[:j]``,
length c = P + j) the TEMPO set is every token with probability >= tau (at most W, at least the
top-1); a set is JUDGED when it has >= 2 members and holds R[j]. Each judged set is written as one
isolated set (members see the context and themselves) at the shared position c, slots c..c+W-1
(padding members beyond n are written but seen by nobody), and one look-ahead query, TEMPO's next
token after the top-1 member (its greedy next token), sits at position c + 1, slot c + W, and sees
the context and the n members. Its attention on each member, mean over layers and heads, is the
score TEMPO's retroactive pruning uses after one look-ahead step. Every judged set of a prompt is one
row of a vmapped program.

With ``lookahead=K`` (:func:`judge_sets_lookahead`), K look-ahead queries follow the set instead: query
i (i = 1..K) is the greedy next token after query i - 1 (query 1: after the top-1 member), at position
c + i, slot c + W + i - 1, and sees the context, the n members and queries 1..i (TEMPO's clean path
after the set, siblings isolated). Each query's attention on each member is kept per layer (mean over
heads), so any window of the first k queries and any weighting of layers is computed offline.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.config import ModelConfig
from tempo_jax.model import KVCache, TapsSpec, causal_mask, forward, init_cache

BUCKET = 32


@dataclasses.dataclass
class JudgedSets:
    """The judged sets of one prompt (S sets, W member slots; members beyond ``n`` are padding)."""

    position: np.ndarray  # [S] j: the reference position the set stands in for
    n: np.ndarray  # [S] members
    tokens: np.ndarray  # [S,W]
    prob: np.ndarray  # [S,W] selection probability (0 for padding)
    attn: np.ndarray  # [S,W] look-ahead attention, mean over layers and heads (0 for padding)
    is_ref: np.ndarray  # [S,W] bool: the member is the reference token R[j]
    probe_token: np.ndarray  # [S]
    steps: np.ndarray | None = None  # [S,K,L,W] with lookahead K: query i's attention per layer (mean over heads)


@functools.partial(jax.jit, static_argnames=("mcfg", "capacity"))
def all_logits(params, mcfg: ModelConfig, ids, capacity: int):
    """Causal forward of ``ids[T]`` (padded) -> (logits ``[T,V]``, cache of ``capacity`` slots)."""
    t = ids.shape[0]
    cache = init_cache(mcfg, 1, capacity, params["embed"].dtype)
    ar = jnp.arange(t)
    logits, cache, _ = forward(params, mcfg, ids[None], ar[None].astype(jnp.float32), ar[None],
                               causal_mask(1, t, capacity), cache,
                               key_pos=jnp.arange(capacity, dtype=jnp.float32)[None] if mcfg.has_window else None)
    return logits[0], cache


def _one_set(params, mcfg: ModelConfig, cache: KVCache, c, members, n):
    """One judged set at context length ``c``: members ``[W]`` (``n`` real) -> (attention of the
    look-ahead query on each member ``[W]``, mean over layers and heads; the query's token)."""
    W = members.shape[0]
    K = cache.capacity
    k = jnp.arange(K)
    ctx = k < c
    slots = c + jnp.arange(W)
    member_rows = ctx[None] | (k[None] == slots[:, None])  # [W,K]: context and itself
    key_pos = None
    if mcfg.has_window:
        key_pos = jnp.where(ctx, k, jnp.where(k < c + W, c, c + 1)).astype(jnp.float32)[None]
    pos = jnp.full((1, W), c, jnp.float32)
    logits, _, _ = forward(params, mcfg, members[None], pos, slots[None], member_rows[None], cache,
                           key_pos=key_pos)
    probe = jnp.argmax(logits[0, 0]).astype(jnp.int32)  # greedy next token after the top-1 member
    is_member = (k >= c) & (k < c + n)
    tokens = jnp.concatenate([members, probe[None]])
    rows = jnp.concatenate([member_rows, (ctx | is_member | (k == c + W))[None]])  # [W+1,K]
    all_pos = jnp.concatenate([pos, jnp.full((1, 1), c + 1.0, jnp.float32)], 1)
    all_slots = jnp.concatenate([slots, jnp.full((1,), c + W)])
    _, _, taps = forward(params, mcfg, tokens[None], all_pos, all_slots[None], rows[None], cache,
                         TapsSpec(attn=True), key_pos=key_pos)
    a = taps["attn"][:, 0, :, W, :]  # probe row [L,H,K]
    got = jax.lax.dynamic_slice_in_dim(a, c, W, axis=-1).mean((0, 1))  # [W]
    return jnp.where(jnp.arange(W) < n, got, 0.0), probe


@functools.partial(jax.jit, static_argnames=("mcfg",))
def judge_sets(params, mcfg: ModelConfig, cache: KVCache, cs, members, ns):
    """:func:`_one_set` of S sets in one program: ``cs[S]``, ``members[S,W]``, ``ns[S]``."""
    return jax.vmap(lambda c, m, n: _one_set(params, mcfg, cache, c, m, n))(cs, members, ns)


def _lookahead(params, mcfg: ModelConfig, cache: KVCache, c, members, n, K: int):
    """One judged set at context length ``c`` read by ``K`` greedy look-ahead queries -> (attention of
    query i on each member per layer ``[K,L,W]``, mean over heads, 0 for padding; query tokens ``[K]``)."""
    W = members.shape[0]
    k = jnp.arange(cache.capacity)
    ctx = k < c
    slots = c + jnp.arange(W)
    key_pos = None
    if mcfg.has_window:  # members at c, query i (slot c + W + i - 1) at c + i
        key_pos = jnp.where(ctx, k, jnp.where(k < c + W, c, k - W + 1)).astype(jnp.float32)[None]
    logits, cache, _ = forward(params, mcfg, members[None], jnp.full((1, W), c, jnp.float32), slots[None],
                               (ctx[None] | (k[None] == slots[:, None]))[None], cache, key_pos=key_pos)
    tok = jnp.argmax(logits[0, 0]).astype(jnp.int32)
    seen = ctx | ((k >= c) & (k < c + n))
    atts, toks = [], []
    for i in range(K):
        slot = c + W + i
        seen = seen | (k == slot)
        logits, cache, taps = forward(params, mcfg, tok[None, None], jnp.full((1, 1), c + 1.0 + i),
                                      jnp.full((1, 1), slot), seen[None, None], cache, TapsSpec(attn=True),
                                      key_pos=key_pos)
        got = jax.lax.dynamic_slice_in_dim(taps["attn"][:, 0, :, 0, :], c, W, axis=-1).mean(1)  # [L,W]
        atts.append(jnp.where(jnp.arange(W) < n, got, 0.0))
        toks.append(tok)
        tok = jnp.argmax(logits[0, 0]).astype(jnp.int32)
    return jnp.stack(atts), jnp.stack(toks)


@functools.partial(jax.jit, static_argnames=("mcfg", "K"))
def judge_sets_lookahead(params, mcfg: ModelConfig, cache: KVCache, cs, members, ns, K: int):
    """:func:`_lookahead` of S sets in one program -> (``[S,K,L,W]``, query tokens ``[S,K]``)."""
    return jax.vmap(lambda c, m, n: _lookahead(params, mcfg, cache, c, m, n, K))(cs, members, ns)


def measure(params, mcfg: ModelConfig, prompt_ids, ref_ids, tau: float, width: int, horizon: int,
            lookahead: int = 0) -> JudgedSets:
    """The judged sets of one prompt along its first ``horizon`` reference tokens; ``lookahead`` K > 0
    reads them with K look-ahead queries (``steps``; ``attn`` is then query 1's, mean over layers)."""
    P = len(prompt_ids)
    ref = list(ref_ids)[:horizon]
    ids = np.asarray(list(prompt_ids) + ref, np.int32)
    T = len(ids)
    tb = -(-T // BUCKET) * BUCKET
    logits, cache = all_logits(params, mcfg, jnp.asarray(np.pad(ids, (0, tb - T))), tb + width + max(1, lookahead))
    probs = np.asarray(jax.nn.softmax(logits[P - 1:T - 1], -1))  # [J,V]: next-token at c = P + j
    cs, members, ns, pr, ref_in = [], [], [], [], []
    for j, p in enumerate(probs):
        top = np.argsort(-p, kind="stable")[:width]
        n = max(1, int((p[top] >= tau).sum()))
        if n < 2 or ref[j] not in top[:n]:
            continue
        cs.append(P + j)
        members.append(top.astype(np.int32))
        ns.append(n)
        pr.append(np.where(np.arange(width) < n, p[top], 0.0))
        ref_in.append((top == ref[j]) & (np.arange(width) < n))
    empty = JudgedSets(*(np.zeros((0,) + s) for s in ((), (), (width,), (width,), (width,), (width,), ())))
    if not cs:
        if lookahead:
            empty.steps = np.zeros((0, lookahead, mcfg.num_layers, width))
        return empty
    args = (params, mcfg, cache, jnp.asarray(cs, jnp.int32), jnp.asarray(np.stack(members)), jnp.asarray(ns, jnp.int32))
    steps = None
    if lookahead:
        steps, qs = jax.device_get(judge_sets_lookahead(*args, K=lookahead))
        steps = np.asarray(steps, np.float64)
        attn, probe = steps[:, 0].mean(1), np.asarray(qs)[:, 0]
    else:
        attn, probe = jax.device_get(judge_sets(*args))
    return JudgedSets(position=np.asarray(cs) - P, n=np.asarray(ns), tokens=np.stack(members),
                      prob=np.stack(pr), attn=np.asarray(attn, np.float64), is_ref=np.stack(ref_in),
                      probe_token=np.asarray(probe), steps=steps)
