"""rq6.2c's pair ablations on the tiny random models: the worlds' scales, the interaction and
non-additivity columns by hand, a pair's joint world against the single-head instruments of rq6.1c,
fixed sets (every world holds the clean world's members) and pairs drawn per prompt."""

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
    no = nt.copy()
    no[3] = 1.8  # the own-sets pair 1: d_uv 0.8, I = +0.5
    r = X.row_of({"T": nt, "O": no, "S": ns})
    assert r["inter_T"] == pytest.approx(0.1) and r["inter_S"] == pytest.approx(-0.05)
    assert r["nonadd_T"] == pytest.approx(0.2 / 0.4) and r["nonadd_S"] == pytest.approx(0.1 / 0.2)
    assert r["log_nonadd_ratio"] == pytest.approx(0.0, abs=1e-12)
    assert r["log_own_vs_fixed"] == pytest.approx(np.log((0.5 / 0.4) / (0.2 / 0.4)))
    assert r["single_T"] == pytest.approx(0.2) and r["single_S"] == pytest.approx(0.1)
    flat = np.ones_like(nt)  # no effect at all (a one-token reference): no ratio
    assert np.isnan(X.row_of({"T": flat, "O": flat, "S": ns})["log_nonadd_ratio"])


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
    assert np.isfinite(X.row_of({"T": t, "O": t, "S": q})["log_nonadd_ratio"])


def test_fixed_sets_put_the_clean_worlds_members_in_every_world(tiny_model, monkeypatch):
    m, prompt, ref = _case(tiny_model)
    s = X.scales(m.cfg, [((0, 1), (1, 3))])
    keep: list = []
    own = X.tempo_nll(m, prompt, ref, s, keep=keep)
    assert len(keep) == len(ref)
    seen = []
    real = X.A.bias_worlds
    monkeypatch.setattr(X.A, "bias_worlds", lambda *a, **k: seen.extend(real(*a, **k)) or seen)
    fixed = X.tempo_nll(m, prompt, ref, s, fixed=keep)
    np.testing.assert_allclose(fixed[0], own[0], rtol=1e-6)  # the clean world is the same run
    np.testing.assert_allclose(fixed[:, 0], own[:, 0], rtol=1e-6)  # step 0 reads the clean prompt
    assert np.abs(fixed[1:] - own[1:]).max() > 1e-5  # ablated worlds' own sets differ from the clean ones
    toks = [np.asarray(tr.arrays["tokens"]) for tr in seen]
    sizes = [np.asarray(tr.arrays["set_n"]) for tr in seen]
    assert sizes[0].max() > 1  # real parallel sets
    for t, n in zip(toks[1:], sizes[1:]):
        np.testing.assert_array_equal(n, sizes[0])
        for step, k in enumerate(sizes[0]):
            np.testing.assert_array_equal(t[step, :k], toks[0][step, :k])


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
