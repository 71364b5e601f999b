"""Where a TEMPO step's time goes on this backend: the step at each feed width, and the XLA kernels
behind the differences, side by side in one run (ratios; CPU seconds and wall seconds).

1. The jitted TEMPO step (default model, W 8, pruning, isolated, attended prefix 256) fed F = 1, 2,
   4, 8 queries, against the engine's greedy step. F is the number of members the step feeds.
2. The LM-head product ``x[F,E] @ embed[V,E]^T`` alone at F = 1, 2, 8 rows (the largest matrix).
3. One MLP matrix per layer (E x 4E-ish, the model's own ``up`` shape), 30 layers, read as a
   ``scan`` over the stacked ``[L,...]`` array (what the model does) vs a Python loop over
   per-layer arrays, at F = 1 and 2.

4. The decode step (one query, attention taps off) on both weight layouts (stacked scan, and
   ``model.unstack_layers``) at attended prefixes of 128, 1024 and 4096 slots: what attention over
   a long cache adds to a step.

CPU seconds (process time, all threads) are less sensitive to other jobs than wall time; both are
printed. Best of ``--rounds``. Nothing here is asserted: read the ratios.

    python benchmarks/step_costs.py [--rounds 3]

Last line: key=value (step_F{n}_vs_greedy, head_F{n}_vs_F1, mlp_scan_vs_list_F{n},
decode_{layout}_K{k}_vs_K128).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp


def best_of(fn, rounds: int, n: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per call of ``fn()`` (returns arrays), best of ``rounds`` x ``n`` calls."""
    jax.block_until_ready(fn())
    cpu = wall = float("inf")
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            out = fn()
        jax.block_until_ready(out)
        cpu = min(cpu, (time.process_time() - c0) / n * 1e3)
        wall = min(wall, (time.perf_counter() - w0) / n * 1e3)
    return cpu, wall


def step_costs(m, rounds: int) -> dict[str, tuple[float, float]]:
    from tempo_jax.engine import GenerationConfig, core
    from tempo_jax.engine.rules import Capture
    from tempo_jax.engine.run import _init, _step, check_request, pad_prompt

    ids = m.tokenizer("The cat sat on the").input_ids
    out = {}

    def run(g, width):
        cap = check_request(m.cfg, g, ids)
        spec, inputs = g.static(), g.inputs(m.cfg)
        st = _init[core](m.params, m.cfg, spec, inputs, pad_prompt(g, ids), jnp.int32(len(ids)), cap)
        box = [st]

        def one():  # the state is donated: carry it (min_steps = max_steps keeps every step real)
            box[0], _ = _step[core](m.params, m.cfg, spec, inputs, box[0], Capture.NONE, width,
                                    view=min(256, cap))
            return box[0].dist
        return best_of(one, rounds, 8)

    S = 64
    out["greedy"] = run(GenerationConfig(max_steps=S, min_steps=S, method="greedy"), 1)
    tempo = GenerationConfig(max_steps=S, min_steps=S, max_width=8, threshold=0.99, prune=True)
    for f in (1, 2, 4, 8):
        out[f"F{f}"] = run(tempo, f)
    return out


def head_costs(m, rounds: int) -> dict[str, tuple[float, float]]:
    from tempo_jax.model import unembed

    f = jax.jit(lambda p, x: unembed(p, m.cfg, x))
    return {f"F{n}": best_of(lambda x=jnp.ones((1, n, m.cfg.hidden_size)): f(m.params, x), rounds, 10)
            for n in (1, 2, 8)}


