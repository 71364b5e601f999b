"""Run one registered experiment: choose its prompts, load the model, call ``run`` with a
resumable per-prompt cache, compute the declared tests, and write the result folder atomically with
its provenance."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

from tempo_jax.destinations import check_folder_destination, staged_replace
from tempo_jax.errors import Interrupted, UsageError, user_input
from tempo_jax.research.design import Context, Design, Output
from tempo_jax.research.provenance import git_state, json_safe, params_hash, versions, write_csv
from tempo_jax.research import registration
from tempo_jax.research.registry import Project
from tempo_jax.research.render import default_answer, summary_md, write_findings
from tempo_jax.research.statistics import evaluate


def select_prompts(project: Project, design: Design, quick: bool, prompt_file: str | None) -> tuple[list, dict]:
    """The prompts a run uses and how results name their source: a prompt file, the dev split for
    ``quick`` (never the split findings are reported on), else the design's split."""
    corpus = project.corpus

    if prompt_file is not None:
        with user_input():  # a missing, unreadable or empty prompt file is the user's to fix
            prompts = corpus.load_prompt_file(prompt_file)
        # the prompt file's own sha256 stands in for the corpus hash (checked against earlier results)
        src = {"prompt_file": Path(prompt_file).name,
               "corpus_hash": hashlib.sha256(Path(prompt_file).read_bytes()).hexdigest(),
               "split": "custom"}
    else:
        # a smoke run never sees the split the findings are reported on: --quick reads dev
        n, split = (design.quick_n, "dev") if quick else (design.n_per_genre, design.split)
        prompts = corpus.load(split=split, genres=list(design.genres), limit_per_genre=n)
        src = {"corpus": project.corpus_name, "corpus_hash": corpus.corpus_hash(split), "split": split}
    if not prompts:
        raise UsageError(f"{design.id}: no prompt selected (genres {', '.join(design.genres)})")
    return prompts, src


def result_folder(exp_id: str, model: str | None) -> str:
    """The committed results folder's name: ``ID`` for the default model (and a model given by
    path), ``ID@NAME`` for another named model (``rq1.1c@gemma3-270m``), so one experiment keeps a
    result per model family side by side."""
    from tempo_jax.named_models import DEFAULT, named

    m = named(model)
    return exp_id if m is None or m.name == DEFAULT else f"{exp_id}@{m.name}"


def check_existing(dest: Path, model_id: str, p_hash: str, corpus_hash: str | None, force: bool) -> None:
    """Refuse to replace a result of another model or corpus unless ``force``."""
    old = dest / "result.json"
    if force or not old.exists():
        return
    prov = json.loads(old.read_text()).get("provenance") or {}
    if not prov:  # nothing recorded to compare against
        return
    if prov.get("params_hash") != p_hash:
        raise UsageError(f"{dest} holds results of another model ({prov.get('model')}, params hash "
                         f"{str(prov.get('params_hash'))[:12]}); use --force or another --out")
    if prov.get("corpus_hash") != corpus_hash:
        raise UsageError(f"{dest} holds results of another corpus (hash {str(prov.get('corpus_hash'))[:12]}); "
                         "use --force or another --out")


