"""rq7.3c's instruments: AUROC with ties by hand, the draft depth per model, and the early exit at full
depth IS the model (no draft rejected), on a Llama-like and a sliding-window tiny model."""

from __future__ import annotations

import types

import numpy as np
import pytest

from experiments.research import rq7_3c_drafts as X


def test_auroc_by_hand():
    s = np.array([1.0, 2.0, 2.0, 3.0])
    y = np.array([False, True, False, True])
    # positives 2, 3 vs negatives 1, 2: (2>1) + (2=2)/2 + (3>1) + (3>2) = 3.5 of 4 pairs
    assert X.auroc(s, y) == pytest.approx(3.5 / 4)
    assert np.isnan(X.auroc(s, np.ones(4, bool)))


def test_draft_depth():
    assert X.draft_depth(30) == 22 and X.draft_depth(18) == 13


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_full_depth_exit_rejects_nothing(kind, tiny_model, monkeypatch):
    from tinymodel import tiny_gemma

    _, cfg, params = tiny_model if kind == "llama" else tiny_gemma(0)
    m = types.SimpleNamespace(params=params, cfg=cfg)
    monkeypatch.setattr(X, "MIN_STEPS", 4)
    monkeypatch.setattr(X, "STEPS", 12)
    ids = np.random.default_rng(1).integers(4, cfg.vocab_size, 9).tolist()
    monkeypatch.setattr(X, "DEPTH", 1.0)
    full = X.steps_of(m, ids)
    assert full is not None and not full["rejected"].any() and full["set_n"].min() >= 1
    monkeypatch.setattr(X, "DEPTH", 0.5)
    half = X.steps_of(m, ids)
    np.testing.assert_array_equal(half["set_n"], full["set_n"])  # the set is the full model's at any depth
    if kind == "llama":  # the draft by hand: the model cut to its first k layers, greedy on the same path
        _half_depth_by_hand(m, ids, half)


def _half_depth_by_hand(m, ids, half):
    import dataclasses

    import jax
    import jax.numpy as jnp

    from experiments.research import decoding_alternatives as A
    from tempo_jax.engine import GenerationConfig, generate
    from tempo_jax.model import causal_mask, forward, init_cache

    k = X.draft_depth(m.cfg.num_layers)
    assert 0 < k < m.cfg.num_layers
    cut_cfg = dataclasses.replace(m.cfg, num_layers=k)
    cut = {**m.params, "layers": jax.tree_util.tree_map(lambda a: a[:k], m.params["layers"])}
    tr = generate(m.params, m.cfg, list(ids), GenerationConfig(method="greedy", max_steps=X.STEPS))
    path = A.cut_at_eos(np.asarray(tr.arrays["tokens"])[:, 0], eos_ids=m.cfg.eos_token_ids or ())
    seq = jnp.asarray([list(ids) + list(path)], jnp.int32)
    t = seq.shape[1]
    ar = jnp.arange(t)[None]
    logits, _, _ = forward(cut, cut_cfg, seq, ar.astype(jnp.float32), ar, causal_mask(1, t, t),
                           init_cache(cut_cfg, 1, t, cut["embed"].dtype))
    draft = np.asarray(logits[0]).argmax(-1)[len(ids) - 1:t - 1]
    np.testing.assert_array_equal(half["rejected"], draft != np.asarray(path))
    assert half["rejected"].any() and not half["rejected"].all()  # the check compares both outcomes