def layer_loop_costs(m, rounds: int) -> dict[str, tuple[float, float]]:
    L, E, I = m.cfg.num_layers, m.cfg.hidden_size, m.cfg.intermediate_size
    stacked = jax.random.normal(jax.random.key(0), (L, E, I)) * 0.01
    per_layer = [stacked[i] for i in range(L)]
    body = lambda h, w: jnp.tanh(h @ w)[:, :E]
    scan = jax.jit(lambda x, ws: jax.lax.scan(lambda h, w: (body(h, w), None), x, ws)[0])

    @jax.jit
    def loop(x, ws):
        for w in ws:
            x = body(x, w)
        return x

    out = {}
    for n in (1, 2):
        x = jnp.ones((n, E))
        out[f"scan_F{n}"] = best_of(lambda: scan(x, stacked), rounds, 10)
        out[f"list_F{n}"] = best_of(lambda: loop(x, per_layer), rounds, 10)
    return out


def decode_costs(m, rounds: int) -> dict[str, tuple[float, float]]:
    """One decode step at attended prefixes 128 / 1024 / 4096, stacked and unstacked weights."""
    from tempo_jax import model as M

    out = {}
    layouts = {"stacked": m.params, "unstacked": M.unstack_layers(m.params)}
    for k in (128, 1024, 4096):
        for name, params in layouts.items():
            def step(p, cache, pos, k=k):
                mask = (jnp.arange(k) <= pos)[None, None, :]
                logits, cache, _ = M.forward(p, m.cfg, jnp.zeros((1, 1), jnp.int32),
                                             jnp.full((1, 1), pos, jnp.float32),
                                             jnp.full((1, 1), pos, jnp.int32), mask, cache)
                return logits, cache

            f = jax.jit(step, donate_argnums=(1,))
            box = [M.init_cache(m.cfg, 1, k)]

            def one(f=f, box=box, params=params, k=k):
                logits, box[0] = f(params, box[0], jnp.int32(k - 1))  # every slot attended
                return logits
            out[f"{name}_K{k}"] = best_of(one, rounds, 5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from tempo_jax.loading import load_model

    m = load_model()
    print(f"device: {jax.devices()[0].device_kind}; default model, best of {args.rounds} rounds; "
          f"ms per call as CPU / wall")
    kv = {}
    steps = step_costs(m, args.rounds)
    g = steps["greedy"][0]
    print("\n1. TEMPO step (W 8, pruning) by feed width F, vs the greedy step")
    for k, (c, w) in steps.items():
        print(f"   {k:8s} {c:7.1f} / {w:6.1f}   {c / g:5.2f}x greedy (CPU)")
        if k != "greedy":
            kv[f"step_{k}_vs_greedy"] = f"{c / g:.2f}"
    heads = head_costs(m, args.rounds)
    h1 = heads["F1"][0]
    print(f"\n2. LM head x[F,E] @ embed^T ({m.cfg.vocab_size} x {m.cfg.hidden_size})")
    for k, (c, w) in heads.items():
        print(f"   {k:8s} {c:7.1f} / {w:6.1f}   {c / h1:5.2f}x one row (CPU)")
        kv[f"head_{k}_vs_F1"] = f"{c / h1:.2f}"
    loops = layer_loop_costs(m, args.rounds)
    print(f"\n3. one [E, I] matrix per layer x {m.cfg.num_layers}: scan over stacked vs loop over a list")
    for n in (1, 2):
        s, l = loops[f"scan_F{n}"][0], loops[f"list_F{n}"][0]
        print(f"   F{n}: scan {s:6.1f}  list {l:6.1f}   scan = {s / l:4.2f}x list (CPU)")
        kv[f"mlp_scan_vs_list_F{n}"] = f"{s / l:.2f}"
    dec = decode_costs(m, args.rounds)
    print("\n4. decode step (1 query) by attended prefix K, both weight layouts")
    for name in ("stacked", "unstacked"):
        base = dec[f"{name}_K128"][1]
        for k in (128, 1024, 4096):
            c, w = dec[f"{name}_K{k}"]
            print(f"   {name:9s} K {k:5d} {c:7.1f} / {w:6.1f}   {w / base:5.2f}x K 128 (wall)")
            if k != 128:
                kv[f"decode_{name}_K{k}_vs_K128"] = f"{w / base:.2f}"
    print(" ".join(f"{k}={v}" for k, v in kv.items()))


if __name__ == "__main__":
    main()