def run_experiment(project: Project, exp_id: str, *, quick: bool = False, prompt_file: str | None = None,
                   out: str | Path | None = None, force: bool = False, model: str | None = None,
                   loaded_model=None, seed: int | None = None, findings: bool = True) -> Path:
    """Run one experiment and write its results folder (atomically); returns the folder.

    A full run on the corpus writes ``project.results/<id>/`` and regenerates FINDINGS.md;
    ``quick`` (a few prompts per genre) or a ``prompt_file`` writes to ``out`` (default
    ``project.runs/<id>-quick`` / ``-custom``) and never touches the committed results.
    """
    mod = project.get(exp_id)
    design: Design = mod.DESIGN
    design.check()
    registered = None
    if design.split in registration.CONFIRMATORY and not quick and prompt_file is None:
        registered = registration.check_run(project, exp_id, mod)  # refuses before any compute
    prompts, src = select_prompts(project, design, quick, prompt_file)
    if out is not None:
        dest = Path(out)
    elif quick or prompt_file is not None:
        dest = project.runs / f"{exp_id}-{'quick' if quick else 'custom'}"
    else:
        dest = project.results / result_folder(exp_id, model)
    check_folder_destination(dest, "--out")
    if dest.exists() and any(dest.iterdir()) and not (dest / "result.json").exists():
        raise UsageError(f"--out {dest} is not empty and holds no experiment result (no result.json); "
                         "give a new or empty folder, or an earlier result folder to replace")
    official = dest.resolve() == (project.results / result_folder(exp_id, model)).resolve()
    if official and (quick or prompt_file is not None):
        raise UsageError("quick or prompt-file runs may not overwrite the committed results; give --out")
    seed = design.seed if seed is None else seed
    # out_dir becomes the staging folder below (destinations.staged_replace: a temporary sibling of
    # dest, renamed over it at the end; an error or Ctrl-C removes it and leaves dest as it was)
    ctx = Context(design=design, prompts=prompts, out_dir=dest, seed=seed, quick=quick,
                  model_spec=model, _model=loaded_model)
    m = ctx.model
    p_hash = params_hash(m.params)
    check_existing(dest, m.source, p_hash, src["corpus_hash"], force)  # refuses before any folder is made
    key = hashlib.sha256(json.dumps([p_hash, seed, json_safe(dataclasses.asdict(design)),
                                     [p.prompt for p in prompts]], sort_keys=True).encode()).hexdigest()
    ctx.cache_dir = project.runs / "cache" / f"{exp_id}-{key[:16]}"
    with staged_replace(dest) as tmp:
        ctx.out_dir = tmp
        t0 = time.perf_counter()
        try:
            output: Output = mod.run(ctx)
            tests = evaluate(design, output)
            for t in tests:
                t.post_hoc = registered is not None and t.hypothesis in registered["post_hoc"]
        except KeyboardInterrupt as e:
            if isinstance(e, Interrupted):
                raise
            cached = len(list(ctx.cache_dir.glob("*.pkl"))) if ctx.cache_dir.is_dir() else 0
            raise Interrupted(
                f"{cached} of {len(prompts)} prompts' results are kept in {ctx.cache_dir}; rerun the "
                f"same command to resume ({dest} is as it was)" if cached else
                f"nothing written, {dest} is as it was") from None
        elapsed = time.perf_counter() - t0
        genres = sorted({p.genre for p in prompts})
        result = {
            "id": design.id, "questions": list(design.questions), "title": design.title,
            "design": dataclasses.asdict(design),
            "provenance": {"model": m.source, "params_hash": p_hash, **git_state(project.root), **src,
                           "n_prompts": len(prompts), "genres": genres, "seed": seed, "quick": quick,
                           "prompt_ids": [p.id for p in prompts], "versions": versions(),
                           "run_seconds": round(elapsed, 1),
                           "command": command_line(exp_id, quick, prompt_file, project.package),
                           "registration": registered},
            "tests": [dataclasses.asdict(t) for t in tests],
            "answer": mod.answer(tests, design) if hasattr(mod, "answer") else default_answer(tests, design),
            "notes": output.notes,
        }
        (tmp / "result.json").write_text(json.dumps(json_safe(result), indent=1) + "\n")
        write_csv(tmp / "rows.csv", output.rows)
        for name, rows in output.tables.items():
            write_csv(tmp / f"table_{name}.csv", rows)
        (tmp / "summary.md").write_text(summary_md(result))
    shutil.rmtree(ctx.cache_dir, ignore_errors=True)  # complete: the per-prompt cache is not needed
    if findings and official:
        write_findings(project)
    return dest


def command_line(exp_id, quick, prompt_file, package: str = "experiments.research") -> str:
    """The command that reproduces a run."""
    cmd = "tempo-jax research" + ("" if package == "experiments.research" else f" --experiments {package}")
    cmd += f" run {exp_id}"
    if quick:
        cmd += " --quick"
    if prompt_file:
        cmd += f" --prompt-file {prompt_file}"
    return cmd
