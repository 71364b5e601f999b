"""Replication of finding 1.3 ("early layers mixed, middle layers high entropy, late layers low"),
confirmatory: the exploratory rep1.3's instrument and statistics (:mod:`experiments.research.rep1_3`)
on the confirm split and both model families, with ONE primary test, the claim as stated (middle
band minus late band, attention sink included as the original measured it); middle minus early and
both contrasts with the sink removed (where the exploratory middle-minus-late reversed) secondary.
Sound-design verdict: holds when the primary differs (+), does not hold when it differs (-) or is
equivalent within +-0.05 nats, else cannot tell; the sink-removed contrast is reported beside it.
"""

from __future__ import annotations

import csv

from experiments.research import rep1_3 as X
from experiments.research import rep_original as R
from experiments.research.confirm import confirmatory
from tempo_jax.research import Output

DESIGN = confirmatory(
    X.DESIGN, id="rep1.3c", primary="ML", sesoi=0.05, n_per_genre=17,
    title="Confirmatory replication of finding 1.3: middle layers higher entropy than late layers",
    caveats=("Bands by relative depth: SmolLM2 early 0-5 / middle 6-16 / late 17-29; Gemma 3 270M "
             "early 0-3 / middle 4-9 / late 10-17.",))


def run(ctx) -> Output:
    return X.run(ctx, light=True)


answer = X.answer


def sound(by) -> str:
    t = by["mid_minus_late"]
    if t["verdict"].startswith("differs (+)"):
        return "holds"
    if t["verdict"].startswith(("differs (-)", "no effect")):
        return "does not hold"
    return "cannot tell"


def replication(result: dict, folder) -> dict:
    by = {t["column"]: t for t in result["tests"]}
    with open(folder / "table_original_prompt.csv") as f:
        cols = list(csv.DictReader(f))
    row = X.replication(result, folder)
    ns = by["ns_mid_minus_late"]["verdict"]
    tail = ("; with the sink removed the contrast reverses" if ns.startswith("differs (-)") else
            "; with the sink removed it holds too" if ns.startswith("differs (+)") else
            "; with the sink removed: " + ns)
    row["verdict"] = R.verdict_line(cols[0]["middle_highest"] == "True", None, sound(by)) + tail
    return row
