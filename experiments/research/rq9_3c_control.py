"""RQ 9.3, confirmatory: does an attention-logit bias toward a prompt span steer a whole TEMPO
generation toward that span's tokens, more than the same bias on another block of the prompt? The
instrument and statistics are the exploratory rq9.3's (:mod:`experiments.research.rq9_3_control`);
ONE primary test (the span-specific dose-response: slope of span presence per unit of bias under
the span bias minus under the control bias), the others secondary; n from dev pilots on both
families; the confirm split.
"""

from __future__ import annotations

from experiments.research import rq9_3_control as X
from experiments.research.confirm import confirmatory, primary_first
from tempo_jax.research import Output

DESIGN = confirmatory(
    X.DESIGN, id="rq9.3c", primary="H2", sesoi=0.01, n_per_genre=45,  # the pilots ask for 123
    title="Confirmatory: steering a generation toward a prompt span with an attention bias (span vs control)")


def run(ctx) -> Output:
    return X.run(ctx)


answer = primary_first(X.answer)
