"""Decode benchmark: greedy steps/s of tempo-jax with attention taps on.

Compares, in one run and on one prompt:

* tempo-jax: prefill with ``forward`` (causal mask), then a jitted single-token step (cache donated,
  ``TapsSpec(attn=True)``, attention probabilities materialised every step, argmax on device);
* Hugging Face transformers greedy ``generate`` (eager attention, ``output_attentions=True``),
  decode-only rate (prefill time removed by timing a 1-token generate too);
* the weight-streaming limit: memory read bandwidth (largest of a jitted ``jnp.sum`` and a NumPy
  sum over a big float32 array, best of several) / parameter bytes.

Compile time (lowering + XLA compile of the decode step) is reported separately.

    python benchmarks/decode.py                 # default model vs HF vs the bandwidth limit
    python benchmarks/decode.py --no-hf         # JAX half only (torch is never imported)
    python benchmarks/decode.py --shape llama3.2-3b   # random bf16 Llama-3.2-3B shape (for a GPU)

The last line holds key=value figures, e.g.
``steps_per_s=.. hf_tokens_per_s=.. speedup_vs_hf=.. bandwidth_gbs=.. limit_steps_per_s=..
fraction_of_limit=.. compile_s=.. device=..``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from tempo_jax import model as M
from tempo_jax.config import ModelConfig, RopeScaling

PROMPT = "Explain in a few sentences why the sky is blue and why sunsets are red."

LLAMA32_3B = ModelConfig(
    vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_layers=28, num_heads=24,
    num_kv_heads=8, head_dim=128, rope_theta=500000.0,
    rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 8192), rms_norm_eps=1e-5,
    tie_embeddings=True, max_position_embeddings=131072, bos_token_id=128000,
    eos_token_ids=(128001,), name="llama3.2-3b-shape")


def param_bytes(params) -> int:
    """Bytes of all parameters (a tied embedding is a single leaf, so it counts once)."""
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))


def measure_bandwidth(gib: float, repeats: int) -> tuple[float, dict]:
    """Memory read bandwidth in GB/s: best of ``repeats`` full reads of a ``gib`` GiB float32 array,
    by a jitted jnp.sum and by NumPy; returns the larger (the stricter limit) and both figures."""
    n = int(gib * (1 << 30)) // 4
    nbytes = n * 4
    host = np.ones(n, np.float32)
    dev = jax.device_put(host)
    jsum = jax.jit(jnp.sum)
    jsum(dev).block_until_ready()
    best_j = best_np = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jsum(dev).block_until_ready()
        best_j = min(best_j, time.perf_counter() - t0)
    if jax.default_backend() == "cpu":  # NumPy only says something about host memory
        for _ in range(repeats):
            t0 = time.perf_counter()
            host.sum()
            best_np = min(best_np, time.perf_counter() - t0)
    del dev, host
    figures = {"jax_sum_gbs": nbytes / best_j / 1e9, "numpy_sum_gbs": nbytes / best_np / 1e9}
    return max(figures.values()), figures


def make_step(cfg: ModelConfig, capacity: int):
    """Jitted greedy step: (params, token[1,1], cur int32 scalar, cache) ->
    (next token[1,1], cur+1, cache, attention probs [L,1,H,1,K]). The cache is donated."""
    taps = M.TapsSpec(attn=True)
    slots_k = jnp.arange(capacity)

    def step(params, tok, cur, cache):
        positions = cur.astype(jnp.float32).reshape(1, 1)
        slots = cur.reshape(1, 1)
        mask = (slots_k <= cur)[None, None, :]
        logits, cache, tapped = M.forward(params, cfg, tok, positions, slots, mask, cache, taps)
        nxt = jnp.argmax(logits[:, -1], axis=-1).astype(tok.dtype)[:, None]
        return nxt, cur + 1, cache, tapped["attn"]

    return jax.jit(step, donate_argnums=(3,))


def make_prefill(cfg: ModelConfig, capacity: int, t: int):
    taps = M.TapsSpec(attn=True)

    def prefill(params, tokens, cache):
        positions = jnp.arange(t, dtype=jnp.float32)[None]
        slots = jnp.arange(t)[None]
        logits, cache, tapped = M.forward(params, cfg, tokens, positions, slots,
                                          M.causal_mask(1, t, capacity), cache, taps)
        nxt = jnp.argmax(logits[:, -1], axis=-1).astype(tokens.dtype)[:, None]
        return nxt, cache, tapped["attn"]

    return jax.jit(prefill, donate_argnums=(2,))


def run_jax(cfg, params, prompt_ids: np.ndarray, steps: int, repeats: int, cache_dtype):
    """Greedy decode; returns figures and the generated token ids (first = prefill's argmax)."""
    t = len(prompt_ids)
    capacity = -(-(t + steps) // 16) * 16  # prompt + steps, rounded up to a multiple of 16
    tokens = jnp.asarray(prompt_ids[None].astype(np.int32))
    cache = M.init_cache(cfg, 1, capacity, cache_dtype)

    prefill = make_prefill(cfg, capacity, t)
    t0 = time.perf_counter()
    prefill_c = prefill.lower(params, tokens, cache).compile()
    prefill_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    tok, cache, probs = prefill_c(params, tokens, cache)
    probs.block_until_ready()
    prefill_s = time.perf_counter() - t0

    step = make_step(cfg, capacity)
    cur = jnp.asarray(t, jnp.int32)
    t0 = time.perf_counter()
    step_c = step.lower(params, tok, cur, cache).compile()
    compile_s = time.perf_counter() - t0

    first = tok
    generated = [int(tok[0, 0])]
    # warm-up pass (first execution, allocator), also gives the tokens compared with HF
    for _ in tqdm(range(steps - 1), desc="jax decode (warm-up)", leave=False):
        tok, cur, cache, probs = step_c(params, tok, cur, cache)
        probs.block_until_ready()
        generated.append(int(tok[0, 0]))
    rates = []
    for r in range(repeats):
        # every pass redoes the same steps: slots t.. are rewritten, the prompt's stay
        tok, cur = first, jnp.asarray(t, jnp.int32)
        t0 = time.perf_counter()
        for _ in tqdm(range(steps), desc=f"jax decode {r + 1}/{repeats}", leave=False):
            tok, cur, cache, probs = step_c(params, tok, cur, cache)
            probs.block_until_ready()  # attention taps really materialised every step
        rates.append(steps / (time.perf_counter() - t0))
    assert probs.shape == (cfg.num_layers, 1, cfg.num_heads, 1, capacity), probs.shape
    return {"steps_per_s": max(rates), "steps_per_s_median": float(np.median(rates)),
            "compile_s": compile_s, "prefill_compile_s": prefill_compile, "prefill_s": prefill_s,
            "capacity": capacity}, generated


def hf_state_dict(cfg: ModelConfig, params) -> dict:
    """Our parameter pytree -> HF Llama state dict (numpy), the inverse of conversion.hf's map."""
    L, E = cfg.num_layers, cfg.hidden_size
    lay = {k: np.asarray(v) for k, v in params["layers"].items()}
    names = {"attn_norm": "input_layernorm.weight", "mlp_norm": "post_attention_layernorm.weight",
             "wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight",
             "wv": "self_attn.v_proj.weight", "wo": "self_attn.o_proj.weight",
             "w_gate": "mlp.gate_proj.weight", "w_up": "mlp.up_proj.weight",
             "w_down": "mlp.down_proj.weight"}
    sd = {"model.embed_tokens.weight": np.asarray(params["embed"]),
          "model.norm.weight": np.asarray(params["final_norm"])}
    for i in range(L):
        for leaf, name in names.items():
            w = lay[leaf][i]
            if leaf in ("wq", "wk", "wv"):
                w = w.reshape(E, -1).T
            elif leaf == "wo":
                w = w.reshape(-1, E).T
            elif w.ndim == 2:
                w = w.T
            sd[f"model.layers.{i}.{name}"] = w
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"] if cfg.tie_embeddings else \
        np.asarray(params["lm_head"]).T
    return sd


def load_hf_reference(cfg: ModelConfig, state: dict | None):
    """The default model in HF transformers (float32, eager attention): from the GGUF file, or, where
    transformers cannot read GGUF here (it needs ``accelerate``), a LlamaForCausalLM built from the
    same converted weights (``state``: see :func:`hf_state_dict`)."""
    import torch
    import transformers

    from tempo_jax.default_model import gguf_path

    path = gguf_path()
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, torch_dtype=torch.float32,
            attn_implementation="eager")
        return hf.eval(), "gguf"
    except (ImportError, ValueError) as e:
        if state is None or "accelerate" not in str(e):
            raise
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    hc = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps, rope_parameters=rope,
        tie_word_embeddings=cfg.tie_embeddings, max_position_embeddings=cfg.max_position_embeddings,
        attn_implementation="eager", torch_dtype=torch.float32)
    hf = transformers.LlamaForCausalLM(hc).eval()
    missing, unexpected = hf.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                                              for k, v in state.items()}, strict=False)
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"HF reference weights do not fit: {missing} {unexpected}")
    return hf, "converted weights (transformers lacks accelerate for GGUF)"


