"""Decode benchmark: greedy steps/s of tempo-jax with attention taps on.

Compares, in one run and on one prompt:

* tempo-jax: prefill with ``forward`` (causal mask), then a jitted single-token step (cache donated,
  ``TapsSpec(attn=True)``, attention probabilities materialised every step, argmax on device), in
  both weight layouts: stacked ``[L,...]`` (what loading gives; a ``lax.scan`` over layers) and
  unstacked (``model.unstack_layers``: per-layer buffers, fused q/k/v and gate/up; the decode
  layout, whose figure is ``steps_per_s`` / ``fraction_of_limit``);
* Hugging Face transformers greedy ``generate`` (eager attention, ``output_attentions=True``) of an
  HF model holding the same converted weights (``hf_reference.py``), decode-only rate (prefill time
  removed by timing a 1-token generate too);
* the weight-streaming limit: memory read bandwidth (largest of a jitted ``jnp.sum``, a jitted
  matrix-vector product and a NumPy sum over a big float32 array, best of three) / parameter
  bytes, measured again after every round, because this machine's bandwidth moved between 25 and
  50 GB/s from one minute to the next.

Rounds interleave all sides; ratios are medians over rounds of the ratio within a round, printed
with [min, max] (a fraction of the limit uses that round's bandwidth).

Compile time (lowering + XLA compile of the decode step) is reported separately.

    python benchmarks/decode.py                 # default model vs HF vs the bandwidth limit
    python benchmarks/decode.py --no-hf         # JAX half only (torch is never imported)
    python benchmarks/decode.py --model gemma3-270m   # Gemma 3 270M (LM head 640 x 262,144)
    python benchmarks/decode.py --shape llama3.2-3b   # random bf16 Llama-3.2-3B shape (for a GPU)

The last line holds key=value figures, e.g.
``steps_per_s=.. hf_tokens_per_s=.. speedup_vs_hf=.. bandwidth_gbs=.. limit_steps_per_s=..
fraction_of_limit=.. stacked_fraction_of_limit=.. unstacked_vs_stacked=.. compile_s=..
stacked_compile_s=.. device=..`` (rates, bandwidth and fractions are medians over rounds).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from hf_reference import SOURCE, HfGreedy, hf_model
from tempo_jax import model as M
from tempo_jax.config import ModelConfig, RopeScaling

PROMPT = "Explain in a few sentences why the sky is blue and why sunsets are red."


def greedy(logits: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Argmax of the last position's logits ``[B,T,V]`` -> ``[B,1]`` int32, never an end-of-sequence
    token (as HF's ``min_new_tokens`` does), so both sides decode the full count of steps."""
    last = logits[:, -1]
    if cfg.eos_token_ids:
        last = last.at[:, jnp.asarray(cfg.eos_token_ids)].set(-jnp.inf)
    return jnp.argmax(last, axis=-1).astype(jnp.int32)[:, None]


def chat_prompt_ids(tok, prompt: str) -> np.ndarray:
    """``prompt`` as int64 token ids ``[T]``, in the model's chat format where its tokenizer has
    one (the instruct model's own format), else plain."""
    if getattr(tok, "chat_template", None):
        enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        return np.asarray(enc if isinstance(enc, list) else enc["input_ids"], np.int64)
    return np.asarray(tok(prompt)["input_ids"], np.int64)


LLAMA32_3B = ModelConfig(
    vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_layers=28, num_heads=24,
    num_kv_heads=8, head_dim=128, rope_theta=500000.0,
    rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 8192), rms_norm_eps=1e-5,
    tie_embeddings=True, max_position_embeddings=131072, bos_token_id=128000,
    eos_token_ids=(128001,), name="llama3.2-3b-shape")


class ForeignLoad:
    """Share of the machine's CPUs that other processes used between ``start()`` and ``stop()``
    (Linux /proc/stat minus this process's own CPU time); None where /proc/stat is unavailable.
    Timings on a shared machine are only comparable when this is low."""

    def _read(self):
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait
        own = os.times()
        return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.perf_counter()

    def start(self):
        self.t0 = self._read()
        return self

    def stop(self) -> float | None:
        t1 = self._read()
        if self.t0 is None or t1 is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self.t0, t1))
        return max(0.0, busy - own) / ((os.cpu_count() or 1) * wall)


