"""The engine's named choices, one ``StrEnum`` each: validation, CLI choices and docs read them here.
Sibling rules, which users add, are a registry of classes instead: :mod:`tempo_jax.engine.siblings`.

Members compare equal to their strings (``SiblingRule.VISIBLE == "visible"``), so configs and traces
stay plain strings. Meanings: docs/semantics.md.
"""

from __future__ import annotations

import enum


class _Choice(enum.StrEnum):
    @classmethod
    def check(cls, value, what: str) -> "_Choice":
        """``value`` as a member, or a one-line ValueError naming what is allowed."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(cls)}") from None

    @classmethod
    def names(cls) -> list[str]:
        return [m.value for m in cls]


class PositionVariant(_Choice):
    SHARED = "shared"  # all members at P + s
    OFFSET = "offset"  # member i at P + s + i * delta
    DISTINCT = "distinct"  # consecutive unique positions


class CombineRule(_Choice):
    MIXTURE = "mixture"
    UNIFORM = "uniform"
    MEAN_LOGITS = "mean_logits"
    TOP = "top"


class EosRule(_Choice):
    TOP = "top"
    ANY = "any"
    ALL = "all"


class PruneRule(_Choice):
    RELATIVE = "relative"
    ABSOLUTE = "absolute"
    SIGMOID = "sigmoid"


class PruneTiming(_Choice):
    WINDOW = "window"
    EAGER = "eager"


class Method(_Choice):
    TEMPO = "tempo"
    GREEDY = "greedy"
    SAMPLE = "sample"
    SPECULATIVE = "speculative"  # greedy-exact self-speculative decoding (docs/speculative.md)


class Compat(_Choice):
    NONE = "none"
    UPSTREAM = "upstream"  # the original implementation's feed sequence (docs/replication.md)


class Capture(_Choice):
    NONE = "none"
    SUMMARY = "summary"
    FULL = "full"


class Schedule(_Choice):
    CONSTANT = "constant"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"
    BEZIER = "bezier"
    RELU = "relu"
