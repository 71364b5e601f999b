"""``tempo-jax research list | run ID | report``: the pre-registered experiments of a project
(:class:`tempo_jax.research.Project`; this repository's is ``experiments.research``, see
experiments/research/README.md)."""

from __future__ import annotations

from tempo_jax.named_models import MODEL_HELP

DEFAULT_PROJECT = "experiments.research"
HTML_OUT = "runs/research/FINDINGS.html"  # generated page, kept out of the source tree (relative to the cwd)


def _check_results(res) -> None:
    """Refuse a results folder that is missing, a file, or holds no ``*/result.json``."""
    from tempo_jax.errors import UsageError

    if not res.exists():
        raise UsageError(f"--results {res}: no such folder")
    if not res.is_dir():
        raise UsageError(f"--results {res}: not a folder")
    if next(res.glob("*/result.json"), None) is None:
        raise UsageError(f"--results {res}: holds no results (no */result.json); nothing to report")


def add_parser(sub) -> None:
    from tempo_jax.cli_help import HelpFormatter  # each default shown once; none for None or a switch

    r = sub.add_parser("research", help="run pre-registered research experiments, regenerate FINDINGS.md",
                       formatter_class=HelpFormatter)
    r.add_argument("--experiments", default=DEFAULT_PROJECT, metavar="PACKAGE",
                   help="importable package whose __init__ defines PROJECT (a tempo_jax.research.Project)")
    rs = r.add_subparsers(dest="research_command", required=True)
    rs.add_parser("list", help="list the experiments and the questions they answer")
    run = rs.add_parser("run", help="run one experiment", formatter_class=HelpFormatter)
    run.add_argument("id", help="experiment id (see `tempo-jax research list`)")
    run.add_argument("--quick", action="store_true", help="a few prompts per genre; writes to runs/research/")
    run.add_argument("--prompt-file", default=None, help="JSONL (corpus schema) or text, one prompt a line")
    run.add_argument("--out", default=None, help="results folder (default: experiments/results/ID)")
    run.add_argument("--force", action="store_true", help="overwrite results of another model or corpus")
    run.add_argument("--model", default=None, help=MODEL_HELP)
    run.add_argument("--seed", type=int, default=None, help="override the design's seed")
    reg = rs.add_parser("register", help="register a confirmatory design: power from a dev pilot, a hash "
                                         "of its code; commit the file before the first result",
                        formatter_class=HelpFormatter)
    reg.add_argument("id", help="experiment id (its design's split must be confirmatory)")
    reg.add_argument("--pilot", required=True, metavar="DIR", action="append",
                     help="a result folder of the same experiment on the dev split (`run ID --quick --out DIR`): "
                          "its per-prompt SDs give the powered n; repeat it for a pilot on each model family "
                          "(every pilot's n must be reached)")
    reg.add_argument("--amend", default=None, metavar="REASON",
                     help="change an existing registration; the reason, date and whether a confirmatory "
                          "result had been seen are recorded")
    rep = rs.add_parser("report", help="regenerate experiments/FINDINGS.md from all results",
                        formatter_class=HelpFormatter)
    rep.add_argument("--results", default=None,
                     help="results folder, one ID/result.json per experiment; FINDINGS.md is written inside "
                          "it (default: experiments/results, with experiments/FINDINGS.md)")
    rep.add_argument("--html", action="store_true",
                     help="also write the findings as one self-contained HTML page (figures embedded)")
    rep.add_argument("--html-out", default=None, metavar="FILE",
                     help=f"where --html writes the page; implies --html (default: {HTML_OUT})")
    r.set_defaults(func=main)


def main(args) -> int:
    import os
    import sys
    from pathlib import Path

    from tempo_jax.research import load_project, render, runner

    if os.getcwd() not in sys.path:  # a project package in the current folder, as `python -m` finds it
        sys.path.insert(0, os.getcwd())
    project = load_project(args.experiments)
    if args.research_command == "list":
        for exp_id, mod in sorted(project.registry().items()):
            d = mod.DESIGN
            print(f"{exp_id:8s} questions {', '.join(d.questions):12s} {d.title}")
        return 0
    if args.research_command == "register":
        from tempo_jax.research import registration

        path = registration.register(project, args.id, [Path(p) for p in args.pilot], amend=args.amend)
        print(registration.power_summary(path))
        print(f"wrote {path}; commit it before the first confirmatory result")
        return 0
    if args.research_command == "report":
        res = Path(args.results) if args.results else project.results
        _check_results(res)
        if args.html or args.html_out:
            from tempo_jax.destinations import check_file_destination

            check_file_destination(args.html_out or HTML_OUT, "--html-out")
        path = render.write_findings(project, res, None if args.results is None else res / "FINDINGS.md")
        print(f"wrote {path}")
        if args.html or args.html_out:
            from tempo_jax.report import write_findings_html

            print(f"wrote {write_findings_html(path, res, args.html_out or HTML_OUT)}")
        return 0
    dest = runner.run_experiment(project, args.id, quick=args.quick, prompt_file=args.prompt_file,
                                 out=args.out, force=args.force, model=args.model, seed=args.seed)
    print((dest / "summary.md").read_text())
    print(f"results: {dest}")
    return 0
