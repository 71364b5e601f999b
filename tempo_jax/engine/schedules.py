"""Threshold schedules: ``tau_s = tau_0 + (tau_final - tau_0) * m(t)``, ``t = s / (max_steps - 1)``."""

from __future__ import annotations

import numpy as np

from tempo_jax.engine.rules import Schedule


def schedule_shape(kind: str, t: np.ndarray, k: float = 3.0, p1: float = 0.25, p2: float = 0.75,
                   a: float = 0.5) -> np.ndarray:
    """m(t) for t in [0, 1] (see semantics.md, "Threshold schedules")."""
    t = np.asarray(t, np.float64)
    if kind == "constant":
        return np.zeros_like(t)
    if kind == "linear":
        return t
    if kind == "exponential":
        if k == 0:
            return t
        return np.expm1(k * t) / np.expm1(k)
    if kind == "bezier":
        return 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3
    if kind == "relu":
        if not 0 <= a < 1:
            raise ValueError(f"relu schedule needs 0 <= a < 1, got {a}")
        return np.maximum(0.0, t - a) / (1 - a)
    raise ValueError(f"unknown threshold schedule {kind!r}; allowed: {', '.join(Schedule)}")


def thresholds(kind: str, tau0: float, tau_final: float | None, max_steps: int, **shape_args) -> np.ndarray:
    """Per-step thresholds ``[S]`` float32."""
    tau_final = tau0 if tau_final is None else tau_final
    s = np.arange(max_steps)
    t = s / (max_steps - 1) if max_steps > 1 else np.zeros(max_steps)
    return (tau0 + (tau_final - tau0) * schedule_shape(kind, t, **shape_args)).astype(np.float32)
