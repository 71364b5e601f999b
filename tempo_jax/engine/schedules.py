"""Threshold schedules: ``tau_s = tau_0 + (tau_final - tau_0) * m(t)``, ``t = s / (max_steps - 1)``;
each :class:`Schedule` member defines its shape m (semantics.md, "Threshold schedules")."""

from __future__ import annotations

import numpy as np

from tempo_jax.engine.choice import Choice


class Schedule(Choice):
    """The family of threshold schedules; a member defines :meth:`shape`."""

    what = "threshold schedule"

    def shape(self, t: np.ndarray, k: float, p1: float, p2: float, a: float) -> np.ndarray:
        """m(t) for t in [0, 1] (float64); ``k``, ``p1``, ``p2``, ``a`` are the schedules' parameters."""
        raise NotImplementedError


class Constant(Schedule, name="constant"):
    def shape(self, t, k, p1, p2, a):
        return np.zeros_like(t)


class Linear(Schedule, name="linear"):
    def shape(self, t, k, p1, p2, a):
        return t


class Exponential(Schedule, name="exponential"):
    """``expm1(k t) / expm1(k)`` (linear at k = 0)."""

    def shape(self, t, k, p1, p2, a):
        return t if k == 0 else np.expm1(k * t) / np.expm1(k)


class Bezier(Schedule, name="bezier"):
    """Cubic Bezier from 0 to 1 with control values p1, p2."""

    def shape(self, t, k, p1, p2, a):
        return 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3


class Relu(Schedule, name="relu"):
    """0 until t = a, then linear to 1."""

    def shape(self, t, k, p1, p2, a):
        if not 0 <= a < 1:
            raise ValueError(f"relu schedule needs 0 <= a < 1, got {a}")
        return np.maximum(0.0, t - a) / (1 - a)


Schedule.seal()


def schedule_shape(kind, t: np.ndarray, k: float = 3.0, p1: float = 0.25, p2: float = 0.75,
                   a: float = 0.5) -> np.ndarray:
    """m(t) for t in [0, 1] of the schedule ``kind`` (a name or a member)."""
    return Schedule.check(kind).shape(np.asarray(t, np.float64), k, p1, p2, a)


def thresholds(kind, tau0: float, tau_final: float | None, max_steps: int, **shape_args) -> np.ndarray:
    """Per-step thresholds ``[S]`` float32."""
    tau_final = tau0 if tau_final is None else tau_final
    s = np.arange(max_steps)
    t = s / (max_steps - 1) if max_steps > 1 else np.zeros(max_steps)
    return (tau0 + (tau_final - tau0) * schedule_shape(kind, t, **shape_args)).astype(np.float32)
