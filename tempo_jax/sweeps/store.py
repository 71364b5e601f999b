"""Sweep results on disk: per-chunk orbax checkpoints, the merged named-axes store, the summary.

Layout of an output directory::

    sweep.json          normalised spec, its hash, grid coordinates (refuses a different spec)
    chunks/chunk_NNNNNN orbax checkpoint of one finished chunk (world indices + outputs)
    results.npz         merged arrays, world axes first: [prompt,threshold,siblings,positions,heads,seed,...]
    results.json        dims of every array and the coordinates of every axis
    summary.md          per axis value: mean set size, fraction of parallel steps, pruned, entropy

Per-world arrays (S steps, W members): tokens/probs/valid/positions/pruned_at/prune_score [S,W],
tau/entropy/set_n [S], n_steps/n_written []; per-step attention records [S,L,H]: sink,
attn_entropy, leakage, par_per_token, nonpar_per_token (NaN for steps not run). ``pruned_at`` is
the step at which a member was pruned (-1: never or never in the cache); ``prune_score`` NaN when never scored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np

from tempo_jax.sweeps.spec import AXES

MEMBER_DIMS = {"tokens": ("step", "member"), "probs": ("step", "member"),
               "valid": ("step", "member"), "positions": ("step", "member"),
               "pruned_at": ("step", "member"), "prune_score": ("step", "member"),
               "tau": ("step",), "entropy": ("step",), "set_n": ("step",), "n_steps": (),
               "n_written": (),
               # per-step attention records (tempo_jax.engine.outputs.StepRecords)
               **{k: ("step", "layer", "head") for k in
                  ("sink", "attn_entropy", "leakage", "par_per_token", "nonpar_per_token")}}
STORE_VERSION = 2


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def claim_dir(out: Path, meta: dict, write: bool) -> None:
    """Refuse an output directory written by a different spec; record ``meta`` (if ``write``)."""
    out.mkdir(parents=True, exist_ok=True)
    f = out / "sweep.json"
    if f.exists():
        old = json.loads(f.read_text())
        if old.get("digest") != meta["digest"]:
            raise ValueError(
                f"output directory {out} holds a sweep with a different spec (hash {old.get('digest')}, "
                f"this spec {meta['digest']}); use another --out or delete the directory")
        return
    if write:
        _atomic_write(f, json.dumps(meta, indent=1))


# --- chunks ------------------------------------------------------------------------------------
def chunk_path(out: Path, i: int) -> Path:
    return Path(out).absolute() / "chunks" / f"chunk_{i:06d}"


def chunk_done(out: Path, i: int) -> bool:
    """A chunk is done when its orbax checkpoint was finalised (renamed from its temporary name)."""
    return chunk_path(out, i).is_dir()


def clear_partial(out: Path) -> None:
    """Remove temporary directories left by a killed save (orbax writes, then renames)."""
    d = Path(out) / "chunks"
    if d.is_dir():
        for p in d.iterdir():
            if "tmp" in p.name:
                shutil.rmtree(p, ignore_errors=True)


def _checkpointer(process_index: int):
    import orbax.checkpoint as ocp

    mp = ocp.options.MultiprocessingOptions(primary_host=process_index,
                                            active_processes={process_index},
                                            barrier_sync_key_prefix=f"tempo_sweep_p{process_index}")
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=mp),
                            multiprocessing_options=mp)


def save_chunk(out: Path, i: int, arrays: dict, process_index: int = 0) -> None:
    """Checkpoint one chunk (host NumPy arrays) with orbax. In multi-process runs orbax writes host
    arrays only from process 0 (and refuses host-local jax.Arrays), so process 0 saves every chunk."""
    import orbax.checkpoint as ocp

    from tempo_jax.errors import sigint_deferred

    path = chunk_path(out, i)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sigint_deferred(), _checkpointer(process_index) as ckpt:  # Ctrl-C after the chunk is saved
        ckpt.save(path, args=ocp.args.PyTreeSave({k: np.asarray(v) for k, v in arrays.items()}))


def load_chunk(out: Path, i: int, process_index: int = 0) -> dict:
    """A chunk's arrays as NumPy (whichever process wrote it)."""
    import orbax.checkpoint as ocp

    names = ("world",) + tuple(MEMBER_DIMS)
    args = {k: ocp.RestoreArgs(restore_type=np.ndarray) for k in names}
    with _checkpointer(process_index) as ckpt:
        got = ckpt.restore(chunk_path(out, i), args=ocp.args.PyTreeRestore(restore_args=args))
    return {k: np.asarray(v) for k, v in got.items()}


# --- merged store ------------------------------------------------------------------------------
@dataclasses.dataclass
class SweepResults:
    """Merged results: ``arrays[name]`` with dims ``dims[name]`` (world axes first), ``coords[axis]``."""

    arrays: dict[str, np.ndarray]
    dims: dict[str, tuple[str, ...]]
    coords: dict[str, list]
    meta: dict

    def world_shape(self) -> tuple[int, ...]:
        return tuple(len(self.coords[a]) for a in AXES)

    def flat(self, name: str) -> np.ndarray:
        """``arrays[name]`` with the world axes flattened to one B axis (C order)."""
        a = self.arrays[name]
        return a.reshape((-1,) + a.shape[len(AXES):])


