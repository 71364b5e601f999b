"""Slot sentinels and slot groups: ONE definition, used in-graph by the engine's per-step records,
by the NumPy metrics (:mod:`tempo_jax.metrics`) and by the tests.

A slot is a physical KV-cache index (docs/glossary.md). ``slot_step[K]`` says what wrote it:
``UNWRITTEN`` (-2), ``PROMPT`` (-1), or the logical step s >= 0 whose candidate set it belongs to.
Slot 0 is the attention sink: reported on its own, never in a group below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tempo_jax.pytree import Struct

UNWRITTEN, PROMPT = -2, -1
SINK = 0


class SlotGroups(Struct):
    """Boolean masks ``[K]`` of the key slots a query of step s can see, by role.

    visible: written and alive during step s's forward; sink: slot 0 if visible;
    context: visible, not the sink, from the prompt or an earlier step (``slot_step < s``);
    parallel: context slots of an earlier step whose set had more than one member;
    nonparallel: context slots from the prompt or from a single-member set;
    own: visible slots of step s itself (the query and its siblings).
    """

    visible: jax.Array
    sink: jax.Array
    context: jax.Array
    parallel: jax.Array
    nonparallel: jax.Array
    own: jax.Array


def slot_groups(slot_step, alive, set_n, s) -> SlotGroups:
    """Slot groups for queries of step ``s`` from ``slot_step[K]``, ``alive[K]`` (alive during the
    step's forward) and ``set_n[S]`` (members per step; may be empty when only ``own``/``context``
    are needed). Works on NumPy or JAX inputs, in or out of ``jit``."""
    slot_step = jnp.asarray(slot_step)
    set_n = jnp.asarray(set_n)
    k = jnp.arange(slot_step.shape[0])
    visible = (slot_step != UNWRITTEN) & jnp.asarray(alive, bool)
    sink = visible & (k == SINK)
    context = visible & ~sink & (slot_step < s)
    if set_n.shape[0]:
        n_of = jnp.where(slot_step >= 0, set_n[jnp.clip(slot_step, 0, set_n.shape[0] - 1)], 0)
    else:
        n_of = jnp.zeros_like(slot_step)
    parallel = context & (slot_step >= 0) & (n_of > 1)
    nonparallel = context & ((slot_step == PROMPT) | ((slot_step >= 0) & (n_of == 1)))
    return SlotGroups(visible=visible, sink=sink, context=context, parallel=parallel,
                      nonparallel=nonparallel, own=visible & (slot_step == s))
