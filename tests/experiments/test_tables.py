"""experiments/research/tables.py: the CI cells of descriptive tables against tempo_jax.stats and
hand-computed cases."""

import numpy as np

from experiments.research.tables import ci_cells
from tempo_jax import stats as S


def test_ci_cells_is_bootstrap_ci_flattened():
    v = [0.3, -1.2, 2.5, np.nan, 0.7, 1.1, np.inf]
    ref = S.bootstrap_ci(v, n_boot=999, seed=3)
    got = ci_cells("x", v, n_boot=999, seed=3)
    assert list(got) == ["x", "x_lo", "x_hi"]
    assert (got["x"], got["x_lo"], got["x_hi"]) == (ref["mean"], ref["lo"], ref["hi"])
    assert got["x"] == np.mean([0.3, -1.2, 2.5, 0.7, 1.1])  # non-finite values are dropped
    assert got["x_lo"] < got["x"] < got["x_hi"]
    # another seed resamples differently
    assert ci_cells("x", v, n_boot=999, seed=4)["x_lo"] != got["x_lo"]


def test_ci_cells_small_and_empty():
    # below point_below finite values: no bootstrap, lo = hi = mean
    assert ci_cells("m", [1.0, 3.0, np.nan], n_boot=99, point_below=3) == {"m": 2.0, "m_lo": 2.0, "m_hi": 2.0}
    # without point_below, bootstrap_ci's own rule: one value -> NaN bounds
    one = ci_cells("m", [5.0], n_boot=99)
    assert one["m"] == 5.0 and np.isnan(one["m_lo"]) and np.isnan(one["m_hi"])
    # constant values: lo = hi = mean from bootstrap_ci
    assert ci_cells("m", [2.0] * 4, n_boot=99, point_below=3) == {"m": 2.0, "m_lo": 2.0, "m_hi": 2.0}
    # nothing finite: NaN cells, or none with skip_empty
    assert all(np.isnan(x) for x in ci_cells("m", [np.nan], n_boot=99).values())
    assert ci_cells("m", [], n_boot=99, skip_empty=True) == {}
    assert ci_cells("m", [np.nan, np.inf], n_boot=99, point_below=3, skip_empty=True) == {}


def test_genre_table_by_hand():
    from experiments.research.tables import genre_table

    rows = [{"genre": "prose", "x_a": 1.0, "x_b": 4.0}, {"genre": "prose", "x_a": 3.0},
            {"genre": "code", "x_a": np.nan, "x_b": 6.0}]
    t = genre_table(rows, [({"cond": "A"}, "a"), ({"cond": "B"}, "b")], [("x", "x_")], n_boot=99,
                    point_below=3, skip_empty=True)
    assert [(r["genre"], r["cond"], r["n"]) for r in t] == [
        ("all", "A", 3), ("all", "B", 3), ("prose", "A", 2), ("prose", "B", 2), ("code", "A", 1),
        ("code", "B", 1), ("facts", "A", 0), ("facts", "B", 0)]
    assert list(t[0]) == ["genre", "cond", "n", "x", "x_lo", "x_hi"]
    assert [r.get("x") for r in t] == [2.0, 5.0, 2.0, 4.0, None, 6.0, None, None]
    assert t[2]["x_lo"] == t[2]["x_hi"] == 2.0  # 2 values < point_below: no bootstrap
