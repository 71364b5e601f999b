"""Model configuration: a frozen dataclass built from a Hugging Face ``config.json``.

Only fields that change the math are kept. Fields this implementation does not support are
refused with a message naming the field, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


class UnsupportedConfigError(ValueError):
    """A checkpoint's config asks for math that this implementation does not do."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. ``kind`` is ``"linear"`` or ``"llama3"``."""

    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Llama-family decoder hyper-parameters (axis letters: V, E, F, L, H, G, D)."""

    vocab_size: int  # V
    hidden_size: int  # E
    intermediate_size: int  # F
    num_layers: int  # L
    num_heads: int  # H
    num_kv_heads: int  # G
    head_dim: int  # D
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    name: str = "model"

    def __post_init__(self):
        for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                      "num_kv_heads", "head_dim"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"ModelConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")

    @property
    def group_size(self) -> int:
        """R: query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    def inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies ``[D/2]`` float32, scaled as the config says (as HF does)."""
        d = self.head_dim
        inv = 1.0 / (np.float32(self.rope_theta) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))
        inv = inv.astype(np.float32)
        sc = self.rope_scaling
        if sc is None:
            return inv
        if sc.kind == "linear":
            return (inv / np.float32(sc.factor)).astype(np.float32)
        if sc.kind == "llama3":
            old = sc.original_max_position_embeddings
            low_wavelen = old / sc.low_freq_factor
            high_wavelen = old / sc.high_freq_factor
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > low_wavelen, inv / sc.factor, inv)
            smooth = (old / wavelen - sc.low_freq_factor) / (sc.high_freq_factor - sc.low_freq_factor)
            smoothed = (1 - smooth) * scaled / sc.factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            return np.where(medium, smoothed, scaled).astype(np.float32)
        raise UnsupportedConfigError(f"rope_scaling kind {sc.kind!r} is not implemented")


def _rope_from_hf(hf: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    # transformers 4.x: rope_theta + rope_scaling; 5.x: rope_parameters (holds both).
    params = dict(hf.get("rope_scaling") or {})
    rp = hf.get("rope_parameters")
    if isinstance(rp, Mapping):
        params = {**dict(rp), **params}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in (None, "default"):
        return theta, None
    if kind == "linear":
        return theta, RopeScaling("linear", float(params["factor"]))
    if kind == "llama3":
        return theta, RopeScaling(
            "llama3", float(params["factor"]), float(params["low_freq_factor"]),
            float(params["high_freq_factor"]), int(params["original_max_position_embeddings"]))
    raise UnsupportedConfigError(
        f"config field rope_scaling.rope_type={kind!r} is not implemented "
        "(supported: default, linear, llama3)")


def config_from_hf(hf: Mapping[str, Any], name: str = "model") -> ModelConfig:
    """Build a :class:`ModelConfig` from a Hugging Face ``config.json`` dict, refusing what we lack."""
    archs = list(hf.get("architectures") or [])
    model_type = hf.get("model_type")
    if archs and not set(archs) & set(SUPPORTED_ARCHITECTURES):
        raise UnsupportedConfigError(
            f"config field architectures={archs} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    if not archs and model_type not in ("llama", "mistral", "qwen2"):
        raise UnsupportedConfigError(
            f"config field model_type={model_type!r} is not supported (supported: llama, mistral, qwen2)")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedConfigError(f"config field hidden_act={act!r} is not supported (only 'silu')")
    if hf.get("mlp_bias"):
        raise UnsupportedConfigError("config field mlp_bias=true is not implemented")
    is_qwen = model_type == "qwen2" or "Qwen2ForCausalLM" in archs
    if is_qwen:
        if hf.get("use_sliding_window"):
            raise UnsupportedConfigError("config field use_sliding_window=true is not implemented")
    elif hf.get("sliding_window") is not None:
        raise UnsupportedConfigError(
            f"config field sliding_window={hf['sliding_window']} is not implemented "
            "(set it to null to use full attention)")
    theta, scaling = _rope_from_hf(hf)
    heads = int(hf["num_attention_heads"])
    width = int(hf["hidden_size"])
    head_dim = hf.get("head_dim") or width // heads
    eos = hf.get("eos_token_id")
    eos_ids = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []))
    attn_bias = bool(hf.get("attention_bias", False))
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=width,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=is_qwen or attn_bias,
        o_bias=attn_bias and not is_qwen,
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=eos_ids,
        name=name,
    )
