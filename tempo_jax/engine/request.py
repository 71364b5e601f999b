"""Checks of a generation request, made before any compute, and the padded prompt the drivers take."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.config import ModelConfig
from tempo_jax.engine.config import GenerationConfig
from tempo_jax.engine.rules import PositionVariant


def check_request(mcfg: ModelConfig, gcfg: GenerationConfig, prompt_ids: Sequence[int]) -> int:
    """Validate everything before compute; returns the cache capacity K to use."""
    gcfg.validate(mcfg)
    per_step = gcfg.width if PositionVariant.check(gcfg.positions).advance_by_members else 1
    check_prompt(mcfg, prompt_ids, gcfg.max_steps * per_step + 1)
    return gcfg.capacity_for(len(prompt_ids))


def check_prompt(mcfg: ModelConfig, prompt_ids: Sequence[int], advance: int) -> None:
    """A prompt is non-empty, its ids are in the vocabulary, and it leaves ``advance`` positions
    of the model's context for generation; otherwise a one-line ValueError."""
    p = len(prompt_ids)
    if p == 0:
        raise ValueError("the prompt is empty: give at least one token")
    ids = np.asarray(prompt_ids)
    if ids.min() < 0 or ids.max() >= mcfg.vocab_size:
        raise ValueError(f"prompt token ids must lie in [0, {mcfg.vocab_size})")
    if p + advance > mcfg.max_position_embeddings:
        raise ValueError(
            f"prompt ({p} tokens) + {advance} generated positions exceeds the model's context of "
            f"{mcfg.max_position_embeddings} positions; shorten the prompt or lower max_steps")


def pad_prompt(gcfg: GenerationConfig, prompt_ids: Sequence[int]) -> jax.Array:
    pb = gcfg.bucketed(len(prompt_ids))
    return jnp.asarray(np.pad(np.asarray(prompt_ids, np.int32), (0, pb - len(prompt_ids))))
