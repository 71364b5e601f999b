"""Command line: ``tempo-jax COMMAND``, one function per command; ``main`` is the entry point."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tempo_jax.cli_help import HelpFormatter
from tempo_jax.errors import UsageError, on_interrupt, run_entry, user_input


def _read_prompts(args, per_line: bool) -> list[str]:
    """The prompt(s) of ``--prompt`` or ``--prompt-file`` (one per line, blank lines skipped, or the
    whole file as one prompt); refuses an empty prompt before any model is loaded."""
    if args.prompt is not None:
        if not args.prompt:
            raise UsageError("the prompt is empty: give --prompt some text")
        return [args.prompt]
    try:
        text = Path(args.prompt_file).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--prompt-file {args.prompt_file}: {getattr(e, 'strerror', None) or e}") from e
    if per_line:
        prompts = [line for line in text.splitlines() if line.strip()]
    else:
        prompts = [text.rstrip("\n")] if text.strip() else []
    if not prompts:
        raise UsageError(f"prompt file {args.prompt_file} holds no prompt (only blank lines)")
    return prompts


def _cmd_convert(args) -> int:
    if not Path(args.src).exists():
        raise UsageError(f"{args.src}: no such file or folder")
    from tempo_jax.destinations import check_convert_destination

    check_convert_destination(args.src, args.out, args.force)  # before anything is read
    from conversion.convert import convert

    import jax.numpy as jnp

    from conversion.common import CheckpointError
    from tempo_jax.config import UnsupportedConfigError

    try:
        with on_interrupt(f"nothing written, {args.out} is as it was"):
            out = convert(args.src, args.out, dtype=jnp.dtype(args.dtype), progress=True, force=args.force)
    except (CheckpointError, UnsupportedConfigError, FileNotFoundError) as e:
        raise UsageError(f"{args.src}: {e}" if isinstance(e, FileNotFoundError) else e) from e
    print(f"converted {args.src} -> {out}")
    return 0


DESCRIPTION = """\
TEMPO (Threshold-Enabled Multipath Parallel Output) generation in JAX, built as an instrument for
mechanistic interpretability: every token above a probability threshold is kept and written into
one sequence state at a shared RoPE position.

commands: generate (the main job), forward (one forward pass), explain (one step of a saved run),
report (a run as HTML), search (MCTS over TEMPO sets), sweep (a grid of runs as one program),
research (pre-registered experiments and FINDINGS.md), convert (an HF folder or GGUF file).
Run tempo-jax COMMAND --help for the options of a command, with their defaults."""

GENERATE_EXAMPLES = """examples:
  tempo-jax generate --prompt "The cat sat on the"
  tempo-jax generate --prompt "Once upon a time" --max-steps 16 --prune --prune-rho 0.8
  tempo-jax generate --prompt-file prompts.txt --siblings visible --positions offset --offset-delta 0.01
  tempo-jax generate --prompt "The cat sat on the" --method beam --beam-width 4
  tempo-jax generate --prompt "The cat sat on the" --method speculative --draft-layers 22 --draft-len 3
  tempo-jax generate --prompt "Once upon a time" --compat upstream --threshold 0.25
