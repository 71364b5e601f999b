"""RQ 4.2, confirmatory: do a branching step's parallel members reconverge with the top member's path
more often than a near-miss token does? The instrument and statistics are the exploratory rq4.2's
(:mod:`experiments.research.rq4_2_tree`, now with key positions so that Gemma 3's sliding-window
layers run); ONE primary test (members minus near miss, share whose greedy 8-token continuation meets
the top member's; the exploratory n of 30 found no effect within 10 points), the others secondary;
n from dev pilots on both families; the confirm split.
"""

from __future__ import annotations

from experiments.research import rq4_2_tree as X
from experiments.research.confirm import confirmatory, primary_first
from tempo_jax.research import Output

DESIGN = confirmatory(
    X.DESIGN, id="rq4.2c", primary="M", sesoi=0.10, n_per_genre=20,  # the pilots ask for 41
    title="Confirmatory: do parallel members reconverge with the top member's path more than a near miss")


def run(ctx) -> Output:
    return X.run(ctx)


answer = primary_first(X.answer)
