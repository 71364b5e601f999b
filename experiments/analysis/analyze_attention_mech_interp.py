#!/usr/bin/env python3
"""Per-step attention metrics of TEMPO runs, computed on explicit slot maps.

    python3 experiments/analysis/analyze_attention_mech_interp.py --prompt "The cat sat on the" \
        --max-tokens 50 --output-dir results/

For each prompt it runs TEMPO with ``generate(..., on_step=...)``; the callback turns that step's
attention ``attn[L,H,W,K]`` into metrics (``tempo_jax.metrics``) and drops it, so memory does not
grow with the full attention of every step. Output (``<output-dir>/prompt_NNN/``):
  trace.json / trace.npz   the run's trace (``Trace.save``)
  metrics.npz              arrays with axes (step, layer, head) or (step,), see metrics.json "axes"
  metrics.json             axes, per-step scalars, tree statistics, layer means
  summary.md               readable summary
  attention_by_layer.png   per-layer bars: parallel vs non-parallel attention per token (+ sink)
  heatmap_step.png         one step's attention over slots (mean over heads and queries), set
                           boundaries marked
and ``<output-dir>/metrics.npz`` (axes prompt, step, layer, head; NaN-padded) + ``index.json``.
Slot groups (sink excluded from both, own step reported as self/leakage): see tempo_jax/metrics.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

LH_KEYS = ("par_total", "par_per_token", "nonpar_total", "nonpar_per_token", "sink", "self",
           "leakage", "entropy", "js")
S_KEYS = ("set_n", "n_par", "n_nonpar", "diversity")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Metrics: attention to parallel vs non-parallel context slots (sink separate), attention "
               "entropy, sibling leakage, sibling Jensen-Shannon divergence, semantic diversity, "
               "token-tree stats. Statistics over prompts: statistical_confidence_analysis.py.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="one prompt text")
    g.add_argument("--prompt-file", help="text file with one prompt per line (blank lines skipped)")
    p.add_argument("--max-tokens", type=int, default=50, help="logical steps to generate (default 50)")
    p.add_argument("--output-dir", default="results", help="folder for all outputs (default results/)")
    p.add_argument("--model", default=None,
                   help="model: a converted tempo-jax folder, an HF folder or a .gguf file "
                        "(default: the default model)")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="TEMPO threshold tau: keep every token with p >= tau (default 0.1)")
    p.add_argument("--max-width", type=int, default=8, help="max members per set (default 8)")
    p.add_argument("--siblings", default="isolated", choices=["isolated", "visible", "full"],
                   help="sibling rule: isolated (no sibling), visible (lower member index), full")
    p.add_argument("--positions", default="shared", choices=["shared", "offset", "distinct"],
                   help="logical positions of a set's members (default shared)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed recorded in the config (default 0)")
    p.add_argument("--no-plots", action="store_true", help="skip the matplotlib figures")
    return p


class StepRecorder:
    """``on_step`` callback: per-step metrics, plus the head-mean attention of ONE step for a heatmap."""

    def __init__(self, embed):
        self.embed = embed
        self.rows: list[dict] = []
        self.heat = None  # (step, [L,K] mean attention, slot_step snapshot, set_n snapshot)

    def __call__(self, s, st, captured):
        from tempo_jax.metrics import query_slots_of, step_metrics

        f = {k: np.asarray(getattr(st, k)) for k in
             ("slot_step", "alive", "pruned_at", "set_n", "cache_len", "fed_n", "tokens")}
        a = np.asarray(captured.attn)
        m = step_metrics(a, f["slot_step"], f["alive"], f["pruned_at"], f["set_n"], f["cache_len"],
                         f["fed_n"], f["tokens"], s, embed=self.embed)
        self.rows.append(m)
        # keep one step for the heatmap: the first step whose context holds a parallel set
        if self.heat is None or (not self.heat[4] and m["n_par"] > 0):
            n = len(query_slots_of(f["cache_len"], f["fed_n"], s))
            self.heat = (s, a[:, :, :n].mean(axis=(1, 2)), f["slot_step"].copy(), f["set_n"].copy(),
                         m["n_par"] > 0)

    def arrays(self, L, H) -> dict[str, np.ndarray]:
        out = {k: np.stack([r[k] for r in self.rows]) if self.rows else np.zeros((0, L, H))
               for k in LH_KEYS}
        for k in S_KEYS:
            out[k] = np.asarray([r.get(k, np.nan) for r in self.rows], np.float64)
        return out


def _nanmean(x, axis=None):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def plot_layers(arr, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = arr["n_par"] > 0  # steps whose context holds a parallel slot
    par = _nanmean(arr["par_per_token"][keep], axis=(0, 2))
    non = _nanmean(arr["nonpar_per_token"][keep], axis=(0, 2))
    sink = _nanmean(arr["sink"], axis=(0, 2))
    L = len(par)
    x = np.arange(L)
    fig, ax = plt.subplots(1, 2, figsize=(max(6, 0.35 * L + 4), 3.6))
    ax[0].bar(x - 0.2, par, 0.4, label="parallel (per token)")
    ax[0].bar(x + 0.2, non, 0.4, label="non-parallel (per token)")
    ax[0].set_xlabel("layer")
    ax[0].set_ylabel("attention per token")
    ax[0].legend(fontsize=7)
    ax[0].set_title("mean over steps with parallel context, heads", fontsize=8)
    ax[1].bar(x, sink, color="grey")
    ax[1].set_xlabel("layer")
    ax[1].set_ylabel("attention on slot 0 (sink)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_heatmap(heat, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, a, slot_step, set_n, _ = heat
    K = int(np.sum(slot_step != -2))
    a = a[:, :K]
    fig, ax = plt.subplots(figsize=(max(6, 0.12 * K + 3), 0.3 * a.shape[0] + 2))
    im = ax.imshow(a, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="attention (mean over heads, queries)")
    ss = slot_step[:K]
    for k in range(1, K):
        if ss[k] != ss[k - 1]:
            ax.axvline(k - 0.5, color="white", lw=0.6)
    for t in np.unique(ss[ss >= 0]):
        if set_n[t] > 1:
            ks = np.flatnonzero(ss == t)
            ax.plot([ks[0] - 0.45, ks[-1] + 0.45], [-0.5, -0.5], color="red", lw=5, clip_on=False,
                    solid_capstyle="butt")
    ax.set_xlabel("key slot\n(white lines: set boundaries; red bars: parallel sets; slot 0 = sink)",
                  fontsize=8)
    ax.set_ylabel("layer")
    ax.set_yticks(range(a.shape[0]))
    ax.set_title(f"{title} - step {s}", fontsize=9, pad=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight", pad_inches=0.1)  # keeps the long labels whole
    plt.close(fig)


def summary_md(prompt, text, arr, tree, meta) -> str:
    L = arr["par_per_token"].shape[1] if arr["par_per_token"].ndim == 3 else 0
    lines = [f"# Attention analysis: `{prompt}`", "", f"Generated (bracket notation): `{text}`", "",
             "## Run", ""] + [f"- {k}: {v}" for k, v in meta.items()] + [
        "", "## Token tree", "",
        f"- steps: {tree['steps']}, mean set size (branching): {tree['branching']:.3f}, "
        f"parallel fraction: {tree['parallel_fraction']:.3f}, max width: {tree['max_width']}",
        f"- semantic diversity of parallel sets (mean pairwise cosine distance of input embeddings): "
        f"{_nanmean(arr['diversity']):.4f}" if np.isfinite(arr["diversity"]).any() else
        "- semantic diversity: no parallel set", "",
        "## Attention per layer (mean over heads and steps; per token; sink excluded from groups)", "",
        "Parallel / non-parallel columns count the steps whose context holds a parallel slot "
        f"({int(np.sum(arr['n_par'] > 0))} of {len(arr['n_par'])}).", "",
        "| layer | parallel | non-parallel | par - nonpar | sink | entropy (nats) | sibling leakage | sibling JS |",
        "|---|---|---|---|---|---|---|---|"]
    f = lambda v: "n/a" if not np.isfinite(v) else f"{v:.4f}"
    keep = arr["n_par"] > 0  # same steps for both groups (as in statistical_confidence_analysis.py)
    for l in range(L):
        par = _nanmean(arr["par_per_token"][keep, l]) if keep.any() else np.nan
        non = _nanmean(arr["nonpar_per_token"][keep, l]) if keep.any() else np.nan
        lines.append(f"| {l} | {f(par)} | {f(non)} | {f(par - non)} | {f(_nanmean(arr['sink'][:, l]))} "
                     f"| {f(_nanmean(arr['entropy'][:, l]))} | {f(_nanmean(arr['leakage'][:, l]))} "
                     f"| {f(_nanmean(arr['js'][:, l]))} |")
    lines += ["", "One prompt is one unit: use statistical_confidence_analysis.py over several prompts "
              "for confidence intervals.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Entry point: a bad input gives one line ``tempo-jax: error: ...`` on stderr and status 2."""
    from tempo_jax.errors import run_entry

    return run_entry(lambda: _main(build_parser().parse_args(argv)))


