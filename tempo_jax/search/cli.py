"""``tempo-jax search PROMPT``: Monte Carlo tree search over TEMPO candidate sets (docs/search.md).

Also runnable alone: ``python -m tempo_jax.search.cli PROMPT ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tempo_jax.named_models import MODEL_HELP


def add_parser(sub) -> None:
    from tempo_jax.cli_help import HelpFormatter  # each default shown once; none for None or a switch

    s = sub.add_parser("search", help="MCTS over TEMPO candidate sets, with a forward-token budget",
                       formatter_class=HelpFormatter,
                       epilog='example: tempo-jax search "The capital of France is" --budget 64 '
                              '--contains Paris --out runs/mcts')
    s.add_argument("prompt", help="the prompt text")
    s.add_argument("--model", default=None, help=MODEL_HELP)
    s.add_argument("--budget", type=int, default=64, help="forward tokens the search may spend")
    s.add_argument("--threshold", type=float, default=0.1, help="TEMPO threshold of an expansion")
    s.add_argument("--max-width", type=int, default=4, help="children per expansion at most")
    s.add_argument("--max-steps", type=int, default=16, help="tokens in the returned continuation")
    s.add_argument("--rollout-len", type=int, default=4, help="greedy tokens scored after a leaf")
    s.add_argument("--c-uct", type=float, default=1.0, help="UCT exploration weight")
    s.add_argument("--contains", default=None,
                   help="task check: value 1 when the decoded continuation contains this text, else 0 "
                        "(default: mean log-probability)")
    s.add_argument("--out", default=None, help="folder for search.json (the tree and the answer)")
    s.set_defaults(func=main)


def main(args) -> int:
    from tempo_jax.loading import load_checked
    from tempo_jax.errors import UsageError, user_input
    from tempo_jax.search.mcts import MCTSConfig, search

    with user_input():
        cfg = MCTSConfig(budget=args.budget, threshold=args.threshold, max_width=args.max_width,
                         max_steps=args.max_steps, rollout_len=args.rollout_len, c_uct=args.c_uct)
        cfg.validate()
    if args.contains is not None and not args.contains:
        raise UsageError("--contains needs a non-empty text")
    if args.out:
        from tempo_jax.destinations import check_folder_destination

        check_folder_destination(args.out, "--out")
    m = load_checked(args.model)
    ids = m.tokenizer(args.prompt).input_ids
    check = None
    if args.contains is not None:
        check = lambda cont: float(args.contains in m.tokenizer.decode(cont))
    with user_input():
        res = search(m.params, m.cfg, ids, cfg, check=check)
    print(args.prompt + m.tokenizer.decode(res.tokens))
    print(f"search forward tokens {res.forward_tokens} (budget {cfg.budget}), completion "
          f"{res.completion_tokens}, prompt {res.prompt_tokens}; {res.iterations} iterations, "
          f"{len(res.nodes)} nodes; first {res.path_len} tokens from the tree")
    if args.out:
        from tempo_jax.destinations import write_text_atomic

        out = Path(args.out)
        nodes = [dict(token=n.token, text=m.tokenizer.decode([n.token]) if n.token >= 0 else "",
                      parent=n.parent, depth=n.depth, prior=n.prior, visits=n.visits,
                      value=None if n.visits == 0 else n.value, children=n.children) for n in res.nodes]
        doc = dict(model=m.source, prompt=args.prompt, prompt_ids=list(ids), config=vars(cfg),
                   tokens=res.tokens, path_len=res.path_len, forward_tokens=res.forward_tokens,
                   completion_tokens=res.completion_tokens, iterations=res.iterations, nodes=nodes)
        write_text_atomic(out / "search.json", json.dumps(doc, indent=1))
        print(f"wrote {out / 'search.json'}")
    return 0


if __name__ == "__main__":
    from tempo_jax.errors import run_entry

    def _run() -> int:
        p = argparse.ArgumentParser(prog="tempo-jax")
        add_parser(p.add_subparsers(dest="command", required=True))
        args = p.parse_args(["search"] + sys.argv[1:])
        return args.func(args)

    sys.exit(run_entry(_run))
