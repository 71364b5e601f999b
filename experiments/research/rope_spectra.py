"""Pre-RoPE query/key spectra of the forced-set probe (RQ 1.1b): what the RoPE rotation alone predicts.

In rotate-half RoPE, dimension pair f = (d, d + D/2) of a head is one complex number
``z = x_d + i x_{d+D/2}`` that RoPE rotates by ``theta_f * position`` (``theta = inv_freq``). The
logit of a query at position p_q on a key at p_k is therefore
``s = sum_f Re[z_q,f conj(z_k,f) e^{i theta_f (p_q - p_k)}] / sqrt(D)``: moving a key from the shared
position P to P + j changes it by ``Re[z_q conj(z_k) e^{i theta (p_q - P)} (e^{-i theta j} - 1)]``
per pair. :func:`probe_qk` returns the probe's pre-RoPE queries and the members' pre-RoPE keys in the
shared world of :mod:`experiments.research.position_probe` (same set, mask and probe), so these
predictions can be compared with the measured per-head attention change.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.research.position_probe import pad, prompt_state
from tempo_jax.config import ModelConfig
from tempo_jax.engine.masks import step_mask
from tempo_jax.model import KVCache, TapsSpec, forward
from tempo_jax.slots import PROMPT, UNWRITTEN


@functools.partial(jax.jit, static_argnames=("mcfg", "n"))
def _qk(params, mcfg: ModelConfig, cache: KVCache, plen, members, probe_token, probe_pos, n: int):
    K = cache.capacity
    k = jnp.arange(K)
    alive = k < plen
    slot_step = jnp.where(alive, PROMPT, UNWRITTEN)
    mask = step_mask(alive, slot_step, 0, plen, n, n + 1, jnp.zeros((1, 1), jnp.int32))[0, 0]  # [T,K]
    mask = mask.at[n].set(mask[n] | ((k >= plen) & (k < plen + n)))  # the probe sees the set
    tokens = jnp.concatenate([members, probe_token[None]])[None]
    pos = jnp.concatenate([jnp.full((n,), plen, jnp.float32), probe_pos[None]])[None]
    slots = (plen + jnp.arange(n + 1))[None]
    _, cache, taps = forward(params, mcfg, tokens, pos, slots, mask[None], cache,
                             TapsSpec.of("attn", "q_pre", "k_pre"))
    q = taps["q_pre"][:, 0, n]  # [L,H,D] the probe's query before RoPE
    kpre = taps["k_pre"][:, 0, :n]  # [L,n,G,D] the members' keys before RoPE
    attn = taps["attn"][:, 0, :, n]  # [L,H,K]
    member_attn = jax.vmap(lambda a: jax.lax.dynamic_slice_in_dim(a, plen, n, axis=-1))(attn)
    return q, kpre, member_attn


def probe_qk(params, mcfg: ModelConfig, ids, n: int, probe_token: int, gap: int):
    """The shared world (members 0..n-1 = the prompt's top-n tokens, all at P; the probe token at
    P + gap). Returns ``zq[L,H,F]`` (probe query pairs, complex), ``zk[L,H,n,F]`` (member key pairs,
    complex, each query head paired with its key/value head) and ``attn[L,H,n]`` (the probe's
    attention on each member); F = D/2."""
    prompt, P = pad(ids)
    dist, cache = prompt_state(params, mcfg, jnp.asarray(prompt), jnp.int32(P), len(prompt) + n + 1)
    top = np.argsort(-np.asarray(dist), kind="stable")[:n].astype(np.int32)
    q, k, a = jax.device_get(_qk(params, mcfg, cache, jnp.int32(P), jnp.asarray(top),
                                 jnp.int32(probe_token), jnp.float32(P + gap), n=n))
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    F = q.shape[-1] // 2
    zq = q[..., :F] + 1j * q[..., F:]
    zk = k[..., :F] + 1j * k[..., F:]  # [L,n,G,F]
    zk = np.repeat(np.moveaxis(zk, 1, 2), mcfg.group_size, axis=1)  # [L,H,n,F]
    return zq, zk, np.asarray(a, np.float64)


def logit(zq, zk, theta, dist) -> np.ndarray:
    """RoPE attention logit ``sum_f Re[zq conj(zk) e^{i theta dist}] / sqrt(D)`` for keys ``zk[...,n,F]``
    at relative distance ``dist[n]`` from the query ``zq[...,F]``."""
    ph = np.exp(1j * np.asarray(theta)[None, :] * np.asarray(dist, np.float64)[:, None])  # [n,F]
    d = 2 * zq.shape[-1]
    return np.real(zq[..., None, :] * np.conj(zk) * ph).sum(-1) / np.sqrt(d)
