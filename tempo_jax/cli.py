"""Command line: ``tempo-jax forward | convert`` (``generate`` arrives with the TEMPO engine)."""

from __future__ import annotations

import argparse
import sys


def _cmd_convert(args) -> int:
    from conversion.convert import convert

    dtype = {"float32": "float32", "bfloat16": "bfloat16"}[args.dtype]
    import jax.numpy as jnp

    out = convert(args.src, args.out, dtype=jnp.dtype(dtype), progress=True)
    print(f"converted {args.src} -> {out}")
    return 0


def _cmd_forward(args) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tempo_jax.loading import load_model
    from tempo_jax.model import TapsSpec, causal_mask, forward, init_cache

    m = load_model(args.model)
    if m.tokenizer is None:
        raise SystemExit("this model folder has no tokenizer; convert it from a folder with tokenizer.json")
    ids = m.tokenizer(args.prompt).input_ids
    if not ids:
        raise SystemExit("the prompt is empty after tokenisation")
    t = len(ids)
    tokens = jnp.asarray([ids])
    positions = jnp.arange(t, dtype=jnp.float32)[None]
    run = jax.jit(forward, static_argnames=("cfg", "taps"))
    logits, _, taps = run(m.params, m.cfg, tokens, positions, jnp.arange(t)[None],
                          causal_mask(1, t, t), init_cache(m.cfg, 1, t), TapsSpec(attn=True))
    probs = np.asarray(jax.nn.softmax(logits[0, -1]))
    top = np.argsort(-probs)[: args.top_k]
    print(f"model {m.cfg.name}  prompt tokens {t}: {[m.tokenizer.decode([i]) for i in ids]}")
    print(f"\nnext-token top-{args.top_k}:")
    for i in top:
        print(f"  {probs[i]:7.4f}  {m.tokenizer.decode([int(i)])!r}")
    attn = np.asarray(taps["attn"][:, 0, :, -1, :])  # [L,H,K] from the last query
    ent = -(attn * np.log(np.where(attn > 0, attn, 1.0))).sum(-1)  # [L,H] nats
    print("\nper layer, last query (mean over heads): attention entropy (nats) | attention on first token")
    for layer in range(attn.shape[0]):
        sink = attn[layer, :, 0].mean()
        print(f"  layer {layer:2d}  entropy {ent[layer].mean():5.3f}  first-token {sink:5.3f}  "
              + "#" * int(round(sink * 40)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tempo-jax", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("forward", help="one forward pass: next-token top-k and per-layer attention",
                       epilog='example: tempo-jax forward --prompt "The cat sat on the"')
    f.add_argument("--prompt", required=True)
    f.add_argument("--model", default=None,
                   help="default (SmolLM2-135M-Instruct), a converted folder, an HF folder or a .gguf")
    f.add_argument("--top-k", type=int, default=10)
    f.set_defaults(func=_cmd_forward)

    c = sub.add_parser("convert", help="convert an HF safetensors folder or a GGUF file",
                       epilog="example: tempo-jax convert ./cogito-v1-preview-llama-3B ./cogito-jax")
    c.add_argument("src")
    c.add_argument("out")
    c.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    c.set_defaults(func=_cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
