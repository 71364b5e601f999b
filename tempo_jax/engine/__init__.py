"""The TEMPO engine: selection, masks, pruning, combining, schedules, drivers."""

from tempo_jax.engine.config import GenerationConfig, StaticSpec, sibling_codes
from tempo_jax.engine.inputs import EngineInputs
from tempo_jax.engine.outputs import StepCapture, StepRecords
from tempo_jax.engine.run import check_request, generate, run_on_device

__all__ = ["GenerationConfig", "StaticSpec", "EngineInputs", "StepCapture", "StepRecords",
           "sibling_codes", "check_request", "generate", "run_on_device"]
