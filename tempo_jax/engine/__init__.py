"""The TEMPO engine: selection, masks, pruning, combining, schedules, drivers."""

from tempo_jax.engine.config import GenerationConfig, StaticSpec, sibling_codes
from tempo_jax.engine.run import check_request, generate

__all__ = ["GenerationConfig", "StaticSpec", "sibling_codes", "check_request", "generate"]
