"""What a step returns besides the new state: the captured attention of one step
(:class:`StepCapture`) and the per-step ``[S,L,H]`` reductions of the on-device driver
(:class:`StepRecords`). Fields a capture mode does not produce are None.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tempo_jax.pytree import Struct
from tempo_jax.engine.selection import entropy
from tempo_jax.slots import slot_groups


class StepCapture(Struct):
    """One step's captured data (W query rows). Rows F..W-1 (beyond the fed width) are 0; in
    ``attn`` and ``resid`` the fed rows n..F-1 hold the padding queries' real values (next-ranked
    tokens that missed the threshold), so slice by the step's ``set_n`` / ``fed_n``; the summary
    fields are 0 for every row >= n.

    capture "full":    attn[L,H,W,K] attention probabilities of the step's queries.
    capture "summary": received[L,H,K] (sum over real queries of attention on each slot),
                       entropy[L,H,W] (nats), sink[L,H,W] (attention on slot 0),
                       leakage[L,H,W] (attention on same-step siblings, not itself),
                       resid[L,W,E] (members' residual stream after each layer).
    """

    attn: jax.Array | None = None
    received: jax.Array | None = None
    entropy: jax.Array | None = None
    sink: jax.Array | None = None
    leakage: jax.Array | None = None
    resid: jax.Array | None = None

    def arrays(self) -> dict[str, jax.Array]:
        """The captured fields by name (None fields left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}


def summarize(attn: jax.Array, base, n) -> dict[str, jax.Array]:
    """In-graph reductions of one step's attention ``attn[L,H,W,K]`` (queries i < n are real,
    written at slots base..base+n-1): the ``received``/``entropy``/``sink``/``leakage`` fields of
    :class:`StepCapture`."""
    width, k = attn.shape[2], attn.shape[3]
    real = (jnp.arange(width) < n)[None, None, :]
    j = jnp.arange(k)[None, :] - base
    sib = (j >= 0) & (j < n) & (j != jnp.arange(width)[:, None])  # [W,K]
    return {
        "received": jnp.sum(jnp.where(real[..., None], attn, 0.0), axis=2),
        "entropy": jnp.where(real, entropy(attn), 0.0),
        "sink": jnp.where(real, attn[..., 0], 0.0),
        "leakage": jnp.where(real, jnp.sum(jnp.where(sib, attn, 0.0), -1), 0.0),
    }


class StepRecords(Struct):
    """Per-step ``[S,L,H]`` means over each step's real queries (NaN for steps not run):
    sink, attn_entropy (nats), leakage, and attention received per context slot averaged over the
    parallel / non-parallel slot groups (:func:`tempo_jax.slots.slot_groups`; NaN when a group is
    empty)."""

    sink: jax.Array
    attn_entropy: jax.Array
    leakage: jax.Array
    par_per_token: jax.Array
    nonpar_per_token: jax.Array

    @classmethod
    def empty(cls, steps: int, layers: int, heads: int) -> "StepRecords":
        nan = jnp.full((steps, layers, heads), jnp.nan)
        return cls(*(nan for _ in dataclasses.fields(cls)))

    @classmethod
    def of_step(cls, cap: StepCapture, alive, slot_step, set_n, s, n) -> "StepRecords":
        """One step's ``[L,H]`` values from its summary capture and the slot maps before the step."""
        assert cap.entropy is not None, "StepRecords.of_step takes a summary capture"
        real = jnp.arange(cap.entropy.shape[-1]) < n
        qmean = lambda x: jnp.sum(jnp.where(real, x, 0.0), -1) / n  # [L,H,W] -> [L,H]
        g = slot_groups(slot_step, alive, set_n, s)
        per_tok = lambda m: jnp.where(m.any(), (cap.received * m).sum(-1) / (n * m.sum()), jnp.nan)
        return cls(sink=qmean(cap.sink), attn_entropy=qmean(cap.entropy), leakage=qmean(cap.leakage),
                   par_per_token=per_tok(g.parallel), nonpar_per_token=per_tok(g.nonparallel))

    def set(self, s, one: "StepRecords") -> "StepRecords":
        return jax.tree_util.tree_map(lambda all_, x: all_.at[s].set(x), self, one)

    def arrays(self) -> dict[str, jax.Array]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
