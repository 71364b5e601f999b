"""This repository's experiments on the library harness (:mod:`tempo_jax.research`): the names the
experiment modules import, bound to :data:`experiments.research.PROJECT`."""

from __future__ import annotations

from pathlib import Path

from experiments.research import PROJECT
from tempo_jax.research import render as _render
from tempo_jax.research import runner as _runner
from tempo_jax.research.design import Context, Design, Hypothesis, Output, TestResult, quality_of
from tempo_jax.research.provenance import git_state as _git_state
from tempo_jax.research.provenance import json_safe, params_hash, versions, write_csv
from tempo_jax.research.render import default_answer, fmt, summary_md, tests_table
from tempo_jax.research.statistics import evaluate, paired_test, verdict

ROOT = PROJECT.root
RESULTS = PROJECT.results
FINDINGS = PROJECT.findings

__all__ = ["Context", "Design", "Hypothesis", "Output", "TestResult", "quality_of", "git_state", "json_safe",
           "params_hash", "versions", "write_csv", "default_answer", "fmt", "summary_md", "tests_table",
           "evaluate", "paired_test", "verdict", "ROOT", "RESULTS", "FINDINGS", "registry", "get",
           "run_experiment", "write_findings", "reword", "refresh_equivalence"]


def git_state() -> dict:
    return _git_state(PROJECT.root)


def registry() -> dict:
    return PROJECT.registry()


def get(exp_id: str):
    return PROJECT.get(exp_id)


def run_experiment(exp_id: str, **kw) -> Path:
    return _runner.run_experiment(PROJECT, exp_id, **kw)


def write_findings(results_dir: Path = RESULTS, path: Path = FINDINGS) -> Path:
    return _render.write_findings(PROJECT, results_dir, path)


def reword(result: dict, path: Path | None = None) -> dict:
    return _render.reword(PROJECT, result, path)


def refresh_equivalence(path: Path) -> list[str]:
    return _render.refresh_equivalence(PROJECT, path)
