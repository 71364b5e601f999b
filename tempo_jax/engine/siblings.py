"""Sibling rules: which same-step siblings a member's query may attend to (semantics.md, "Mask").

A rule is a subclass of :class:`SiblingRule` that names itself and says, for query member ``i`` and
sibling member ``j`` (``j != i``, both real members of the step), whether ``i`` sees ``j``::

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

from typing import ClassVar

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


class SiblingRule:
    """Base of the sibling rules; subclass with ``name=`` and define :meth:`sees`."""

    name: ClassVar[str] = ""
    _registry: ClassVar[dict[str, "SiblingRule"]] = {}

    def __init_subclass__(cls, name: str, **kw):
        super().__init_subclass__(**kw)
        if not name or name in SiblingRule._registry:
            raise ValueError(f"sibling rule name {name!r} is empty or already taken")
        cls.name = name
        SiblingRule._registry[name] = cls()

    def sees(self, i: ArrayLike, j: ArrayLike) -> ArrayLike:
        """Whether member ``i``'s query sees sibling ``j`` (int arrays that broadcast; ``i != j``)."""
        raise NotImplementedError

    def visible_pairs(self, n: int) -> int:
        """How many ordered (query, sibling) pairs see each other in a set of ``n`` members."""
        i, j = np.arange(n)[:, None], np.arange(n)[None, :]
        return int(np.sum(np.broadcast_to(np.asarray(self.sees(i, j)), (n, n)) & (i != j)))

    @property
    def code(self) -> int:
        """The rule's int code: its place in definition order."""
        return list(SiblingRule._registry).index(self.name)

    def __eq__(self, other) -> bool:  # rules compare with their names, as the other choices do
        return self.name == (other.name if isinstance(other, SiblingRule) else other)

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"SiblingRule({self.name!r})"

    @staticmethod
    def names() -> list[str]:
        """Registered rule names in code order."""
        return list(SiblingRule._registry)

    @staticmethod
    def rules() -> tuple["SiblingRule", ...]:
        """Registered rules in code order."""
        return tuple(SiblingRule._registry.values())

    @staticmethod
    def check(value, what: str = "sibling rule") -> "SiblingRule":
        """The rule named ``value``, or a one-line ValueError naming what is allowed."""
        if isinstance(value, SiblingRule):
            value = value.name
        rule = SiblingRule._registry.get(value) if isinstance(value, str) else None
        if rule is None:
            raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(SiblingRule._registry)}")
        return rule

    @staticmethod
    def unregister(name: str) -> None:
        """Remove a rule added later (tests); the built-in rules keep their codes."""
        if name in _BUILT_IN:
            raise ValueError(f"{name!r} is a built-in sibling rule")
        SiblingRule._registry.pop(name, None)


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


_BUILT_IN = tuple(SiblingRule._registry)
