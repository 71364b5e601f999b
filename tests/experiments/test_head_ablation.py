"""rq6.1c's instruments on the tiny random model: the single-sequence arm equals the plain NLL when
nothing is ablated, TEMPO with one member per step equals the single sequence under the same head
ablation (the ablation reaches the steps, not the prompt), random controls per prompt."""

from __future__ import annotations

import types

import numpy as np

from experiments.research import rq6_1c_heads as X
from experiments.research.rq2_1c_isolation import single_nll


def _case(tiny_model, seed=4):
    _, cfg, params = tiny_model
    m = types.SimpleNamespace(params=params, cfg=cfg)
    rng = np.random.default_rng(seed)
    return m, rng.integers(4, cfg.vocab_size, 9).tolist(), rng.integers(4, cfg.vocab_size, 6).tolist()


def test_single_arm_clean_row_is_the_plain_nll_and_ablation_moves_it(tiny_model):
    m, prompt, ref = _case(tiny_model)
    out = X.single_ablated(m, prompt, ref, [(0, 1), (1, 0)])
    np.testing.assert_allclose(out[0], single_nll(m, prompt, ref), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[1:, 0], out[0, 0], rtol=1e-6)  # ref[0] is read from the clean prompt
    assert np.abs(out[1:, 1:] - out[0, 1:]).min(axis=1).max() > 1e-4


def test_one_member_tempo_equals_the_single_sequence_under_the_same_ablation(tiny_model, monkeypatch):
    m, prompt, ref = _case(tiny_model)
    heads = [(0, 1), (1, 3)]
    monkeypatch.setitem(X.GEN, "threshold", 1.0)
    np.testing.assert_allclose(X.tempo_ablated(m, prompt, ref, heads), X.single_ablated(m, prompt, ref, heads),
                               rtol=1e-4, atol=1e-5)


def test_with_parallel_members_the_arms_differ(tiny_model):
    m, prompt, ref = _case(tiny_model)
    t, s = X.tempo_ablated(m, prompt, ref, [(1, 3)]), X.single_ablated(m, prompt, ref, [(1, 3)])
    assert np.abs((t[1] - t[0]) - (s[1] - s[0]))[1:].max() > 1e-4


def test_control_heads_are_random_per_prompt_and_never_selected(tiny_model):
    _, cfg, _ = tiny_model
    sel = [(0, 0), (1, 1)]
    a, b = X.control_heads(cfg, sel, "p/1", 0), X.control_heads(cfg, sel, "p/2", 0)
    assert a == X.control_heads(cfg, sel, "p/1", 0) and a != b
    assert len(set(a)) == X.N_CTL and not set(a) & set(sel)


def test_on_a_sliding_window_model_the_arms_agree_with_one_member(monkeypatch):
    from tinymodel import tiny_gemma

    _, cfg, params = tiny_gemma(0)
    m, prompt, ref = _case((None, cfg, params), seed=6)
    single = X.single_ablated(m, prompt, ref, [(1, 2)])
    np.testing.assert_allclose(single[0], single_nll(m, prompt, ref), rtol=1e-4, atol=1e-5)
    monkeypatch.setitem(X.GEN, "threshold", 1.0)
    np.testing.assert_allclose(X.tempo_ablated(m, prompt, ref, [(1, 2)]), single, rtol=1e-4, atol=1e-5)
