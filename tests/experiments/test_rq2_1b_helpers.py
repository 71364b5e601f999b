"""rq2.1b helpers: layer-block tables and the genre permutation test on hand-made rows."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from experiments.research import rq2_1b_partial as R


def test_table_from_blocks_assigns_codes_per_layer_block():
    t = R.table_from_blocks(["isolated", "visible", "reverse"], 7, 2)
    assert t.shape == (7, 2) and t.dtype == np.int32
    np.testing.assert_array_equal(t[:, 0], [0, 0, 0, 1, 1, 3, 3])  # array_split: 3, 2, 2 layers
    assert (t[:, 0] == t[:, 1]).all()
    with pytest.raises(ValueError, match="unknown sibling rule 'sideways'"):
        R.table_from_blocks(["sideways"], 2, 1)


def _write(path, by_genre: dict):
    cols = ["prompt_id", "genre", *R.GENRE_COLS]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for g, vals in by_genre.items():
            for i, v in enumerate(vals):
                w.writerow({"prompt_id": f"{g}/{i}", "genre": g, **{c: v for c in R.GENRE_COLS}})


def test_genre_tests_separated_vs_identical_genres(tmp_path):
    rng = np.random.default_rng(1)
    sep = tmp_path / "sep.csv"
    _write(sep, {"code": 1.0 + 0.1 * rng.standard_normal(10), "facts": 0.1 * rng.standard_normal(10),
                 "prose": 0.1 * rng.standard_normal(10)})
    tests, table = R.genre_tests(sep, n_perm=499)
    assert len(tests) == len(R.GENRE_COLS) and len(table) == 3 * len(R.GENRE_COLS)
    means = {r["genre"]: r["mean"] for r in table if r["column"] == R.GENRE_COLS[0]}
    t = tests[0]
    assert t.estimate == pytest.approx(max(means.values()) - min(means.values()))
    assert t.p == pytest.approx(1 / 500)  # no permutation reaches the observed separation
    assert t.lo <= t.estimate <= t.hi and "largest |mean| in code" in t.note
    same = tmp_path / "same.csv"
    _write(same, {g: np.arange(6.0) for g in ("code", "facts", "prose")})  # identical genres
    tests, _ = R.genre_tests(same, n_perm=499)
    assert tests[0].estimate == 0 and tests[0].p == 1.0
    assert R.genre_tests(tmp_path / "missing.csv") == ([], [])
