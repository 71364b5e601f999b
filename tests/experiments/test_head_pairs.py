"""rq6.2c's pair ablations on the tiny random models: the worlds' scales, the interaction and
non-additivity columns by hand, a pair's joint world against the single-head instruments of rq6.1c,
and pairs drawn per prompt."""

from __future__ import annotations

import types

import numpy as np
import pytest

from experiments.research import rq6_1c_heads as C
from experiments.research import rq6_2c_pairs as X


def _case(model, seed=4):
    _, cfg, params = model
    m = types.SimpleNamespace(params=params, cfg=cfg)
    rng = np.random.default_rng(seed)
    return m, rng.integers(4, cfg.vocab_size, 9).tolist(), rng.integers(4, cfg.vocab_size, 6).tolist()


def test_scales_zero_each_head_then_both():
    cfg = types.SimpleNamespace(num_layers=2, num_heads=3)
    s = X.scales(cfg, [((0, 1), (1, 2))])
    assert s.shape == (4, 2, 3) and s[0].all()
    assert np.argwhere(s[1] == 0).tolist() == [[0, 1]] and np.argwhere(s[2] == 0).tolist() == [[1, 2]]
    assert np.argwhere(s[3] == 0).tolist() == [[0, 1], [1, 2]]


def test_row_of_by_hand():
    # clean mean NLL 1.0; pair 1: d_u 0.1, d_v 0.2, d_uv 0.5 (I = +0.2); pair 2: 0, -0.1, -0.1 (I = 0)
    nt = np.array([[1.0, 1.0], [1.1, 1.1], [1.2, 1.2], [1.5, 1.5], [1.0, 1.0], [0.9, 0.9], [0.9, 0.9]])
    ns = np.array([[2.0, 2.0], [2.1, 2.1], [2.1, 2.1], [2.1, 2.1], [2.0, 2.0], [2.0, 2.0], [2.0, 2.0]])
    r = X.row_of(nt, ns)
    assert r["inter_T"] == pytest.approx(0.1) and r["inter_S"] == pytest.approx(-0.05)
    assert r["nonadd_T"] == pytest.approx(0.2 / 0.4) and r["nonadd_S"] == pytest.approx(0.1 / 0.2)
    assert r["log_nonadd_ratio"] == pytest.approx(0.0, abs=1e-12)
    assert r["single_T"] == pytest.approx(0.2) and r["single_S"] == pytest.approx(0.1)


def test_pairs_are_distinct_heads_drawn_per_prompt():
    cfg = types.SimpleNamespace(num_layers=30, num_heads=9)
    a, b = X.draw_pairs(cfg, "p/1", 0), X.draw_pairs(cfg, "p/2", 0)
    assert a == X.draw_pairs(cfg, "p/1", 0) and a != b and len(a) == X.N_PAIRS
    heads = [h for pair in a for h in pair]
    assert len(set(heads)) == 2 * X.N_PAIRS
    assert all(0 <= l < 30 and 0 <= h < 9 for l, h in heads)


def test_single_head_worlds_equal_rq6_1c_and_the_joint_world_interacts(tiny_model):
    m, prompt, ref = _case(tiny_model)
    s = X.scales(m.cfg, [((0, 1), (1, 3))])
    t, q = X.tempo_nll(m, prompt, ref, s), X.single_nll(m, prompt, ref, s)
    np.testing.assert_allclose(t[:3], C.tempo_ablated(m, prompt, ref, [(0, 1), (1, 3)]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q[:3], C.single_ablated(m, prompt, ref, [(0, 1), (1, 3)]), rtol=1e-5, atol=1e-6)
    du, dv, duv = X.pair_effects(t)
    assert abs(duv[0] - du[0] - dv[0]) > 1e-5  # the joint ablation is not the sum of the singles
    assert np.isfinite(X.row_of(t, q)["log_nonadd_ratio"])


@pytest.mark.parametrize("gemma", [False, True])
def test_one_member_tempo_pair_worlds_equal_the_single_sequence(tiny_model, monkeypatch, gemma):
    if gemma:
        from tinymodel import tiny_gemma

        tiny_model = tiny_gemma(0)
    m, prompt, ref = _case(tiny_model, seed=6)
    s = X.scales(m.cfg, [((0, 0), (1, 2))])
    monkeypatch.setitem(X.GEN, "threshold", 1.0)
    np.testing.assert_allclose(X.tempo_nll(m, prompt, ref, s), X.single_nll(m, prompt, ref, s),
                               rtol=1e-4, atol=1e-5)
