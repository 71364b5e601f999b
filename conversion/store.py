"""Save and restore a converted model (config JSON + orbax params + optional tokenizer files).

Layout of a converted folder: ``config.json`` (our ModelConfig), ``params/`` (orbax),
``tokenizer/`` (transformers files). Writes go to a temporary sibling and are renamed at the end,
so an interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from conversion.common import CheckpointError, read_json_file
from tempo_jax.config import ModelConfig, RopeScaling
from tempo_jax.errors import one_line

# 2: GGUF q/k un-permutation fixed; folders written by version 1 from GGUF hold scrambled q/k.
FORMAT_VERSION = 2


def config_to_dict(cfg: ModelConfig) -> dict:
    return {"format_version": FORMAT_VERSION, **dataclasses.asdict(cfg)}


def format_version(folder) -> int | None:
    """The format version a converted folder was written with (None if unreadable)."""
    try:
        d = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return d.get("format_version") if isinstance(d, dict) else None


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


def save_converted(out, cfg: ModelConfig, params: dict, tokenizer=None, source: str = "") -> Path:
    """Write a converted model folder atomically (a temporary sibling renamed at the end); returns
    its path. Whether ``out`` may be replaced is the caller's decision
    (``destinations.check_convert_destination``)."""
    from tempo_jax.destinations import staged_replace

    with staged_replace(out) as tmp:
        write_converted(tmp, cfg, params, tokenizer, source)
    return Path(out).absolute()


def write_converted(folder: Path, cfg: ModelConfig, params: dict, tokenizer=None, source: str = "") -> None:
    """Fill the empty ``folder``: config.json, params/ (orbax), tokenizer/, and the marker file
    that identifies it as a conversion (``convert --force`` replaces only such a folder)."""
    import orbax.checkpoint as ocp

    from tempo_jax.destinations import MODEL_MARKER

    (folder / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=1))
    from tempo_jax.errors import sigint_deferred

    with sigint_deferred(), ocp.StandardCheckpointer() as ckpt:  # orbax's threads finish first
        ckpt.save(folder / "params", jax.tree_util.tree_map(np.asarray, params))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder / "tokenizer"))
    (folder / MODEL_MARKER).write_text(json.dumps(
        {"written_by": "tempo-jax convert", "format_version": FORMAT_VERSION, "source": source}) + "\n")


def load_converted(folder, dtype=None) -> tuple[ModelConfig, dict]:
    """Read a folder written by :func:`save_converted` -> ``(cfg, params)`` as device arrays.
    A damaged folder is refused with a message naming the missing or broken file."""
    import orbax.checkpoint as ocp

    folder = Path(folder).absolute()
    again = "; convert the checkpoint again"
    for name in ("config.json", "params"):
        if not (folder / name).exists():
            raise CheckpointError(f"{folder / name} is missing: {folder} is not a complete converted "
                                  f"tempo-jax model{again}")
    try:
        cfg = config_from_dict(read_json_file(folder / "config.json", again))
    except CheckpointError as e:
        raise CheckpointError(e if str(folder) in str(e) else f"{folder / 'config.json'}: {e}") from None
    except TypeError as e:  # fields this ModelConfig does not have, or lacks
        raise CheckpointError(f"{folder / 'config.json'}: not a tempo-jax model config ({e}){again}") from None
    try:
        with ocp.StandardCheckpointer() as ckpt:
            params = ckpt.restore(folder / "params")
    except Exception as e:
        raise CheckpointError(f"{folder / 'params'}: cannot be restored ({one_line(e)[:200]}){again}") from e
    if dtype is not None:
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)
    else:
        params = jax.tree_util.tree_map(jnp.asarray, params)
    return cfg, params


def looks_converted(folder) -> bool:
    """True for a folder meant to be a converted model, even a damaged one (its marker, a params/
    folder, or a config.json with our ``format_version``), so loading it names what is broken
    instead of reading it as a Hugging Face folder."""
    from tempo_jax.destinations import MODEL_MARKER

    folder = Path(folder)
    return ((folder / MODEL_MARKER).exists() or (folder / "params").exists()
            or format_version(folder) is not None)


def load_tokenizer(folder):
    """The transformers tokenizer saved beside a converted model (without importing torch)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(folder) / "tokenizer"
    if not path.exists():
        raise CheckpointError(f"{folder} has no tokenizer/ folder")
    return PreTrainedTokenizerFast.from_pretrained(str(path))
