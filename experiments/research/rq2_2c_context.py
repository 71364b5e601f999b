"""RQ 2.2, confirmatory: do siblings (same step, same position, same keys; only the token differs)
attend to context more alike than queries of consecutive multi-member steps? The instrument and
statistics are the exploratory rq2.2's (:mod:`experiments.research.rq2_2_context`); ONE primary test
(the layer-mean log JS ratio, sibling vs cross-step pairs), n from dev pilots on both families, the
confirm split.
"""

from __future__ import annotations

import numpy as np

from experiments.research import rq2_2_context as X
from experiments.research.confirm import confirmatory, primary_first
from tempo_jax.research import Output

DESIGN = confirmatory(
    X.DESIGN, id="rq2.2c", primary="D", sesoi=float(np.log(1.1)), n_per_genre=20,  # the pilots ask for 20
    title="Confirmatory: do siblings attend to context more alike than cross-step pairs")


def run(ctx) -> Output:
    return X.run(ctx)


answer = primary_first(X.answer)
