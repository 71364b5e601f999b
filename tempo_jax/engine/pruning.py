"""Retroactive pruning (semantics.md, "Retroactive pruning"), in-graph on slot maps.

score(j) = mean over chosen layers (weighted), chosen heads and every query of steps
t+1..t+window of the attention probability on slot j (t = the step of slot j).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tempo_jax.engine.choice import Choice


def per_query_received(attn: jax.Array, layer_w: jax.Array, head_w: jax.Array) -> jax.Array:
    """attn[L,H,W,K] -> weighted mean over layers and heads ``[W,K]`` (weights sum to 1)."""
    return jnp.einsum("lhwk,l,h->wk", attn, layer_w, head_w)


def accumulate(acc, cnt, attn, layer_w, head_w, n_queries, slot_step, step, window: int):
    """Add this step's attention to the running sums of slots whose look-ahead window covers ``step``."""
    width = attn.shape[2]
    q_ok = (jnp.arange(width) < n_queries)[:, None]
    received = jnp.where(q_ok, per_query_received(attn, layer_w, head_w), 0.0).sum(0)  # [K]
    age = step - slot_step
    covered = (slot_step >= 0) & (age >= 1) & (age <= window)
    return acc + jnp.where(covered, received, 0.0), cnt + jnp.where(covered, n_queries, 0)


class PruneTiming(Choice):
    """When a set's members are judged."""

    what = "prune timing"

    def due(self, age: jax.Array, window: int) -> jax.Array:
        """Whether a set written ``age`` steps ago is judged now."""
        raise NotImplementedError


class Window(PruneTiming, name="window"):
    """Once, when the window closes (age == window)."""

    def due(self, age, window):
        return age == window


class Eager(PruneTiming, name="eager"):
    """Every step while the window is open (1 <= age <= window)."""

    def due(self, age, window):
        return (age >= 1) & (age <= window)


PruneTiming.seal()


class PruneRule(Choice):
    """Which judged members are pruned, from their scores."""

    what = "prune rule"

    def prune(self, score: jax.Array, set_sum: jax.Array, set_cnt: jax.Array, rho, theta, k, key) -> jax.Array:
        """``[K]`` bool: prune the slot (before the per-set survivor and due masks); ``set_sum`` and
        ``set_cnt`` ``[K]``: the sum and count of the judged scores of each slot's set."""
        raise NotImplementedError


class Relative(PruneRule, name="relative"):
    """Score below rho times the set's mean score."""

    def prune(self, score, set_sum, set_cnt, rho, theta, k, key):
        return score < rho * set_sum / jnp.maximum(set_cnt, 1.0)


class Absolute(PruneRule, name="absolute"):
    """Score below theta."""

    def prune(self, score, set_sum, set_cnt, rho, theta, k, key):
        return score < theta


class Sigmoid(PruneRule, name="sigmoid"):
    """Pruned with probability sigmoid(k (theta - score))."""

    def prune(self, score, set_sum, set_cnt, rho, theta, k, key):
        return jax.random.uniform(key, score.shape) < jax.nn.sigmoid(k * (theta - score))


PruneRule.seal()


def decide(score, alive, slot_step, set_n, step, window: int, timing, rule, rho, theta, k, key):
    """Which slots to prune now -> (prune[K] bool, scored[K] bool). ``timing`` and ``rule``: names
    or members of :class:`PruneTiming` and :class:`PruneRule`.

    Sets with one member are never pruned; within a set the best-scoring alive member survives.
    """
    n_steps = set_n.shape[0]
    age = step - slot_step
    due = (slot_step >= 0) & PruneTiming.check(timing).due(age, window)
    due = due & alive & (set_n[jnp.clip(slot_step, 0, n_steps - 1)] > 1)
    seg = jnp.where(due, slot_step, n_steps)
    set_sum = jax.ops.segment_sum(jnp.where(due, score, 0.0), seg, n_steps + 1)
    set_cnt = jax.ops.segment_sum(due.astype(score.dtype), seg, n_steps + 1)
    set_max = jax.ops.segment_max(jnp.where(due, score, -jnp.inf), seg, n_steps + 1)
    prune = PruneRule.check(rule).prune(score, set_sum[seg], set_cnt[seg], rho, theta, k, key)
    best = score >= set_max[seg]
    return prune & due & ~best, due
