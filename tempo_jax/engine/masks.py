"""Attention masks for one TEMPO step, built from slot maps (semantics.md, "Mask")."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def step_mask(alive: jax.Array, slot_step: jax.Array, step: jax.Array, base: jax.Array, n: jax.Array,
              width: int, siblings: jax.Array) -> jax.Array:
    """Mask ``[L,H,W,K]`` for the W queries of step ``step`` written at slots ``base..base+W-1``.

    alive[K] bool (before this step's writes); slot_step[K] int (-1 prompt); n members are real
    (queries i >= n are padding); siblings[L,H] int codes 0 isolated / 1 visible / 2 full.
    Query i sees slot k iff (alive(k) and k is from an earlier step or the prompt) or k is itself, or
    k is a sibling (member j of this step, j < n) and the rule allows: visible needs j < i, full any j.
    """
    k = jnp.arange(alive.shape[0])
    i = jnp.arange(width)
    earlier = alive & (slot_step < step)  # [K]
    j = k[None, :] - base  # member index of slot k within this step
    own = j == i[:, None]  # [W,K]
    sib = (j >= 0) & (j < n) & ~own
    lower = sib & (j < i[:, None])
    higher = sib & (j > i[:, None])
    vis = earlier[None, :] | own  # [W,K]
    rule = siblings[..., None, None]  # [L,H,1,1]
    return vis | ((rule == 1) & lower) | ((rule == 2) & sib) | ((rule == 3) & higher)


def adaptive_siblings(siblings: jax.Array, set_entropy: jax.Array, set_n: jax.Array,
                      isolate_above: jax.Array, isolate_size_above: jax.Array) -> jax.Array:
    """The step's sibling codes ``[L,H]``: all 0 (isolated) when the entropy of the distribution the
    set was chosen from is above ``isolate_above`` (nats) or the set has more than
    ``isolate_size_above`` members, else the table ``siblings[L,H]`` (adaptive isolation, in-graph).
    With +inf / a huge size (the defaults) the table is returned unchanged."""
    iso = (set_entropy > isolate_above) | (set_n > isolate_size_above)
    return jnp.where(iso, jnp.zeros_like(siblings), siblings)
