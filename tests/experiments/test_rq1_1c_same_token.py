"""rq1.1c's same-token conditions on the tiny random Llama: the measured token is the top-1 member in
every condition, five copies of one token at one position split a layer's attention on them exactly
equally (identical keys), the top set and the spread set hold the same tokens, and the random members
avoid the prompt's top 50 and control tokens, drawn the same way on every call."""

from __future__ import annotations

import types

import numpy as np

from experiments.research.rq1_1c_same_token import N, measure_batch, random_members


def test_random_members_are_seeded_distinct_and_avoid_the_excluded():
    a = random_members("prose/x/1", 0, 100, exclude=range(50))
    assert len(set(a.tolist())) == N - 1 and a.min() >= 50
    assert np.array_equal(a, random_members("prose/x/1", 0, 100, exclude=range(50)))
    assert not np.array_equal(a, random_members("prose/x/2", 0, 100, exclude=range(50)))


def test_conditions_on_the_tiny_model(tiny_model):
    _, cfg, params = tiny_model
    rng = np.random.default_rng(0)
    texts = {"a": rng.integers(4, cfg.vocab_size, 7).tolist(), "b": rng.integers(4, cfg.vocab_size, 12).tolist()}
    tok = lambda text: types.SimpleNamespace(input_ids=texts[text])  # noqa: E731
    m = types.SimpleNamespace(params=params, cfg=cfg, tokenizer=tok)
    prompts = [types.SimpleNamespace(id=f"p/{k}", prompt=k) for k in texts]
    out = measure_batch(m, prompts, seed=0)
    for r in out:
        t = r["tokens"]
        assert t["alone"] == t["top"][:1] == t["random"][:1] == t["copies"][:1]
        assert t["top"] == t["spread"] and t["copies"] == t["top"][:1] * N
        assert not set(t["random"][1:]) & set(t["top"])
        L = cfg.num_layers
        assert r["alone"].shape == (L, 1) and r["top"].shape == (L, N)
        np.testing.assert_allclose(r["copies"], np.repeat(r["copies"][:, :1], N, 1), rtol=1e-5)
        # member 0 alone gets more than any one of five copies of itself, at every layer
        assert np.all(r["alone"][:, 0] > r["copies"][:, 0])
