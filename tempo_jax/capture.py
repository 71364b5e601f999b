"""Streaming capture: per-step attention data appended to disk as it is produced.

Use a :class:`CaptureWriter` as the ``on_step`` callback of ``generate`` (host driver). Each captured
array goes to ``<name>.f32`` (raw float32, one record per step) and ``capture.json`` holds names,
per-step shapes and named axes; nothing accumulates in host memory, whatever the number of steps.
:func:`load_capture` maps the files back as ``[S,...]`` arrays without reading them into memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

AXES = {
    "attn": ("step", "layer", "head", "query", "slot"),
    "received": ("step", "layer", "head", "slot"),
    "entropy": ("step", "layer", "head", "query"),
    "sink": ("step", "layer", "head", "query"),
    "leakage": ("step", "layer", "head", "query"),
    "resid": ("step", "layer", "query", "embed"),
}


class CaptureWriter:
    """``on_step(s, state, captured)`` that appends the fields of ``captured`` (a
    :class:`~tempo_jax.engine.outputs.StepCapture`) to files."""

    def __init__(self, out_dir):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.steps = 0
        for old in self.out.glob("*.f32"):
            old.unlink()

    def __call__(self, s, state, captured) -> None:
        items = captured.arrays()
        if not items:
            return
        for name, arr in items.items():
            a = np.asarray(arr, np.float32)
            if self.shapes.setdefault(name, a.shape) != a.shape:
                raise ValueError(f"capture {name}: step {s} has shape {a.shape}, earlier {self.shapes[name]}")
            with open(self.out / f"{name}.f32", "ab") as f:
                f.write(a.tobytes())
        self.steps += 1
        meta = {"steps": self.steps, "arrays": {
            n: {"shape": list(sh), "axes": list(AXES.get(n, ("step",) + tuple(f"dim{i}" for i in range(len(sh)))))}
            for n, sh in self.shapes.items()}}
        (self.out / "capture.json").write_text(json.dumps(meta))


def load_capture(out_dir) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
    """name -> (read-only memmap ``[S,...]``, axis names) for a folder written by CaptureWriter."""
    out = Path(out_dir)
    meta = json.loads((out / "capture.json").read_text())
    res: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    for name, info in meta["arrays"].items():
        shape = (meta["steps"], *info["shape"])
        res[name] = (np.memmap(out / f"{name}.f32", np.float32, "r", shape=shape), tuple(info["axes"]))
    return res


def capture_dir(run_dir, stem: str = "trace_000") -> Path:
    """Where ``generate --html`` streams the capture of ``stem``: ``capture/`` for the first prompt,
    ``capture_NNN/`` for prompt NNN > 0."""
    k = stem.rsplit("_", 1)[-1]
    return Path(run_dir) / ("capture" if k in ("000", stem) else f"capture_{k}")