def merge(out: Path, grid_meta: dict, n_chunks: int, chunk: int, n_worlds: int,
          process_index: int = 0) -> SweepResults:
    """Assemble every chunk (each world exactly once) into the store and write it."""
    shape = tuple(grid_meta["shape"])
    flat: dict[str, np.ndarray] = {}
    seen = np.zeros(n_worlds, int)
    for i in range(n_chunks):
        got = load_chunk(out, i, process_index)
        worlds = got.pop("world")
        keep = worlds >= 0
        w = worlds[keep]
        seen[w] += 1
        for k, v in got.items():
            if k not in flat:
                flat[k] = np.zeros((n_worlds,) + v.shape[1:], v.dtype)
            flat[k][w] = v[keep]
    if not (seen == 1).all():
        raise RuntimeError(f"chunks cover worlds {np.flatnonzero(seen != 1)[:10]} not exactly once")
    arrays = {k: v.reshape(shape + v.shape[1:]) for k, v in flat.items()}
    dims = {k: AXES + MEMBER_DIMS[k] for k in arrays}
    res = SweepResults(arrays, dims, grid_meta["coords"], grid_meta)
    np.savez_compressed(Path(out) / "results.npz", **arrays)  # type: ignore[arg-type]  # numpy stub: **kwds as bool
    _atomic_write(Path(out) / "results.json", json.dumps(
        {"store_version": STORE_VERSION, "dims": dims, "coords": grid_meta["coords"],
         "digest": grid_meta["digest"], "spec": grid_meta["spec"]}, indent=1))
    _atomic_write(Path(out) / "summary.md", summary_markdown(res))
    return res


def load_results(out) -> SweepResults:
    """Read the merged store of a finished sweep."""
    out = Path(out)
    if not (out / "results.json").exists():
        raise FileNotFoundError(f"{out} has no merged results (results.json); is the sweep finished?")
    meta = json.loads((out / "results.json").read_text())
    if meta.get("store_version") != STORE_VERSION:
        raise ValueError(f"store version {meta.get('store_version')} is not {STORE_VERSION}")
    with np.load(out / "results.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return SweepResults(arrays, {k: tuple(v) for k, v in meta["dims"].items()}, meta["coords"], meta)


# --- summary -----------------------------------------------------------------------------------
def world_stats(res: SweepResults) -> dict[str, np.ndarray]:
    """Per world [B]: mean set size, fraction of parallel steps, pruned members, mean entropy
    (means over the steps each world actually ran)."""
    n = res.flat("n_steps")
    S = res.flat("set_n").shape[1]
    ran = np.arange(S)[None] < n[:, None]
    cnt = np.maximum(ran.sum(1), 1)
    set_n = res.flat("set_n")
    return {"mean_set_size": (set_n * ran).sum(1) / cnt,
            "frac_parallel": ((set_n > 1) & ran).sum(1) / cnt,
            "pruned": ((res.flat("pruned_at") >= 0) & res.flat("valid")).sum((1, 2)).astype(float),
            "mean_entropy": (res.flat("entropy") * ran).sum(1) / cnt,
            "sink": _nanmean(res.flat("sink"), (1, 2, 3)),
            "par_minus_nonpar": _nanmean(res.flat("par_per_token") - res.flat("nonpar_per_token"),
                                         (1, 2, 3)),
            "steps": n.astype(float)}


def _nanmean(x, axis):
    ok = np.isfinite(x)
    return np.where(ok, x, 0.0).sum(axis) / np.maximum(ok.sum(axis), 1) + np.where(
        ok.any(axis), 0.0, np.nan)


def _label(axis, v) -> str:
    if axis == "heads":
        return "none" if not v else " ".join(f"L{l}H{h}" for l, h in v)
    if axis == "prompt" and not isinstance(v, str):
        return "ids " + ",".join(map(str, v[:8])) + ("..." if len(v) > 8 else "")
    s = str(v)
    return s if len(s) <= 48 else s[:45] + "..."


def summary_markdown(res: SweepResults) -> str:
    st = world_stats(res)
    shape = res.world_shape()
    lines = [f"# Sweep summary ({int(np.prod(shape))} worlds, spec {res.meta.get('digest', '')})", "",
             "Means over worlds of per-world means over the steps run. sink: attention on slot 0; "
             "par_minus_nonpar: attention per token on parallel minus non-parallel context slots "
             "(means over steps, layers, heads; per layer/head in results.npz).", ""]
    cols = ["mean_set_size", "frac_parallel", "pruned", "mean_entropy", "sink", "par_minus_nonpar",
            "steps"]
    for ax_i, axis in enumerate(AXES):
        if shape[ax_i] == 1 and axis != "prompt":
            continue
        lines += [f"## {axis}", "", "| value | worlds | " + " | ".join(cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        idx = np.unravel_index(np.arange(int(np.prod(shape))), shape)[ax_i]
        for j, v in enumerate(res.coords[axis]):
            sel = idx == j
            vals = " | ".join(f"{st[c][sel].mean():.3f}" for c in cols)
            lines.append(f"| {_label(axis, v)} | {int(sel.sum())} | {vals} |")
        lines.append("")
    return "\n".join(lines)
