"""Sibling rules: which same-step siblings a member's query may attend to (semantics.md, "Mask").

A rule is a member of the :class:`SiblingRule` family (:mod:`tempo_jax.engine.choice`) that names
itself and says, for query member ``i`` and sibling member ``j`` (``j != i``, both real members of
the step), whether ``i`` sees ``j``::

    class Adjacent(SiblingRule, name="adjacent"):
        '''Each member sees the members next to it in rank.'''

        def sees(self, i, j):
            return abs(i - j) == 1

Defining the class registers it. Everything else derives from the registry: the rule's int code
(its place in definition order; what ``EngineInputs.siblings[L,H]`` holds), the choices of
``GenerationConfig.siblings`` and ``--siblings``, the bound ``EngineInputs.check`` enforces, and the
mask (:func:`tempo_jax.engine.masks.step_mask` ORs each rule's ``sees`` where the table holds its
code). ``GenerationConfig.static()`` records the registered rules in the compiled program's
:class:`~tempo_jax.engine.config.StaticSpec`, so registering a rule recompiles rather than reuse a
program that does not know it.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from tempo_jax.engine.choice import Choice


class SiblingRule(Choice):
    """The family of sibling rules; a member defines :meth:`sees`."""

    what = "sibling rule"

    def sees(self, i: ArrayLike, j: ArrayLike) -> ArrayLike:
        """Whether member ``i``'s query sees sibling ``j`` (int arrays that broadcast; ``i != j``)."""
        raise NotImplementedError

    def visible_pairs(self, n: int) -> int:
        """How many ordered (query, sibling) pairs see each other in a set of ``n`` members."""
        i, j = np.arange(n)[:, None], np.arange(n)[None, :]
        return int(np.sum(np.broadcast_to(np.asarray(self.sees(i, j)), (n, n)) & (i != j)))


class Isolated(SiblingRule, name="isolated"):
    """No sibling is visible (the default)."""

    def sees(self, i, j):
        return jnp.zeros(jnp.broadcast_shapes(jnp.shape(i), jnp.shape(j)), bool)


class Visible(SiblingRule, name="visible"):
    """Siblings with a smaller member index are visible (causal in member order)."""

    def sees(self, i, j):
        return j < i


class Full(SiblingRule, name="full"):
    """Every sibling is visible."""

    def sees(self, i, j):
        return jnp.ones(jnp.broadcast_shapes(jnp.shape(i), jnp.shape(j)), bool)


class Reverse(SiblingRule, name="reverse"):
    """Siblings with a larger member index are visible (the mirror image of visible)."""

    def sees(self, i, j):
        return j > i


SiblingRule.seal()
