"""rq8.1c's per-prompt columns by hand (the instrument is rq8.1's, tested in test_rq8_1_positions.py)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.research import rq8_1_positions as R
from experiments.research import rq8_1c_positions as C


def test_row_of_by_hand():
    assert R.DESIGNS == ("shared", "hier", "cond", "learned")
    r = C.row_of({"kl_mix": np.asarray([0.4, 0.44, 0.2, 0.3]), "entropy": 2.5})
    assert r["fid_learned"] == pytest.approx(np.log(0.75))
    assert r["fid_hier"] == pytest.approx(np.log(1.1))
    assert r["fid_cond"] == pytest.approx(np.log(0.5))
    assert r["fid_learned_vs_hier"] == pytest.approx(np.log(0.3 / 0.44))
    assert (r["kl_mix_shared"], r["entropy"]) == (pytest.approx(0.4), 2.5)
