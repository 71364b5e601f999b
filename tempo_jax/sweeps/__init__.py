"""Sweeps at scale: a spec of world axes -> one vmapped, sharded program -> a named-axes store."""

from tempo_jax.sweeps.runner import build_mesh, run_sweep
from tempo_jax.sweeps.spec import AXES, SweepSpec, expand
from tempo_jax.sweeps.store import SweepResults, load_results

__all__ = ["AXES", "SweepSpec", "SweepResults", "build_mesh", "expand", "load_results", "run_sweep"]
