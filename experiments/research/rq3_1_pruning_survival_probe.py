"""Research question 3.1: does a member's residual stream predict whether it survives pruning?

Runs TEMPO with retroactive pruning and summary capture (members' residual streams after every
layer, written to disk as produced), labels every member of a parallel set as survived / pruned,
and trains a logistic probe per chosen layer (optax). Honest comparison: held-out accuracy next to
the majority-class rate and to a probe trained on shuffled labels.

    python3 experiments/research/rq3_1_pruning_survival_probe.py --prompt-file prompts.txt --out results/rq3_1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DEFAULT_PROMPTS = ["The cat sat on the", "Once upon a time, there was a", "The capital of France is",
                   "In the morning I like to", "The best way to learn a language is",
                   "My favourite colour is", "The scientist opened the door and", "Water boils at"]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-file", help="one prompt per line (default: a built-in set of 8)")
    p.add_argument("--model", default=None, help="default model, a converted folder, HF folder or .gguf")
    p.add_argument("--max-steps", type=int, default=24)
    p.add_argument("--threshold", type=float, default=0.05)
    p.add_argument("--max-width", type=int, default=8)
    p.add_argument("--prune-rho", type=float, default=0.7, help="relative rule: prune below rho x set mean")
    p.add_argument("--prune-window", type=int, default=2)
    p.add_argument("--layers", default=None, help="comma-separated layers to probe (default: 4 spread)")
    p.add_argument("--out", default="results/rq3_1")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from tempo_jax.engine import GenerationConfig, generate
    from tempo_jax.loading import load_model
    from tempo_jax.probes import train_linear_probe

    prompts = (Path(args.prompt_file).read_text().splitlines() if args.prompt_file else DEFAULT_PROMPTS)
    prompts = [p for p in prompts if p.strip()]
    m = load_model(args.model)
    L = m.cfg.num_layers
    layers = ([int(x) for x in args.layers.split(",")] if args.layers
              else sorted({0, L // 3, 2 * L // 3, L - 1}))
    g = GenerationConfig(max_steps=args.max_steps, threshold=args.threshold, max_width=args.max_width,
                         prune=True, prune_window=args.prune_window, prune_rho=args.prune_rho,
                         min_steps=args.max_steps, seed=args.seed)
    feats, labels, groups = {l: [] for l in layers}, [], []
    for k, prompt in enumerate(tqdm(prompts, desc="prompts")):
        resid = []
        tr = generate(m.params, m.cfg, m.tokenizer(prompt).input_ids, g, capture="summary",
                      on_step=lambda s, st, c: resid.append(np.asarray(c.resid)[layers]))  # [l,W,E]
        a = tr.arrays
        # only sets whose window closed inside the run were judged
        for s in range(tr.n_steps - g.prune_window):
            n = int(a["set_n"][s])
            if n < 2:
                continue
            for i in range(n):
                for j, l in enumerate(layers):
                    feats[l].append(resid[s][j, i])
                labels.append(a["pruned_at"][a["slots"][s, i]] < 0)
                groups.append(k)
    y = np.asarray(labels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"n_members": int(y.size), "survival_rate": float(y.mean()) if y.size else None,
              "prompts": len(prompts), "layers": {}}
    if y.size < 8 or len(np.unique(y)) < 2:
        report["note"] = "too few judged members or one class only; lower the threshold or raise rho"
    else:
        rng = np.random.default_rng(args.seed)
        majority = max(y.mean(), 1 - y.mean())
        for l in layers:
            x = np.stack(feats[l])
            probe = train_linear_probe(x, y, seed=args.seed)
            control = train_linear_probe(x, rng.permutation(y), seed=args.seed)
            report["layers"][l] = {"test_acc": probe.test_acc, "train_acc": probe.train_acc,
                                   "shuffled_test_acc": control.test_acc, "majority": majority}
    (out / "rq3_1.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print("Note: members from one prompt share context; with few prompts the held-out split is not "
          "independent of training. Treat accuracies as descriptive.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
