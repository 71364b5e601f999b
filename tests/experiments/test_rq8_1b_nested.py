"""RQ 8.1b's instrument on the tiny random model: the position designs are the hand-computed
offsets, the mask is the stated tree / mixture rule, a one-parent one-child world is the ordinary
path under every design, and the tree mask at shared positions gives each child its own path."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.research import rq8_1b_nested as R
from tempo_jax.model import causal_mask, forward, init_cache

IDS = [1, 17, 33, 5, 48, 9, 22]


def test_offsets_hand_case():
    rank = np.asarray([0, 2, 1, 4, 3, 5])  # child (1,0) outweighs (0,1); (2,0) outweighs (1,1)
    o1, o2 = R.design_offsets("shared", 3, 2, rank)
    np.testing.assert_allclose(o1, [0, 0, 0])
    np.testing.assert_allclose(o2, [1] * 6)
    o1, o2 = R.design_offsets("flat", 3, 2, rank)
    np.testing.assert_allclose(o1, [0, 1 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(o2, [1, 1 + 2 / 6, 1 + 1 / 6, 1 + 4 / 6, 1 + 3 / 6, 1 + 5 / 6], rtol=1e-6)
    o1, o2 = R.design_offsets("nested", 3, 2, rank)
    np.testing.assert_allclose(o1, [0, 1 / 3, 2 / 3], rtol=1e-6)
    # child (k, j) at 1 + k/3 + j/6: one step after its parent's sub-position, siblings 1/6 apart
    np.testing.assert_allclose(o2, [1, 1 + 1 / 6, 1 + 1 / 3, 1 + 1 / 3 + 1 / 6, 1 + 2 / 3, 1 + 2 / 3 + 1 / 6],
                               rtol=1e-6)
    # the shifted control: each sibling pair under the next parent's sub-position (mod m)
    o1, o2 = R.design_offsets("shifted", 3, 2, rank)
    np.testing.assert_allclose(o1, [0, 1 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(o2, [1 + 1 / 3, 1 + 1 / 3 + 1 / 6, 1 + 2 / 3, 1 + 2 / 3 + 1 / 6, 1, 1 + 1 / 6],
                               rtol=1e-6)
    # with the parent-major order flat and nested are the same world
    np.testing.assert_allclose(R.design_offsets("flat", 3, 2)[1], R.design_offsets("nested", 3, 2)[1])
    with pytest.raises(ValueError, match="permutation"):
        R.design_offsets("flat", 3, 2, np.asarray([0, 0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="unknown design"):
        R.design_offsets("spiral", 3, 2)
    pos = R.world_positions(10, rank)
    assert pos.shape == (len(R.WORLDS), 3 + 6 + 1) and np.all(pos[:, -1] == 12.0)
    # the mask arms share positions: worlds (d, mixture) and (d, tree)
    nd = len(R.DESIGNS)
    np.testing.assert_allclose(pos[:nd], pos[nd:])


def test_joint_rank():
    np.testing.assert_array_equal(R.joint_rank([0.4, 0.1, 0.2, 0.05, 0.2, 0.05]), [0, 3, 1, 4, 2, 5])


def test_mask_rules():
    plen, m, c = 4, 2, 2
    mask = np.asarray(R.nested_mask(12, jnp.int32(plen), jnp.asarray([False, True]), m, c))
    assert mask.shape == (2, 7, 12)
    prompt = np.zeros(12, bool)
    prompt[:plen] = True
    slot = lambda *i: np.isin(np.arange(12), [plen + x for x in i])
    for w in range(2):
        np.testing.assert_array_equal(mask[w, 0], prompt | slot(0))  # parents isolated
        np.testing.assert_array_equal(mask[w, 1], prompt | slot(1))
        np.testing.assert_array_equal(mask[w, 6], prompt | slot(*range(7)))  # probe sees all
    np.testing.assert_array_equal(mask[0, 2], prompt | slot(0, 1, 2))  # mixture: every parent
    np.testing.assert_array_equal(mask[0, 5], prompt | slot(0, 1, 5))
    np.testing.assert_array_equal(mask[1, 2], prompt | slot(0, 2))  # tree: own parent only
    np.testing.assert_array_equal(mask[1, 3], prompt | slot(0, 3))
    np.testing.assert_array_equal(mask[1, 4], prompt | slot(1, 4))
    np.testing.assert_array_equal(mask[1, 5], prompt | slot(1, 5))


def test_prepare_references(tiny_model):
    _, cfg, params = tiny_model
    p = R.prepare(params, cfg, IDS)
    assert p["parents"].shape == (3,) and p["children"].shape == (6,)
    assert p["weights"].sum() == pytest.approx(1.0)
    # references are the ordinary causal forward of prompt + parent + child + probe
    logits, _, _ = forward(params, cfg, jnp.asarray([IDS + [int(p["parents"][1]), int(p["children"][2]),
                                                             p["probe"]]]),
                           jnp.arange(len(IDS) + 3)[None], jnp.arange(len(IDS) + 3)[None],
                           causal_mask(1, len(IDS) + 3, 16), init_cache(cfg, 1, 16))
    lp = np.asarray(logits[0] - jnp.log(jnp.sum(jnp.exp(logits[0]), -1, keepdims=True)))
    np.testing.assert_allclose(p["ref"][2], lp[-1], atol=1e-4)
    np.testing.assert_allclose(p["child_ref"][2], lp[-2], atol=1e-4)
    # children are each parent's own top-2 continuations
    after = np.asarray(R.path_readout(params, cfg, p["cache"], jnp.int32(p["plen"]),
                                      jnp.asarray(p["parents"])[:, None])[:, 0])
    for k in range(3):
        np.testing.assert_array_equal(np.sort(p["children"][2 * k:2 * k + 2]),
                                      np.sort(np.argsort(-after[k])[:2]))
    # the probe continues the top parent's top child
    assert p["probe"] == int(np.argmax(p["child_ref"][0]))
    mix = np.log(np.sum(p["weights"][:, None] * np.exp(p["ref"]), 0))
    np.testing.assert_allclose(p["logp_mix"], mix, atol=1e-6)


def _worlds(params, cfg, p, m, c, tree):
    pos = R.world_positions(p["plen"], p["rank"], m, c)
    return R.nested_readout(params, cfg, R._broadcast(p["cache"], len(R.WORLDS)), jnp.int32(p["plen"]),
                            jnp.asarray(p["parents"]), jnp.asarray(p["children"]), jnp.int32(p["probe"]),
                            jnp.asarray(pos), jnp.asarray(tree), m=m, c=c)


def test_one_parent_one_child_is_the_ordinary_path(tiny_model):
    """m = c = 1: every design puts parent, child, probe at P, P + 1, P + 2 and both masks are the
    path's causal mask, so every world reproduces the ordinary path's probe distribution."""
    _, cfg, params = tiny_model
    p = R.prepare(params, cfg, IDS, m=1, c=1)
    np.testing.assert_allclose(p["logp_mix"], p["ref"][0], atol=1e-6)
    for d in R.DESIGNS:
        o1, o2 = R.design_offsets(d, 1, 1, p["rank"])
        assert o1.tolist() == [0.0] and o2.tolist() == [1.0]
    tree = [mk == "tree" for _, mk in R.WORLDS]
    logq, child, att = _worlds(params, cfg, p, 1, 1, tree)
    for w in range(len(R.WORLDS)):
        np.testing.assert_allclose(np.asarray(logq[w]), p["ref"][0], atol=1e-5)
        np.testing.assert_allclose(np.asarray(child[w, 0]), p["child_ref"][0], atol=1e-5)
    assert att.shape == (cfg.num_layers, len(R.WORLDS), cfg.num_heads, 1, 1)


def test_tree_mask_at_shared_positions_gives_each_child_its_path(tiny_model):
    """Under the tree mask at shared positions a child sees exactly its path (prompt, own parent at
    P, itself at P + 1); under the mixture mask the other parents change it; nested positions change
    the probe's readout."""
    _, cfg, params = tiny_model
    p = R.prepare(params, cfg, IDS)
    tree = [mk == "tree" for _, mk in R.WORLDS]
    logq, child, att = _worlds(params, cfg, p, R.M, R.C, tree)
    ts, ms = R._w("shared", "tree"), R._w("shared", "mixture")
    np.testing.assert_allclose(np.asarray(child[ts]), p["child_ref"], atol=1e-5)
    assert np.abs(np.asarray(child[ms]) - p["child_ref"]).max() > 1e-4
    assert np.abs(np.asarray(logq[R._w("nested", "mixture")]) - np.asarray(logq[ms])).max() > 1e-5
    # attention on parents: tree children put all their parent attention on their own parent
    a = np.asarray(att)
    own = a[:, ts, :, np.arange(6), np.repeat(np.arange(3), 2)]  # [6,L,H]
    np.testing.assert_allclose(own, a[:, ts].sum(-1).transpose(2, 0, 1), rtol=1e-6)
    assert np.all(a.sum(-1) < 1 + 1e-6)


def test_measure_shapes_and_identities(tiny_model):
    _, cfg, params = tiny_model
    r = R.measure(params, cfg, IDS)
    assert r["kl_mix"].shape == (len(R.WORLDS),) and np.all(r["kl_mix"] >= -1e-7)
    assert r["own_share"].shape == (len(R.WORLDS), cfg.num_layers)
    # tree worlds: a child's parent attention is all on its own parent
    nd = len(R.DESIGNS)
    np.testing.assert_allclose(r["own_share"][nd:], 1.0, atol=1e-6)
    assert np.all((r["own_share"][:nd] > 0) & (r["own_share"][:nd] < 1))
    if r["same_order"]:
        assert r["kl_mix"][R._w("flat", "mixture")] == pytest.approx(r["kl_mix"][R._w("nested", "mixture")])
