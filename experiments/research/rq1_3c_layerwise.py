"""RQ 1.3, confirmatory: which layers carry a parallel set's effect to a later query?

The instrument and the per-prompt statistics are the exploratory rq1.3's
(:mod:`experiments.research.rq1_3_layerwise`, :mod:`experiments.research.layer_probe`), with the
layer groups as thirds of the model's layers (SmolLM2: 0-9 / 10-19 / 20-29; Gemma 3 270M: 0-5 /
6-11 / 12-17). What changes: ONE primary test (where the set's effect is delivered: first third vs
last third), the other two former primaries secondary, n from a power analysis of dev pilots on
both model families, the never-read confirm split, and both families.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.research import rq1_3_layerwise as X
from experiments.research.wording import said
from tempo_jax.research import Design, Hypothesis, Output

_X = X.DESIGN
DESIGN = Design(
    id="rq1.3c",
    questions=("1.3",),
    title="Confirmatory: which layers deliver a parallel set's effect to a later query",
    primary_metric="share of the set's effect on the probe's next-token distribution (KL present vs "
                   "ablated set) delivered by the member edges of the first vs the last third of layers",
    contrast="member edges in the first third of layers vs the last third (same prompt, probe, set)",
    hypotheses=(
        Hypothesis("H1", "the first third of layers delivers more of the set's effect on a later "
                         "query than the last third (difference of delivered fractions)",
                   "deliv_early_minus_late", ">0", sesoi=0.10),  # a tenth of the set's effect
        Hypothesis("S2", "boosting member attention to the single-token level in the first third "
                         "changes the prediction more than in the last third (mean log KL)",
                   "boost_early_minus_late", ">0", family="secondary", margin=X.LOG15, sesoi=X.LOG15),
        Hypothesis("S3", "boosting the members changes the prediction more than moving the same "
                         "attention mass onto other prompt tokens (mean over layers of log KL ratio)",
                   "boost_vs_ctrl", ">0", family="secondary", margin=X.LOG15, sesoi=float(np.log(1.1))),
        *[dataclasses.replace(h) for h in _X.hypotheses if h.family != "primary"],
    ),
    margin=0.05,
    margin_note="0.05 of the set's effect for delivered fractions; log(1.5) for log KL ratios",
    metrics=_X.metrics,
    families={"primary": "holm", "secondary": "holm", **{k: v for k, v in _X.families.items() if k != "primary"}},
    split="confirm",
    n_per_genre=130,  # 390 prompts: the pilots ask for 301 (H1, smallest effect 0.10)
    quick_n=10,
    caveats=tuple(c for c in _X.caveats if not c.startswith("One model")) + (
        "Layer thirds are L // 3 and 2 L // 3 of each model's L layers.",),
    config={**_X.config, "thirds": "thirds(L)"},
)


def run(ctx) -> Output:
    return X.run(ctx)


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    ci = lambda t: f"{t.estimate:+.2f} [{t.lo:+.2f}, {t.hi:+.2f}]"  # noqa: E731
    h1, s2, s3 = by["deliv_early_minus_late"], by["boost_early_minus_late"], by["boost_vs_ctrl"]
    return (f"The first third of layers {said(h1, 'delivers more', 'delivers less', 'does not differ detectably')} "
            f"of the set's effect on a later query than the last third (difference of delivered fractions "
            f"{ci(h1)}, {h1.verdict}); secondary: a member boost in the first third vs the last moves the "
            f"prediction {said(s2, 'more', 'less', 'about as much')} (mean log KL {ci(s2)}, {s2.verdict}); "
            f"the member boost vs moving the same mass onto other prompt tokens: {ci(s3)} ({s3.verdict}).")