def _main(args) -> int:
    from tempo_jax.errors import UsageError, user_input

    if args.prompt is not None:
        prompts = [args.prompt] if args.prompt.strip() else []
    else:
        try:
            text = Path(args.prompt_file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--prompt-file {args.prompt_file}: "
                             f"{getattr(e, 'strerror', None) or e}") from e
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not prompts:
        raise UsageError("no prompt: the prompt is empty" if args.prompt is not None
                         else f"--prompt-file {args.prompt_file} holds no prompt (only blank lines)")
    if args.model not in (None, "default") and not Path(args.model).exists():
        raise UsageError(f"--model {args.model}: no such file or folder")
    from tqdm.auto import tqdm

    from tempo_jax.engine import GenerationConfig, generate
    from tempo_jax.engine.run import check_request
    from tempo_jax.loading import load_model
    from tempo_jax.metrics import tree_stats

    with user_input():  # every setting is checked before the model is loaded
        gcfg = GenerationConfig(max_steps=args.max_tokens, max_width=args.max_width,
                                threshold=args.threshold, siblings=args.siblings,
                                positions=args.positions, seed=args.seed)
        gcfg.validate()
        m = load_model(args.model)
    if m.tokenizer is None:
        raise UsageError(f"model {m.source} has no tokenizer; convert it from a folder with tokenizer files")
    for k, prompt in enumerate(prompts):  # every prompt is checked before the first one runs
        with user_input():
            try:
                check_request(m.cfg, gcfg, m.tokenizer(prompt).input_ids)
            except ValueError as e:
                raise ValueError(f"prompt {k + 1} of {len(prompts)}: {e}") from None
    L, H = m.cfg.num_layers, m.cfg.num_heads
    embed = np.asarray(m.params["embed"], np.float32)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    decode = lambda ids: m.tokenizer.decode(ids)
    per_prompt, index = [], []
    for k, prompt in enumerate(tqdm(prompts, desc="prompts", unit="prompt")):
        ids = m.tokenizer(prompt).input_ids
        rec = StepRecorder(embed)
        trace = generate(m.params, m.cfg, ids, gcfg, on_step=rec, model_id=m.source)
        pdir = out / f"prompt_{k:03d}"
        trace.save(pdir, "trace")
        arr = rec.arrays(L, H)
        tree = tree_stats(trace.arrays["set_n"])
        np.savez_compressed(pdir / "metrics.npz", **arr)
        text = trace.render(decode, eos_ids=m.cfg.eos_token_ids)
        axes = {k2: ["step", "layer", "head"] for k2 in LH_KEYS} | {k2: ["step"] for k2 in S_KEYS}
        meta = {"model": m.source, "threshold": args.threshold, "max_tokens": args.max_tokens,
                "max_width": args.max_width, "siblings": args.siblings, "positions": args.positions,
                "seed": args.seed, "prompt_tokens": len(ids)}
        layer_means = {k2: _nanmean(arr[k2], axis=(0, 2)).tolist() for k2 in LH_KEYS} \
            if len(arr["set_n"]) else {}
        tojs = lambda v: [None if not np.isfinite(x) else float(x) for x in v]
        (pdir / "metrics.json").write_text(json.dumps({
            "prompt": prompt, "text": text, "axes": axes, "config": meta, "tree": tree,
            "per_step": {k2: tojs(arr[k2]) for k2 in S_KEYS},
            "layer_means": {k2: tojs(v) for k2, v in layer_means.items()},
            "heatmap_step": None if rec.heat is None else int(rec.heat[0]),
            "slot_groups": "see tempo_jax/metrics.py (sink = slot 0, excluded from both groups)"},
            indent=1))
        (pdir / "summary.md").write_text(summary_md(prompt, text, arr, tree, meta))
        if not args.no_plots and len(arr["set_n"]):
            plot_layers(arr, pdir / "attention_by_layer.png", prompt[:60])
            if rec.heat is not None:
                plot_heatmap(rec.heat, pdir / "heatmap_step.png", prompt[:60])
        per_prompt.append(arr)
        index.append({"prompt": prompt, "dir": pdir.name, "steps": tree["steps"],
                      "branching": tree["branching"], "parallel_fraction": tree["parallel_fraction"]})
        tqdm.write(f"[{k}] {text}")
    S = max((len(a["set_n"]) for a in per_prompt), default=0)
    allarr = {}
    for key in LH_KEYS:
        x = np.full((len(per_prompt), S, L, H), np.nan)
        for i, a in enumerate(per_prompt):
            x[i, :len(a[key])] = a[key]
        allarr[key] = x
    for key in S_KEYS:
        x = np.full((len(per_prompt), S), np.nan)
        for i, a in enumerate(per_prompt):
            x[i, :len(a[key])] = a[key]
        allarr[key] = x
    np.savez_compressed(out / "metrics.npz", **allarr)
    (out / "index.json").write_text(json.dumps({
        "axes": {k2: ["prompt", "step", "layer", "head"] for k2 in LH_KEYS}
        | {k2: ["prompt", "step"] for k2 in S_KEYS},
        "prompts": index}, indent=1))
    print(f"wrote {len(per_prompt)} prompt folder(s) and {out / 'metrics.npz'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
