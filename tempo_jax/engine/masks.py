"""Attention masks for one TEMPO step, built from slot maps (semantics.md, "Mask")."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from tempo_jax.engine.siblings import SiblingRule


def step_mask(alive: jax.Array, slot_step: jax.Array, step: jax.Array, base: jax.Array, n: jax.Array,
              width: int, siblings: jax.Array, rules: Sequence[SiblingRule] | None = None) -> jax.Array:
    """Mask ``[L,H,W,K]`` for the W queries of step ``step`` written at slots ``base..base+W-1``.

    alive[K] bool (before this step's writes); slot_step[K] int (-1 prompt); n members are real
    (queries i >= n are padding); siblings[L,H] int rule codes (:mod:`tempo_jax.engine.siblings`);
    ``rules`` (static): the rules in code order (default: every registered rule).
    Query i sees slot k iff (alive(k) and k is from an earlier step or the prompt) or k is itself, or
    k is a sibling (member j of this step, j < n, j != i) and the rule coded at [l,h] says i sees j.
    """
    rules = SiblingRule.members() if rules is None else tuple(rules)
    k = jnp.arange(alive.shape[0])
    i = jnp.arange(width)[:, None]  # [W,1]
    earlier = alive & (slot_step < step)  # [K]
    j = k[None, :] - base  # [1,K] member index of slot k within this step
    own = j == i  # [W,K]
    sib = (j >= 0) & (j < n) & ~own
    vis = earlier[None, :] | own  # [W,K]
    code = siblings[..., None, None]  # [L,H,1,1]
    seen = jnp.zeros(code.shape[:2] + vis.shape, bool)
    for c, rule in enumerate(rules):
        seen = seen | ((code == c) & (sib & rule.sees(i, j)))
    return vis | seen


def adaptive_siblings(siblings: jax.Array, set_entropy: jax.Array, set_n: jax.Array,
                      isolate_above: jax.Array, isolate_size_above: jax.Array) -> jax.Array:
    """The step's sibling codes ``[L,H]``: all 0 (isolated) when the entropy of the distribution the
    set was chosen from is above ``isolate_above`` (nats) or the set has more than
    ``isolate_size_above`` members, else the table ``siblings[L,H]`` (adaptive isolation, in-graph).
    With +inf / a huge size (the defaults) the table is returned unchanged."""
    iso = (set_entropy > isolate_above) | (set_n > isolate_size_above)
    return jnp.where(iso, jnp.zeros_like(siblings), siblings)
