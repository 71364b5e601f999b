"""rq9.2c: with one member per step the forced lattice is the human text as one causal sequence, so each
step's miss label and probability features equal Hugging Face's causal forward; attention features are
the earlier step's query's; the frozen predictors and per-prompt AUROCs by hand."""

from __future__ import annotations

import types

import numpy as np
import pytest
from scipy.special import log_softmax

from experiments.research import rq10_2c_drift as F
from experiments.research import rq9_2c_errors as X


def _present(cfg):
    """The thirds of the layers that hold a layer (the tiny model has 2 layers: no late third)."""
    from experiments.research.rq1_3bc_boost_forced import BANDS, bands

    return [b for b in BANDS if len(bands(cfg.num_layers)[b])]


def test_one_member_lattice_labels_equal_the_causal_forward(tiny_model, monkeypatch):
    from tinymodel import full_logits

    hf, cfg, params = tiny_model
    m = types.SimpleNamespace(params=params, cfg=cfg)
    rng = np.random.default_rng(4)
    prompt = rng.integers(4, cfg.vocab_size, 6).tolist()
    path = rng.integers(4, cfg.vocab_size, 9).tolist()
    monkeypatch.setitem(F.GEN, "threshold", 1.0)  # one member per step: no alternatives
    r = X.step_features(m, prompt, path)
    lp = log_softmax(full_logits(hf, prompt + path).astype(np.float64), -1)[len(prompt) - 1:-1]  # d_0..d_{S-1}
    np.testing.assert_array_equal(r["miss"], lp.argmax(-1)[1:] != np.asarray(path[1:]))
    np.testing.assert_allclose(r["base"][:, 0], lp.max(-1)[1:], atol=1e-4)
    np.testing.assert_allclose(r["base"][:, 1], -(np.exp(lp) * lp).sum(-1)[1:], atol=1e-4)
    assert r["attn"].shape == (len(path) - 1, len(X.ATTN))
    alt = [X.ATTN.index(f"alt_{b}") for b in _present(cfg)]
    assert np.all(r["attn"][:, alt] == 0)  # no alternatives were ever written
    sink = [X.ATTN.index(f"sink_{b}") for b in _present(cfg)]
    assert np.all((r["attn"][:, sink] > 0) & (r["attn"][:, sink] < 1))


def test_alternatives_reach_the_attention_features(tiny_model, monkeypatch):
    _, cfg, params = tiny_model
    m = types.SimpleNamespace(params=params, cfg=cfg)
    rng = np.random.default_rng(4)
    prompt = rng.integers(4, cfg.vocab_size, 6).tolist()
    path = rng.integers(4, cfg.vocab_size, 9).tolist()
    monkeypatch.setitem(F.GEN, "threshold", 0.02)
    r = X.step_features(m, prompt, path)
    alt = [X.ATTN.index(f"alt_{b}") for b in _present(cfg)]
    assert r["attn"][1:, alt].max() > 0 and np.all(r["attn"][0, alt] == 0)  # step 0's query saw none


def test_predictors_and_row_by_hand():
    rng = np.random.default_rng(0)

    def rec(n):
        miss = rng.random(n) < 0.5
        base = rng.normal(size=(n, 3))
        attn = rng.normal(size=(n, 9))
        attn[:, 0] += 3.0 * miss  # one attention feature carries the label
        return {"base": base, "attn": attn, "miss": miss}

    pred = X.fit_predictors([rec(200), None, rec(200)])
    row = X.row_of(rec(60), pred)
    assert row["auc_attn_minus_half"] > 0.4 and row["d_auc_attn"] > 0.3
    assert abs(row["auc_base_minus_half"]) < 0.2
    # by hand: fixed scorers give the within-prompt AUROC of their own feature
    r = {"base": np.asarray([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]]),
         "attn": np.zeros((4, 9)), "miss": np.asarray([False, True, False, True])}
    fixed = {"base": lambda x: x[:, 0], "attn": lambda x: x[:, 0], "both": lambda x: x[:, 0] + 10 * x[:, 1]}
    out = X.row_of(r, fixed)
    assert out["auc_base_minus_half"] == pytest.approx(0.75 - 0.5)  # misses 1, 3 vs hits 0, 2: 3 of 4 pairs
    assert out["auc_attn_minus_half"] == pytest.approx(0.0)  # all ties
    assert out["d_auc_attn"] == pytest.approx(0.0) and out["miss_rate"] == 0.5 and out["n_steps"] == 4
