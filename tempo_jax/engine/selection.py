"""Selection of a candidate set from a distribution, and combining members into the next one."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def select_threshold(dist: jax.Array, tau: jax.Array, width: int):
    """Tokens with ``dist >= tau`` (inclusive), most probable first, at most ``width``; argmax if none.

    dist[V] -> tokens[W] int32, probs[W] (full-vocabulary values), valid[W] bool, n int.
    """
    probs, tokens = jax.lax.top_k(dist, width)
    valid = probs >= tau
    valid = valid.at[0].set(True)  # argmax fallback: member 0 always exists
    return tokens.astype(jnp.int32), probs, valid, valid.sum()


def select_sample(logits: jax.Array, key, temperature, top_k, top_p, width: int):
    """One token sampled from ``softmax(logits / temperature)`` restricted by top-k and top-p.

    top_k 0 means off; top_p keeps the smallest most-probable prefix whose mass reaches top_p.
    Returns the same tuple as :func:`select_threshold` with member 0 the sample.
    """
    z = logits / temperature
    order = jnp.argsort(-z)
    zs = z[order]
    rank = jnp.arange(z.shape[0])
    keep = jnp.where(top_k > 0, rank < top_k, True)
    ps = jax.nn.softmax(jnp.where(keep, zs, -jnp.inf))
    before = jnp.cumsum(ps) - ps
    keep = keep & (before < top_p)
    choice = jax.random.categorical(key, jnp.where(keep, zs, -jnp.inf))
    return _single(order[choice], jax.nn.softmax(logits), width)


def select_greedy(dist: jax.Array, width: int):
    """The argmax alone, in the tuple of :func:`select_threshold`."""
    return _single(jnp.argmax(dist), dist, width)


def _single(token, dist, width: int):
    """A one-member set ``token`` with its probability under ``dist``, padded to ``width``."""
    token = token.astype(jnp.int32)
    tokens = jnp.zeros(width, jnp.int32).at[0].set(token)
    probs = jnp.zeros(width, dist.dtype).at[0].set(dist[token])
    return tokens, probs, jnp.arange(width) == 0, jnp.int32(1)


def combine(rule: str, logits: jax.Array, probs: jax.Array, valid: jax.Array) -> jax.Array:
    """Next distribution ``[V]`` from members' logits ``[W,V]`` (semantics.md, "Combining")."""
    if rule == "top":
        return jax.nn.softmax(logits[0])
    if rule == "mean_logits":
        w = valid / valid.sum()
        return jax.nn.softmax((w[:, None] * logits).sum(0))
    if rule == "mixture":
        w = jnp.where(valid, probs, 0.0)
    elif rule == "uniform":
        w = valid.astype(logits.dtype)
    else:
        raise ValueError(f"unknown combining rule {rule!r}")
    w = w / w.sum()
    return (w[:, None] * jax.nn.softmax(logits, axis=-1)).sum(0)


def entropy(dist: jax.Array, axis: int = -1) -> jax.Array:
    """Shannon entropy in nats along ``axis`` (0 log 0 = 0)."""
    return -jnp.sum(jnp.where(dist > 0, dist * jnp.log(jnp.where(dist > 0, dist, 1.0)), 0.0), axis)
