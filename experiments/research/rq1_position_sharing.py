"""Research questions 1.1 and 1.2: does sharing one RoPE position change the attention that parallel
tokens receive, does it scale with the number of parallel tokens, and do small offsets restore it?

Controlled design (same tokens, same context, only positions differ). Per prompt: the prompt's top-n
next tokens are written as ONE isolated parallel set (each member sees the prompt and itself) at
positions ``P + i * delta`` (delta 0 = shared; delta 1 = ordinary distinct positions). Then one probe
query, the next token TEMPO would pick (argmax of the members' mixture), written after the set and
seeing everything, is read out: attention per token on the members vs per token on the prompt
(the sink, slot 0, excluded from both and reported separately), per layer and head.
Inference over prompts (the unit), never pooled layer x head values: for each (n, delta != 0) the
per-prompt difference of member attention per token against delta = 0, with a percentile bootstrap
CI, a sign-flip permutation p and paired Cohen's d.

    python3 experiments/research/rq1_position_sharing.py --out results/rq1 [--n-parallel 2 3 5 8]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DEFAULT_PROMPTS = ["The cat sat on the", "Once upon a time, there was a", "The capital of France is",
                   "In the morning I like to", "The best way to learn a language is",
                   "My favourite colour is", "The scientist opened the door and", "Water boils at",
                   "She picked up the phone and", "The most important thing in life is"]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-file", help="one prompt per line (default: a built-in set of 10)")
    p.add_argument("--model", default=None, help="default model, a converted folder, HF folder or .gguf")
    p.add_argument("--n-parallel", type=int, nargs="+", default=[2, 3, 5, 8],
                   help="numbers of parallel tokens written at one step")
    p.add_argument("--deltas", type=float, nargs="+", default=[0.0, 0.001, 0.01, 0.1, 1.0],
                   help="position offsets: member i at P + i*delta (must include 0)")
    p.add_argument("--out", default="results/rq1")
    p.add_argument("--n-boot", type=int, default=5000)
    p.add_argument("--no-plots", action="store_true")
    return p


def measure(params, cfg, ids, n, delta):
    """-> dict of [L,H] arrays for one prompt, set size n and offset delta."""
    import jax
    import jax.numpy as jnp

    from tempo_jax.model import TapsSpec, causal_mask, forward as _forward, init_cache

    forward = jax.jit(_forward, static_argnames=("cfg", "taps"))  # executables cached by JAX
    P = len(ids)
    K = P + n + 1
    cache = init_cache(cfg, 1, K)
    logits, cache, _ = forward(params, cfg, jnp.asarray([ids]), jnp.arange(P, dtype=jnp.float32)[None],
                               jnp.arange(P)[None], causal_mask(1, P, K), cache)
    d0 = np.asarray(jax.nn.softmax(logits[0, -1]))
    members = np.argsort(-d0)[:n]
    k = np.arange(K)
    iso = (k[None, :] < P) | (k[None, :] == P + np.arange(n)[:, None])  # [n,K] isolated
    pos = P + delta * np.arange(n)
    mlog, cache, _ = forward(params, cfg, jnp.asarray([members]), jnp.asarray(pos, jnp.float32)[None],
                             jnp.asarray(P + np.arange(n))[None], jnp.asarray(iso)[None], cache)
    w = d0[members] / d0[members].sum()
    mix = (w[:, None] * np.asarray(jax.nn.softmax(mlog[0], axis=-1))).sum(0)
    probe = int(np.argmax(mix))
    _, _, taps = forward(params, cfg, jnp.asarray([[probe]]), jnp.asarray([[pos.max() + 1.0]], jnp.float32),
                         jnp.asarray([[P + n]]), jnp.asarray(k <= P + n)[None, None], cache,
                         TapsSpec(attn=True))
    a = np.asarray(taps["attn"][:, 0, :, 0, :])  # [L,H,K]
    return {"member_per_token": a[..., P:P + n].mean(-1), "prompt_per_token": a[..., 1:P].mean(-1),
            "sink": a[..., 0], "members_total": a[..., P:P + n].sum(-1), "self": a[..., P + n]}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if 0.0 not in args.deltas:
        raise SystemExit("--deltas must include 0 (the shared-position reference)")
    from tqdm import tqdm

    from tempo_jax.loading import load_model
    from tempo_jax.stats import summarize_paired

    prompts = (Path(args.prompt_file).read_text().splitlines() if args.prompt_file else DEFAULT_PROMPTS)
    prompts = [p for p in prompts if p.strip()]
    m = load_model(args.model)
    ids = [m.tokenizer(p).input_ids for p in prompts]
    if any(len(i) < 2 for i in ids):
        raise SystemExit("every prompt needs at least 2 tokens (slot 0 is the sink)")
    ns, deltas = args.n_parallel, args.deltas
    L, H = m.cfg.num_layers, m.cfg.num_heads
    names = ("member_per_token", "prompt_per_token", "sink", "members_total", "self")
    res = {k: np.zeros((len(prompts), len(ns), len(deltas), L, H)) for k in names}
    for pi, pid in enumerate(tqdm(ids, desc="prompts")):
        for ni, n in enumerate(ns):
            for di, d in enumerate(deltas):
                for k, v in measure(m.params, m.cfg, pid, n, d).items():
                    res[k][pi, ni, di] = v
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "rq1.npz", **res)
    ref = deltas.index(0.0)
    member = res["member_per_token"].mean((3, 4))  # [prompt, n, delta] mean over layers, heads
    prompt_tok = res["prompt_per_token"].mean((3, 4))
    rows = []
    for ni, n in enumerate(ns):
        ratio = member[:, ni, ref] / prompt_tok[:, ni, ref]
        rows.append({"n": n, "delta": 0.0, "member_per_token": float(member[:, ni, ref].mean()),
                     "ratio_to_prompt_per_token": float(ratio.mean()), "vs_shared": None})
        for di, d in enumerate(deltas):
            if di == ref:
                continue
            s = summarize_paired(member[:, ni, di] - member[:, ni, ref], n_boot=args.n_boot)
            rows.append({"n": n, "delta": d, "member_per_token": float(member[:, ni, di].mean()),
                         "ratio_to_prompt_per_token": float((member[:, ni, di] / prompt_tok[:, ni, di]).mean()),
                         "vs_shared": s})
    meta = {"prompts": prompts, "n_parallel": ns, "deltas": deltas, "unit": "prompt",
            "axes": ["prompt", "n", "delta", "layer", "head"], "rows": rows}
    (out / "rq1.json").write_text(json.dumps(meta, indent=1, default=float))
    lines = ["# RQ 1.1/1.2: attention on parallel tokens at shared vs offset positions", "",
             f"{len(prompts)} prompts (the unit); attention of one probe query after the set, mean over "
             "layers and heads; sink excluded from both groups.", "",
             "| n | delta | member attn / token | ratio to prompt / token | diff vs shared [95% CI] | p | d |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r["vs_shared"]
        diff = "reference" if v is None else (
            f"{v['mean']:.4g} [{v['lo']:.3g}, {v['hi']:.3g}]" if np.isfinite(v["lo"]) else f"{v['mean']:.4g}")
        pv = "" if v is None else f"{v['p']:.3g}"
        dv = "" if v is None else f"{v['d']:.3g}"
        lines.append(f"| {r['n']} | {r['delta']:g} | {r['member_per_token']:.4g} | "
                     f"{r['ratio_to_prompt_per_token']:.3g} | {diff} | {pv} | {dv} |")
    md = "\n".join(lines) + "\n"
    (out / "rq1.md").write_text(md)
    print(md)
    if not args.no_plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs = np.arange(len(deltas))
        for ni, n in enumerate(ns):
            ax.plot(xs, (member[:, ni] / prompt_tok[:, ni]).mean(0), marker="o", label=f"n={n}")
        ax.set_xticks(xs, [f"{d:g}" for d in deltas])
        ax.set_xlabel("position offset delta (member i at P + i*delta)")
        ax.set_ylabel("member / prompt attention per token")
        ax.axhline(1.0, color="k", lw=0.5)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "rq1.png", dpi=90)
        plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
