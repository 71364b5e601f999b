"""Where a set of experiments lives: a :class:`Project` names the package of experiment modules,
the corpus their prompts come from, and the folders results, FINDINGS.md and quick runs go to.

A package of experiments defines ``PROJECT = Project(...)`` in its ``__init__``; ``tempo-jax research
--experiments PACKAGE`` loads it by name (:func:`load_project`), so the library never imports a
particular project. This repository's project is ``experiments.research``.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any, Protocol, Sequence

from tempo_jax.errors import UsageError
from tempo_jax.research.design import Design


class Corpus(Protocol):
    """The prompts a project's experiments run on (see ``experiments/corpus``)."""

    def load(self, split: str, genres: Sequence[str], limit_per_genre: int | None) -> list: ...

    def load_prompt_file(self, path) -> list: ...

    def corpus_hash(self, split: str | None = None) -> str: ...


@dataclasses.dataclass(frozen=True)
class Project:
    """A package of experiment modules and the folders around it.

    package: importable name of the experiment modules' package; folder: its directory, searched
    for modules matching ``patterns`` that define ``DESIGN``; root: the repository (provenance:
    commit and clean tree); results: ``ID/result.json`` folders; findings: the generated
    FINDINGS.md; runs: quick and custom runs, and the per-prompt resume cache; corpus: prompts;
    corpus_name: how results name the corpus.
    """

    package: str
    folder: Path
    root: Path
    results: Path
    findings: Path
    runs: Path
    corpus: Any
    corpus_name: str = "corpus"
    patterns: tuple[str, ...] = ("rq*.py", "rep*.py")

    def registry(self) -> dict[str, Any]:
        """Experiment id -> module, for every module matching ``patterns`` that defines a Design."""
        out = {}
        paths = sorted({p for pat in self.patterns for p in self.folder.glob(pat)})
        for path in paths:
            mod = importlib.import_module(f"{self.package}.{path.stem}")
            design = getattr(mod, "DESIGN", None)
            if isinstance(design, Design):
                out[design.id] = mod
        return out

    def get(self, exp_id: str):
        """The module of experiment ``exp_id``, or a one-line UsageError naming the known ids."""
        reg = self.registry()
        if exp_id not in reg:
            raise UsageError(f"unknown experiment {exp_id!r}; known: {', '.join(sorted(reg)) or 'none'}")
        return reg[exp_id]


def load_project(package: str) -> Project:
    """``PROJECT`` of the importable package ``package``, or a one-line UsageError."""
    try:
        mod = importlib.import_module(package)
    except ImportError as e:
        raise UsageError(f"--experiments {package}: cannot import it ({e})") from None
    project = getattr(mod, "PROJECT", None)
    if not isinstance(project, Project):
        raise UsageError(f"--experiments {package}: defines no PROJECT (a tempo_jax.research.Project)")
    return project
