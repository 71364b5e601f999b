"""Provenance recorded with every result: the parameters' hash, the commit and whether the tree was
clean, package versions; and the JSON / CSV writers results use."""

from __future__ import annotations

import csv
import hashlib
import math
import platform
import subprocess
from pathlib import Path

import numpy as np


def params_hash(params) -> str:
    """sha256 over every parameter array's dtype, shape and bytes, in tree-flatten order."""
    import jax

    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        a = np.asarray(leaf)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def git(root: Path, *args) -> str:
    """``git ARGS`` in ``root``: its stripped stdout, "" when git is missing or fails to run."""
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_state(root: Path) -> dict:
    """The commit of the repository at ``root`` and whether tracked files differ from it."""
    return {"commit": git(root, "rev-parse", "HEAD") or "unknown",
            "dirty": bool(git(root, "status", "--porcelain", "--untracked-files=no"))}


def versions() -> dict[str, str | None]:
    """Python's and the numeric packages' versions."""
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "numpy", "scipy", "statsmodels", "optax"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def json_safe(x):
    """``x`` with numpy scalars as Python numbers and non-finite floats as None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows (dicts) as CSV, columns in first-seen order, floats to 6 significant digits."""
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
