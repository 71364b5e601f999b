"""Model configuration: a frozen dataclass built from a Hugging Face ``config.json``.

Only fields that change the math are kept. Fields this implementation does not support are
refused with a message naming the field, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Gemma3ForCausalLM")
FAMILIES = ("llama", "gemma3")  # llama: Llama, Mistral, Qwen2


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
    """Decoder hyper-parameters (axis letters: V, E, F, L, H, G, D).

    The math of a family is declared by the fields below the Llama ones (defaults: Llama), never by
    the family's name: Gemma 3 scales the embeddings by sqrt(E), normalises with (1 + w), puts a
    norm on the attention and MLP outputs too (sandwich), normalises q and k per head, scales
    attention logits by ``query_pre_attn_scalar ** -0.5``, gates its MLP with GELU (tanh), and
    alternates sliding-window layers (RoPE base ``local_rope_theta``) with full ones.
    """

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
    family: str = "llama"  # one of FAMILIES (provenance; the math follows the fields below)
    embed_scale: float = 1.0  # token embeddings are multiplied by this
    norm_offset: float = 0.0  # RMSNorm scales by (norm_offset + w)
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (q_norm, k_norm [L,D])
    sandwich_norms: bool = False  # RMSNorm of the attention and MLP outputs (post_attn_norm, post_mlp_norm)
    query_scale: float | None = None  # attention logit scale (None: D ** -0.5)
    mlp_act: str = "silu"  # gate activation: "silu" or "gelu_tanh"
    sliding_window: int | None = None  # sliding layers: a query sees keys fewer than this many positions back
    layer_types: tuple[str, ...] | None = None  # per layer "full" or "sliding" (None: all full)
    local_rope_theta: float | None = None  # RoPE base of sliding layers (None: rope_theta)

    def __post_init__(self):
        # sequences as tuples, however the config was built (JSON gives lists): it is a jit static
        for field in ("eos_token_ids", "layer_types"):
            if isinstance(getattr(self, field), list):
                object.__setattr__(self, field, tuple(getattr(self, field)))
        for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                      "num_kv_heads", "head_dim"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"ModelConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.family not in FAMILIES:
            raise ValueError(f"ModelConfig.family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.mlp_act not in ("silu", "gelu_tanh"):
            raise ValueError(f"ModelConfig.mlp_act must be 'silu' or 'gelu_tanh', got {self.mlp_act!r}")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers or set(self.layer_types) - {"full", "sliding"}:
                raise ValueError(f"ModelConfig.layer_types must name 'full' or 'sliding' for each of the "
                                 f"{self.num_layers} layers, got {self.layer_types}")
            if "sliding" in self.layer_types and not (self.sliding_window or 0) >= 1:
                raise ValueError("sliding layers need ModelConfig.sliding_window >= 1")

    @property
    def windows(self) -> tuple[int, ...]:
        """Per layer: the sliding window in positions, 0 for a full-attention layer."""
        types = self.layer_types or ("full",) * self.num_layers
        return tuple(int(self.sliding_window or 0) if t == "sliding" else 0 for t in types)

    @property
    def has_window(self) -> bool:
        return any(self.windows)

    def layer_inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies per layer ``[L,D/2]`` float32 (sliding layers use their own base)."""
        full = self.inv_freq()
        if self.local_rope_theta is None or not self.layer_types:
            return np.broadcast_to(full, (self.num_layers, full.shape[0])).copy()
        local = dataclasses.replace(self, rope_theta=self.local_rope_theta, rope_scaling=None).inv_freq()
        return np.stack([local if t == "sliding" else full for t in self.layer_types]).astype(np.float32)

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


