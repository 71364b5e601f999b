"""rq10.2 helpers: per-100-step Theil-Sen slopes and repeat rates per quarter (hand-computed cases)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.research import rq10_2_long_runs as R
from tempo_jax.quality import repeated_ngram_rate


def test_slope_is_per_100_steps_and_ignores_first_steps_and_nans():
    s = np.arange(64, dtype=float)
    y = 0.5 + 0.002 * s
    assert R.slope_per_100(y) == pytest.approx(0.2)
    y2 = y.copy()
    y2[: R.SKIP] = 100.0  # the first steps are left out of the fit
    y2[[10, 20]] = np.nan
    assert R.slope_per_100(y2) == pytest.approx(0.2)
    y3 = y.copy()
    y3[30] = 50.0  # one outlier barely moves Theil-Sen
    assert R.slope_per_100(y3) == pytest.approx(0.2, abs=0.01)
    assert np.isnan(R.slope_per_100(np.full(10, np.nan)))


def test_rep3_quarters_splits_the_path_in_four():
    loop = [1, 2, 3] * 4  # 12 tokens, all 3-grams after the first period repeat
    fresh = list(range(100, 112))
    toks = fresh + fresh[::-1] + [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18] + loop
    q = R.rep3_quarters(toks)
    assert len(q) == 4
    assert q[0] == 0.0 and q[3] == pytest.approx(repeated_ngram_rate(loop, 3)) and q[3] > 0.5
    assert np.isnan(R.rep3_quarters([1, 2, 3, 4])[0])  # quarters too short for a 3-gram
