"""The forced-set probe: the instrument behind RQ 1.1 / 1.2 (and later §1 experiments).

For one prompt (P tokens) and one set size n, the prompt's top-n next tokens are written as ONE
isolated candidate set (each member sees the prompt and itself: the engine's step mask) at positions
``P + i * delta`` for every delta of a batch of D "worlds". Then, in the same forward, two probe
queries carrying the SAME token at the SAME position in every world:
  - the probe (query n) sees the prompt, all members and itself;
  - the ablated probe (query n+1) sees the prompt and itself only (member -> probe edges removed).
Reading: the probe's attention on each member slot ``[L,D,H,n]`` (per token and summed over the
set), its attention on the sink (slot 0), and KL(probe || ablated probe) of the next-token
distributions (what the members causally change in the probe's prediction).
Everything except the members' positions is identical across worlds: same tokens, slots, probe token,
probe position, mask.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.config import ModelConfig
from tempo_jax.engine.core import prefill
from tempo_jax.engine.masks import step_mask
from tempo_jax.model import KVCache, TapsSpec, forward
from tempo_jax.slots import PROMPT, UNWRITTEN

BUCKET = 32


def pad(ids) -> tuple[np.ndarray, int]:
    """Prompt ids -> (ids padded to a multiple of BUCKET, P)."""
    p = len(ids)
    pb = -(-p // BUCKET) * BUCKET
    return np.pad(np.asarray(ids, np.int32), (0, pb - p)), p


@functools.partial(jax.jit, static_argnames=("mcfg", "capacity"))
def prompt_state(params, mcfg: ModelConfig, prompt, plen, capacity: int):
    """Prefill (the engine's) -> (next-token distribution [V], cache with B = 1)."""
    last, cache = prefill(params, mcfg, prompt, plen, capacity)
    return jax.nn.softmax(last), cache


@functools.partial(jax.jit, static_argnames=("mcfg", "n"))
def probe_forward(params, mcfg: ModelConfig, cache: KVCache, plen, members, probe_token,
                  member_pos, probe_pos, n: int):
    """One forward for D worlds: members[n] at ``member_pos[D,n]``, the probe token at
    ``probe_pos[D]`` twice (probe, ablated probe). Returns a dict of
    ``member_attn[L,D,H,n]``, ``sink[L,D,H]``, ``kl[D]`` (nats), ``member_top[D]`` (argmax next token of member 0)."""
    d = member_pos.shape[0]
    K = cache.capacity
    t = n + 2
    k = jnp.arange(K)
    alive = k < plen
    slot_step = jnp.where(alive, PROMPT, UNWRITTEN)
    mask = step_mask(alive, slot_step, 0, plen, n, t, jnp.zeros((1, 1), jnp.int32))[0, 0]  # [T,K]
    is_member = (k >= plen) & (k < plen + n)
    mask = mask.at[n].set(mask[n] | is_member)  # the probe sees the whole set
    tokens = jnp.concatenate([members, jnp.stack([probe_token, probe_token])])
    pos = jnp.concatenate([member_pos, jnp.stack([probe_pos, probe_pos], 1)], axis=1)
    slots = plen + jnp.arange(t)
    key_pos = None
    if mcfg.has_window:  # sliding-window layers need every slot's position: prompt slot i at i
        base = jnp.where(alive, k, 0).astype(jnp.float32)
        key_pos = jax.vmap(lambda p: jax.lax.dynamic_update_slice(base, p, (plen,)))(pos)  # [D,K]
    big = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (x.shape[0], d) + x.shape[2:]), cache)
    logits, _, taps = forward(params, mcfg, jnp.broadcast_to(tokens, (d, t)), pos,
                              jnp.broadcast_to(slots, (d, t)), jnp.broadcast_to(mask, (d, t, K)),
                              big, TapsSpec(attn=True), key_pos=key_pos)
    a = taps["attn"][:, :, :, n, :]  # probe row [L,D,H,K]
    member_attn = jax.vmap(lambda row: jax.lax.dynamic_slice_in_dim(row, plen, n, axis=-1),
                           in_axes=1, out_axes=1)(a)
    lp = jax.nn.log_softmax(logits[:, n])
    lq = jax.nn.log_softmax(logits[:, n + 1])
    kl = jnp.sum(jnp.exp(lp) * (lp - lq), -1)
    return {"member_attn": member_attn, "sink": a[..., 0], "kl": kl,
            "member_top": jnp.argmax(logits[:, 0], -1)}


