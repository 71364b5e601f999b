"""rq6.1d: clean paths from sweep outputs, the per-prompt columns by hand, and the all-heads sweep on the
tiny Llama (its unablated world is the plain TEMPO generation; every head gets a world)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from experiments.research import rq6_1d_sweep as D


def test_clean_paths_skip_pruned_members():
    tokens = np.asarray([[[5, 6, 7], [8, 9, 0]]])  # [B=1,S=2,W=3]
    valid = np.asarray([[[1, 1, 1], [1, 1, 0]]], bool)
    pruned = np.asarray([[[3, -1, -1], [2, 2, -1]]])  # step 0: member 0 pruned; step 1: all pruned
    np.testing.assert_array_equal(D.clean_paths(tokens, valid, pruned), [[6, 8]])


def test_common_prefix():
    assert D.common_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert D.common_prefix([1, 2, 3], [1, 5, 3]) == 1
    assert D.common_prefix([4, 2], [1, 2]) == 0


def test_row_of_by_hand():
    L, H = 1, 3
    paths = np.asarray([[1, 2, 3, 4], [1, 2, 3, 4], [1, 9, 9, 9], [7, 7, 7, 7]])  # world 0 unablated
    r = {"paths": paths, "entropy0": np.asarray([2.0, 2.1, 2.5, 3.0]), "size": np.asarray([2.0, 2.0, 1.0, 3.0]),
         "correct": np.asarray([1.0, 1.0, 0.0, 0.0])}
    row = D.row_of(r, L, H)
    assert row["rho_screen_diverge"] == pytest.approx(1.0)  # screen 0.1 < 0.5 < 1.0, diverge 0 < 3/4 < 1
    assert row["acc_change_mean"] == pytest.approx(-2 / 3)
    assert row["changed_share_minus_half"] == pytest.approx(2 / 3 - 0.5)
    assert row["diverge_mean"] == pytest.approx((0 + 0.75 + 1) / 3)
    assert row["size_change_mean"] == pytest.approx(0.0)
    assert (row["acc_L00H0"], row["acc_L00H1"], row["acc_L00H2"], row["n_heads"]) == (0.0, -1.0, -1.0, 3)


def test_sweep_world_zero_is_plain_tempo_and_every_head_has_a_world(tiny_model, monkeypatch):
    from tempo_jax.engine import GenerationConfig, generate

    _, cfg, params = tiny_model
    monkeypatch.setattr(D, "STEPS", 6)
    monkeypatch.setitem(D.FIXED, "max_steps", 6)
    monkeypatch.setitem(D.FIXED, "min_steps", 6)
    m = types.SimpleNamespace(params=params, cfg=cfg, tokenizer=None)
    ids = [5, 9, 11, 3, 17, 21, 8]
    r = D.sweep(m, ids)
    L, H = cfg.num_layers, cfg.num_heads
    assert r["paths"].shape == (1 + L * H, 6)
    tr = generate(params, cfg, ids, GenerationConfig(threshold=D.TAU, siblings="isolated", **D.FIXED))
    np.testing.assert_array_equal(r["paths"][0], tr.clean_ids())
    assert r["entropy0"][0] == pytest.approx(float(tr.arrays["entropy"][0]), rel=1e-5)
    assert r["size"][0] == pytest.approx(float(tr.arrays["set_n"].mean()))
    assert np.abs(r["entropy0"][1:] - r["entropy0"][0]).max() > 1e-4  # ablations move step 0
    # a second prompt of the same shapes reuses the compiled sweep program (no fresh closure per prompt)
    from tempo_jax.sweeps import runner

    programs = dict(runner._PROGRAMS)
    again = D.sweep(m, ids[::-1])
    assert runner._PROGRAMS == programs and again["paths"].shape == r["paths"].shape
