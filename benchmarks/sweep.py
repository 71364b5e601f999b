"""Benchmark: ablate each of the default model's L x H heads over a 32-step TEMPO generation, as one
batched (vmapped) program vs the same program run one world at a time, in the same run.

The one-at-a-time path is timed on a subset of worlds and the batched path on a few chunks (both
after compilation); figures are worlds per second and their ratio. Last line: key=value figures.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chunk", type=int, default=16, help="worlds per batched program call")
    ap.add_argument("--chunks", type=int, default=2, help="batched chunks timed")
    ap.add_argument("--singles", type=int, default=6, help="worlds timed one at a time")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--max-width", type=int, default=4)
    ap.add_argument("--threshold", type=float, default=0.1)
    ap.add_argument("--prompt", default="The cat sat on the")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="parameters and KV cache")
    args = ap.parse_args(argv)

    from tempo_jax.loading import load_model
    from tempo_jax.sweeps.runner import WorldInputs, build_mesh, make_program
    from tempo_jax.sweeps.spec import SweepSpec, expand, tokenize_prompts

    import jax.numpy as jnp

    m = load_model(None, dtype=jnp.dtype(args.dtype), verbose=False)
    fixed = {"max_steps": args.steps, "max_width": args.max_width, "min_steps": args.steps}
    spec = SweepSpec(prompts=(args.prompt,), thresholds=(args.threshold,), heads=("each",),
                     fixed=fixed, chunk=args.chunk)
    grid = expand(spec, m.cfg, tokenize_prompts(spec, m.tokenizer))
    inputs = WorldInputs(grid, m.cfg)
    device = jax.devices()[0]
    print(f"device {device.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s)); "
          f"model {m.cfg.name}: {m.cfg.num_layers} layers x {m.cfg.num_heads} heads = {grid.n_worlds} "
          f"worlds, {args.steps} steps, max width {args.max_width}, tau {args.threshold}")
    mesh = build_mesh(jax.devices()[:1])

    def timed(batch, worlds_list):
        prog, placed = make_program(m.cfg, grid.base.static(), inputs.capacity, mesh, m.params)
        t0 = time.perf_counter()
        jax.block_until_ready(prog(placed, *inputs.batch(worlds_list[0])))  # compile + warm up
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = 0
        for w in worlds_list[1:]:
            out = jax.device_get(prog(placed, *inputs.batch(w)))
            n += len(w)
            assert (out["n_steps"] == args.steps).all()
        return n / (time.perf_counter() - t0), compile_s

    singles = [np.asarray([b]) for b in range(args.singles + 1)]
    single_wps, single_compile = timed(1, singles)
    print(f"one world at a time: {single_wps:.3f} worlds/s ({args.singles} worlds, "
          f"compile {single_compile:.1f}s)")
    c = args.chunk
    chunks = [np.arange(i * c, (i + 1) * c) % grid.n_worlds for i in range(args.chunks + 1)]
    batched_wps, batched_compile = timed(c, chunks)
    print(f"batched, {c} worlds per program call: {batched_wps:.3f} worlds/s ({args.chunks} chunks, "
          f"compile {batched_compile:.1f}s)")
    speedup = batched_wps / single_wps
    est = grid.n_worlds / batched_wps
    print(f"speedup {speedup:.2f}x; the full {grid.n_worlds}-world sweep would take ~{est / 60:.1f} min "
          f"batched vs ~{grid.n_worlds / single_wps / 60:.1f} min one at a time")
    print(f"batched_worlds_per_s={batched_wps:.3f} single_worlds_per_s={single_wps:.3f} "
          f"speedup={speedup:.2f} chunk={c} steps={args.steps} max_width={args.max_width} "
          f"compile_s={batched_compile:.1f} device={device.device_kind.replace(' ', '_')} "
          f"dtype={args.dtype}")


if __name__ == "__main__":
    main()
