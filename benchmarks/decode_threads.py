"""Why CPU decode stops short of the weight-streaming limit: where the unstacked decode step's time
goes, kernel by kernel, how fast its matrix products read their weights against one- and two-thread
read bandwidth, and whether two products ever run at the same time.

In one run, on the default model (unstacked layout, the decode step of ``decode.py`` with attention
taps on):

* read bandwidth of a 1 GiB float32 array: NumPy on one thread, NumPy on two threads (one half
  each), and ``decode.measure_bandwidth`` (the limit ``decode.py`` divides by);
* the decode step's wall time (median of timed passes), its fraction of that limit, and the
  process's CPU time over wall time during the passes (how many cores were busy on average);
* a ``jax.profiler`` trace of ``--profile-steps`` steps, summed per step: the layer products by
  kind (q/k/v, o, gate/up, down: XLA:CPU runs them in this order, four per layer) with their read
  rate, the LM head, every other kernel, and the time no kernel ran; and how many products ran at
  the same time as another product (on another thread);
* the ceiling that follows: all weights read at the one-thread rate, as a fraction of the limit.

    python benchmarks/decode_threads.py

The last line holds key=value figures: ``step_ms=.. fraction_of_limit=.. busy_cores=.. limit_gbs=..
one_thread_gbs=.. two_thread_gbs=.. products_ms=.. products_gbs=.. lm_head_ms=.. lm_head_gbs=..
other_kernels_ms=.. idle_ms=.. overlapping_products=.. ceiling_one_thread=..``. The trace has one
event per kernel, so it shows whether two products overlap, not how many threads one product uses
inside its kernel. The kernel names it reads (``dot``, ``*dot_fusion``) are XLA:CPU's of jax 0.10;
another XLA version may name them otherwise, and then the per-kind table is left out (the totals
still print).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from decode import PROMPT, JaxDecoder, chat_prompt_ids, measure_bandwidth, param_bytes
from tempo_jax import model as M
from tempo_jax.loading import load_model

# events of the trace that are host-side bookkeeping, not kernels of the compiled program
_HOST = ("$", "ThunkExecutor", "Pjit", "Common", "Parse", "Handle", "Allocate", "DevicePut",
         "ThreadpoolListener", "end:", "TfrtCpu", "PjRt")


def numpy_read_gbs(gib: float, threads: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` read rate (GB/s) of a ``gib`` GiB float32 array summed by NumPy on
    ``threads`` threads, each summing its own contiguous part (NumPy releases the GIL there)."""
    n = int(gib * (1 << 30)) // 4
    a = np.ones(n, np.float32)
    parts = np.array_split(a, threads)
    best = float("inf")
    for _ in range(repeats):
        ts = [threading.Thread(target=p.sum) for p in parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def kernel_events(trace_dir: str) -> list[dict]:
    """Complete ('X') events of the compiled program's kernels from a ``jax.profiler`` trace."""
    files = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz")))
    if not files:
        raise RuntimeError(f"no trace written under {trace_dir}")
    with gzip.open(files[-1]) as f:
        events = json.load(f)["traceEvents"]
    out = []
    for e in events:
        if e.get("ph") != "X" or e["name"].startswith(_HOST):
            continue
        out.append({"name": re.sub(r"\.\d+$", "", e["name"]), "ts": e["ts"], "dur": e["dur"],
                    "tid": e["tid"]})
    return sorted(out, key=lambda e: e["ts"])


def busy_union_us(events: list[dict]) -> float:
    """Microseconds during which at least one of ``events`` ran."""
    total, cur = 0.0, None
    for e in sorted(events, key=lambda e: e["ts"]):
        a, b = e["ts"], e["ts"] + e["dur"]
        if cur is None or a > cur[1]:
            if cur is not None:
                total += cur[1] - cur[0]
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    return total + (cur[1] - cur[0] if cur else 0.0)


def overlapping(events: list[dict]) -> int:
    """How many of ``events`` overlap in time with at least one other of them on a different
    thread (both events of an overlapping pair count)."""
    events = sorted(events, key=lambda e: e["ts"])
    hit: set[int] = set()
    for i, e in enumerate(events):
        end = e["ts"] + e["dur"]
        for j in range(i + 1, len(events)):
            if events[j]["ts"] >= end:
                break
            if events[j]["tid"] != e["tid"]:
                hit.update((i, j))
    return len(hit)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=48, help="decode steps per timed pass")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes")
    ap.add_argument("--profile-steps", type=int, default=10, help="steps in the profiled trace")
    ap.add_argument("--bandwidth-gib", type=float, default=1.0)
    args = ap.parse_args(argv)
    if jax.default_backend() != "cpu":
        raise SystemExit("decode_threads.py measures XLA:CPU's threads; run it on a CPU backend")
    if min(args.steps, args.repeats, args.profile_steps) < 1:
        raise SystemExit("--steps, --repeats and --profile-steps must be >= 1")
    if args.profile_steps > args.steps:  # the cache holds the prompt + --steps slots
        raise SystemExit(f"--profile-steps ({args.profile_steps}) must be <= --steps ({args.steps})")

    lm = load_model()
    cfg = lm.cfg
    params = M.unstack_layers(lm.params)
    nbytes = param_bytes(params)
    dec = JaxDecoder(cfg, params, chat_prompt_ids(lm.tokenizer, PROMPT), args.steps, jnp.float32)

    rates, limits, cores = [], [], []
    for _ in range(args.repeats):  # alternate step timing and the limit's probe, as decode.py does
        c0, w0 = time.process_time(), time.perf_counter()
        rates.append(dec.timed_pass())
        cores.append((time.process_time() - c0) / (time.perf_counter() - w0))
        limits.append(measure_bandwidth(args.bandwidth_gib, repeats=3)[0])
    busy_cores = float(np.median(cores))
    step_ms = 1e3 / float(np.median(rates))
    fraction = float(np.median(np.array(rates) / (np.array(limits) * 1e9 / nbytes)))
    limit_gbs = float(np.median(limits))
    one = numpy_read_gbs(args.bandwidth_gib, 1)
    two = numpy_read_gbs(args.bandwidth_gib, 2)

    # profile: the same step, each step waited for (as the timed passes do)
    with tempfile.TemporaryDirectory() as d:
        tok, cur, cache = dec.first, jnp.asarray(dec.t, jnp.int32), dec.cache
        jax.profiler.start_trace(d)
        for _ in range(args.profile_steps):
            tok, cur, cache, probs = dec.step(params, tok, cur, cache)
            probs.block_until_ready()
        jax.profiler.stop_trace()
        dec.cache = cache
        ev = kernel_events(d)

    n = args.profile_steps
    per = lambda us: us / n / 1e3  # total microseconds -> ms per step
    prods = [e for e in ev if e["name"] == "dot"]
    heads = [e for e in ev if e["name"].endswith("dot_fusion")]
    rest = [e for e in ev if e["name"] != "dot" and not e["name"].endswith("dot_fusion")]
    layer_bytes = param_bytes(params["layers"])
    head = params["embed"] if cfg.tie_embeddings else params["lm_head"]
    head_bytes = int(head.size) * head.dtype.itemsize
    prod_ms = per(sum(e["dur"] for e in prods))
    head_ms = per(sum(e["dur"] for e in heads))
    other_ms = per(sum(e["dur"] for e in rest))
    # the profiled step's wall time from the trace: first kernel start to last kernel end, per step
    span_ms = per(ev[-1]["ts"] + ev[-1]["dur"] - ev[0]["ts"]) if ev else float("nan")
    idle_ms = span_ms - per(busy_union_us(ev))
    overl = overlapping(prods + heads)

    print(f"model {cfg.name}, unstacked layout, params {nbytes / 1e6:.1f} MB, "
          f"cache capacity {dec.capacity}, jax {jax.__version__}")
    print(f"read bandwidth: NumPy 1 thread {one:.1f} GB/s, 2 threads {two:.1f} GB/s; "
          f"decode.py's limit probe {limit_gbs:.1f} GB/s (median of {args.repeats})")
    print(f"decode step {step_ms:.2f} ms (median of {args.repeats} passes of {args.steps}), "
          f"{fraction:.2f} of the weight-streaming limit; CPU time / wall time during the passes "
          f"{busy_cores:.2f} (cores busy on average, of {os.cpu_count()})")
    print(f"\nprofile of {n} steps (ms per step; the profiler itself adds time):")
    L = cfg.num_layers
    if len(prods) == 4 * L * n:
        shapes = {"q/k/v": params["layers"][0]["wqkv"], "o": params["layers"][0]["wo"],
                  "gate/up": params["layers"][0]["w_gate_up"], "down": params["layers"][0]["w_down"]}
        for k, (name, w) in enumerate(shapes.items()):
            us = np.array([e["dur"] for e in prods[k::4]])
            mb = w.size * w.dtype.itemsize / 1e6
            print(f"  {name:8s} x{L}: {per(us.sum()):6.2f} ms  ({us.mean():6.1f} us each, "
                  f"{mb:5.2f} MB, {mb * 1e3 / us.mean():5.1f} GB/s)")
    else:
        print(f"  ({len(prods) / n:.0f} 'dot' kernels per step, not 4 per layer: per-kind table left out)")
    prod_gbs = layer_bytes / 1e6 / prod_ms if prod_ms else float("nan")
    head_gbs = head_bytes / 1e6 / head_ms if head_ms else float("nan")
    print(f"  layer products {prod_ms:.2f} ms ({prod_gbs:.1f} GB/s); LM head {head_ms:.2f} ms "
          f"({head_gbs:.1f} GB/s); "
          f"{len(rest) / n:.0f} other kernels "
          f"{other_ms:.2f} ms; no kernel running {idle_ms:.2f} ms (host dispatch between steps "
          f"included); span {span_ms:.2f} ms")
    print(f"  products that ran while another product ran on another thread: {overl} of "
          f"{len(prods) + len(heads)}")
    ceiling = one / limit_gbs
    print(f"\nceiling: every weight read at the one-thread rate = {ceiling:.2f} of the limit, "
          f"before any other kernel")
    print(f"step_ms={step_ms:.2f} fraction_of_limit={fraction:.2f} busy_cores={busy_cores:.2f} "
          f"limit_gbs={limit_gbs:.1f} "
          f"one_thread_gbs={one:.1f} two_thread_gbs={two:.1f} products_ms={prod_ms:.2f} "
          f"products_gbs={prod_gbs:.1f} lm_head_ms={head_ms:.2f} lm_head_gbs={head_gbs:.1f} "
          f"other_kernels_ms={other_ms:.2f} "
          f"idle_ms={idle_ms:.2f} overlapping_products={overl} ceiling_one_thread={ceiling:.2f}")


if __name__ == "__main__":
    main()
