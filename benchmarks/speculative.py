"""Self-speculative decoding vs greedy decoding, side by side in one run (same model, prompt, steps).

For each (draft layers k, draft length g): steps/s of ``method="speculative"``, its speed-up over
greedy decoding with the same driver, its acceptance rate and tokens per full-model forward, and
whether its tokens equal greedy's. ``min_steps = max_steps`` keeps both from stopping on EOS, so both
produce the same number of steps. Each configuration runs once to compile, then once timed.

    python benchmarks/speculative.py                       # default model, 32 steps
    python benchmarks/speculative.py --steps 64 --grid 15:2,22:3,28:4 --driver host

The last line holds key=value figures, e.g. ``greedy_steps_per_s=.. best_k=.. best_g=..
best_steps_per_s=.. best_speedup=.. best_acceptance=.. best_tokens_per_full_forward=.. device=..``.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.engine.speculative import SpecStats
from tempo_jax.loading import load_model

PROMPT = "Explain in a few sentences why the sky is blue and why sunsets are red."


def timed(m, ids, gcfg, driver):
    generate(m.params, m.cfg, ids, gcfg, driver=driver)  # compile
    t0 = time.perf_counter()
    tr = generate(m.params, m.cfg, ids, gcfg, driver=driver)
    return tr, time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--grid", default="8:2,15:2,22:2,26:2,26:4,28:3",
                    help="comma-separated k:g pairs (draft layers : draft length)")
    ap.add_argument("--driver", default="device", choices=["device", "host"])
    args = ap.parse_args(argv)
    grid = [tuple(int(x) for x in kg.split(":")) for kg in args.grid.split(",")]
    m = load_model(args.model, verbose=False)
    ids = m.tokenizer(PROMPT).input_ids
    S = args.steps
    print(f"model {m.cfg.name} ({m.cfg.num_layers} layers), prompt {len(ids)} tokens, {S} steps, "
          f"driver {args.driver}, device {jax.devices()[0].device_kind}")
    gr, tg = timed(m, ids, GenerationConfig(method="greedy", max_steps=S, min_steps=S), args.driver)
    greedy_rate = S / tg
    print(f"greedy: {greedy_rate:.2f} steps/s")
    print(f"{'k':>3} {'g':>3} {'steps/s':>8} {'speed-up':>8} {'accept':>7} {'tok/full fwd':>12} "
          f"{'draft fwd':>9} same_tokens")
    best = None
    for k, g in grid:
        gc = GenerationConfig(method="speculative", max_steps=S, min_steps=S, draft_layers=k,
                              draft_len=g)
        tr, ts = timed(m, ids, gc, args.driver)
        st = SpecStats.of(tr)
        same = bool(np.array_equal(tr.arrays["tokens"], gr.arrays["tokens"]))
        rate = S / ts
        print(f"{k:>3} {g:>3} {rate:>8.2f} {rate / greedy_rate:>8.2f} {st.acceptance_rate:>7.3f} "
              f"{st.tokens_per_full_forward:>12.2f} {st.draft_forwards:>9d} {same}")
        if best is None or rate > best[2]:
            best = (k, g, rate, st, same)
    k, g, rate, st, same = best
    print(f"greedy_steps_per_s={greedy_rate:.3f} best_k={k} best_g={g} best_steps_per_s={rate:.3f} "
          f"best_speedup={rate / greedy_rate:.3f} best_acceptance={st.acceptance_rate:.3f} "
          f"best_tokens_per_full_forward={st.tokens_per_full_forward:.3f} best_same_tokens={same} "
          f"device={jax.devices()[0].platform}")


if __name__ == "__main__":
    main()
