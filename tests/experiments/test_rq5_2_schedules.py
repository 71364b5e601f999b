"""Hand-checked pieces of experiment rq5.2 (threshold schedules and the dev-learned schedule):
the declared objective, the search grid, the per-step thresholds a schedule hands the engine, the
successive-halving search (with a fake generator) and the refusal without a learned schedule."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.research import rq5_2_schedules as R
from tempo_jax.errors import UsageError


def test_objective_is_quality_minus_lambda_extra_forward_tokens():
    assert R.objective("facts", {"correct": 1.0, "fwd": 2.0}) == pytest.approx(1.0 - 0.1)
    assert R.objective("code", {"parses": 0.0, "fwd": 1.5}) == pytest.approx(-0.05)
    assert R.objective("prose", {"fwd": 1.0, "correct": 1.0}) == pytest.approx(0.0)


def test_grid_has_one_constant_per_start_and_no_duplicates():
    g = R.grid()
    assert len(g) == len(set(g)) == 23
    assert sorted(c.tau0 for c in g if c.kind == "constant") == [0.05, 0.1, 0.15]
    assert all(c.tau_final != c.tau0 for c in g if c.kind != "constant")


def test_schedule_configs_give_hand_computed_thresholds():
    from tempo_jax.engine.schedules import thresholds

    lin = R.FIXED["linear"].config(0)
    got = thresholds(lin.schedule, lin.threshold, lin.threshold_final, lin.max_steps)
    np.testing.assert_allclose(got, 0.1 + 0.2 * np.arange(12) / 11, rtol=1e-6)
    bz = R.FIXED["bezier"].config(0)
    assert (bz.bezier_p1, bz.bezier_p2) == (0.0, 1.0)
    t = np.arange(12) / 11
    got = thresholds(bz.schedule, bz.threshold, bz.threshold_final, bz.max_steps,
                     p1=bz.bezier_p1, p2=bz.bezier_p2)
    np.testing.assert_allclose(got, 0.1 + 0.2 * (3 * t ** 2 - 2 * t ** 3), rtol=1e-6)
    ref = R.REF.config(0)
    assert ref.schedule == "constant" and ref.threshold_final is None and ref.threshold == 0.1


def test_successive_halving_keeps_the_best_and_counts_its_runs(monkeypatch):
    calls = []

    def fake_one(m, p, c, seed):  # J peaks at linear 0.05 -> 0.3
        calls.append((p.id, c))
        j = -abs(c.tau0 - 0.05) - abs(c.tau_final - 0.3) - (c.kind == "exponential") * 0.01
        return {"obj": j, "fwd": 1.0 + c.tau_final}

    monkeypatch.setattr(R, "one", fake_one)
    res = R.search(m=None)
    assert res["learned"] == {"kind": "linear", "tau0": 0.05, "tau_final": 0.3, "label": "linear 0.05->0.3"}
    n_prompts = [k * 3 for k, _ in R.ROUNDS]
    keep = [23] + [k for _, k in R.ROUNDS[:-1]]
    assert len(calls) == sum(a * b for a, b in zip(n_prompts, keep))
    assert res["n_dev_prompts"] == sum(n_prompts)
    assert sum(r["kept"] for r in res["log"] if r["round"] == 0) == R.ROUNDS[0][1]


def test_run_without_learned_schedule_is_a_usage_error(monkeypatch, tmp_path):
    monkeypatch.setattr(R, "LEARNED_PATH", tmp_path / "missing.json")
    with pytest.raises(UsageError, match="search"):
        R.load_learned()
