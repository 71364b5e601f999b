"""Research throughput: prompts/s of the forced-set probe (RQ 1.1's instrument, its set sizes and
position deltas) one prompt at a time vs several prompts as one compiled program.

Both sides compute the same numbers (``tests/experiments/test_position_probe_batched.py``): the
per-prompt loop calls ``position_probe.measure_prompt`` for each prompt (as the harness's
``Context.map`` does); the batched side calls ``position_probe.measure_prompts`` on ``--batch``
prompts at a time (``Context.map_batched``). Every program is compiled before timing (one warm-up
pass of each side over the same prompts); then ``--rounds`` interleaved rounds time each side over
all prompts. The ratio is the median over rounds of batched prompts/s / per-prompt prompts/s within
a round, with [min, max].

    python benchmarks/research.py [--model gemma3-270m] [--prompts 16] [--batch 8] [--rounds 3]

Last line: key=value figures (per_prompt_prompts_per_s, batched_prompts_per_s, speedup, batch,
prompts, model).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import corpus  # noqa: E402
from experiments.research.position_probe import measure_prompt, measure_prompts  # noqa: E402
from experiments.research.rq1_position_sharing import DELTAS, NS, PROBE_GAP  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a named model or model path (default: the default model)")
    ap.add_argument("--prompts", type=int, default=16, help="dev-split prompts (spread over the genres)")
    ap.add_argument("--batch", type=int, default=8, help="prompts per batched program")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import jax

    from tempo_jax.loading import load_model

    m = load_model(args.model, verbose=True)
    per_genre = -(-args.prompts // 3)
    prompts = corpus.load(split="dev", limit_per_genre=per_genre)[:args.prompts]
    ids = [m.tokenizer(p.prompt).input_ids for p in prompts]
    # batches of similar length pad least: sort by length, as map_batched callers may
    order = np.argsort([len(x) for x in ids], kind="stable")
    batches = [[ids[i] for i in order[k:k + args.batch]] for k in range(0, len(ids), args.batch)]

    def one_by_one():
        return [measure_prompt(m.params, m.cfg, x, NS, DELTAS, PROBE_GAP) for x in ids]

    def batched():
        return [r for b in batches for r in measure_prompts(m.params, m.cfg, b, NS, DELTAS, PROBE_GAP)]

    t0 = time.perf_counter()
    ref = one_by_one()
    t1 = time.perf_counter()
    got = batched()
    t2 = time.perf_counter()
    by_prompt = [got[int(np.flatnonzero(order == i)[0])] for i in range(len(ids))]
    worst = max(float(np.max(np.abs(a["per_token"] - b["per_token"]))) for a, b in zip(ref, by_prompt))
    print(f"model {m.cfg.name}, device {jax.devices()[0].device_kind}; {len(ids)} dev prompts "
          f"({min(len(x) for x in ids)}-{max(len(x) for x in ids)} tokens), set sizes {NS}, "
          f"{len(DELTAS) + 1} worlds each; batches of {args.batch}")
    print(f"warm-up (compiles included): per prompt {t1 - t0:.1f} s, batched {t2 - t1:.1f} s; "
          f"largest |per-token attention difference| {worst:.2e}")
    rounds = []
    for r in range(args.rounds):
        rates = {}
        for name, fn in (("per_prompt", one_by_one), ("batched", batched)):
            t = time.perf_counter()
            fn()
            rates[name] = len(ids) / (time.perf_counter() - t)
        rounds.append(rates)
        print(f"round {r + 1}: per prompt {rates['per_prompt']:.2f} prompts/s, batched "
              f"{rates['batched']:.2f} prompts/s", flush=True)
    ratio = [r["batched"] / r["per_prompt"] for r in rounds]
    best = {k: max(r[k] for r in rounds) for k in rounds[0]}
    print(f"batched / per prompt: {np.median(ratio):.2f}x [{min(ratio):.2f}, {max(ratio):.2f}] "
          f"(median of per-round ratios)")
    print(f"per_prompt_prompts_per_s={best['per_prompt']:.3f} batched_prompts_per_s={best['batched']:.3f} "
          f"speedup={np.median(ratio):.2f} batch={args.batch} prompts={len(ids)} model={m.cfg.name}")


if __name__ == "__main__":
    main()