def param_bytes(params) -> int:
    """Bytes of all parameters (a tied embedding is a single leaf, so it counts once)."""
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))


def measure_bandwidth(gib: float, repeats: int) -> tuple[float, dict]:
    """Memory read bandwidth in GB/s: best of ``repeats`` full reads of a ``gib`` GiB float32 array
    by a jitted ``jnp.sum``, by a jitted matrix-vector product (rows of 1024: the access pattern of
    a decode step's products) and, on CPU, by NumPy; returns the largest (the strictest limit) and
    every figure."""
    n = int(gib * (1 << 30)) // 4 // 1024 * 1024
    nbytes = n * 4
    host = np.ones(n, np.float32)
    dev = jax.device_put(host)
    vec = jnp.ones((1024,), jnp.float32)
    probes = {"jax_sum_gbs": jax.jit(jnp.sum),
              "jax_matvec_gbs": jax.jit(lambda a, v=vec: a.reshape(-1, 1024) @ v)}
    figures = {}
    for name, fn in probes.items():
        fn(dev).block_until_ready()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(dev).block_until_ready()
            best = min(best, time.perf_counter() - t0)
        figures[name] = nbytes / best / 1e9
    if jax.default_backend() == "cpu":  # NumPy only says something about host memory
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            host.sum()
            best = min(best, time.perf_counter() - t0)
        figures["numpy_sum_gbs"] = nbytes / best / 1e9
    del dev, host
    return max(figures.values()), figures


def make_step(cfg: ModelConfig, capacity: int):
    """Jitted greedy step: (params, token[1,1], cur int32 scalar, cache) ->
    (next token[1,1], cur+1, cache, attention probs [L,1,H,1,K]). The cache is donated."""
    taps = M.TapsSpec(attn=True)
    slots_k = jnp.arange(capacity)

    key_pos = slots_k.astype(jnp.float32)[None] if cfg.has_window else None  # slot = position

    def step(params, tok, cur, cache):
        positions = cur.astype(jnp.float32).reshape(1, 1)
        slots = cur.reshape(1, 1)
        mask = (slots_k <= cur)[None, None, :]
        logits, cache, tapped = M.forward(params, cfg, tok, positions, slots, mask, cache, taps,
                                          key_pos=key_pos)
        return greedy(logits, cfg), cur + 1, cache, tapped["attn"]

    return jax.jit(step, donate_argnums=(3,))


def make_prefill(cfg: ModelConfig, capacity: int, t: int):
    taps = M.TapsSpec(attn=True)

    key_pos = jnp.arange(capacity, dtype=jnp.float32)[None] if cfg.has_window else None

    def prefill(params, tokens, cache):
        positions = jnp.arange(t, dtype=jnp.float32)[None]
        slots = jnp.arange(t)[None]
        logits, cache, tapped = M.forward(params, cfg, tokens, positions, slots,
                                          M.causal_mask(1, t, capacity), cache, taps, key_pos=key_pos)
        return greedy(logits, cfg), cache, tapped["attn"]

    return jax.jit(prefill, donate_argnums=(2,))


