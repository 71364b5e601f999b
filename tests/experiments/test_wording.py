"""experiments/research/wording.py: verdict -> words, for every verdict string harness.verdict writes."""

import dataclasses

from experiments.research.harness import TestResult as Result
from experiments.research.harness import verdict
from experiments.research.wording import said


def _t(estimate, p_adj, p_tost_adj, lo=-1.0, hi=1.0, margin=0.1):
    nan = float("nan")
    t = Result("H", "c", "primary", ">0", 10, estimate, lo, hi, nan, nan, nan, p_adj, p_tost_adj, "", margin)
    return dataclasses.replace(t, verdict=verdict(t, 0.05))


def test_said_follows_the_harness_verdicts():
    up, down = _t(0.5, 0.01, 0.9), _t(-0.5, 0.01, 0.9)
    up_inside = _t(0.05, 0.01, 0.01, lo=0.01, hi=0.08)  # "differs (+), within +-0.1"
    same, open_ = _t(0.0, 0.9, 0.01), _t(0.2, 0.9, 0.9)
    assert up_inside.verdict.startswith("differs (+), within")
    words = ("up", "down", "open")
    assert [said(t, *words) for t in (up, up_inside, down, same, open_)] == ["up", "up", "down", "open", "open"]
    assert [said(t, *words, same="equal") for t in (up, down, same, open_)] == ["up", "down", "equal", "open"]
    assert (same.verdict, open_.verdict) == ("no effect within +-0.1", "cannot tell at this n")


def test_ci_and_listed_by_hand():
    from experiments.research.wording import ci, listed

    t = dataclasses.replace(_t(0.25, 0.01, 0.9, lo=0.1, hi=0.4), hypothesis="P")
    s = dataclasses.replace(_t(-0.05, 0.9, 0.9, lo=-0.2, hi=0.1), hypothesis="S1")
    assert ci(t) == f"+0.250 [+0.100, +0.400] ({t.verdict})"
    assert ci(t, 1, 100, " points") == f"+25.0 points [+10.0, +40.0] ({t.verdict})"
    # phrases' order, missing hypotheses skipped
    assert listed([s, t], {"P": "first", "S2": "absent", "S1": "then"}) == \
        f"first {ci(t)}; then {ci(s)}"
