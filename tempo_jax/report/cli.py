"""``tempo-jax report RUN_DIR [RUN_B]``: a run's HTML report, or two runs side by side."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

EXAMPLES = """examples:
  tempo-jax generate --prompt "The cat sat on the" --out runs/cat --html
  tempo-jax report runs/cat                      # writes runs/cat/trace_000.html
  tempo-jax report runs/cat runs/dog --out runs/compare.html
"""


def add_parser(sub) -> None:
    r = sub.add_parser("report", help="self-contained HTML report of a run, or two runs side by side",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    r.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="a folder written by `tempo-jax generate` (two folders: a comparison)")
    r.add_argument("--stem", default="trace_000", help="which trace of the folder (default: trace_000)")
    r.add_argument("--out", default=None,
                   help="HTML file to write (default: RUN_DIR/STEM.html; required for a comparison)")
    r.add_argument("--max-mb", type=float, default=48.0,
                   help="most MB of embedded attention; above it only every k-th step is kept (default: 48)")
    r.set_defaults(func=main)


def main(args) -> int:
    from tempo_jax.errors import UsageError

    if len(args.runs) > 2:
        raise UsageError("report takes one run folder, or two for a comparison")
    if not (math.isfinite(args.max_mb) and args.max_mb > 0):
        raise UsageError(f"--max-mb must be a positive number of MB, got {args.max_mb:g}")
    for run in args.runs:
        if not (Path(run) / f"{args.stem}.json").exists():
            raise UsageError(f"{run}: no {args.stem}.json (write one with `tempo-jax generate --out {run}`)")
    if args.out:
        from tempo_jax.destinations import check_file_destination

        check_file_destination(args.out, "--out")
    from tempo_jax.report import write_compare_report, write_run_report

    if len(args.runs) == 2:
        if not args.out:
            raise UsageError("a comparison needs --out FILE.html")
        path = write_compare_report(args.runs[0], args.runs[1], args.out, args.stem, args.stem)
    else:
        path = write_run_report(args.runs[0], args.out, stem=args.stem, max_bytes=int(args.max_mb * 2**20))
    print(f"wrote {path}")
    return 0
