"""rq10.3c: the third-of-depth cut masks, the per-prompt columns by hand, the cut invariant on the tiny
Llama, and rq10.3's construction on a sliding-window model checked against Hugging Face."""

from __future__ import annotations

import jax.numpy as jnp
from jax.nn import log_softmax as jax_log_softmax
import numpy as np
import pytest

from experiments.research import rq10_3_bottleneck as B
from experiments.research import rq10_3c_bands as C


def test_third_masks_cut_member_edges_of_one_third_only():
    L, H, P = 7, 2, 5
    K = 8 + B.W + 2
    m = C.third_masks(L, H, K, P)
    assert m.shape == (4, L, H, 2, K)
    np.testing.assert_array_equal(m[0], B.cut_masks(L, H, K, P, 0)[0])
    layers = {"early": [0, 1, 2], "mid": [3, 4], "late": [5, 6]}  # np.array_split(7, 3)
    members = np.arange(P, P + B.W)
    for i, t in enumerate(C.THIRDS):
        cut = np.isin(np.arange(L), layers[t])
        assert not m[1 + i][cut][..., members].any()
        assert m[1 + i][~cut][..., members].all()
        np.testing.assert_array_equal(np.delete(m[1 + i], members, -1), np.delete(m[0], members, -1))


def test_row_of_by_hand():
    j = np.asarray([2.0, 0.5, 1.0, 2.0])  # uncut, early, mid, late
    r = C.row_of({"j": j, "did": np.asarray([1.5, 0.1, 0.7, 1.4]), "p_x": 0.1, "p_y": 0.05})
    lg = np.log(j + C.EPS)
    assert r["dlogj_late_early"] == pytest.approx(lg[3] - lg[1])
    assert r["dlogj_late_early"] == pytest.approx(np.log(4.0), rel=1e-5)
    assert r["dlogj_late_mid"] == pytest.approx(np.log(2.0), rel=1e-5)
    assert r["logj_early"] == pytest.approx(np.log(0.25), rel=1e-5) and r["logj_late"] == pytest.approx(0, abs=1e-6)
    assert (r["did_q1"], r["did_q1_mid"], r["j_none"]) == (1.5, 0.7, 2.0)


def test_measure_on_the_tiny_llama(tiny_model):
    _, cfg, params = tiny_model
    r = C.measure(params, cfg, [5, 9, 11, 3, 17, 21, 8])
    assert r["j"].shape == (4,) and r["j"][0] > 0 and np.all(r["j"] >= 0)
    assert r["p_x"] >= r["p_y"] > 0
    # a cut changes the effect, and the columns follow
    assert np.any(np.abs(r["j"][1:] - r["j"][0]) > 1e-6)
    row = C.row_of(r)
    assert np.isfinite([row[k] for k in ("dlogj_late_early", "dlogj_late_mid", "logj_early", "did_q1")]).all()


def test_construction_on_a_sliding_window_model_equals_hugging_face():
    """With members 1-3 hidden from q1, q1 reads prompt + c0 + t1 as one causal sequence: with a
    4-position window this holds only if the slots' logical positions (key_pos) are right."""
    import torch
    from tinymodel import tiny_gemma

    hf, cfg, params = tiny_gemma(0, window=4)
    ids = [5, 9, 11, 3, 17, 21, 8, 30, 12]
    prompt, P = B.pad(ids)
    K = len(prompt) + B.W + 2
    dist, cache0, _ = B.prompt_pass(params, cfg, jnp.asarray(prompt), jnp.int32(P), K)
    with torch.no_grad():
        want = torch.softmax(hf(torch.tensor([ids])).logits[0, -1], -1).numpy()
    np.testing.assert_allclose(np.asarray(dist), want, atol=2e-5)
    x, y, sets = B.swap_sets(np.asarray(dist))
    logits, c, _ = B.write_set(params, cfg, cache0, jnp.int32(P), jnp.asarray(sets[0]))
    c0, t1 = int(sets[0][0]), 7
    m = B.cut_masks(cfg.num_layers, cfg.num_heads, K, P, 0)[:1].copy()
    m[..., P + 1:P + B.W] = False  # q1 and q2 see member 0 only
    lp, _, _ = B.read_worlds(params, cfg, c, jnp.asarray([t1, t1], jnp.int32), jnp.asarray([P + 1.0, P + 2.0]),
                             jnp.asarray([P + B.W, P + B.W + 1], jnp.int32), jnp.asarray(m))
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids + [c0, t1, t1]])).logits[0], -1).numpy()
    np.testing.assert_allclose(np.asarray(jax_log_softmax(logits[0])), ref[len(ids) - 1 + 1], atol=1e-4)  # member 0
    np.testing.assert_allclose(np.asarray(lp[0, 0]), ref[len(ids) + 1], atol=1e-4)  # q1 at P + 1
    np.testing.assert_allclose(np.asarray(lp[0, 1]), ref[len(ids) + 2], atol=1e-4)  # q2 at P + 2 sees q1
    r = C.measure(params, cfg, ids)
    assert r["j"][0] > 0 and np.isfinite(r["did"]).all()
