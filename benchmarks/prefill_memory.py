"""Peak memory of a long-prompt forward vs prompt length: chunked prefill (``model.prefill``).

Each length runs in its own subprocess (peak RSS = that process's ``ru_maxrss``), so one length's
allocations never count against another. The prompt is random token ids of the given length; the
forward keeps the last query's attention (as ``tempo-jax forward`` does) and writes a cache of
exactly T slots. ``--unchunked`` also runs the one-forward path (attention ``[L,B,H,T,K]`` taps, as
``tempo-jax forward`` did before chunking) for comparison, at lengths up to ``--unchunked-max``.

    python benchmarks/prefill_memory.py [--lengths 512 1024 2048 4096 8192] [--chunk 256]
    python benchmarks/prefill_memory.py --small      # tiny random model, seconds (CPU check)

Prints one row per length and a last line of key=value figures (peak_mb_<T>=..., growth =
(peak(Tmax) - peak(Tmin)) / (Tmax - Tmin) in MB per 1,000 tokens).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def child(args) -> None:
    import resource
    import time

    import jax
    import jax.numpy as jnp

    from tempo_jax import model as M

    if args.small:
        from tempo_jax.config import ModelConfig

        cfg = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                          num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=1 << 16)
        params = M.init_params(cfg, jax.random.key(0))
    else:
        from tempo_jax.loading import load_model

        m = load_model(verbose=False)
        cfg, params = m.cfg, m.params
    t = args.child
    if t > cfg.max_position_embeddings:
        print(json.dumps({"T": t, "refused": f"beyond the context of {cfg.max_position_embeddings}"}))
        return
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens = jax.random.randint(jax.random.key(1), (1, t), 0, cfg.vocab_size)
    cache = M.init_cache(cfg, 1, t, params["embed"].dtype)
    t0 = time.perf_counter()
    if args.mode == "chunked":
        run = jax.jit(M.prefill, static_argnames=("cfg", "chunk", "attn_last"))
        logits, cache, taps = run(params, cfg, tokens, cache, jnp.int32(t - 1), chunk=args.chunk,
                                  attn_last=True)
    else:
        ar = jnp.arange(t)[None]
        run = jax.jit(M.forward, static_argnames=("cfg", "taps"))
        logits, cache, taps = run(params, cfg, tokens, ar, ar, M.causal_mask(1, t, t), cache,
                                  M.TapsSpec(attn=True))
    jax.block_until_ready(logits)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"T": t, "peak_mb": round(peak), "after_load_mb": round(base), "s": round(secs, 2)}))


def measure(t: int, mode: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(t), "--mode", mode, "--chunk", str(args.chunk)]
    cmd += ["--small"] if args.small else []
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"T": t, "failed": f"exit {p.returncode}: {tail[:120]}"}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--unchunked", action="store_true")
    ap.add_argument("--unchunked-max", type=int, default=2048)
    ap.add_argument("--small", action="store_true", help="tiny random model (fast CPU check)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="chunked", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        return child(args)
    print(f"{'T':>6s} {'mode':>10s} {'peak RSS MB':>12s} {'after load MB':>14s} {'seconds':>8s}")
    kv, rows = {}, []
    for t in args.lengths:
        for mode in ["chunked"] + (["unchunked"] if args.unchunked and t <= args.unchunked_max else []):
            r = measure(t, mode, args)
            if "peak_mb" in r:
                print(f"{t:6d} {mode:>10s} {r['peak_mb']:12d} {r['after_load_mb']:14d} {r['s']:8.2f}", flush=True)
                kv[f"peak_mb_{t}" + ("" if mode == "chunked" else "_unchunked")] = r["peak_mb"]
                if mode == "chunked":
                    rows.append((t, r["peak_mb"]))
            else:
                print(f"{t:6d} {mode:>10s}  {r.get('refused') or r.get('failed')}", flush=True)
    if len(rows) >= 2:
        (t0, p0), (t1, p1) = rows[0], rows[-1]
        kv["mb_per_1k_tokens"] = f"{(p1 - p0) / (t1 - t0) * 1000:.1f}"
    kv["chunk"] = args.chunk
    print(" ".join(f"{k}={v}" for k, v in kv.items()))


if __name__ == "__main__":
    main()
