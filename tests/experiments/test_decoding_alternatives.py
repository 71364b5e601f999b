"""The decoder-comparison instruments (experiments/research/decoding_alternatives.py) on the tiny
random model: vmapped sampling worlds equal separate runs, stored-probability perplexity equals the
forward-pass self-perplexity, beam paths, per-step alternatives by hand, replay attention."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.research import decoding_alternatives as A
from tempo_jax import quality
from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.engine.beam import beam_search
from tempo_jax.model import TapsSpec, causal_mask, forward, init_cache

PROMPT = [5, 9, 17, 3]


def test_sample_worlds_equal_separate_runs(tiny_model):
    _, cfg, params = tiny_model
    gcfgs = [GenerationConfig(method="sample", max_steps=6, seed=s, temperature=t, top_p=tp)
             for s, t, tp in ((0, 1.0, 1.0), (1, 1.0, 1.0), (2, 0.7, 0.9))]
    traces = A.sample_worlds(params, cfg, PROMPT, gcfgs)
    for g, tr in zip(gcfgs, traces):
        ref = generate(params, cfg, PROMPT, g, driver="device")
        np.testing.assert_array_equal(tr.arrays["tokens"], ref.arrays["tokens"])
        np.testing.assert_allclose(tr.arrays["probs"], ref.arrays["probs"], rtol=1e-5, atol=1e-7)
    # different seeds give different samples somewhere (the tiny model is not degenerate)
    assert not np.array_equal(traces[0].arrays["tokens"], traces[1].arrays["tokens"])
    with pytest.raises(ValueError, match="share width"):
        A.sample_worlds(params, cfg, PROMPT, [gcfgs[0], GenerationConfig(max_steps=6)])


def test_path_ppl_equals_forward_self_perplexity(tiny_model):
    _, cfg, params = tiny_model
    for g in (GenerationConfig(method="greedy", max_steps=6),
              GenerationConfig(method="sample", max_steps=6, seed=3)):
        tr = generate(params, cfg, PROMPT, g)
        cont = quality.clean_continuation_ids(tr, (2,))
        ref = quality.self_perplexity(params, cfg, PROMPT, cont)
        assert A.path_ppl(tr, (2,)) == pytest.approx(ref, rel=1e-4)
    bt = beam_search(params, cfg, PROMPT, width=3, max_steps=6)
    ref = quality.self_perplexity(params, cfg, PROMPT, A.cut_at_eos(bt.arrays["tokens"][:, 0], eos_ids=(2,)))
    assert A.path_ppl(bt, (2,)) == pytest.approx(ref, rel=1e-4)
    tempo = generate(params, cfg, PROMPT, GenerationConfig(max_steps=6, threshold=0.001, max_width=4))
    assert tempo.arrays["valid"][:, 1:].any()  # a parallel lattice: no single path to score
    with pytest.raises(ValueError, match="width-1"):
        A.path_ppl(tempo)


def test_cut_at_eos():
    assert A.cut_at_eos([4, 2, 7], eos_ids=(2,)) == [4]
    assert A.cut_at_eos([4, 5], [0.5, 0.25], eos_ids=(2,)) == ([4, 5], [0.5, 0.25])


def test_beam_paths_best_is_the_trace_path(tiny_model):
    _, cfg, params = tiny_model
    bt = beam_search(params, cfg, PROMPT, width=3, max_steps=6)
    paths = A.beam_paths(bt)
    assert len(paths) == 3
    best = int(np.argmax(bt.arrays["beam_final"]))
    assert paths[best] == [int(t) for t in bt.arrays["tokens"][:, 0]]
    # every beam's summed log-prob is the sum over its path under the model (score check of the walk)
    for j, path in enumerate(paths):
        if path and np.isfinite(bt.arrays["beam_score"][j]):
            seq = PROMPT + path
            lp = np.log(np.asarray(_probs_of(params, cfg, seq, len(PROMPT))))
            assert lp.sum() == pytest.approx(float(bt.arrays["beam_score"][j]), abs=1e-3)


def _probs_of(params, cfg, seq, p):
    t = len(seq)
    ar = jnp.arange(t)
    logits, _, _ = forward(params, cfg, jnp.asarray(seq)[None], ar[None].astype(jnp.float32), ar[None],
                           causal_mask(1, t, t), init_cache(cfg, 1, t))
    pr = np.asarray(jnp.exp(jnp.take_along_axis(
        jnp.log(jnp.clip(jax_softmax(logits[0]), 1e-45)), jnp.asarray(seq[1:] + [0])[:, None], -1)[:, 0]))
    return pr[p - 1:t - 1]


def jax_softmax(x):
    import jax

    return jax.nn.softmax(x, axis=-1)


def test_alternatives_by_hand():
    embed = np.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    steps = A.paths_by_step([[0, 1, 3], [0, 2], [1, 2, 3]])
    assert steps == [[0, 0, 1], [1, 2, 2], [3, 3]]
    alt = A.alternatives(steps, embed)
    assert alt.distinct == pytest.approx((2 + 2 + 1) / 3)
    assert alt.redundancy == pytest.approx(((1 - 2 / 3) + (1 - 2 / 3) + (1 - 1 / 2)) / 3)
    assert alt.branching == pytest.approx(2 / 3)
    d01 = 1.0  # cos(e0, e1) = 0
    d12 = 1.0 - 1 / np.sqrt(2)  # cos(e1, e2) = 1/sqrt(2)
    assert alt.spread == pytest.approx((d01 + d12) / 2)
    empty = A.alternatives([[]], embed)
    assert np.isnan(empty.distinct)


def test_replay_attention_matches_unpadded_forward(tiny_model):
    _, cfg, params = tiny_model
    path = [7, 8, 2, 11]
    sink, ent = A.replay_attention(params, cfg, PROMPT, path, bucket=32)
    seq = PROMPT + path
    t = len(seq)
    ar = jnp.arange(t)
    _, _, taps = forward(params, cfg, jnp.asarray(seq)[None], ar[None].astype(jnp.float32), ar[None],
                         causal_mask(1, t, t), init_cache(cfg, 1, t), TapsSpec(attn=True))
    a = np.asarray(taps["attn"][:, 0], np.float64)[:, :, len(PROMPT):, :]  # [L,H,n,K]
    np.testing.assert_allclose(sink, a[..., 0].mean((1, 2)), rtol=1e-5)
    e = -np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1)), 0), -1)
    np.testing.assert_allclose(ent, e.mean((1, 2)), rtol=1e-4)
    assert sink.shape == (cfg.num_layers,) and np.all((sink > 0) & (sink < 1))


def test_replay_attention_on_a_sliding_window_model_equals_hf():
    """Gemma 3 layers see only the last ``window`` positions: the replay passes key positions, and
    its sink share and entropy equal HF's eager attention over a sequence longer than the window."""
    import torch

    from tinymodel import tiny_gemma

    hf, cfg, params = tiny_gemma(0)
    path = [7, 8, 2, 11, 4, 6]
    sink, ent = A.replay_attention(params, cfg, PROMPT, path, bucket=16)
    with torch.no_grad():
        att = hf(torch.tensor([PROMPT + path]), output_attentions=True).attentions
    a = np.stack([x[0].numpy() for x in att]).astype(np.float64)[:, :, len(PROMPT):, :]  # [L,H,n,T]
    np.testing.assert_allclose(sink, a[..., 0].mean((1, 2)), rtol=1e-4, atol=1e-6)
    e = -np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1)), 0), -1)
    np.testing.assert_allclose(ent, e.mean((1, 2)), rtol=1e-4, atol=1e-6)
    assert a[0, 0, -1, 0] == 0.0  # the window hides the sink from the last query of a sliding layer