def _gemma3_from_hf(hf: Mapping[str, Any], name: str) -> ModelConfig:
    """Gemma 3 (text): the fields that change its math, each checked or refused."""
    for field in ("final_logit_softcapping", "attn_logit_softcapping"):
        if hf.get(field) is not None:
            raise UnsupportedConfigError(f"config field {field}={hf[field]} is not implemented")
    if hf.get("use_bidirectional_attention"):
        raise UnsupportedConfigError("config field use_bidirectional_attention=true is not implemented")
    if hf.get("attention_bias"):
        raise UnsupportedConfigError("config field attention_bias=true is not implemented for gemma3")
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise UnsupportedConfigError(f"config field hidden_activation={act!r} is not supported "
                                     "(gemma3: only 'gelu_pytorch_tanh')")
    n = int(hf["num_hidden_layers"])
    types = hf.get("layer_types")
    if types is None:
        pattern = int(hf.get("sliding_window_pattern", 6))
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
    bad = set(types) - {"sliding_attention", "full_attention"}
    if bad or len(types) != n:
        raise UnsupportedConfigError(f"config field layer_types={types} is not supported "
                                     "(one of sliding_attention, full_attention per layer)")
    rp = hf.get("rope_parameters")
    if isinstance(rp, Mapping) and ("full_attention" in rp or "sliding_attention" in rp):
        full = dict(rp.get("full_attention") or {})
        local = dict(rp.get("sliding_attention") or {})
    else:  # transformers 4.x: rope_theta, rope_local_base_freq, rope_scaling (full layers)
        full = {"rope_theta": hf.get("rope_theta", 1e6), **dict(hf.get("rope_scaling") or {})}
        local = {"rope_theta": hf.get("rope_local_base_freq", 1e4)}
    if local.get("rope_type", "default") not in (None, "default"):
        raise UnsupportedConfigError(f"config field rope_parameters.sliding_attention.rope_type="
                                     f"{local['rope_type']!r} is not implemented (only default)")
    theta, scaling = _rope_from_hf({"rope_parameters": full, "rope_theta": full.get("rope_theta", 1e6)})
    width, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = int(hf.get("head_dim") or width // heads)
    eos = hf.get("eos_token_id")
    eos_ids = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []))
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]), hidden_size=width, intermediate_size=int(hf["intermediate_size"]),
        num_layers=n, num_heads=heads, num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=head_dim, rope_theta=theta, rope_scaling=scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        bos_token_id=hf.get("bos_token_id"), eos_token_ids=eos_ids, name=name,
        family="gemma3", embed_scale=float(np.float32(width ** 0.5)), norm_offset=1.0, qk_norm=True,
        sandwich_norms=True, query_scale=float(hf.get("query_pre_attn_scalar", head_dim)) ** -0.5,
        mlp_act="gelu_tanh", sliding_window=int(hf["sliding_window"]) if hf.get("sliding_window") else None,
        layer_types=tuple("sliding" if t == "sliding_attention" else "full" for t in types),
        local_rope_theta=float(local.get("rope_theta", 1e4)))


def config_from_hf(hf: Mapping[str, Any], name: str = "model") -> ModelConfig:
    """Build a :class:`ModelConfig` from a Hugging Face ``config.json`` dict, refusing what we lack."""
    archs = list(hf.get("architectures") or [])
    model_type = hf.get("model_type")
    if "Gemma3ForCausalLM" in archs or (not archs and model_type in ("gemma3_text", "gemma3")):
        if model_type == "gemma3" or hf.get("text_config") is not None:
            raise UnsupportedConfigError("config model_type='gemma3' is the multimodal model; convert its "
                                         "text model (model_type gemma3_text, Gemma3ForCausalLM)")
        return _gemma3_from_hf(hf, name)
    if archs and not set(archs) & set(SUPPORTED_ARCHITECTURES):
        raise UnsupportedConfigError(
            f"config field architectures={archs} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    if not archs and model_type not in ("llama", "mistral", "qwen2"):
        raise UnsupportedConfigError(
            f"config field model_type={model_type!r} is not supported "
            "(supported: llama, mistral, qwen2, gemma3_text)")
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
