"""RQ 4.1, confirmatory: are TEMPO's parallel tokens semantically closer than the tokens beam search
explores at the same step with as many alternatives? The instrument and statistics are the
exploratory rq4.1's (:mod:`experiments.research.rq4_1_coverage`); ONE primary test (TEMPO vs beam,
alternatives matched, whose exploratory verdict flipped with a 13-prompt corpus relabel), the others
secondary; n from dev pilots on both families; the confirm split.
"""

from __future__ import annotations

from experiments.research import rq4_1_coverage as X
from experiments.research.confirm import confirmatory, primary_first
from tempo_jax.research import Hypothesis, Output

DESIGN = confirmatory(
    X.DESIGN, id="rq4.1c", n_per_genre=25, sesoi=0.05,  # the pilots ask for 62 and 29
    primary=Hypothesis("P", "TEMPO's members are less spread (mean pairwise cosine distance of input "
                            "embeddings) than the step's tokens of as many beams (TEMPO - beam)",
                       "spread_beam_a", "<0"),
    title="Confirmatory: semantic spread of TEMPO's parallel tokens vs beam search (alternatives matched)")


def run(ctx) -> Output:
    return X.run(ctx)


answer = primary_first(X.answer)
