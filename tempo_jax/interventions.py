"""Interventions as data: arrays fed to the forward (so they ``vmap`` and sweep), not flags.

Every field is optional; a missing field is the identity. Shapes use the axis letters of
``tempo_jax.model``: B batch, L layers, H query heads, D head dim, T queries, K cache slots, E width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.pytree import Struct
from tempo_jax.config import ModelConfig


class Interventions(Struct):
    """head_scale[L,H]: factor on each head's attention output (0 ablates the head);
    head_mean[L,H,D]: value an ablated head is replaced by, ``out = s*out + (1-s)*head_mean``
    (zeros: zero ablation; a stored mean output: mean ablation);
    attn_bias[B|1,L,H|1,K]: added to attention logits on key slots before masking (boost > 0,
    suppress < 0; a large negative bias gives a slot exactly zero attention);
    resid_patch[L,B,T,E] with resid_patch_mask[L,B,T] bool: after layer l the residual stream of the
    masked (batch, query) rows is replaced by the stored values (patching from another run).
    """

    head_scale: jax.Array | None = None
    head_mean: jax.Array | None = None
    attn_bias: jax.Array | None = None
    resid_patch: jax.Array | None = None
    resid_patch_mask: jax.Array | None = None


def check(iv: Interventions, cfg: ModelConfig, batch: int, t: int, capacity: int) -> None:
    """Clear errors for intervention arrays whose shapes do not fit the forward."""
    L, H, D, E = cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.hidden_size

    def want(name, arr, shape):
        if arr is not None and (arr.ndim != len(shape) or any(
                g != w and not (w_is_bcast and g == 1) for g, (w, w_is_bcast) in zip(arr.shape, shape))):
            pretty = tuple(f"{w}|1" if b else w for w, b in shape)
            raise ValueError(f"interventions.{name} must have shape {pretty}, got {arr.shape}")

    want("head_scale", iv.head_scale, [(L, False), (H, False)])
    want("head_mean", iv.head_mean, [(L, False), (H, False), (D, False)])
    want("attn_bias", iv.attn_bias, [(batch, True), (L, False), (H, True), (capacity, False)])
    want("resid_patch", iv.resid_patch, [(L, False), (batch, False), (t, False), (E, False)])
    want("resid_patch_mask", iv.resid_patch_mask, [(L, False), (batch, False), (t, False)])
    if (iv.resid_patch is None) != (iv.resid_patch_mask is None):
        raise ValueError("interventions.resid_patch and resid_patch_mask go together")
    if iv.head_mean is not None and iv.head_scale is None:
        raise ValueError("interventions.head_mean needs head_scale (which heads to replace)")


def ablate_heads(cfg: ModelConfig, heads, mean=None) -> Interventions:
    """Ablate ``heads`` (iterable of (layer, head)); ``mean[L,H,D]`` for mean ablation, else zero."""
    scale = np.ones((cfg.num_layers, cfg.num_heads), np.float32)
    for layer, head in heads:
        scale[layer, head] = 0.0
    return Interventions(head_scale=jnp.asarray(scale), head_mean=mean)
