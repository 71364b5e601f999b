"""Hugging Face checkpoint folder (config.json + safetensors, sharded or not) -> parameter pytree.

The conversion is a declarative name map (HF tensor name -> our leaf) plus small per-key
transforms (transpose to input-major, split heads). Nothing is permuted: RoPE stays rotate-half.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from conversion.common import CheckpointError, assemble
from tempo_jax.config import ModelConfig, config_from_hf

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def hf_layer_map(cfg: ModelConfig) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """Our per-layer leaf -> (HF tensor name under ``model.layers.{i}.``, transform)."""
    E, H, G, D = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    m = {
        "attn_norm": ("input_layernorm.weight", lambda w: w),
        "mlp_norm": ("post_attention_layernorm.weight", lambda w: w),
        "wq": ("self_attn.q_proj.weight", lambda w: w.T.reshape(E, H, D)),
        "wk": ("self_attn.k_proj.weight", lambda w: w.T.reshape(E, G, D)),
        "wv": ("self_attn.v_proj.weight", lambda w: w.T.reshape(E, G, D)),
        "wo": ("self_attn.o_proj.weight", lambda w: w.T.reshape(H, D, E)),
        "w_gate": ("mlp.gate_proj.weight", lambda w: w.T),
        "w_up": ("mlp.up_proj.weight", lambda w: w.T),
        "w_down": ("mlp.down_proj.weight", lambda w: w.T),
    }
    if cfg.qkv_bias:
        m.update(bq=("self_attn.q_proj.bias", lambda b: b.reshape(H, D)),
                 bk=("self_attn.k_proj.bias", lambda b: b.reshape(G, D)),
                 bv=("self_attn.v_proj.bias", lambda b: b.reshape(G, D)))
    if cfg.o_bias:
        m.update(bo=("self_attn.o_proj.bias", lambda b: b))
    return m


def params_from_state(cfg: ModelConfig, get: Callable[[str], np.ndarray], dtype=np.float32,
                      progress=None) -> dict:
    """Build params from a lookup ``get(hf_name) -> array`` (e.g. a state dict's ``__getitem__``)."""
    layer_map = hf_layer_map(cfg)
    layers = {}
    for leaf, (name, fn) in layer_map.items():
        layers[leaf] = np.stack([fn(get(f"model.layers.{i}.{name}")) for i in range(cfg.num_layers)])
        if progress is not None:
            progress.update(1)
    tree = {"embed": get("model.embed_tokens.weight"), "layers": layers,
            "final_norm": get("model.norm.weight")}
    if not cfg.tie_embeddings:
        tree["lm_head"] = get("lm_head.weight").T
    return assemble(cfg, tree, dtype)


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
    cfg = config_from_hf(json.loads(cfg_path.read_text()), name=folder.name)
    get = _SafetensorsFolder(folder)
    return cfg, params_from_state(cfg, get, dtype, progress)
