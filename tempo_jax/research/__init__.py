"""The research harness: pre-registered designs, statistics the experiment cannot skip, results
with provenance, and FINDINGS.md generated from every committed result.

An experiment is a module of a :class:`Project`'s package (this repository's:
``experiments/research/rq*.py``) with ``DESIGN`` (a :class:`Design`, declared before anything runs)
and ``run(ctx) -> Output``. ``run`` returns tidy per-prompt rows;
the harness computes every declared test from them (paired statistics over prompts, correction
within each family, TOST with the declared margin) and words the verdict. Designs whose statistic
is not a per-prompt paired value (e.g. an AUROC over clustered rows) return precomputed
:class:`TestResult` objects in ``Output.tests``; the harness still corrects them within their family.

Verdicts (per test, at the design's alpha, corrected p-values):
  "differs (+)" / "differs (-)"     difference test significant;
  "no effect within +-m"            not significant, and TOST equivalent within the margin m;
  "cannot tell at this n"           neither.
A significant difference whose CI lies inside the margin is reported as "differs (+/-), within +-m".
"""

from tempo_jax.research.design import Context, Design, Hypothesis, Output, TestResult, quality_of
from tempo_jax.research.registry import Project, load_project
from tempo_jax.research.render import fmt
from tempo_jax.research.statistics import evaluate, verdict

__all__ = ["Context", "Design", "Hypothesis", "Output", "TestResult", "quality_of", "Project",
           "load_project", "fmt", "evaluate", "verdict"]
