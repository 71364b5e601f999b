"""RQ 1.3's layer probe: the closed-form bias fit is exact, and the worlds mean what they say."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.research.layer_probe import biased_mass, fit_bias, measure


def test_fit_bias_hits_the_target_and_respects_its_bound():
    mass = np.array([0.1, 0.3, 0.02])
    b = fit_bias(mass, 0.4)
    assert biased_mass(mass, b).mean() == pytest.approx(0.4, abs=1e-9)
    # hand check: one head at mass 0.2 doubled in odds -> 1/3
    assert fit_bias(np.array([0.2]), 1 / 3) == pytest.approx(np.log(2), abs=1e-9)
    assert fit_bias(mass, 0.05) < 0  # a target below the current mass needs a suppression
    assert fit_bias(mass, 0.999999) == 5.0  # out of reach: the bound


def test_measure_on_tiny_model(tiny_model):
    _, cfg, params = tiny_model
    L = cfg.num_layers
    ids = [5, 9, 17, 33, 8, 12, 40, 7, 21, 11]
    r = measure(params, cfg, ids, 3, np.random.default_rng(0))
    # world c = L sees the members at every layer: the present world itself
    assert r.kl_edges[L] == pytest.approx(0.0, abs=1e-6)
    assert r.kl_edges[0] == pytest.approx(r.kl_full) and r.kl_full > 0
    assert r.lens_kl[-1] == pytest.approx(r.kl_full, rel=1e-4)  # lens of the last layer = the output
    assert (np.abs(r.bias) < 5.0 - 1e-6).any()  # at least one layer is checked below
    for layer in range(L):  # the fitted boost gives each member the single-token attention
        if abs(r.bias[layer]) < 5.0 - 1e-6:
            assert r.att_tok_after[layer] == pytest.approx(r.att_single[layer].mean(), abs=1e-5)
        assert r.ctrl_moved[layer] == pytest.approx(r.moved[layer], abs=1e-6) or abs(r.ctrl_bias[layer]) >= 5 - 1e-6
    assert np.all(r.kl_boost >= -1e-7) and np.all(r.kl_ctrl >= -1e-7)
    assert r.att_set.shape == (L, cfg.num_heads)
