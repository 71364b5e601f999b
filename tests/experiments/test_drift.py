"""rq10.2c's instruments on the tiny random model: with one member per step the forced lattice IS the
path as one sequence (no gap at any step), with alternatives it is not, and slopes by hand."""

from __future__ import annotations

import types

import numpy as np
import pytest

from experiments.research import decoding_alternatives as A
from experiments.research import rq10_2c_drift as X


def test_slope_per_100_steps():
    assert X.slope(0.5 + 0.003 * np.arange(40)) == pytest.approx(0.3)
    assert X.slope(np.r_[np.zeros(20), 5.0, np.zeros(19)]) == 0.0  # one outlier does not move Theil-Sen


def test_one_member_lattice_equals_the_replay_and_alternatives_change_it(tiny_model, monkeypatch):
    _, cfg, params = tiny_model
    m = types.SimpleNamespace(params=params, cfg=cfg)
    rng = np.random.default_rng(2)
    prompt = rng.integers(4, cfg.vocab_size, 7).tolist()
    path = rng.integers(4, cfg.vocab_size, 10).tolist()
    sink_rep, ent_rep = A.replay_rows(params, cfg, prompt, path)
    monkeypatch.setitem(X.GEN, "threshold", 1.0)
    one = X.lattice_along(m, prompt, path)
    assert np.all(one["size"] == 1) and np.all(one["alt"] == 0)
    np.testing.assert_allclose(one["sink"], sink_rep.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(one["ent"], ent_rep.mean(0), rtol=1e-4, atol=1e-6)
    monkeypatch.setitem(X.GEN, "threshold", 0.02)
    many = X.lattice_along(m, prompt, path)
    assert many["size"].max() > 1 and many["alt"][1:].max() > 0
    assert np.abs(many["sink"][1:] - sink_rep.mean(0)[1:]).max() > 1e-3


def test_per_key_ratio_and_key_share(tiny_model, monkeypatch):
    _, cfg, params = tiny_model
    m = types.SimpleNamespace(params=params, cfg=cfg)
    rng = np.random.default_rng(2)
    prompt = rng.integers(4, cfg.vocab_size, 7).tolist()
    path = rng.integers(4, cfg.vocab_size, 10).tolist()
    monkeypatch.setitem(X.GEN, "threshold", 0.02)
    out = X.lattice_along(m, prompt, path)
    assert out["alt_keys"][0] == 0  # no earlier alternatives at step 0
    # by hand: at step s, A = sum_{t<s}(size_t - 1) earlier alternatives vs the prompt's P - 1 non-sink
    # tokens and the s earlier path tokens
    alts = np.concatenate([[0], np.cumsum(out["size"] - 1)[:-1]])
    s = np.arange(len(path))
    np.testing.assert_allclose(out["alt_keys"], alts / (alts + len(prompt) - 1 + s))
    assert 0 < out["alt_keys"][-1] < 1
    assert np.isnan(out["alt_lr"][0]) and np.isfinite(out["alt_lr"][1:]).all()
