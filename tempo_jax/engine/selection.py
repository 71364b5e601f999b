"""Selection of a candidate set from a distribution, and combining members into the next one.

A selection method is a small frozen (hashable) class, static under ``jit``: ``select`` turns the
step's distribution into a :class:`CandidateSet`, ``count`` says how many members it will have
(which lets the host driver feed fewer queries). A method (engine/methods.py) names the selection
it uses (docs/extending.md).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from tempo_jax.pytree import Struct
from tempo_jax.engine.choice import Choice

if TYPE_CHECKING:
    from tempo_jax.engine.inputs import EngineInputs


class CandidateSet(Struct):
    """C_s padded to W: tokens[W] int32 (most probable first), probs[W] (full-vocabulary values),
    valid[W] bool (member 0 always valid), n = number of members."""

    tokens: jax.Array
    probs: jax.Array
    valid: jax.Array
    n: jax.Array


@dataclasses.dataclass(frozen=True)
class Threshold:
    """TEMPO: every token with ``d_s >= tau_s`` (inclusive), sorted, capped at W, argmax if none."""

    width: int

    def select(self, dist, tau, inputs: "EngineInputs", key) -> CandidateSet:
        return CandidateSet(*select_threshold(dist, tau, self.width))

    def count(self, dist, tau) -> jax.Array:
        return jnp.clip(jnp.sum(dist >= tau), 1, self.width).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Greedy:
    """The argmax alone."""

    width: int

    def select(self, dist, tau, inputs: "EngineInputs", key) -> CandidateSet:
        return CandidateSet(*select_greedy(dist, self.width))

    def count(self, dist, tau) -> jax.Array:
        return jnp.int32(1)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One token sampled with the inputs' temperature, top-k and top-p (explicit PRNG key)."""

    width: int

    def select(self, dist, tau, inputs: "EngineInputs", key) -> CandidateSet:
        return CandidateSet(*select_sample(jnp.log(dist), key, inputs.temperature, inputs.top_k,
                                           inputs.top_p, self.width))

    def count(self, dist, tau) -> jax.Array:
        return jnp.int32(1)



def select_threshold(dist: jax.Array, tau: jax.Array, width: int):
    """Tokens with ``dist >= tau`` (inclusive), most probable first, at most ``width``; argmax if none.

    dist[V] -> tokens[W] int32, probs[W] (full-vocabulary values), valid[W] bool, n int.
    """
    probs, tokens = top_k(dist, width)
    valid = probs >= tau
    valid = valid.at[0].set(True)  # argmax fallback: member 0 always exists
    return tokens.astype(jnp.int32), probs, valid, valid.sum()


def top_k(x: jax.Array, k: int):
    """``jax.lax.top_k`` kept as one op: x[..., V] -> (values[..., k], indices[..., k]), ties to
    the lower index.

    The barrier stops XLA from fusing slices of the result into later ops; without it the CPU
    compiler can no longer match its fast TopK kernel and sorts the whole vocabulary instead
    (about 9 ms a step for V = 49152 on 2 cores; ``benchmarks/tempo.py``).
    """
    return jax.lax.optimization_barrier(jax.lax.top_k(x, k))


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


class CombineRule(Choice):
    """How the next distribution is made from the members' logits (semantics.md, "Combining")."""

    what = "combining rule"

    def combine(self, logits: jax.Array, probs: jax.Array, valid: jax.Array) -> jax.Array:
        """Next distribution ``[V]`` from members' logits ``[W,V]``, their probabilities ``[W]`` and
        which are real members ``valid[W]``."""
        raise NotImplementedError


def _weighted_mixture(logits: jax.Array, w: jax.Array) -> jax.Array:
    w = w / w.sum()
    return (w[:, None] * jax.nn.softmax(logits, axis=-1)).sum(0)


class Mixture(CombineRule, name="mixture"):
    """Members' next-token distributions weighted by the members' probabilities."""

    def combine(self, logits, probs, valid):
        return _weighted_mixture(logits, jnp.where(valid, probs, 0.0))


class Uniform(CombineRule, name="uniform"):
    """Members' next-token distributions, equally weighted."""

    def combine(self, logits, probs, valid):
        return _weighted_mixture(logits, valid.astype(logits.dtype))


class MeanLogits(CombineRule, name="mean_logits"):
    """Softmax of the members' mean logits."""

    def combine(self, logits, probs, valid):
        w = valid / valid.sum()
        return jax.nn.softmax((w[:, None] * logits).sum(0))


class Top(CombineRule, name="top"):
    """Member 0's next-token distribution alone."""

    def combine(self, logits, probs, valid):
        return jax.nn.softmax(logits[0])


CombineRule.seal()


def combine(rule, logits: jax.Array, probs: jax.Array, valid: jax.Array) -> jax.Array:
    """``CombineRule.check(rule).combine(logits, probs, valid)`` (``rule`` a name or a member)."""
    return CombineRule.check(rule).combine(logits, probs, valid)


def entropy(dist: jax.Array, axis: int = -1) -> jax.Array:
    """Shannon entropy in nats along ``axis`` (0 log 0 = 0)."""
    return -jnp.sum(jnp.where(dist > 0, dist * jnp.log(jnp.where(dist > 0, dist, 1.0)), 0.0), axis)


class EosRule(Choice):
    """When a set C_s ends the run."""

    what = "EOS rule"

    def hit(self, cand: CandidateSet, eos_ids: jax.Array) -> jax.Array:
        """Does ``cand`` end the run, given the model's EOS ids?"""
        raise NotImplementedError


class EosTop(EosRule, name="top"):
    """Member 0 is EOS."""

    def hit(self, cand, eos_ids):
        return jnp.isin(cand.tokens, eos_ids)[0]


class EosAny(EosRule, name="any"):
    """Some member is EOS."""

    def hit(self, cand, eos_ids):
        return (jnp.isin(cand.tokens, eos_ids) & cand.valid).any()


class EosAll(EosRule, name="all"):
    """Every member is EOS."""

    def hit(self, cand, eos_ids):
        return (jnp.isin(cand.tokens, eos_ids) | ~cand.valid).all()


EosRule.seal()


def eos_hit(rule, cand: CandidateSet, eos_ids: jax.Array) -> jax.Array:
    """``EosRule.check(rule).hit(cand, eos_ids)`` (``rule`` a name or a member)."""
    return EosRule.check(rule).hit(cand, eos_ids)
