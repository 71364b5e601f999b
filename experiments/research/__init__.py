"""Research experiments on the harness (see README.md in this folder).

``PROJECT`` tells :mod:`tempo_jax.research` where this repository's experiments, corpus, results and
FINDINGS.md live; ``tempo-jax research`` loads it by name (``--experiments experiments.research``).
"""

from pathlib import Path

from experiments import corpus
from tempo_jax.research import Project

_ROOT = Path(__file__).resolve().parents[2]

PROJECT = Project(package=__name__, folder=Path(__file__).parent, root=_ROOT,
                  results=_ROOT / "experiments" / "results", findings=_ROOT / "experiments" / "FINDINGS.md",
                  runs=_ROOT / "runs" / "research", corpus=corpus,
                  corpus_name="experiments/corpus/prompts.jsonl")
