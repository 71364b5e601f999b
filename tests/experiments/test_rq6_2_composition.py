"""RQ 6.2's instruments: composition scores against the explicit E x E definition, head outputs that
add up to the residual stream, and direct-path patching that reproduces the clean forward when
nothing is removed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.research import rq6_2_composition as R

IDS = [5, 9, 17, 33, 8, 12, 40, 7, 21, 11]


def _brute(circ, u, d):
    """Q/K/V composition of u -> d from the explicit E x E circuits (row-vector convention)."""
    ov_u = circ["wv"][u] @ circ["wo"][u]
    qk_d = circ["wq"][d] @ circ["wk"][d].T
    ov_d = circ["wv"][d] @ circ["wo"][d]
    fro = np.linalg.norm
    return [fro(ov_u @ m) / (fro(ov_u) * fro(m)) for m in (qk_d, qk_d.T, ov_d)]


def test_composition_matches_the_explicit_definition(tiny_model):
    _, cfg, params = tiny_model
    circ = R.head_circuits(params, cfg)
    H, R_ = cfg.num_heads, cfg.group_size
    # GQA mapping and the folded norm gain: head h of layer l reads KV head h // R
    g = np.asarray(params["layers"]["attn_norm"][1])[:, None]
    np.testing.assert_allclose(circ["wk"][H + 3], g * np.asarray(params["layers"]["wk"][1][:, 3 // R_]), rtol=1e-6)
    np.testing.assert_allclose(circ["wq"][H + 3], g * np.asarray(params["layers"]["wq"][1][:, 3]), rtol=1e-6)
    layer_of = np.repeat(np.arange(cfg.num_layers), H)
    c = R.composition_scores(circ, layer_of)
    for u in range(H):
        for d in range(H, 2 * H):
            np.testing.assert_allclose(c[:, u, d], _brute(circ, u, d), rtol=1e-4)
    assert np.isnan(c[:, H:, :]).all() and np.isnan(c[:, :H, :H]).all()  # only layer(u) < layer(d)
    # Q and K composition differ in general (W_QK is not symmetric)
    assert not np.allclose(c[0, :H, H:], c[1, :H, H:])


def test_random_baseline_is_a_valid_score():
    b = R.random_baseline(32, 8, 4, seed=0)
    assert b.shape == (3, 16)
    assert np.all((b > 0) & (b < 1))


def _no_mlp(params):
    lay = dict(params["layers"])
    lay["w_down"] = jnp.zeros_like(lay["w_down"])
    return {**params, "layers": lay}


def test_head_outputs_add_up_to_the_residual_stream(tiny_model):
    _, cfg, params = tiny_model
    params = _no_mlp(params)  # with no MLP, layer l adds exactly the sum of its heads' outputs
    st = R.state(params, cfg, IDS, 3)
    o = np.asarray(R.head_outputs(params, cfg, st["pattn"][:, :, None], st["cache1"].v[:, 0]))[:, :, 0]  # [L,H,E]
    x_in = np.concatenate([np.asarray(params["embed"][st["probe_tok"]])[None], np.asarray(st["presid"][:-1])])
    np.testing.assert_allclose(x_in + o.sum(1), np.asarray(st["presid"]), atol=1e-5)
    om = np.asarray(R.head_outputs(params, cfg, st["mattn"], st["cache"].v[:, 0]))  # [L,H,n,E]
    xm = np.concatenate([np.asarray(params["embed"][st["top"]])[None], np.asarray(st["mresid"][:-1])])
    np.testing.assert_allclose(xm + om.sum(1), np.asarray(st["mresid"]), atol=1e-5)


def test_direct_paths_with_nothing_removed_is_the_clean_forward(tiny_model):
    _, cfg, params = tiny_model
    L, H = cfg.num_layers, cfg.num_heads
    N, n = L * H, 3
    st = R.state(params, cfg, IDS, n)
    x_probe = jnp.concatenate([params["embed"][st["probe_tok"]][None], st["presid"][:-1]])
    x_mem = jnp.concatenate([params["embed"][jnp.asarray(st["top"])][None], st["mresid"][:-1]])
    o_probe = R.head_outputs(params, cfg, st["pattn"][:, :, None], st["cache1"].v[:, 0])[:, :, 0].reshape(N, -1)
    o_mem = R.head_outputs(params, cfg, st["mattn"], st["cache"].v[:, 0]).reshape(N, n, -1)
    args = (params, cfg, st["cache1"].k[:, 0], x_probe, o_probe, x_mem, o_mem, jnp.asarray(st["mask"]),
            jnp.asarray(st["members"]), st["P"] + 1.0, jnp.full((n,), float(st["P"])))
    qm, km = jax.device_get(R.direct_paths(*args, 0.0, jnp.arange(L)))
    clean = np.asarray(st["pattn"])[:, :, st["members"]].sum(-1)  # [L,H]
    for layer in range(L):
        np.testing.assert_allclose(qm[layer], np.broadcast_to(clean[layer], (N, H)), atol=1e-5)
        np.testing.assert_allclose(km[layer], np.broadcast_to(clean[layer], (N, H)), atol=1e-5)
    qm1, km1 = jax.device_get(R.direct_paths(*args, 1.0, jnp.arange(L)))
    # removing a layer-0 head's output changes the layer-1 query / member keys
    assert np.abs(qm1[1, :H] - clean[1]).max() > 1e-4 and np.abs(km1[1, :H] - clean[1]).max() > 1e-4


def test_direct_q_path_equals_ablation_when_it_is_the_only_path(tiny_model):
    """Two layers, no MLP, and a probe that does not see its own slot: ablating a layer-0 head in the
    probe's forward changes layer 1's query input by exactly -o_u and nothing else, so the direct
    Q-path patch must equal the ablation's change of layer 1's member mass."""
    _, cfg, params = tiny_model
    params = _no_mlp(params)
    L, H = cfg.num_layers, cfg.num_heads
    N, n = L * H, 3
    st = R.state(params, cfg, IDS, n)
    k = np.arange(len(st["mask"]))
    mask = jnp.asarray(st["mask"] & (k != st["slot"]))
    tok, pos = st["probe_tok"], st["P"] + 1.0
    _, cache1, pattn, presid = R.probe_clean(params, cfg, st["cache"], tok, pos, st["slot"], mask)
    x_probe = jnp.concatenate([params["embed"][tok][None], presid[:-1]])
    x_mem = jnp.concatenate([params["embed"][jnp.asarray(st["top"])][None], st["mresid"][:-1]])
    o_probe = R.head_outputs(params, cfg, pattn[:, :, None], cache1.v[:, 0])[:, :, 0].reshape(N, -1)
    o_mem = R.head_outputs(params, cfg, st["mattn"], st["cache"].v[:, 0]).reshape(N, n, -1)
    qm, _ = jax.device_get(R.direct_paths(params, cfg, cache1.k[:, 0], x_probe, o_probe, x_mem, o_mem, mask,
                                          jnp.asarray(st["members"]), pos, jnp.full((n,), float(st["P"])),
                                          1.0, jnp.asarray([1])))
    scales = np.ones((H, L, H), np.float32)
    for u in range(H):
        scales[u, 0, u] = 0.0
    _, attn = jax.device_get(R.probe_ablated(params, cfg, st["cache"], tok, pos, st["slot"], mask,
                                             jnp.asarray(scales)))
    abl = np.asarray(attn)[:, 1][..., st["members"]].sum(-1)  # [u, H] layer-1 member mass
    np.testing.assert_allclose(qm[0][:H], abl, atol=2e-5)
    clean = np.asarray(pattn)[1][:, st["members"]].sum(-1)
    assert np.abs(abl - clean).max() > 1e-3  # the check is not vacuous


def test_measure_worlds_and_invalid_pairs(tiny_model):
    _, cfg, params = tiny_model
    H = cfg.num_heads
    r = R.measure(params, cfg, IDS, layers=np.array([1]), ablate=((), (0,), (0, 1)))
    assert r.abl_kl[0] == pytest.approx(0.0, abs=1e-6)  # the world with nothing ablated
    np.testing.assert_allclose(r.abl_mass[0], 0.0, atol=1e-6)
    assert r.abl_kl[1] > 0 and r.abl_kl[2] > 0
    assert r.q_direct.shape == (2 * H, H) and np.isnan(r.q_direct[H:]).all()  # layer(u) >= layer(d)
    assert np.isfinite(r.q_direct[:H]).all() and np.isfinite(r.k_direct[:H]).all()