def run_hf(cfg: ModelConfig, state, prompt_ids: np.ndarray, steps: int, repeats: int,
           threads: int | None):
    """HF transformers eager greedy generate with output_attentions on the default model."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    hf, source = load_hf_reference(cfg, state)
    del state
    ids = torch.tensor(prompt_ids[None].astype(np.int64))

    def gen(n):
        with torch.inference_mode():
            return hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=n, min_new_tokens=n, output_attentions=True,
                               return_dict_in_generate=True, pad_token_id=0)

    out = gen(steps)  # warm-up
    assert out.attentions is not None and len(out.attentions) == steps
    generated = out.sequences[0, len(prompt_ids):].tolist()
    full, one = [], []
    for _ in tqdm(range(repeats), desc="hf generate", leave=False):
        t0 = time.perf_counter()
        gen(1)
        one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        gen(steps)
        full.append(time.perf_counter() - t0)
    t_full, t_one = min(full), min(one)
    return {"hf_tokens_per_s": (steps - 1) / max(t_full - t_one, 1e-9),
            "hf_generate_tokens_per_s": steps / t_full, "hf_threads": torch.get_num_threads(),
            "hf_source": source}, generated


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=["default", "llama3.2-3b"], default="default",
                    help="default: the default model (SmolLM2-135M-Instruct) in float32; "
                         "llama3.2-3b: Llama-3.2-3B shape with random bfloat16 weights (no HF)")
    ap.add_argument("--steps", type=int, default=64, help="decode steps per timed pass")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes (best is reported)")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF transformers comparison")
    ap.add_argument("--hf-threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--bandwidth-gib", type=float, default=1.0, help="size of the bandwidth probe")
    ap.add_argument("--layers", type=int, default=None,
                    help="override the layer count of --shape llama3.2-3b (smoke tests)")
    ap.add_argument("--prompt", default=PROMPT)
    args = ap.parse_args(argv)

    device = jax.devices()[0]
    device_name = f"{device.platform}:{getattr(device, 'device_kind', device.platform)}".replace(" ", "_")
    print(f"device: {device}  ({device.device_kind}), jax {jax.__version__}", flush=True)

    if args.shape == "default":
        from tempo_jax.loading import load_model

        lm = load_model(dtype=jnp.float32, verbose=True)
        cfg, params = lm.cfg, lm.params
        prompt_ids = np.asarray(lm.tokenizer(args.prompt)["input_ids"], np.int64)
        cache_dtype = jnp.float32
        run_hf_too = not args.no_hf
    else:
        cfg = LLAMA32_3B if args.layers is None else dataclasses.replace(LLAMA32_3B, num_layers=args.layers)
        params = jax.jit(functools.partial(M.init_params, cfg, dtype=jnp.bfloat16))(jax.random.key(0))
        jax.block_until_ready(params)
        prompt_ids = np.random.default_rng(0).integers(0, cfg.vocab_size, 32)
        cache_dtype = jnp.bfloat16
        run_hf_too = False

    nbytes = param_bytes(params)
    print(f"model: {cfg.name}  params {nbytes / 1e6:.1f} MB  prompt {len(prompt_ids)} tokens  "
          f"steps {args.steps} x {args.repeats}", flush=True)

    bw, bw_figs = measure_bandwidth(args.bandwidth_gib, repeats=5)
    limit = bw * 1e9 / nbytes

    jx, jax_tokens = run_jax(cfg, params, prompt_ids, args.steps, args.repeats, cache_dtype)

    hf = None
    if run_hf_too:
        state = hf_state_dict(cfg, params)
        del params  # the JAX half is done
        hf, hf_tokens = run_hf(cfg, state, prompt_ids, args.steps, args.repeats, args.hf_threads)
        del state
        same = 0
        for a, b in zip(jax_tokens, hf_tokens):
            if a != b:
                break
            same += 1

    sps = jx["steps_per_s"]
    rows = [("tempo-jax decode (attn taps)", sps, 1.0)]
    if hf:
        rows.append(("HF eager generate (output_attentions)", hf["hf_tokens_per_s"],
                     hf["hf_tokens_per_s"] / sps))
    rows.append(("weight-streaming limit", limit, limit / sps))
    print()
    print(f"{'':40s} {'steps/s':>9s} {'ms/step':>9s} {'vs tempo-jax':>13s}")
    for name, rate, rel in rows:
        print(f"{name:40s} {rate:9.2f} {1e3 / rate:9.2f} {rel:12.2f}x")
    print()
    print(f"memory read bandwidth: {bw:.2f} GB/s (jnp.sum {bw_figs['jax_sum_gbs']:.2f}, numpy "
          f"{bw_figs['numpy_sum_gbs']:.2f}); params {nbytes / 1e6:.1f} MB -> limit {limit:.2f} steps/s")
    print(f"tempo-jax: best {sps:.2f} / median {jx['steps_per_s_median']:.2f} steps/s, cache capacity "
          f"{jx['capacity']}; decode-step compile {jx['compile_s']:.2f} s; prefill compile "
          f"{jx['prefill_compile_s']:.2f} s, prefill {jx['prefill_s'] * 1e3:.1f} ms")
    if hf:
        print(f"HF: decode-only {hf['hf_tokens_per_s']:.2f} tokens/s (whole generate incl. prefill "
              f"{hf['hf_generate_tokens_per_s']:.2f}), torch threads {hf['hf_threads']}, weights from "
              f"{hf['hf_source']}; "
              f"greedy tokens identical for the first {same}/{args.steps}")
    figures = {"steps_per_s": f"{sps:.2f}"}
    if hf:
        figures["hf_tokens_per_s"] = f"{hf['hf_tokens_per_s']:.2f}"
        figures["speedup_vs_hf"] = f"{sps / hf['hf_tokens_per_s']:.2f}"
    figures.update(bandwidth_gbs=f"{bw:.2f}", limit_steps_per_s=f"{limit:.2f}",
                   fraction_of_limit=f"{sps / limit:.2f}", compile_s=f"{jx['compile_s']:.2f}",
                   device=device_name)
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
