"""rq10.3b instrument: the head-selection rule, the single-head cut masks, and the causal invariants
of the batched cut worlds (no cut = uncut = rq10.3's reading; every head cut = no members at all)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.research import rq10_3_bottleneck as R
from experiments.research import rq10_3b_heads as B
from tempo_jax.errors import UsageError


def test_select_heads_follows_the_rule(tmp_path):
    L, H = 4, 5
    rng = np.random.default_rng(3)
    vals = rng.permutation(np.linspace(-1, 1, L * H))
    path = tmp_path / "table_heads.csv"
    lines = ["layer,head,mean_dla_q1,mean_abs_dla_q1"]
    lines += [f"{i // H},{i % H},{vals[i]},0" for i in range(L * H)]
    path.write_text("\n".join(lines) + "\n")
    hs = B.select_heads(path, L, H, seed=0)
    order = np.argsort(-vals)
    assert hs.copiers == tuple((int(i) // H, int(i) % H) for i in order[:B.N_COPIERS])
    assert hs.suppressors == tuple((int(i) // H, int(i) % H) for i in order[::-1][:B.N_SUPPRESSORS])
    assert len(set(hs.controls)) == B.N_CONTROLS and not set(hs.controls) & set(hs.copiers + hs.suppressors)
    assert B.select_heads(path, L, H, seed=0) == hs  # seeded
    assert hs.role(hs.copiers[0]) == "copier" and hs.role(hs.controls[1]) == "control"
    with pytest.raises(UsageError, match="model has 3 x 5"):
        B.select_heads(path, 3, H, seed=0)
    with pytest.raises(UsageError, match="run `tempo-jax research run rq10.3`"):
        B.select_heads(tmp_path / "missing.csv", L, H, seed=0)


def test_head_cut_masks_remove_only_the_named_heads_member_edges():
    L, H, P = 3, 4, 5
    K = P + B.W + 3
    cuts = [[], [(1, 2)], [(0, 0), (2, 3)]]
    m = B.head_cut_masks(L, H, K, P, cuts)
    assert m.shape == (3, L, H, 1, K)
    q1 = np.arange(K) < P + B.W + 1  # prompt, members, itself; nothing later
    assert (m[0] == q1).all()
    for c, heads in enumerate(cuts):
        want = np.broadcast_to(q1, (L, H, 1, K)).copy()
        for l, h in heads:
            want[l, h, :, P:P + B.W] = False
        np.testing.assert_array_equal(m[c], want)


def test_cut_worlds_match_references(tiny_model):
    _, cfg, params = tiny_model
    L, H = cfg.num_layers, cfg.num_heads
    ids = [5, 9, 11, 3, 17, 21, 8]
    every = [(l, h) for l in range(L) for h in range(H)]
    cuts = [[], [], [(L - 1, 1)], [(0, 2), (1, 3)], every]
    r = B.measure(params, cfg, ids, cuts)
    assert r.did.shape == (5,) and r.lp.shape[:2] == (2, 5) and r.member_attn.shape == (L, H)
    assert r.x != r.y and r.p_x >= r.p_y
    # uncut = rq10.3's last-layer lens DiD of q1 (the same worlds, built there with q2 as well)
    ref = R.measure(params, cfg, ids)
    assert (ref.x, ref.y, ref.t1) == (r.x, r.y, r.t1)
    assert r.did[0] == pytest.approx(ref.lens_did[-1, 0], abs=1e-4)
    # an empty cut list is the uncut world, row for row of the batch
    np.testing.assert_array_equal(r.lp[:, 0], r.lp[:, 1])
    # a real cut changes q1's prediction (this head reads the members)
    assert r.member_attn[L - 1, 1] > 0 and np.abs(r.lp[:, 2] - r.lp[:, 0]).max() > 1e-4
    # every head cut: the worlds are identical (DiD 0) and equal q1 read with no member written at all
    assert abs(r.did[-1]) < 1e-5
    np.testing.assert_allclose(r.lp[0, -1], r.lp[1, -1], atol=1e-6)
    prompt, P = R.pad(ids)
    K = len(prompt) + B.W + 1
    _, cache0, _ = R.prompt_pass(params, cfg, jnp.asarray(prompt), jnp.int32(P), K)
    k = np.arange(K)
    m = np.broadcast_to((k < P) | (k == P + B.W), (1, L, H, 1, K))
    lp, _, _ = R.read_worlds(params, cfg, cache0, jnp.asarray([r.t1], jnp.int32), jnp.asarray([P + 1.0]),
                             jnp.asarray([P + B.W], jnp.int32), jnp.asarray(m))
    np.testing.assert_allclose(r.lp[0, -1], np.asarray(lp[0, 0]), atol=1e-5)
