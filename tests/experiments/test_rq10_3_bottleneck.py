"""rq10.3 instrument: participation ratio, member reads, the probe's chance level, ridge probe, band
masks, and the causal invariant that cutting every member edge makes the two worlds identical."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.research import rq10_3_bottleneck as R


def test_participation_ratio_hand_cases():
    # two distinct rows, each twice: after centring one direction, PR 1 (row scale is normalised away)
    a, b = np.r_[1.0, 2, 0, 0], np.r_[0.0, 1, 3, 0]
    assert R.participation_ratio(np.stack([a, 3 * a, b, 0.5 * b])) == pytest.approx(1.0)
    # four orthonormal rows: centred they span a regular simplex, three equal eigenvalues: PR 3
    assert R.participation_ratio(np.eye(4) * 7.0) == pytest.approx(3.0)
    # identical rows carry no spread
    assert np.isnan(R.participation_ratio(np.ones((4, 8))))


def test_member_reads_match_explicit_loops():
    rng = np.random.default_rng(0)
    L, H, T, K, G, D, E = 2, 4, 2, 7, 2, 3, 5
    attn = rng.random((L, H, T, K))
    v = rng.normal(size=(L, K, G, D))
    wo = rng.normal(size=(L, H, D, E))
    members = np.zeros(K, bool)
    members[[3, 4]] = True
    got = R.member_reads(attn, v, wo, members)
    want = np.zeros((L, H, T, E))
    for l in range(L):
        for h in range(H):
            g = h // (H // G)
            for t in range(T):
                o = sum(attn[l, h, t, k] * v[l, k, g] for k in (3, 4))
                want[l, h, t] = o @ wo[l, h]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_probe_is_at_chance_without_a_world_difference_and_decodes_one():
    rng = np.random.default_rng(1)
    E, n = 6, 20

    class Rec:
        def __init__(self, resid, u):
            self.resid, self.u_diff = resid, u

    same = [Rec(np.repeat(rng.normal(size=(1, E)), 2, 0), rng.normal(size=E)) for _ in range(n)]
    X, y, g = R.probe_rows(same, lambda r, w: r.resid[w])
    assert y.mean() == 0.5 and len(y) == 4 * n
    oof, _ = R.oof_probe(X, y, g, seed=0, lam=1.0)
    from tempo_jax import stats as S

    assert S.auroc(y, oof) == pytest.approx(0.5)  # each score appears once per label
    # world A's residual leans toward u_x (world B's toward u_y): decodable
    recs = []
    for _ in range(n):
        u = rng.normal(size=E)
        base = rng.normal(size=E)
        recs.append(Rec(np.stack([base + 0.5 * u, base - 0.5 * u]), u))
    X, y, g = R.probe_rows(recs, lambda r, w: r.resid[w])
    oof, _ = R.oof_probe(X, y, g, seed=0, lam=0.1)
    assert S.auroc(y, oof) > 0.9
    assert S.auroc(y, X.sum(1)) > 0.8  # the unfitted reading r . (u_a - u_b)


def test_ridge_matches_the_primal_solution():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(12, 30))
    y = rng.random(12) > 0.5
    lam = 0.7
    f = R.fit_ridge(X, y, lam)
    mu, sd = X.mean(0), X.std(0)
    Z = (X - mu) / sd
    t = np.where(y, 1.0, -1.0)
    w = np.linalg.solve(Z.T @ Z + lam * len(t) * np.eye(30), Z.T @ (t - t.mean()))
    Xn = rng.normal(size=(4, 30))
    np.testing.assert_allclose(f(Xn), ((Xn - mu) / sd) @ w + t.mean(), rtol=1e-8, atol=1e-10)


def test_cut_masks_remove_member_edges_of_the_band_only():
    L, H, P, bands = 5, 2, 6, 2
    K = 8 + R.W + 2
    m = R.cut_masks(L, H, K, P, bands)
    assert m.shape == (1 + bands, L, H, 2, K)
    members = np.arange(P, P + R.W)
    assert m[0][..., members].all() and m[0][..., 0, P + R.W + 1].sum() == 0  # q1 never sees q2
    assert m[0][..., 1, P + R.W].all()  # q2 sees q1
    for b in range(bands):
        cut = np.zeros(L, bool)
        cut[b * R.BAND:(b + 1) * R.BAND] = True
        assert not m[1 + b][cut][..., members].any()
        assert m[1 + b][~cut][..., members].all()
        np.testing.assert_array_equal(np.delete(m[1 + b], members, -1), np.delete(m[0], members, -1))


def test_worlds_identical_when_every_member_edge_is_cut(tiny_model):
    _, cfg, params = tiny_model
    ids = [5, 9, 11, 3, 17, 21, 8]
    r = R.measure(params, cfg, ids)
    L, H = cfg.num_layers, cfg.num_heads
    assert r.resid.shape == (2, L, 2, cfg.hidden_size) and r.head_dla.shape == (L, H, 2)
    assert r.x != r.y and r.p_x >= r.p_y and r.j_none > 0
    assert np.all((r.pr_members >= 1 - 1e-9) & (r.pr_members <= R.W - 1 + 1e-9))
    # the same construction with ALL member edges removed: the swap cannot reach the queries
    prompt, P = R.pad(ids)
    K = len(prompt) + R.W + 2
    _, cache0, _ = R.prompt_pass(params, cfg, jnp.asarray(prompt), jnp.int32(P), K)
    sets = [np.asarray([1, 4, 6, r.x], np.int32), np.asarray([1, 4, 6, r.y], np.int32)]
    m = R.cut_masks(L, H, K, P, 1)[:1].copy()
    m[..., P:P + R.W] = False
    outs = []
    for s in sets:
        _, c, _ = R.write_set(params, cfg, cache0, jnp.int32(P), jnp.asarray(s))
        lp, res, _ = R.read_worlds(params, cfg, c, jnp.asarray([r.t1, r.t2], jnp.int32),
                                   jnp.asarray([P + 1.0, P + 2.0]), jnp.asarray([P + R.W, P + R.W + 1], jnp.int32),
                                   jnp.asarray(m))
        outs.append((np.asarray(lp), np.asarray(res)))
    np.testing.assert_allclose(outs[0][0], outs[1][0], atol=1e-6)
    np.testing.assert_allclose(outs[0][1], outs[1][1], atol=1e-5)


def test_lens_after_last_layer_is_the_prediction_did(tiny_model):
    _, cfg, params = tiny_model
    ids = [7, 3, 12, 30, 2, 9]
    r = R.measure(params, cfg, ids)
    # recompute q1's final log-probs in both worlds, uncut, and their DiD
    prompt, P = R.pad(ids)
    K = len(prompt) + R.W + 2
    dist, cache0, _ = R.prompt_pass(params, cfg, jnp.asarray(prompt), jnp.int32(P), K)
    top = np.argsort(-np.asarray(dist), kind="stable")[:R.W + 1].astype(np.int32)
    sets = [top[:R.W], np.r_[top[:R.W - 1], top[R.W]].astype(np.int32)]
    m = R.cut_masks(cfg.num_layers, cfg.num_heads, K, P, 1)[:1]
    lps = []
    for s in sets:
        _, c, _ = R.write_set(params, cfg, cache0, jnp.int32(P), jnp.asarray(s))
        lp, _, _ = R.read_worlds(params, cfg, c, jnp.asarray([r.t1, r.t2], jnp.int32),
                                 jnp.asarray([P + 1.0, P + 2.0]), jnp.asarray([P + R.W, P + R.W + 1], jnp.int32),
                                 jnp.asarray(m))
        lps.append(np.asarray(lp[0]))
    did = (lps[0][:, r.x] - lps[0][:, r.y]) - (lps[1][:, r.x] - lps[1][:, r.y])
    np.testing.assert_allclose(r.lens_did[-1], did, atol=1e-4)