"""


def _id_list(text: str | None, what: str) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None


def _cmd_generate(args) -> int:
    prompts = _read_prompts(args, per_line=True)
    from tempo_jax.destinations import check_run_destination, staged_run
    from tempo_jax.engine.methods import Method
    from tempo_jax.engine.run import check_request

    if args.method == "speculative" and args.html:
        raise UsageError("--html captures attention at every step, which speculative decoding does "
                         "not stream; use --method greedy (the same tokens)")
    with user_input():  # every setting is checked before the model is loaded
        gcfg = generation_config(args)
        _as_options(gcfg.validate)
    out = check_run_destination(args.out)  # before the model is loaded
    if not args.max_capture_mb > 0:
        raise UsageError(f"--max-capture-mb must be > 0, got {args.max_capture_mb}")
    all_ids: list[list[int]] = []
    at = {"prompt": 0, "step": 0}

    def interrupted() -> str:
        if not all_ids:
            return f"before generation; nothing written, {out} is as it was"
        of = f" (prompt {at['prompt'] + 1} of {len(all_ids)})" if len(all_ids) > 1 else ""
        when = (f"after step {at['step']} of {args.max_steps}" if not Method.check(args.method).own_driver
                else "during generation")
        return f"{when}{of}; nothing written, {out} is as it was"

    # the temporary folder is made first: an unwritable --out is refused before the model loads
    with on_interrupt(interrupted), staged_run(out, " ".join(getattr(args, "argv", []))) as tmp:
        from tempo_jax.loading import load_checked

        m = load_checked(args.model, args.dtype)
        params = m.params
        if args.layout == "unstacked":
            from tempo_jax.model import unstack_layers

            params = unstack_layers(m.params)
        bos = m.tokenizer.bos_token_id

        def decode(ids):  # text as a reader sees it: the BOS the tokenizer put first is not shown
            ids = list(ids)
            return m.tokenizer.decode(ids[1:] if ids and bos is not None and ids[0] == bos else ids)

        eos = m.cfg.eos_token_ids
        for k, prompt in enumerate(prompts):  # every prompt is checked before the first one runs
            ids = m.tokenizer(prompt).input_ids
            where = f"prompt {k + 1} of {len(prompts)}: " if len(prompts) > 1 else ""
            with user_input():
                try:
                    _as_options(lambda ids=ids: check_request(m.cfg, gcfg, ids))
                except ValueError as e:
                    raise ValueError(where + str(e)) from None
            all_ids.append(ids)
        if args.html:
            _check_capture_size(m.cfg, gcfg, all_ids, args.max_capture_mb)
        colour = sys.stdout.isatty() and not args.no_colour
        for k, ids in enumerate(all_ids):
            at.update(prompt=k, step=0)
            stem = f"trace_{k:03d}"
            if len(all_ids) > 1:
                _say(f"=== prompt {k + 1} of {len(all_ids)}: {stem} ===")
            trace = _generate_one(args, m, params, gcfg, ids, tmp, stem, at)
            trace.save(tmp, stem)
            clean = trace.clean_text(decode, eos_ids=eos)
            (tmp / f"{stem}.txt").write_text(trace.render(decode, eos_ids=eos) + "\n\nclean: " + clean + "\n")
            _say(trace.render(decode, colour=colour, eos_ids=eos))
            _say(f"\nclean text: {clean}")
            sizes = [len(st["members"]) for st in trace.steps()]
            if args.method == "speculative":
                from tempo_jax.engine.speculative import SpecStats

                sp = SpecStats.of(trace)
                _say(f"speculative: {sp.rounds} full-model forwards for {sp.steps} tokens "
                      f"({sp.tokens_per_full_forward:.2f} per forward), draft acceptance "
                      f"{sp.accepted}/{sp.drafted} = {sp.acceptance_rate:.2f}")
            files = ", ".join(str(out / f"{stem}.{x}") for x in ("json", "npz", "txt"))
            _say(f"steps {len(sizes)}, mean set size {sum(sizes) / max(len(sizes), 1):.2f}, "
                  f"max {max(sizes, default=0)}; files: {files}\n")
            if args.html:
                from tempo_jax.report import write_run_report

                page = write_run_report(tmp, stem=stem, decode=decode, eos_ids=eos, name=out.name)
                _say(f"report: {out / Path(page).name}\n")
    return 0


def _generate_one(args, m, params, gcfg, ids, tmp: Path, stem: str, at: dict):
    """One prompt's trace; full attention streamed into ``tmp`` with ``--html``; ``at["step"]``
    counts finished steps (for the Ctrl-C message)."""
    from tempo_jax.engine import generate

    from tempo_jax.engine.methods import Method

    if Method.check(args.method).own_driver:  # speculative rounds, beam search: no per-step callback
        return generate(params, m.cfg, ids, gcfg, progress=True, model_id=m.source)
    writer = None
    if args.html:  # full attention streamed to disk for the report
        from tempo_jax.capture import CaptureWriter
        from tempo_jax.report import capture_dir

        writer = CaptureWriter(capture_dir(tmp, stem))

    def on_step(s, state, captured):
        if writer is not None:
            writer(s, state, captured)
        at["step"] = s + 1

    return generate(params, m.cfg, ids, gcfg, progress=True, model_id=m.source, on_step=on_step,
                    capture="full" if args.html else "none")


def _check_capture_size(cfg, gcfg, all_ids, limit_mb: float) -> None:
    """``--html`` streams every step's attention ``[L,H,W,K]`` float32 to disk: print the upper
    bound (every step run) and refuse, in one line, a run whose capture would pass ``limit_mb``."""
    per_step = [cfg.num_layers * cfg.num_heads * gcfg.width * gcfg.capacity_for(len(ids)) * 4 for ids in all_ids]
    total = sum(n * gcfg.max_steps for n in per_step)
    what = (f"{_mb(total)} ({gcfg.max_steps} steps x {_mb(max(per_step))}: {cfg.num_layers} layers x "
            f"{cfg.num_heads} heads x {gcfg.width} quer{'y' if gcfg.width == 1 else 'ies'} x "
            f"{gcfg.capacity_for(len(all_ids[0]))} "
            f"slots x 4 bytes{', ' + str(len(all_ids)) + ' prompts' if len(all_ids) > 1 else ''})")
    if total > limit_mb * 2**20:
        raise UsageError(f"--html would capture up to {what}, over the {limit_mb:g} MB limit; lower "
                         "--max-steps or --max-width, or raise --max-capture-mb")
    print(f"capture: --html writes up to {what}", file=sys.stderr)


def _mb(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def _say(text: str = "") -> None:
    """print, except that a closed pipe (``generate ... | head``) silences the rest of the output
    instead of stopping the run before its files are moved into place."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def add_generation_options(parser) -> None:
    """One option per GenerationConfig field (``--max-steps`` for ``max_steps``), its help, default,
    choices and range read from the field's declaration."""
    import dataclasses

    from tempo_jax.engine import GenerationConfig

    for f in dataclasses.fields(GenerationConfig):
        flag, md = "--" + f.name.replace("_", "-"), f.metadata
        rng = md.get("range")
        bounds = f"; {rng.text()}" if rng is not None and (rng.lo is not None or rng.hi is not None) else ""
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=md["help"])
        elif f.type.startswith("tuple"):  # parsed after argparse, so a bad list is one error line
            parser.add_argument(flag, default=None, metavar="A,B,...", help=md["help"])
        else:
            kind = int if f.type.startswith("int") else float if f.type.startswith("float") else str
            choices = md["choices"].names() if "choices" in md else None
            parser.add_argument(flag, type=kind, default=f.default, choices=choices, help=md["help"] + bounds)


