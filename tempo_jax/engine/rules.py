"""The capture mode (a ``StrEnum``: what a step streams) and the positions variants.

The engine's named choices that carry behaviour are :class:`~tempo_jax.engine.choice.Choice`
families, each member owning its behaviour: sibling rules (engine/siblings.py), combining and EOS
rules (engine/selection.py), pruning rules and timings (engine/pruning.py), threshold schedules
(engine/schedules.py), methods and compat modes (engine/methods.py), positions variants (here).

Members compare equal to their names (``Capture.FULL == "full"``, ``SiblingRule.check("visible") ==
"visible"``), so configs and traces stay plain strings. Meanings: docs/semantics.md.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from tempo_jax.engine.choice import Choice


class _Choice(enum.StrEnum):
    @classmethod
    def check(cls, value, what: str | None = None) -> "_Choice":
        """``value`` as a member, or a one-line ValueError naming what is allowed."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown {what or cls.__name__.lower()} {value!r}; allowed: {', '.join(cls)}") from None

    @classmethod
    def names(cls) -> list[str]:
        return [m.value for m in cls]


class Capture(_Choice):
    NONE = "none"
    SUMMARY = "summary"
    FULL = "full"


class PositionVariant(Choice):
    """Logical (RoPE) positions of a set's members: member i at ``P + s + i * stride``."""

    what = "positions variant"

    def stride(self, delta: float) -> float:
        raise NotImplementedError

    advance_by_members: ClassVar[bool] = False  # the next step starts n later (else 1 later)


class Shared(PositionVariant, name="shared"):
    """All members at P + s."""

    def stride(self, delta):
        return 0.0


class Offset(PositionVariant, name="offset"):
    """Member i at P + s + i * delta."""

    def stride(self, delta):
        return delta


class Distinct(PositionVariant, name="distinct"):
    """Consecutive unique positions; the next step starts after the last member."""

    advance_by_members = True

    def stride(self, delta):
        return 1.0


PositionVariant.seal()
