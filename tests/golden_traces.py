"""Pinned traces of the default model: greedy, TEMPO (isolated, visible, pruning on) and compat mode.

``python tests/golden_traces.py`` rewrites ``tests/data/golden_traces.npz``; the test
(``test_golden_traces.py``) regenerates them and requires bit-identical arrays, so refactors of the
engine cannot change behaviour unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tempo_jax.engine import GenerationConfig

PATH = Path(__file__).parent / "data" / "golden_traces.npz"
PROMPT = "The cat sat on the"
CONFIGS = {
    "greedy": GenerationConfig(method="greedy", max_steps=16),
    "tempo_isolated": GenerationConfig(threshold=0.05, max_width=8, max_steps=16),
    "tempo_visible": GenerationConfig(threshold=0.05, max_width=8, max_steps=16, siblings="visible"),
    "tempo_prune": GenerationConfig(threshold=0.05, max_width=8, max_steps=16, prune=True,
                                    prune_rho=0.9),
    "compat": GenerationConfig(threshold=0.05, max_width=20, max_steps=16, compat="upstream"),
}


def traces(m, params=None, names=None) -> dict[str, np.ndarray]:
    """The pinned arrays of the runs ``names`` (default all), from ``params`` (default the model's)."""
    from tempo_jax.engine import generate

    ids = m.tokenizer(PROMPT).input_ids
    params = m.params if params is None else params
    out = {}
    for name, g in CONFIGS.items():
        if names is not None and name not in names:
            continue
        tr = generate(params, m.cfg, ids, g)
        for k, v in tr.arrays.items():
            out[f"{name}/{k}"] = np.asarray(v)
    return out


if __name__ == "__main__":
    from tempo_jax.loading import load_model

    arrays = traces(load_model())
    PATH.parent.mkdir(exist_ok=True)
    np.savez_compressed(PATH, **arrays)
    for k in sorted(a for a in arrays if a.endswith("/set_n")):
        print(k, arrays[k].tolist())
    for k in sorted(a for a in arrays if a.endswith("/pruned_at")):
        print(k, int((arrays[k] >= 0).sum()), "pruned")