def generation_config(args):
    """The GenerationConfig of parsed ``generate`` options (every field, by name)."""
    import dataclasses

    from tempo_jax.engine import GenerationConfig

    kw = {}
    for f in dataclasses.fields(GenerationConfig):
        value = getattr(args, f.name)
        if f.type.startswith("tuple") and value is not None:
            flag = "--" + f.name.replace("_", "-")
            value = _float_list(value, flag) if "float" in f.type else _id_list(value, flag)
        kw[f.name] = value
    return GenerationConfig(**kw)


def _float_list(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _as_options(check) -> None:
    """Run ``check``; a ValueError that names a GenerationConfig field names its option instead
    ("--threshold-final must be in (0, 1], got 2.0")."""
    import dataclasses

    from tempo_jax.engine import GenerationConfig

    try:
        check()
    except ValueError as e:
        field, _, rest = str(e).partition(" ")
        if field in {f.name for f in dataclasses.fields(GenerationConfig)}:
            raise ValueError(f"--{field.replace('_', '-')} {rest}") from None
        raise


def _echo_prompt(text: str, ids: list[int], decode, edge: int = 60, most: int = 40) -> str:
    """The prompt as its tokens when it is short; otherwise the token count and the first and last
    ``edge`` characters, so a long prompt file does not fill the screen."""
    if len(ids) <= most:
        return f"prompt tokens {len(ids)}: {[decode([i]) for i in ids]}"
    if len(text) <= 2 * edge + 5:
        return f"prompt tokens {len(ids)}: {text!r}"
    return f"prompt tokens {len(ids)} ({len(text)} characters): {text[:edge]!r} ... {text[-edge:]!r}"


def _cmd_forward(args) -> int:
    prompt = _read_prompts(args, per_line=False)[0]
    if args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {args.top_k}")
    from tempo_jax.loading import load_checked

    m = load_checked(args.model, args.dtype)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from tempo_jax.model import init_cache, prefill
    from tempo_jax.metrics import entropy_nats

    ids = m.tokenizer(prompt).input_ids
    if not ids:
        raise UsageError("the prompt is empty after tokenisation")
    if len(ids) > m.cfg.max_position_embeddings:
        raise UsageError(f"prompt ({len(ids)} tokens) exceeds the model's context of "
                         f"{m.cfg.max_position_embeddings} positions; shorten the prompt")
    t = len(ids)
    # chunked prefill: the last query's attention is kept in-graph, never the T x T attention
    run = jax.jit(prefill, static_argnames=("cfg", "chunk", "attn_last"))
    logits, _, taps = run(m.params, m.cfg, jnp.asarray([ids]), init_cache(m.cfg, 1, t, m.params["embed"].dtype),
                          jnp.int32(t - 1), attn_last=True)
    probs = np.asarray(jax.nn.softmax(logits[0]))
    top = np.argsort(-probs)[: args.top_k]
    print(f"model {m.cfg.name}  {_echo_prompt(prompt, ids, m.tokenizer.decode)}")
    print(f"\nnext-token top-{args.top_k}:")
    for i in top:
        print(f"  {probs[i]:7.4f}  {m.tokenizer.decode([int(i)])!r}")
    attn = np.asarray(taps["attn_last"][:, 0])  # [L,H,K] from the last query
    ent = entropy_nats(attn)  # [L,H] nats
    print("\nper layer, last query (mean over heads): attention entropy (nats) | attention on first token")
    for layer in range(attn.shape[0]):
        sink = attn[layer, :, 0].mean()
        print(f"  layer {layer:2d}  entropy {ent[layer].mean():5.3f}  first-token {sink:5.3f}  "
              + "#" * int(round(sink * 40)))
    return 0


def _cmd_sweep(args) -> int:
    from tempo_jax.destinations import check_sweep_destination
    from tempo_jax.sweeps.runner import main as sweep_main

    check_sweep_destination(args.out)
    chunks = Path(args.out) / "chunks"

    def kept() -> str:
        n = len([c for c in chunks.glob("chunk_*") if c.name[6:].isdigit()]) if chunks.is_dir() else 0
        return (f"{n} finished chunks are kept in {chunks}; rerun the same command to resume" if n
                else "no chunk had finished; rerun the same command to start again")

    with on_interrupt(kept), user_input():  # a bad spec or a reused --out is refused before any compute
        sweep_main(args.spec, args.out, model=args.model, coordinator=args.coordinator,
                   num_processes=args.num_processes, process_id=args.process_id,
                   progress=not args.no_progress)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tempo-jax", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    from tempo_jax.named_models import MODEL_HELP as model_help

    g = sub.add_parser("generate", help="TEMPO generation (the main job)", epilog=GENERATE_EXAMPLES,
                       formatter_class=HelpFormatter)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", help="text file with one prompt per line (blank lines skipped)")
    g.add_argument("--model", default=None, help=model_help)
    g.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype of the parameters and the KV cache (logits and softmax stay float32)")
    g.add_argument("--layout", choices=["stacked", "unstacked"], default="stacked",
                   help="weights as loaded (short compiles) or unstacked per layer (model."
                        "unstack_layers: steps about 1.3x faster on CPU, compiles about 5x longer; "
                        "for long runs and many prompts); same tokens, float rounding aside")
    add_generation_options(g)
    g.add_argument("--out", default="runs/latest", help="output directory for trace files")
    g.add_argument("--no-colour", action="store_true", help="plain text even on a terminal")
    g.add_argument("--html", action="store_true",
                   help="also capture full attention (OUT/capture/) and write OUT/trace_NNN.html")
    g.add_argument("--max-capture-mb", type=float, default=512.0,
                   help="--html: refuse a run whose capture could pass this size (it is printed first)")
    g.set_defaults(func=_cmd_generate)

    f = sub.add_parser("forward", help="one forward pass: next-token top-k and per-layer attention",
                       formatter_class=HelpFormatter,
                       epilog='examples:\n  tempo-jax forward --prompt "The cat sat on the"\n'
                              '  tempo-jax forward --prompt-file long_prompt.txt --top-k 5')
    fsrc = f.add_mutually_exclusive_group(required=True)
    fsrc.add_argument("--prompt", help="prompt text")
    fsrc.add_argument("--prompt-file", help="text file read as ONE prompt")
    f.add_argument("--model", default=None, help=model_help)
    f.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype of the parameters and the KV cache (logits and softmax stay float32)")
    f.add_argument("--top-k", type=int, default=10, help="next-token candidates to list")
    f.set_defaults(func=_cmd_forward)

    c = sub.add_parser("convert", help="convert an HF safetensors folder or a GGUF file",
                       formatter_class=HelpFormatter,
                       epilog="example: tempo-jax convert ./cogito-v1-preview-llama-3B ./cogito-jax")
    c.add_argument("src", help="Hugging Face model folder (config.json + safetensors) or a .gguf file")
    c.add_argument("out", help="folder to write the converted model to (new or empty)")
    c.add_argument("--force", action="store_true",
                   help="replace OUT if it holds an earlier conversion (never any other folder)")
    c.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype of the stored parameters")
    c.set_defaults(func=_cmd_convert)

    w = sub.add_parser("sweep", help="run a sweep spec (YAML) of worlds as one batched program",
                       formatter_class=HelpFormatter,
                       epilog="example: tempo-jax sweep experiments/sweeps/ablate_each_head.yaml "
                              "--out runs/ablate_each_head")
    w.add_argument("spec", help="sweep spec (YAML): axes prompts/thresholds/siblings/positions/heads/seeds")
    w.add_argument("--out", required=True, help="output directory (a rerun resumes; another spec is refused)")
    w.add_argument("--model", default=None, help="overrides the spec's model (part of the spec hash)")
    w.add_argument("--coordinator", default=None, help="multi-host: HOST:PORT of process 0")
    w.add_argument("--num-processes", type=int, default=1, help="multi-host: processes in the sweep")
    w.add_argument("--process-id", type=int, default=0, help="multi-host: this process's index")
    w.add_argument("--no-progress", action="store_true", help="no progress bar")
    w.set_defaults(func=_cmd_sweep)

    from tempo_jax.research_cli import add_parser as add_research

    add_research(sub)
    from tempo_jax.explain import add_parser as add_explain

    add_explain(sub)
    from tempo_jax.report.cli import add_parser as add_report

    add_report(sub)
    from tempo_jax.search.cli import add_parser as add_search

    add_search(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: a bad input gives one line ``tempo-jax: error: ...`` on stderr and status 2."""

    def run() -> int:
        args = build_parser().parse_args(argv)
        args.argv = list(argv) if argv is not None else sys.argv[1:]  # run.json records it
        return args.func(args)

    return run_entry(run)


if __name__ == "__main__":
    sys.exit(main())
