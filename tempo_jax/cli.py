"""Command line: ``tempo-jax generate | forward | convert | sweep``."""

from __future__ import annotations

import argparse
import sys


def _cmd_convert(args) -> int:
    from conversion.convert import convert

    import jax.numpy as jnp

    out = convert(args.src, args.out, dtype=jnp.dtype(args.dtype), progress=True)
    print(f"converted {args.src} -> {out}")
    return 0


GENERATE_EXAMPLES = """examples:
  tempo-jax generate --prompt "The cat sat on the"
  tempo-jax generate --prompt "Once upon a time" --threshold 0.05 --max-width 8 --prune
  tempo-jax generate --prompt-file prompts.txt --siblings visible --positions offset --offset-delta 0.01
  tempo-jax generate --prompt "The cat sat on the" --method beam --beam-width 4
  tempo-jax generate --prompt "The cat sat on the" --compat upstream --threshold 0.25
"""


def _cmd_generate(args) -> int:
    from pathlib import Path

    from tempo_jax.engine import GenerationConfig, generate

    if (args.prompt is None) == (args.prompt_file is None):
        raise SystemExit("give exactly one of --prompt or --prompt-file")
    prompts = [args.prompt] if args.prompt is not None else [
        line.rstrip("\n") for line in Path(args.prompt_file).read_text().splitlines() if line.strip()]
    layers = tuple(int(x) for x in args.prune_layers.split(",")) if args.prune_layers else None
    heads = tuple(int(x) for x in args.prune_heads.split(",")) if args.prune_heads else None
    gcfg = GenerationConfig(
        max_steps=args.max_steps, max_width=args.max_width, threshold=args.threshold,
        schedule=args.schedule, threshold_final=args.threshold_final, siblings=args.siblings,
        positions=args.positions, offset_delta=args.offset_delta, combine=args.combine, eos=args.eos,
        min_steps=args.min_steps, prune=args.prune, prune_window=args.prune_window,
        prune_timing=args.prune_timing, prune_rule=args.prune_rule, prune_rho=args.prune_rho,
        prune_theta=args.prune_theta, prune_layers=layers, prune_heads=heads,
        method=args.method if args.method != "beam" else "greedy", temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, compat=args.compat, seed=args.seed)
    gcfg.validate()
    from tempo_jax.loading import load_model

    m = load_model(args.model)
    if m.tokenizer is None:
        raise SystemExit("this model has no tokenizer; convert it from a folder with tokenizer.json")
    decode = lambda ids: m.tokenizer.decode(ids)
    out = Path(args.out)
    colour = sys.stdout.isatty() and not args.no_colour
    for k, prompt in enumerate(prompts):
        ids = m.tokenizer(prompt).input_ids
        if args.method == "beam":
            from tempo_jax.engine.beam import beam_search

            trace = beam_search(m.params, m.cfg, ids, width=args.beam_width, max_steps=args.max_steps,
                                length_penalty=args.length_penalty, model_id=m.source)
        else:
            trace = generate(m.params, m.cfg, ids, gcfg, progress=True, model_id=m.source)
        stem = f"trace_{k:03d}"
        j, z = trace.save(out, stem)
        (out / f"{stem}.txt").write_text(trace.render(decode) + "\n\nclean: " + trace.clean_text(decode) + "\n")
        print(trace.render(decode, colour=colour))
        print(f"\nclean text: {trace.clean_text(decode)}")
        sizes = [len(st["members"]) for st in trace.steps()]
        print(f"steps {len(sizes)}, mean set size {sum(sizes) / max(len(sizes), 1):.2f}, "
              f"max {max(sizes, default=0)}; files: {j}, {z}, {out / (stem + '.txt')}\n")
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


def _cmd_sweep(args) -> int:
    from tempo_jax.sweeps.runner import main as sweep_main

    try:
        sweep_main(args.spec, args.out, model=args.model, coordinator=args.coordinator,
                   num_processes=args.num_processes, process_id=args.process_id,
                   progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tempo_jax.engine.rules import (CombineRule, Compat, EosRule, Method, PositionVariant,
                                        PruneRule, PruneTiming, Schedule, SiblingRule)

    p = argparse.ArgumentParser(prog="tempo-jax", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="TEMPO generation (the main job)", epilog=GENERATE_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--prompt", help="prompt text")
    g.add_argument("--prompt-file", help="file with one prompt per line")
    g.add_argument("--model", default=None,
                   help="default (SmolLM2-135M-Instruct), a converted folder, an HF folder or a .gguf")
    g.add_argument("--threshold", type=float, default=0.1, help="tau_0: keep tokens with p >= tau")
    g.add_argument("--schedule", default="constant",
                   choices=Schedule.names())
    g.add_argument("--threshold-final", type=float, default=None, help="tau at the last step")
    g.add_argument("--max-steps", type=int, default=32, help="logical steps")
    g.add_argument("--max-width", type=int, default=8, help="W: most members per set")
    g.add_argument("--siblings", default="isolated", choices=SiblingRule.names())
    g.add_argument("--positions", default="shared", choices=PositionVariant.names())
    g.add_argument("--offset-delta", type=float, default=0.001, help="offset variant: member i at +i*delta")
    g.add_argument("--combine", default="mixture", choices=CombineRule.names())
    g.add_argument("--eos", default="top", choices=EosRule.names())
    g.add_argument("--min-steps", type=int, default=0)
    g.add_argument("--prune", action="store_true", help="retroactive pruning on")
    g.add_argument("--prune-window", type=int, default=2)
    g.add_argument("--prune-timing", default="window", choices=PruneTiming.names())
    g.add_argument("--prune-rule", default="relative", choices=PruneRule.names())
    g.add_argument("--prune-rho", type=float, default=0.5, help="relative rule: prune below rho x set mean")
    g.add_argument("--prune-theta", type=float, default=0.01, help="absolute/sigmoid threshold")
    g.add_argument("--prune-layers", default=None, help="comma-separated layer subset for scoring")
    g.add_argument("--prune-heads", default=None, help="comma-separated head subset for scoring")
    g.add_argument("--method", default="tempo", choices=Method.names() + ["beam"])
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--beam-width", type=int, default=4)
    g.add_argument("--length-penalty", type=float, default=1.0)
    g.add_argument("--compat", default="none", choices=Compat.names(),
                   help="upstream: replicate the original PyTorch implementation's feed sequence")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="runs/latest", help="output directory for trace files")
    g.add_argument("--no-colour", action="store_true")
    g.set_defaults(func=_cmd_generate)

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

    w = sub.add_parser("sweep", help="run a sweep spec (YAML) of worlds as one batched program",
                       epilog="example: tempo-jax sweep experiments/sweeps/ablate_each_head.yaml "
                              "--out runs/ablate_each_head")
    w.add_argument("spec", help="sweep spec (YAML): axes prompts/thresholds/siblings/positions/heads/seeds")
    w.add_argument("--out", required=True, help="output directory (a rerun resumes; another spec is refused)")
    w.add_argument("--model", default=None, help="overrides the spec's model (part of the spec hash)")
    w.add_argument("--coordinator", default=None, help="multi-host: HOST:PORT of process 0")
    w.add_argument("--num-processes", type=int, default=1)
    w.add_argument("--process-id", type=int, default=0)
    w.add_argument("--no-progress", action="store_true")
    w.set_defaults(func=_cmd_sweep)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
