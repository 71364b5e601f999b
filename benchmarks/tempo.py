"""TEMPO benchmark: logical steps/s of tempo-jax vs HF transformers greedy tokens/s, same run.

Setting (issue "TEMPO engine"): default model, tau 0.1, max width 8, 64 logical steps (min_steps 64
so EOS cannot shorten the run), isolated siblings, retroactive pruning on. HF: greedy ``generate``
with eager attention and ``output_attentions=True`` on the same prompt and the same weights
(``hf_reference.py``). Reports first-step latency including compilation (the first run compiles the
prompt forward and the step at each feed width it meets), steady-state steps/s from a second,
already-compiled run of the same generation, and mean / max set size.

    python benchmarks/tempo.py [--steps 64] [--no-hf]

Last line: key=value figures.
"""

from __future__ import annotations

import argparse
import time

import jax

from hf_reference import HfGreedy, hf_model

PROMPT = "The cat sat on the"


def hf_tokens_per_s(cfg, params, prompt_ids, steps: int) -> float:
    """HF greedy decode-only tokens/s (attentions out) on the same weights, one timed pass."""
    hf = HfGreedy(hf_model(cfg, params), prompt_ids, steps)
    return hf.timed_pass()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--no-hf", action="store_true")
    args = ap.parse_args()

    from tempo_jax.engine import GenerationConfig, generate
    from tempo_jax.loading import load_model

    m = load_model()
    ids = m.tokenizer(PROMPT).input_ids
    g = GenerationConfig(max_steps=args.steps, threshold=0.1, max_width=8, siblings="isolated",
                         prune=True, min_steps=args.steps)
    t0 = time.perf_counter()
    first_step = {}
    # same capture mode ("none") as the timed run, so the timed run compiles nothing
    generate(m.params, m.cfg, ids, g, capture="none", on_step=lambda s, st, a: first_step.setdefault(
        "t", time.perf_counter() - t0) if s == 0 else None)
    cold_total = time.perf_counter() - t0
    t0 = time.perf_counter()
    tr = generate(m.params, m.cfg, ids, g, progress=True)
    warm = time.perf_counter() - t0
    steps_per_s = tr.n_steps / warm
    sizes = tr.arrays["set_n"]
    hf = None if args.no_hf else hf_tokens_per_s(m.cfg, m.params, ids, args.steps)
    print(f"\ndevice: {jax.devices()[0].device_kind}   prompt: {PROMPT!r}   steps: {tr.n_steps}")
    print(f"{'':34s}{'rate':>12s}{'ratio':>10s}")
    print(f"{'tempo-jax logical steps/s':34s}{steps_per_s:12.2f}{'':>10s}")
    if hf is not None:
        print(f"{'HF greedy tokens/s (attn out)':34s}{hf:12.2f}{steps_per_s / hf:10.2f}x")
    print(f"first step incl. compile: {first_step['t']:.2f} s (cold run total {cold_total:.2f} s)")
    print(f"set size: mean {sizes.mean():.2f}, max {sizes.max()}; pruned members "
          f"{int((tr.arrays['pruned_at'] >= 0).sum())}")
    kv = {"steps_per_s": f"{steps_per_s:.3f}", "first_step_s": f"{first_step['t']:.2f}",
          "mean_set": f"{sizes.mean():.2f}", "max_set": int(sizes.max())}
    if hf is not None:
        kv.update(hf_tokens_per_s=f"{hf:.3f}", speedup_vs_hf=f"{steps_per_s / hf:.2f}")
    print(" ".join(f"{k}={v}" for k, v in kv.items()))


if __name__ == "__main__":
    main()
