#!/usr/bin/env python3
"""Prompt-clustered statistics of parallel vs non-parallel attention.

    python3 experiments/analysis/statistical_confidence_analysis.py --data-dir results/

Reads the ``prompt_NNN/metrics.npz`` folders written by analyze_attention_mech_interp.py. For each
prompt and layer: ``delta = mean over steps whose context holds a parallel slot of
mean over heads of (parallel per-token - non-parallel per-token attention)`` (sink excluded from both).
The prompt is the unit: over prompts it reports the mean delta, a BCa bootstrap CI, a
sign-flip permutation p-value and d_z (mean / sd of the deltas), per layer and overall (mean over layers).
Writes ``stats.json`` and ``stats.md`` into the data dir and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True,
                   help="output folder of analyze_attention_mech_interp.py (holds prompt_NNN/)")
    p.add_argument("--n-boot", type=int, default=10000,
                   help="bootstrap resamples and Monte Carlo sign flips (default 10000)")
    p.add_argument("--ci", type=float, default=0.95, help="confidence level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the numpy Generator (default 0)")
    p.add_argument("--no-plots", action="store_true",
                   help="skip stats_layers.png (per-layer bars with CIs) and stats_heads.png")
    return p


def per_prompt_deltas(data_dir: Path, per_head: bool = False) -> tuple[list[str], np.ndarray]:
    """-> (prompt folder names, deltas [n_prompts, L] or [n_prompts, L, H] with ``per_head``)
    (NaN where a prompt had no parallel context)."""
    names, rows = [], []
    for pdir in sorted(data_dir.glob("prompt_*")):
        f = pdir / "metrics.npz"
        if not f.exists():
            continue
        with np.load(f) as z:
            par, non = z["par_per_token"], z["nonpar_per_token"]  # [S,L,H]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            d = np.nanmean(par - non, axis=2)  # [S,L] mean over heads
            keep = np.isfinite(d).all(axis=1)  # steps whose context holds a parallel slot
            full = par - non if per_head else d
            rows.append(full[keep].mean(0) if keep.any() else np.full(full.shape[1:], np.nan))
        names.append(pdir.name)
    if not rows:
        raise SystemExit(f"no prompt_*/metrics.npz under {data_dir}; run analyze_attention_mech_interp.py")
    return names, np.stack(rows)


def fmt(v, spec=".4g"):
    return "n/a" if v is None or not np.isfinite(v) else format(v, spec)


def main(argv=None) -> int:
    """Entry point: a bad input gives one line ``tempo-jax: error: ...`` on stderr and status 2."""
    from tempo_jax.errors import run_entry

    return run_entry(lambda: _main(build_parser().parse_args(argv)))


def _check_args(args) -> Path:
    """Refuse bad settings and a data dir without results before any statistics are computed."""
    from tempo_jax.errors import UsageError

    if not 0.0 < args.ci < 1.0:
        raise UsageError(f"--ci must be in (0, 1), got {args.ci}")
    if args.n_boot < 1:
        raise UsageError(f"--n-boot must be >= 1, got {args.n_boot}")
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir}: no such folder")
    if not any(data_dir.glob("prompt_*/metrics.npz")):
        raise UsageError(f"no prompt_*/metrics.npz under {data_dir}; run "
                         "analyze_attention_mech_interp.py with --output-dir pointing there first")
    return data_dir


def _main(args) -> int:
    from tempo_jax.stats import summarize_paired

    data_dir = _check_args(args)
    names, deltas = per_prompt_deltas(data_dir)
    n_valid = int(np.isfinite(deltas).all(axis=1).sum())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        overall = np.nanmean(deltas, axis=1)
    rows = [("layer %d" % l, summarize_paired(deltas[:, l], args.n_boot, args.ci, args.seed))
            for l in range(deltas.shape[1])]
    rows.append(("overall (mean of layers)", summarize_paired(overall, args.n_boot, args.ci, args.seed)))
    note = None
    if n_valid < 2:
        note = (f"only {n_valid} prompt(s) with parallel context: confidence intervals, p-values and "
                "effect sizes need several prompts (the prompt is the unit of analysis); per-prompt "
                "values are shown, no inference is made.")
    elif n_valid < 6:
        note = (f"only {n_valid} prompts: the BCa bootstrap CI is unreliable and the exact "
                f"sign-flip p cannot go below 2/2^{n_valid} = {2 / 2 ** n_valid:.3g}; use more prompts.")
    pct = int(round(args.ci * 100))
    lines = ["# Parallel vs non-parallel attention (per token), clustered by prompt", "",
             f"delta = parallel - non-parallel attention per token (sink excluded), mean over heads "
             f"and over steps with parallel context, one value per prompt. Prompts: {len(names)} "
             f"({n_valid} with parallel context). Bootstrap: BCa, {args.n_boot} resamples, "
             f"seed {args.seed}; p: two-sided sign-flip permutation test over prompts; d: d_z "
             f"= mean/sd of per-prompt deltas.", ""]
    if note:
        lines += [f"**Note:** {note}", ""]
    lines += [f"| unit | n | mean delta | {pct}% CI | p | d |", "|---|---|---|---|---|---|"]
    for name, r in rows:
        ci = "n/a" if not np.isfinite(r["lo"]) else f"[{fmt(r['lo'])}, {fmt(r['hi'])}]"
        lines.append(f"| {name} | {r['n']} | {fmt(r['mean'])} | {ci} | {fmt(r['p'], '.3g')} "
                     f"| {fmt(r['d'], '.3g')} |")
    md = "\n".join(lines) + "\n"
    (data_dir / "stats.md").write_text(md)
    clean = lambda v: None if isinstance(v, float) and not np.isfinite(v) else v
    (data_dir / "stats.json").write_text(json.dumps({
        "unit": "prompt", "prompts": names, "n_with_parallel_context": n_valid, "note": note,
        "per_prompt_delta": {"axes": ["prompt", "layer"],
                             "values": [[clean(float(x)) for x in row] for row in deltas]},
        "rows": [{"unit": name, **{k: clean(v) for k, v in r.items()}} for name, r in rows],
        "n_boot": args.n_boot, "ci": args.ci, "seed": args.seed}, indent=1))
    if not args.no_plots:
        _, head_deltas = per_prompt_deltas(data_dir, per_head=True)  # [P,L,H]
        plot_stats(rows[:-1], head_deltas, data_dir, pct, args, n_valid)
    print(md)
    return 0


def plot_stats(layer_rows, head_deltas, data_dir: Path, pct: int, args, n_valid: int) -> None:
    """stats_layers.png: per-layer mean delta with bootstrap CI bars; stats_heads.png: per layer x
    head mean delta over prompts, cells whose CI excludes 0 marked with a dot. With fewer than 2
    prompts with parallel context (``n_valid``) there is no CI: no bars, no dots, and the titles
    say so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tempo_jax.stats import bootstrap_ci

    means = np.array([r["mean"] for _, r in layer_rows], float)
    lo = np.array([r["lo"] for _, r in layer_rows], float)
    hi = np.array([r["hi"] for _, r in layer_rows], float)
    fig, ax = plt.subplots(figsize=(max(6, len(means) * 0.3), 3.2))
    x = np.arange(len(means))
    has_ci = n_valid >= 2
    if has_ci:
        err = np.nan_to_num(np.stack([means - lo, hi - means]), nan=0.0)
        ax.bar(x, means, yerr=err, capsize=2, color="tab:blue")
        ax.set_title(f"per-layer delta, {pct}% bootstrap CI over {n_valid} prompts", fontsize=9)
    else:
        ax.bar(x, np.nan_to_num(means, nan=0.0), color="tab:blue")
        ax.set_title(f"per-layer delta, {n_valid} prompt(s) with parallel context: no CI "
                     "(needs >= 2 prompts)", fontsize=9)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("layer")
    ax.set_ylabel("parallel - non-parallel (per token)")
    fig.tight_layout()
    fig.savefig(data_dir / "stats_layers.png", dpi=90)
    plt.close(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        grid = np.nanmean(head_deltas, axis=0)  # [L,H]
    fig, ax = plt.subplots(figsize=(max(4, grid.shape[1] * 0.5), max(3, grid.shape[0] * 0.25)))
    lim = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    for (l, h), _ in np.ndenumerate(grid) if has_ci else ():
        r = bootstrap_ci(head_deltas[:, l, h], n_boot=min(args.n_boot, 2000), ci=args.ci, seed=args.seed)
        if np.isfinite(r["lo"]) and (r["lo"] > 0 or r["hi"] < 0):
            ax.plot(h, l, "k.", ms=3)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("mean delta per head (dot: CI excludes 0)" if has_ci else
                 "mean delta per head (< 2 prompts: no CI)", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(data_dir / "stats_heads.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
