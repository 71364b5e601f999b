"""Accuracy of bfloat16 against float32: the same forward in both dtypes (parameters and KV cache).

A prompt followed by a float32-greedy continuation is run teacher-forced through one causal
forward (``model.prefill`` keeps only what is needed) in float32 and in bfloat16 from the same
float32 weights; compared at every position: top-1 agreement (share of positions whose argmax is
the same), largest absolute logit difference, and the mean total-variation distance of the
next-token distributions.

    python benchmarks/dtype_check.py                       # default model, a real prompt
    python benchmarks/dtype_check.py --shape llama3.2-3b   # random weights of the 3B shape
    python benchmarks/dtype_check.py --small               # tiny random model (seconds)

Last line: key=value figures (top1_agreement, max_logit_diff, mean_tv, positions).
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax import model as M


def compare(params32, cfg, ids: np.ndarray) -> dict:
    """Per-position logits of ``ids`` in float32 and bfloat16 -> agreement figures."""
    t = len(ids)
    ar = jnp.arange(t)[None]
    run = jax.jit(lambda p, c: M.forward(p, cfg, jnp.asarray(ids)[None], ar, ar,
                                         M.causal_mask(1, t, t), c)[0][0])
    out = {}
    for name, dt in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
        p = jax.tree_util.tree_map(lambda x: x.astype(dt), params32)
        out[name] = np.asarray(run(p, M.init_cache(cfg, 1, t, dt)))
    a, b = out["f32"], out["bf16"]
    pa, pb = np.asarray(jax.nn.softmax(a)), np.asarray(jax.nn.softmax(b))
    return {"top1_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
            "max_logit_diff": float(np.abs(a - b).max()),
            "mean_tv": float(0.5 * np.abs(pa - pb).sum(-1).mean()), "positions": t}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["default", "llama3.2-3b"], default="default")
    ap.add_argument("--small", action="store_true", help="tiny random model (a fast CPU check)")
    ap.add_argument("--layers", type=int, default=None, help="layer count of --shape llama3.2-3b")
    ap.add_argument("--tokens", type=int, default=64, help="greedy continuation length")
    ap.add_argument("--prompt", default="Explain in a few sentences why the sky is blue.")
    args = ap.parse_args(argv)
    if args.small or args.shape == "llama3.2-3b":
        if args.small:
            from tempo_jax.config import ModelConfig

            cfg = ModelConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2,
                              num_heads=4, num_kv_heads=2, head_dim=32)
        else:
            from decode import LLAMA32_3B

            cfg = LLAMA32_3B if args.layers is None else dataclasses.replace(LLAMA32_3B, num_layers=args.layers)
        params = M.init_params(cfg, jax.random.key(0))
        ids = np.random.default_rng(0).integers(0, cfg.vocab_size, 16 + args.tokens)
        what = f"random weights, {cfg.name}"
    else:
        from tempo_jax.engine import GenerationConfig, generate
        from tempo_jax.loading import load_model

        m = load_model(verbose=False)
        cfg, params = m.cfg, m.params
        prompt = m.tokenizer(args.prompt).input_ids
        tr = generate(params, cfg, prompt, GenerationConfig(max_steps=args.tokens, method="greedy"))
        ids = np.asarray(list(prompt) + [int(x) for x in tr.arrays["tokens"][:tr.n_steps, 0]])
        what = f"{cfg.name}, prompt + float32 greedy continuation"
    r = compare(params, cfg, ids)
    print(f"bfloat16 vs float32 ({what}; {r['positions']} positions, teacher-forced): top-1 agreement "
          f"{r['top1_agreement']:.3f}, max |logit diff| {r['max_logit_diff']:.3f}, mean TV "
          f"{r['mean_tv']:.4f}")
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
