"""The array inputs of the compiled generation program, as one typed pytree.

``GenerationConfig.inputs(model)`` builds them for one world; change any field with
``inputs.replace(name=array)`` (an unknown name is refused with a one-line message), and stack
worlds for ``vmap`` with :func:`stack`. Everything here is data: sweeping it never recompiles.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from tempo_jax.pytree import Struct
from tempo_jax.config import ModelConfig
from tempo_jax.engine.siblings import SiblingRule
from tempo_jax.interventions import Interventions


class EngineInputs(Struct):
    """Attributes (shapes in axis letters; S steps, W max width, L layers, H heads):
        thresholds: [S] float32, tau_s per step (the schedule, evaluated).
        siblings: [L,H] int32 sibling-rule codes, partial isolation (:mod:`tempo_jax.engine.siblings`:
            0 isolated, 1 visible, 2 full, 3 reverse, then rules added later).
        isolate_above: [] float32, adaptive isolation: a step whose set was chosen from a
            distribution with entropy above this (nats) uses isolated siblings everywhere, else
            ``siblings`` (+inf: never).
        isolate_size_above: [] int32, likewise for a set with more than this many members
            (int32 max: never).
        member_stride: [] float32, member i sits at ``P + s + i * member_stride`` (0 shared,
            delta offset, 1 distinct).
        advance_by_members: [] bool, the next step starts n positions later (distinct) instead of 1.
        member_offsets: [W] float32, extra RoPE offset per member rank (an intervention).
        min_steps: [] int32, no EOS stop before this many steps.
        prune_layer_w: [L] float32, layer weights of the pruning score (sum 1).
        prune_head_w: [H] float32, head weights of the pruning score (sum 1).
        prune_rho, prune_theta, prune_k: [] float32, parameters of the pruning rules.
        temperature, top_p: [] float32; top_k: [] int32 (sampling).
        key: [2] uint32, PRNG key data (sampling, sigmoid pruning).
        interventions: :class:`~tempo_jax.interventions.Interventions` applied to every forward of
            the run (batch axis 1, K = the run's capacity), or None. ``resid_patch`` needs one T for
            every forward, which prefill and steps do not share: patch through ``model.forward``.
    """

    thresholds: jax.Array
    siblings: jax.Array
    isolate_above: jax.Array
    isolate_size_above: jax.Array
    member_stride: jax.Array
    advance_by_members: jax.Array
    member_offsets: jax.Array
    min_steps: jax.Array
    prune_layer_w: jax.Array
    prune_head_w: jax.Array
    prune_rho: jax.Array
    prune_theta: jax.Array
    prune_k: jax.Array
    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    key: jax.Array
    interventions: Interventions | None = None

    def expected_shapes(self, mcfg: ModelConfig, steps: int, width: int) -> dict[str, tuple]:
        L, H = mcfg.num_layers, mcfg.num_heads
        shapes: dict[str, tuple[int, ...]] = {f.name: () for f in dataclasses.fields(self)
                                              if f.name != "interventions"}
        shapes.update(thresholds=(steps,), siblings=(L, H), member_offsets=(width,),
                      prune_layer_w=(L,), prune_head_w=(H,), key=(2,))
        return shapes

    def check(self, mcfg: ModelConfig, steps: int, width: int, capacity: int) -> None:
        """One-line ValueError for any field whose shape does not fit the run (before compute)."""
        from tempo_jax.interventions import check as check_interventions

        for name, want in self.expected_shapes(mcfg, steps, width).items():
            got = np.shape(getattr(self, name))
            if tuple(got) != want:
                raise ValueError(f"engine input {name} must have shape {want}, got {tuple(got)}")
        codes, names = np.asarray(self.siblings), SiblingRule.names()
        if codes.size and (codes.min() < 0 or codes.max() >= len(names)):
            known = ", ".join(f"{c} {r}" for c, r in enumerate(names))
            raise ValueError(f"engine input siblings must hold sibling-rule codes ({known}); got values in "
                             f"[{codes.min()}, {codes.max()}]")
        if np.isnan(np.asarray(self.isolate_above)).any():
            raise ValueError("engine input isolate_above must be a number of nats or +inf, got nan")
        if self.interventions is not None:
            if not isinstance(self.interventions, Interventions):
                raise ValueError("engine input interventions must be an Interventions, got "
                                 f"{type(self.interventions).__name__}")
            iv = self.interventions
            t = iv.resid_patch.shape[2] if iv.resid_patch is not None else 1
            check_interventions(iv, mcfg, 1, t, capacity)


def stack(worlds: list[EngineInputs]) -> EngineInputs:
    """B worlds -> one EngineInputs whose every leaf has a leading B axis (for ``vmap``)."""
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *worlds)
