"""Host memory of a long run with full attention capture streamed to disk.

Runs a 512-step TEMPO generation with ``capture="full"`` through :class:`CaptureWriter` and prints
the process's resident memory at several steps next to the bytes of attention written so far: the
resident size stays flat while the written bytes grow linearly (nothing accumulates on the host).
Uses a small random Llama (no download, no torch) so every step's attention ``[L,H,W,K]`` is
written in full.

    python benchmarks/capture_memory.py [--steps 512] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import jax


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from tqdm import tqdm

    from tempo_jax.capture import CaptureWriter
    from tempo_jax.config import ModelConfig
    from tempo_jax.engine import GenerationConfig, generate
    from tempo_jax.model import init_params

    cfg = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4,
                      num_kv_heads=2, head_dim=16, max_position_embeddings=8192, eos_token_ids=(2,))
    params = init_params(cfg, jax.random.key(0), scale=0.3)
    out = Path(args.out or tempfile.mkdtemp(prefix="capture_bench_"))
    writer = CaptureWriter(out)
    marks = {64, 128, 256, 384, args.steps}
    rows = []
    bar = tqdm(total=args.steps, desc="steps")

    def on_step(s, st, captured):
        writer(s, st, captured)
        bar.update(1)
        if s + 1 in marks:
            rows.append((s + 1, rss_mb(), (out / "attn.f32").stat().st_size / 2 ** 20))

    g = GenerationConfig(max_steps=args.steps, min_steps=args.steps, threshold=0.02, max_width=8)
    tr = generate(params, cfg, list(range(3, 19)), g, on_step=on_step, capture="full")
    bar.close()
    print(f"\nsteps {tr.n_steps}, cache slots K={g.capacity_for(16)}, mean set {tr.arrays['set_n'].mean():.2f}")
    print(f"{'step':>6s}{'host RSS MB':>14s}{'attention written MB':>24s}")
    for s, r, w in rows:
        print(f"{s:6d}{r:14.1f}{w:24.1f}")
    growth = rows[-1][1] - rows[0][1]
    written = rows[-1][2] - rows[0][2]
    print(f"rss_growth_mb={growth:.1f} written_mb={written:.1f} "
          f"growth_per_written={growth / max(written, 1e-9):.3f}")
    if args.out is None:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
