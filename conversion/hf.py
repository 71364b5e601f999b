"""Hugging Face layout <-> our parameter pytree, both directions, and HF checkpoint folders.

One declarative map (:func:`hf_layout`) names, for every leaf of our pytree, the HF tensor it comes
from, HF's shape and ours. Reading a checkpoint (:func:`params_from_state`) and writing an HF state
dict back (:func:`to_hf`, NumPy only) both walk that one map; the only per-key transforms are a
transpose (HF stores linear weights ``[out, in]``, we store them input-major) and a reshape that
splits or joins heads. Nothing is permuted: RoPE stays rotate-half. :func:`hf_config` is the
inverse of :func:`tempo_jax.config.config_from_hf`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np

from conversion.common import CheckpointError, assemble, read_json_file
from tempo_jax.config import ModelConfig, UnsupportedConfigError, config_from_hf

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclasses.dataclass(frozen=True)
class HfTensor:
    """Where one of our leaves lives in a Hugging Face state dict (per layer for layer leaves)."""

    name: str  # HF tensor name; layer leaves: relative to ``model.layers.{i}.``
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]  # ours (one layer's slice for layer leaves)
    transpose: bool = False  # HF [out, in] -> our input-major [in, out]

    def to_ours(self, w) -> np.ndarray:
        w = np.asarray(w)
        if w.shape != self.hf_shape:
            raise CheckpointError(f"checkpoint tensor {self.name} has shape {w.shape}, "
                                  f"the config implies {self.hf_shape}")
        return (w.T if self.transpose else w).reshape(self.shape)

    def to_hf(self, x) -> np.ndarray:
        x = np.asarray(x).reshape(self.hf_shape[::-1] if self.transpose else self.hf_shape)
        return np.ascontiguousarray(x.T if self.transpose else x)


def hf_layout(cfg: ModelConfig) -> tuple[dict[str, HfTensor], dict[str, HfTensor]]:
    """``(top-level leaves, per-layer leaves)``: our leaf name -> :class:`HfTensor`."""
    V, E, F = cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size
    H, G, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    top = {"embed": HfTensor("model.embed_tokens.weight", (V, E), (V, E)),
           "final_norm": HfTensor("model.norm.weight", (E,), (E,))}
    if not cfg.tie_embeddings:
        top["lm_head"] = HfTensor("lm_head.weight", (V, E), (E, V), transpose=True)
    layers = {
        "attn_norm": HfTensor("input_layernorm.weight", (E,), (E,)),
        # Gemma's post_attention_layernorm normalises the attention output (sandwich norms); its MLP
        # input norm is pre_feedforward_layernorm
        "mlp_norm": HfTensor("pre_feedforward_layernorm.weight" if cfg.sandwich_norms
                             else "post_attention_layernorm.weight", (E,), (E,)),
        "wq": HfTensor("self_attn.q_proj.weight", (H * D, E), (E, H, D), transpose=True),
        "wk": HfTensor("self_attn.k_proj.weight", (G * D, E), (E, G, D), transpose=True),
        "wv": HfTensor("self_attn.v_proj.weight", (G * D, E), (E, G, D), transpose=True),
        "wo": HfTensor("self_attn.o_proj.weight", (E, H * D), (H, D, E), transpose=True),
        "w_gate": HfTensor("mlp.gate_proj.weight", (F, E), (E, F), transpose=True),
        "w_up": HfTensor("mlp.up_proj.weight", (F, E), (E, F), transpose=True),
        "w_down": HfTensor("mlp.down_proj.weight", (E, F), (F, E), transpose=True),
    }
    if cfg.qkv_bias:
        layers.update(bq=HfTensor("self_attn.q_proj.bias", (H * D,), (H, D)),
                      bk=HfTensor("self_attn.k_proj.bias", (G * D,), (G, D)),
                      bv=HfTensor("self_attn.v_proj.bias", (G * D,), (G, D)))
    if cfg.o_bias:
        layers.update(bo=HfTensor("self_attn.o_proj.bias", (E,), (E,)))
    if cfg.qk_norm:
        layers.update(q_norm=HfTensor("self_attn.q_norm.weight", (D,), (D,)),
                      k_norm=HfTensor("self_attn.k_norm.weight", (D,), (D,)))
    if cfg.sandwich_norms:
        layers.update(post_attn_norm=HfTensor("post_attention_layernorm.weight", (E,), (E,)),
                      post_mlp_norm=HfTensor("post_feedforward_layernorm.weight", (E,), (E,)))
    return top, layers


def layer_name(i: int, name: str) -> str:
    return f"model.layers.{i}.{name}"


def params_from_state(cfg: ModelConfig, get: Callable[[str], np.ndarray], dtype=np.float32,
                      progress=None) -> dict:
    """Build params from a lookup ``get(hf_name) -> array`` (e.g. a state dict's ``__getitem__``)."""
    top, layer_map = hf_layout(cfg)
    layers = {}
    for leaf, t in layer_map.items():
        layers[leaf] = np.stack([t.to_ours(get(layer_name(i, t.name))) for i in range(cfg.num_layers)])
        if progress is not None:
            progress.update(1)
    tree = {leaf: t.to_ours(get(t.name)) for leaf, t in top.items()}
    tree["layers"] = layers
    return assemble(cfg, tree, dtype)


def to_hf(cfg: ModelConfig, params, dtype=None) -> dict[str, np.ndarray]:
    """Our parameter pytree -> HF state dict of NumPy arrays (the inverse of :func:`params_from_state`;
    a tied model has no ``lm_head.weight``, as in its safetensors). ``dtype`` None keeps the leaves'."""
    top, layer_map = hf_layout(cfg)
    have = (set(params) - {"layers"}, set(params["layers"]))
    if have != (set(top), set(layer_map)):
        raise CheckpointError(f"parameter names {sorted(have[0])} / layers {sorted(have[1])} do not "
                              f"fit the config ({sorted(top)} / {sorted(layer_map)})")
    cast = (lambda x: np.asarray(x)) if dtype is None else (lambda x: np.asarray(x).astype(dtype))
    out = {t.name: t.to_hf(cast(params[leaf])) for leaf, t in top.items()}
    for leaf, t in layer_map.items():
        stacked = cast(params["layers"][leaf])
        for i in range(cfg.num_layers):
            out[layer_name(i, t.name)] = t.to_hf(stacked[i])
    return out


def hf_config(cfg: ModelConfig) -> dict:
    """Our config -> a Hugging Face ``config.json`` dict (Llama, or Qwen2 for q/k/v biases without an
    output bias); ``config_from_hf(hf_config(cfg), cfg.name) == cfg``."""
    if cfg.family == "gemma3":
        return _gemma3_config(cfg)
    if cfg.o_bias and not cfg.qkv_bias:
        raise UnsupportedConfigError("an output-projection bias without q/k/v biases has no Hugging "
                                     "Face architecture here (Llama attention_bias sets all four)")
    qwen = cfg.qkv_bias and not cfg.o_bias
    eos = list(cfg.eos_token_ids)
    d = {"architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
         "model_type": "qwen2" if qwen else "llama", "hidden_act": "silu",
         "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
         "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
         "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
         "head_dim": cfg.head_dim, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
         "tie_word_embeddings": cfg.tie_embeddings,
         "max_position_embeddings": cfg.max_position_embeddings, "bos_token_id": cfg.bos_token_id,
         "eos_token_id": (eos[0] if len(eos) == 1 else eos) if eos else None}
    if qwen:
        d["use_sliding_window"] = False
    else:
        d["attention_bias"] = cfg.qkv_bias
    sc = cfg.rope_scaling
    if sc is not None:
        d["rope_scaling"] = {"rope_type": sc.kind, "factor": sc.factor}
        if sc.kind == "llama3":
            d["rope_scaling"].update(
                low_freq_factor=sc.low_freq_factor, high_freq_factor=sc.high_freq_factor,
                original_max_position_embeddings=sc.original_max_position_embeddings)
    return d


class _SafetensorsFolder:
    """Lazy tensor lookup over one or several safetensors files."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        index = folder / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in folder.glob("*.safetensors"))
            weight_map = None
        if not files:
            pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
            if pickles:
                raise CheckpointError(
                    f"{folder} holds only pickled weights ({', '.join(pickles)}); pickle files can run "
                    "arbitrary code when loaded, so they are refused. Convert them to safetensors first, "
                    "e.g. in Python with torch and transformers: "
                    "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(out, safe_serialization=True)")
            raise CheckpointError(f"no *.safetensors files in {folder}")
        self.handles, self.where = {}, {}
        for f in files:
            path = folder / f
            if not path.exists():
                raise CheckpointError(f"checkpoint shard {path} named in the index is missing")
            try:
                h = safe_open(str(path), framework="flax")
                keys = list(h.keys())
            except Exception as e:  # safetensors raises its own error types for bad headers
                raise CheckpointError(f"checkpoint file {path} is truncated or corrupted: {e}") from e
            self.handles[f] = h
            for k in keys:
                self.where[k] = f
        if weight_map is not None:
            missing = set(weight_map) - set(self.where)
            if missing:
                raise CheckpointError(f"tensors named in the index are absent from the shards: "
                                      f"{sorted(missing)[:5]}")

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.where:
            raise CheckpointError(f"checkpoint lacks tensor {name!r}")
        path = self.where[name]
        try:
            return np.asarray(self.handles[path].get_tensor(name))
        except Exception as e:
            raise CheckpointError(f"checkpoint file {path} is truncated or corrupted "
                                  f"(reading {name}): {e}") from e


def load_hf_folder(folder, dtype=np.float32, progress=None) -> tuple[ModelConfig, dict]:
    """Read ``config.json`` and the safetensors weights in ``folder`` -> ``(cfg, params)``."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{folder} has no config.json (expected a Hugging Face model folder)")
    cfg = config_from_hf(read_json_file(cfg_path), name=folder.name)
    get = _SafetensorsFolder(folder)
    return cfg, params_from_state(cfg, get, dtype, progress)