def _worlds(P: int, n: int, deltas: np.ndarray, probe_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """member positions ``[D,n]`` (every delta, then the natural world) and probe positions ``[D]``."""
    i = np.arange(n, dtype=np.float32)
    member_pos = np.concatenate([P + deltas[:, None] * i[None], np.full((1, n), float(P))])
    probe_pos = np.concatenate([np.full(len(deltas), float(P + probe_gap)), [P + 1.0]])
    return member_pos.astype(np.float32), probe_pos.astype(np.float32)


def _collect(out: dict, r: dict) -> None:
    ma = np.moveaxis(np.asarray(r["member_attn"], np.float64), 0, 2)  # [D,H,L,n]
    ma = np.swapaxes(ma, 1, 2)  # [D,L,H,n]
    out["per_set"].append(ma.sum(-1))
    out["per_token"].append(ma.mean(-1))
    out["sink"].append(np.swapaxes(np.asarray(r["sink"], np.float64), 0, 1))  # [D,L,H]
    out["kl"].append(np.asarray(r["kl"], np.float64))


def measure_prompt(params, mcfg: ModelConfig, ids, ns, deltas, probe_gap: int) -> dict:
    """All conditions for one prompt.

    Worlds per n: every delta with the probe at ``P + probe_gap`` (fixed across n and delta;
    ``probe_gap`` must exceed ``(max n - 1) * max delta`` so the probe comes after every member),
    plus one "natural" world: delta 0 with the probe at ``P + 1`` (where TEMPO's next step sits).
    The probe token is the greedy next token after the prompt's top-1 token (the same in every
    world). Returns arrays indexed ``[n, world]``: ``per_token[.,.,L,H]``, ``per_set[.,.,L,H]``,
    ``sink[.,.,L,H]``, ``kl[.,.]``; plus ``probe_token``, ``top_mass[n]`` (probability of the set).
    """
    prompt, P = pad(ids)
    n_max = max(ns)
    if probe_gap <= (n_max - 1) * max(deltas):
        raise ValueError(f"probe_gap {probe_gap} must exceed (max n - 1) * max delta")
    dist, cache = prompt_state(params, mcfg, jnp.asarray(prompt), jnp.int32(P), len(prompt) + n_max + 2)
    dist = np.asarray(dist)
    top = np.argsort(-dist, kind="stable")[:n_max].astype(np.int32)
    first = probe_forward(params, mcfg, cache, jnp.int32(P), jnp.asarray(top[:1]), jnp.int32(top[0]),
                          jnp.full((1, 1), float(P)), jnp.full((1,), P + 1.0), n=1)
    probe_tok = int(first["member_top"][0])
    out = {k: [] for k in ("per_token", "per_set", "sink", "kl")}
    deltas = np.asarray(deltas, np.float32)
    for n in ns:
        member_pos, probe_pos = _worlds(P, n, deltas, probe_gap)
        r = jax.device_get(probe_forward(params, mcfg, cache, jnp.int32(P), jnp.asarray(top[:n]),
                                         jnp.int32(probe_tok), jnp.asarray(member_pos),
                                         jnp.asarray(probe_pos), n=n))
        _collect(out, r)
    res = {k: np.stack(v) for k, v in out.items()}
    res["probe_token"] = probe_tok
    res["top_mass"] = np.asarray([dist[top[:n]].sum() for n in ns])
    return res


@functools.partial(jax.jit, static_argnames=("mcfg", "capacity"))
def prompt_states(params, mcfg: ModelConfig, prompts, plens, capacity: int):
    """:func:`prompt_state` of B prompts ``[B,Pb]`` (lengths ``plens[B]``) in one program ->
    (``dist[B,V]``, cache with a leading prompt axis)."""
    return jax.vmap(lambda p, n: prompt_state(params, mcfg, p, n, capacity))(prompts, plens)


@functools.partial(jax.jit, static_argnames=("mcfg", "n"))
def probe_forwards(params, mcfg: ModelConfig, caches: KVCache, plens, members, probe_tokens,
                   member_pos, probe_pos, n: int):
    """:func:`probe_forward` of B prompts (every argument with a leading prompt axis) in one program."""
    one = lambda c, p, m, t, mp, pp: probe_forward(params, mcfg, c, p, m, t, mp, pp, n=n)
    return jax.vmap(one)(caches, plens, members, probe_tokens, member_pos, probe_pos)


def measure_prompts(params, mcfg: ModelConfig, ids_list, ns, deltas, probe_gap: int) -> list[dict]:
    """:func:`measure_prompt` of several prompts at once: padded to one bucket and run as one
    compiled program per step (prefill, probe token, each set size) with the prompts as a batch
    axis. The same numbers as one prompt at a time, up to float32 summation order."""
    n_max = max(ns)
    if probe_gap <= (n_max - 1) * max(deltas):
        raise ValueError(f"probe_gap {probe_gap} must exceed (max n - 1) * max delta")
    lens = [len(ids) for ids in ids_list]
    pb = -(-max(lens) // BUCKET) * BUCKET
    prompts = np.zeros((len(ids_list), pb), np.int32)
    for b, ids in enumerate(ids_list):
        prompts[b, :len(ids)] = ids
    plens = jnp.asarray(lens, jnp.int32)
    dist, caches = prompt_states(params, mcfg, jnp.asarray(prompts), plens, pb + n_max + 2)
    dist = np.asarray(dist)
    top = np.argsort(-dist, axis=-1, kind="stable")[:, :n_max].astype(np.int32)  # [B,n_max]
    P = np.asarray(lens, np.float32)
    first = probe_forwards(params, mcfg, caches, plens, jnp.asarray(top[:, :1]), jnp.asarray(top[:, 0]),
                           jnp.asarray(P[:, None, None]), jnp.asarray(P[:, None] + 1.0), n=1)
    probe_tok = np.asarray(first["member_top"][:, 0]).astype(np.int32)
    deltas = np.asarray(deltas, np.float32)
    outs = [{k: [] for k in ("per_token", "per_set", "sink", "kl")} for _ in ids_list]
    for n in ns:
        worlds = [_worlds(p, n, deltas, probe_gap) for p in lens]
        r = jax.device_get(probe_forwards(
            params, mcfg, caches, plens, jnp.asarray(top[:, :n]), jnp.asarray(probe_tok),
            jnp.asarray(np.stack([w[0] for w in worlds])), jnp.asarray(np.stack([w[1] for w in worlds])), n=n))
        for b, out in enumerate(outs):
            _collect(out, {k: v[b] for k, v in r.items()})
    res = []
    for b, out in enumerate(outs):
        one = {k: np.stack(v) for k, v in out.items()}
        one["probe_token"] = int(probe_tok[b])
        one["top_mass"] = np.asarray([dist[b, top[b, :n]].sum() for n in ns])
        res.append(one)
    return res
