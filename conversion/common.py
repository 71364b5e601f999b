"""Shared pieces of checkpoint conversion: the error type and the final shape check."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from tempo_jax.config import ModelConfig
from tempo_jax.model import param_shapes


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not match its config."""


def read_json_file(path, what: str = "") -> dict:
    """A JSON object from ``path``, or a CheckpointError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a text file{what}") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}){what}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: {e.strerror or e}{what}") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(d).__name__}{what}")
    return d


def assemble(cfg: ModelConfig, tree: dict, dtype) -> dict:
    """Cast leaves to ``dtype`` and check every shape against :func:`param_shapes` of ``cfg``."""
    want = param_shapes(cfg)
    is_shape = lambda x: isinstance(x, tuple)
    want_paths = {jax.tree_util.keystr(p): s for p, s in
                  jax.tree_util.tree_flatten_with_path(want, is_leaf=is_shape)[0]}
    got = jax.tree_util.tree_flatten_with_path(tree)[0]
    got_paths = {jax.tree_util.keystr(p): np.asarray(x) for p, x in got}
    if set(want_paths) != set(got_paths):
        raise CheckpointError(f"parameter names differ from the model's: missing "
                              f"{sorted(set(want_paths) - set(got_paths))}, extra "
                              f"{sorted(set(got_paths) - set(want_paths))}")
    for path, shape in want_paths.items():
        if got_paths[path].shape != shape:
            raise CheckpointError(f"parameter {path} has shape {got_paths[path].shape}, "
                                  f"the config implies {shape}")
    return jax.tree_util.tree_map(lambda x: np.asarray(x).astype(dtype), tree)