class JaxDecoder:
    """Greedy decode with attention taps: prefill once, then timed passes of ``steps`` steps that
    each redo the same positions (slots t.. are rewritten, the prompt's stay)."""

    def __init__(self, cfg, params, prompt_ids: np.ndarray, steps: int, cache_dtype):
        self.cfg, self.params, self.steps = cfg, params, steps
        self.t = t = len(prompt_ids)
        self.capacity = capacity = -(-(t + steps) // 16) * 16  # prompt + steps, multiple of 16
        tokens = jnp.asarray(prompt_ids[None].astype(np.int32))
        cache = M.init_cache(cfg, 1, capacity, cache_dtype)

        t0 = time.perf_counter()
        prefill_c = make_prefill(cfg, capacity, t).lower(params, tokens, cache).compile()
        self.prefill_compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tok, cache, probs = prefill_c(params, tokens, cache)
        probs.block_until_ready()
        self.prefill_s = time.perf_counter() - t0

        cur = jnp.asarray(t, jnp.int32)
        t0 = time.perf_counter()
        self.step = make_step(cfg, capacity).lower(params, tok, cur, cache).compile()
        self.compile_s = time.perf_counter() - t0

        self.first, self.cache = tok, cache
        self.generated = [int(tok[0, 0])]
        # warm-up pass (first executions), also gives the tokens compared with HF
        for _ in tqdm(range(steps - 1), desc="jax decode (warm-up)", leave=False):
            tok, cur, self.cache, probs = self.step(params, tok, cur, self.cache)
            probs.block_until_ready()
            self.generated.append(int(tok[0, 0]))
        self.rates = []

    def timed_pass(self) -> float:
        tok, cur, cache = self.first, jnp.asarray(self.t, jnp.int32), self.cache
        t0 = time.perf_counter()
        for _ in range(self.steps):
            tok, cur, cache, probs = self.step(self.params, tok, cur, cache)
            probs.block_until_ready()  # attention taps really materialised every step
        rate = self.steps / (time.perf_counter() - t0)
        want = (self.cfg.num_layers, 1, self.cfg.num_heads, 1, self.capacity)
        assert probs.shape == want, (probs.shape, want)
        self.cache = cache
        self.rates.append(rate)
        return rate


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=["default", "llama3.2-3b"], default="default",
                    help="default: the default model (SmolLM2-135M-Instruct) in float32; "
                         "llama3.2-3b: Llama-3.2-3B shape with random bfloat16 weights (no HF)")
    ap.add_argument("--model", default=None,
                    help="a named model (smollm2-135m, gemma3-270m) or a converted folder, HF folder or "
                         ".gguf file (default: the default model; with --shape default)")
    ap.add_argument("--steps", type=int, default=64, help="decode steps per timed pass")
    ap.add_argument("--repeats", type=int, default=7,
                    help="rounds: one timed pass per layout (and HF), then a bandwidth probe")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF transformers comparison")
    ap.add_argument("--hf-threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--bandwidth-gib", type=float, default=None,
                    help="size of the bandwidth probe (default 1 GiB on CPU, 4 GiB on an accelerator)")
    ap.add_argument("--layers", type=int, default=None,
                    help="override the layer count of --shape llama3.2-3b (smoke tests)")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="parameters and KV cache (default: float32 for the default model, bfloat16 "
                         "for the 3B shape); the HF comparison runs in float32 only")
    args = ap.parse_args(argv)
    if args.bandwidth_gib is None:
        args.bandwidth_gib = 1.0 if jax.default_backend() == "cpu" else 4.0

    device = jax.devices()[0]
    device_name = f"{device.platform}:{getattr(device, 'device_kind', device.platform)}".replace(" ", "_")
    print(f"device: {device}  ({device.device_kind}), jax {jax.__version__}", flush=True)

    if args.shape == "default":
        from tempo_jax.loading import load_model

        dtype = jnp.dtype(args.dtype or "float32")
        lm = load_model(args.model, dtype=dtype, verbose=True)
        cfg, params = lm.cfg, lm.params
        prompt_ids = chat_prompt_ids(lm.tokenizer, args.prompt)
        cache_dtype = dtype
        run_hf_too = not args.no_hf and dtype == jnp.float32
    else:
        cfg = LLAMA32_3B if args.layers is None else dataclasses.replace(LLAMA32_3B, num_layers=args.layers)
        dtype = jnp.dtype(args.dtype or "bfloat16")
        params = jax.jit(functools.partial(M.init_params, cfg, dtype=dtype))(jax.random.key(0))
        jax.block_until_ready(params)
        prompt_ids = np.random.default_rng(0).integers(0, cfg.vocab_size, 32)
        cache_dtype = dtype
        run_hf_too = False

    nbytes = param_bytes(params)
    print(f"model: {cfg.name}  params {nbytes / 1e6:.1f} MB  prompt {len(prompt_ids)} tokens  "
          f"steps {args.steps} x {args.repeats} passes", flush=True)

    layouts = {"unstacked": M.unstack_layers(params), "stacked": params}
    jx = {name: JaxDecoder(cfg, p, prompt_ids, args.steps, cache_dtype) for name, p in layouts.items()}
    hf = None
    if run_hf_too:
        hf = HfGreedy(hf_model(cfg, params), prompt_ids, args.steps, threads=args.hf_threads)
    # interleave the timed passes so that all sides see the same machine load, and probe the
    # bandwidth after each round (it drifts): per-round ratios, medians over rounds
    load = ForeignLoad().start()
    bws = []
    for _ in tqdm(range(args.repeats), desc="rounds (jax x2" + (", hf" if hf else "") + ", bandwidth)"):
        for d in jx.values():
            d.timed_pass()
        if hf:
            hf.timed_pass()
        bws.append(measure_bandwidth(args.bandwidth_gib, repeats=3))
    foreign = load.stop()
    bw = np.array([b for b, _ in bws])
    limit = bw * 1e9 / nbytes  # per round
    rate = {name: np.array(d.rates) for name, d in jx.items()}
    frac = {name: r / limit for name, r in rate.items()}
    speedup = rate["unstacked"] / rate["stacked"]
    med = lambda a: float(np.median(a))
    rng = lambda a: f"{med(a):.2f} [{np.min(a):.2f}, {np.max(a):.2f}]"

    sps = med(rate["unstacked"])
    rows = [("tempo-jax decode, unstacked layout", sps),
            ("tempo-jax decode, stacked layout (scan)", med(rate["stacked"]))]
    if hf:
        # HF's decode-only rate per round (one timed pass each), so its ratio is per round too
        hf_rounds = (args.steps - 1) / np.maximum(np.array(hf.full) - np.array(hf.one), 1e-9)
        hf_rate = med(hf_rounds)
        vs_hf = rate["unstacked"] / hf_rounds
        rows.append(("HF eager generate (output_attentions)", hf_rate))
        same = 0
        for a, b in zip(jx["unstacked"].generated, hf.generated):
            if a != b:
                break
            same += 1
    rows.append(("weight-streaming limit", med(limit)))
    print()
    print(f"{'median over rounds':40s} {'steps/s':>9s} {'ms/step':>9s} {'x unstacked':>12s}")
    for name, r in rows:
        print(f"{name:40s} {r:9.2f} {1e3 / r:9.2f} {r / sps:11.2f}x")
    print()
    print(f"fraction of the weight-streaming limit, per round: unstacked {rng(frac['unstacked'])}, "
          f"stacked {rng(frac['stacked'])}; unstacked / stacked steps/s {rng(speedup)}")
    probes = ", ".join(f"{k.removesuffix('_gbs').replace('_', ' ')} {rng([f[k] for _, f in bws])}"
                       for k in bws[0][1])
    print(f"memory read bandwidth per round {rng(bw)} GB/s (the largest of: {probes}; best of 3 "
          f"over {args.bandwidth_gib:g} GiB); params {nbytes / 1e6:.1f} MB")
    for name, d in jx.items():
        print(f"{name}: steps/s {rng(d.rates)} over {len(d.rates)} passes; decode-step compile "
              f"{d.compile_s:.2f} s; prefill ({d.t} tokens) compile {d.prefill_compile_s:.2f} s, "
              f"run {d.prefill_s * 1e3:.1f} ms")
    print(f"cache capacity {jx['unstacked'].capacity}; both layouts decode the same tokens: "
          f"{jx['unstacked'].generated == jx['stacked'].generated}")
    if hf:
        whole = args.steps / min(hf.full)
        print(f"HF: decode-only {rng(hf_rounds)} tokens/s (whole generate incl. prefill, best "
              f"{whole:.2f}); unstacked / HF steps/s {rng(vs_hf)}; "
              f"torch threads {hf.threads}; weights from {SOURCE}; greedy tokens identical "
              f"for the first {same}/{args.steps}")
    if foreign is not None:
        print(f"other processes used {100 * foreign:.0f}% of the {os.cpu_count()} CPUs during the "
              f"timed passes" + (" (figures are noisy; rerun on an idle machine)" if foreign > 0.1
                                 else ""))
    figures = {"steps_per_s": f"{sps:.2f}"}
    if hf:
        figures["hf_tokens_per_s"] = f"{hf_rate:.2f}"
        figures["speedup_vs_hf"] = f"{med(vs_hf):.2f}"
    figures.update(bandwidth_gbs=f"{med(bw):.2f}", limit_steps_per_s=f"{med(limit):.2f}",
                   fraction_of_limit=f"{med(frac['unstacked']):.2f}",
                   stacked_fraction_of_limit=f"{med(frac['stacked']):.2f}",
                   unstacked_vs_stacked=f"{med(speedup):.2f}",
                   compile_s=f"{jx['unstacked'].compile_s:.2f}",
                   stacked_compile_s=f"{jx['stacked'].compile_s:.2f}",
                   device=device_name, dtype=jnp.dtype(cache_dtype).name)
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
