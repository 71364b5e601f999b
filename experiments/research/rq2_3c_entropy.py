"""RQ 2.3 / 10.1, confirmatory: does a step's attention entropy go with the uncertainty of the next
step (the entropy of d_{s+1})? The instrument and statistics are the exploratory rq2.3's
(:mod:`experiments.research.rq2_3_entropy`); ONE primary test, the within-prompt partial Spearman
(step index controlled, tested over prompts), with the pooled estimators, the visible-vs-isolated
and the pruning tests secondary; n from dev pilots on both families; the confirm split.
"""

from __future__ import annotations

from experiments.research import rq2_3_entropy as X
from experiments.research.confirm import confirmatory, primary_first
from tempo_jax.research import Output

DESIGN = confirmatory(
    X.DESIGN, id="rq2.3c", primary="Wn", sesoi=0.1, n_per_genre=35,  # the pilots ask for 69; ~10% of prompts have no value
    title="Confirmatory: attention entropy at step s vs next-token entropy at s + 1 (within prompts)",
    caveats=("The pooled partial Spearman tests (prompt-cluster bootstrap) are secondary here.",))


def run(ctx) -> Output:
    out = X.run(ctx)
    for t in out.tests:  # the pooled estimators were primary in rq2.3; one primary test here
        if t.family == "primary":
            t.family = "secondary"
    return out


answer = primary_first(X.answer)
