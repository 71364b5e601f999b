"""Load a model by name: a named model (the default among them), a converted folder, an HF folder or
a GGUF file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from tempo_jax.config import ModelConfig
from tempo_jax.errors import UsageError, user_input


@dataclasses.dataclass
class LoadedModel:
    """Config, parameter pytree and tokenizer (may be None) of one model."""

    cfg: ModelConfig
    params: Any
    tokenizer: Any
    source: str


def load_model(spec: str | None = None, dtype=jnp.float32, verbose: bool = True) -> LoadedModel:
    """``spec`` None/"default": the default model; a named model (``named_models.MODELS``: fetched,
    converted and cached on first use); a folder written by ``tempo-jax convert``; a Hugging Face
    folder; or a ``.gguf`` file (converted in memory).
    """
    from conversion.store import load_converted, load_tokenizer, looks_converted
    from tempo_jax.named_models import ensure_model, named

    model = named(spec)
    if model is not None and (spec is None or not Path(spec).exists()):  # an existing path wins
        folder = ensure_model(model, verbose)
        cfg, params = load_converted(folder, dtype)
        return LoadedModel(cfg, params, load_tokenizer(folder), model.id_prefix + cfg.name)
    assert spec is not None
    path = Path(spec)
    if path.is_dir() and looks_converted(path):
        cfg, params = load_converted(path, dtype)
        tok = load_tokenizer(path) if (path / "tokenizer").exists() else None
        return LoadedModel(cfg, params, tok, str(path))
    from conversion.convert import read_checkpoint

    cfg, params, tok = read_checkpoint(path, progress=verbose)
    return LoadedModel(cfg, jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params), tok, str(path))


def load_checked(spec, dtype: str = "float32") -> LoadedModel:
    """The model (parameters, hence the KV cache, in ``dtype``), with a bad --model (missing path,
    unreadable or unsupported checkpoint) refused as a user error."""
    from tempo_jax.named_models import MODELS, named

    if named(spec) is None and not Path(spec).exists():
        raise UsageError(f"--model {spec}: no such file or folder, nor a named model "
                         f"({', '.join(MODELS)}, or default)")
    with user_input():
        m = load_model(spec, dtype=jnp.dtype(dtype))
    if m.tokenizer is None:
        raise UsageError(f"model {m.source} has no tokenizer; convert it from a folder with tokenizer files")
    return m


def tokenizer_for(model_id: str):
    """(decode, eos ids) for a trace's model id when its tokenizer is on this machine, else None."""
    try:
        from conversion.store import load_tokenizer

        from tempo_jax.named_models import converted_dir, named

        model = named(model_id.split(":", 1)[0]) if ":" in model_id else None
        if model is not None:
            folder = converted_dir(model)
        else:
            folder = Path(model_id)
        if not (folder / "tokenizer").exists():
            return None
        tok = load_tokenizer(folder)
    except Exception:  # a missing or unreadable tokenizer: the report shows token ids instead
        return None
    eos = tok.eos_token_id
    return (lambda ids: tok.decode(list(ids))), ([int(eos)] if eos is not None else [])
