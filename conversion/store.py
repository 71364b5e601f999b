"""Save and restore a converted model (config JSON + orbax params + optional tokenizer files).

Layout of a converted folder: ``config.json`` (our ModelConfig), ``params/`` (orbax),
``tokenizer/`` (transformers files). Writes go to a temporary sibling and are renamed at the end,
so an interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from conversion.common import CheckpointError
from tempo_jax.config import ModelConfig, RopeScaling

# 2: GGUF q/k un-permutation fixed; folders written by version 1 from GGUF hold scrambled q/k.
FORMAT_VERSION = 2


def config_to_dict(cfg: ModelConfig) -> dict:
    return {"format_version": FORMAT_VERSION, **dataclasses.asdict(cfg)}


def format_version(folder) -> int | None:
    """The format version a converted folder was written with (None if unreadable)."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("format_version")
    except (OSError, ValueError):
        return None


def config_from_dict(d: dict) -> ModelConfig:
    d = dict(d)
    version = d.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"converted model has an unknown format version {version!r}: this "
                              f"tempo-jax reads {FORMAT_VERSION}; convert the checkpoint again")
    if d.get("rope_scaling"):
        d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    d["eos_token_ids"] = tuple(d.get("eos_token_ids") or ())
    return ModelConfig(**d)


def save_converted(out, cfg: ModelConfig, params: dict, tokenizer=None) -> Path:
    """Write a converted model folder atomically; returns its path."""
    import orbax.checkpoint as ocp

    out = Path(out).absolute()
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=1))
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp / "params", jax.tree_util.tree_map(np.asarray, params))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def load_converted(folder, dtype=None) -> tuple[ModelConfig, dict]:
    """Read a folder written by :func:`save_converted` -> ``(cfg, params)`` as device arrays."""
    import orbax.checkpoint as ocp

    folder = Path(folder).absolute()
    if not (folder / "config.json").exists() or not (folder / "params").exists():
        raise CheckpointError(f"{folder} is not a converted tempo-jax model (needs config.json and params/)")
    cfg = config_from_dict(json.loads((folder / "config.json").read_text()))
    try:
        with ocp.StandardCheckpointer() as ckpt:
            params = ckpt.restore(folder / "params")
    except Exception as e:
        raise CheckpointError(f"converted params in {folder} cannot be restored: {e}") from e
    if dtype is not None:
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)
    else:
        params = jax.tree_util.tree_map(jnp.asarray, params)
    return cfg, params


def load_tokenizer(folder):
    """The transformers tokenizer saved beside a converted model (without importing torch)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(folder) / "tokenizer"
    if not path.exists():
        raise CheckpointError(f"{folder} has no tokenizer/ folder")
    return PreTrainedTokenizerFast.from_pretrained(str(path))