def _int_if_whole(x: float) -> float | int:
    """``x`` as an int when it is one to float32 precision (HF's config types it int)."""
    return int(round(x)) if abs(x - round(x)) < 1e-4 * max(1.0, abs(x)) else x


def _gemma3_config(cfg: ModelConfig) -> dict:
    """A Gemma 3 text ``config.json`` dict for our Gemma 3 config."""
    if cfg.rope_scaling is not None and cfg.rope_scaling.kind != "linear":
        raise UnsupportedConfigError(f"gemma3 with rope scaling {cfg.rope_scaling.kind!r} has no HF config here")
    full = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        full = {"rope_type": "linear", "rope_theta": cfg.rope_theta, "factor": cfg.rope_scaling.factor}
    eos = list(cfg.eos_token_ids)
    return {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
            "hidden_activation": "gelu_pytorch_tanh", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
            "rms_norm_eps": cfg.rms_norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
            "max_position_embeddings": cfg.max_position_embeddings, "bos_token_id": cfg.bos_token_id,
            "eos_token_id": (eos[0] if len(eos) == 1 else eos) if eos else None,
            "query_pre_attn_scalar": _int_if_whole((cfg.query_scale or cfg.head_dim ** -0.5) ** -2),
            "sliding_window": cfg.sliding_window,
            "layer_types": [f"{t}_attention" for t in (cfg.layer_types or ("full",) * cfg.num_layers)],
            "rope_parameters": {"full_attention": full,
                                "sliding_attention": {"rope_type": "default",
                                                      "rope_theta": cfg.local_rope_theta or cfg.rope_theta}},
            "attention_bias": False, "final_logit_softcapping": None, "attn_logit_softcapping": None}
