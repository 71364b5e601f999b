"""Methods and compat modes: how a generation runs, as choice families (:mod:`tempo_jax.engine.choice`).

A :class:`Method` member owns the selection its TEMPO step uses (``selection(width)``), whether it
keeps one member per step (``single``: the program is compiled at width 1), and, when it runs a
search of its own instead of the step loop, its ``generate``. The step-based methods are here;
``speculative`` is defined in engine/speculative.py and ``beam`` in engine/beam.py, beside their
searches. A :class:`Compat` member owns the step mechanics (``mechanics()``: the module with
``init_state``, ``step`` and ``feed_widths``): ``none`` is defined in engine/core.py, ``upstream``
in engine/upstream.py. (Members live with the code they run, so this module imports none of it.)
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, ClassVar

from tempo_jax.engine.choice import Choice
from tempo_jax.engine.selection import Greedy, Sample, Threshold

if TYPE_CHECKING:
    from tempo_jax.trace import Trace


class Method(Choice):
    """The family of generation methods."""

    what = "method"
    single: ClassVar[bool] = True  # one member per step
    own_driver: ClassVar[bool] = False  # runs its own search instead of the step loop

    def selection(self, width: int) -> Threshold | Greedy | Sample:
        """The step's selection (static under ``jit``)."""
        raise NotImplementedError

    def generate(self, params, mcfg, prompt_ids, gcfg, driver: str, progress: bool, on_step,
                 model_id: str, inputs, capture) -> "Trace":
        """The generation of a method with its own driver (``own_driver``); called by
        :func:`tempo_jax.engine.run.generate`, which runs the step loop for the others."""
        raise NotImplementedError


class Tempo(Method, name="tempo"):
    """Every token at or above the threshold, written at one shared position."""

    single = False

    def selection(self, width):
        return Threshold(width)


class GreedyMethod(Method, name="greedy"):
    """The argmax alone (a baseline)."""

    def selection(self, width):
        return Greedy(width)


class SampleMethod(Method, name="sample"):
    """One sampled token (temperature, top-k, top-p; a baseline)."""

    def selection(self, width):
        return Sample(width)




class Compat(Choice):
    """The family of compat modes: which step mechanics a run uses."""

    what = "compat mode"

    def mechanics(self) -> ModuleType:
        """The module holding ``init_state``, ``step`` and ``feed_widths``."""
        raise NotImplementedError
