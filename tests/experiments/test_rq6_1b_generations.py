"""RQ 6.1b instruments (experiments/research/rq6_1b_generations.py): the pre-registered head rule,
vmapped ablated generations equal separate runs with the same intervention (tiny random model),
and the per-world measures by hand."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.research import rq6_1b_generations as G
from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.interventions import Interventions

PROMPT = [5, 9, 17, 3, 11]


def _row(name, c, a):
    return {"head": name, "heads_c_zero_mean": str(c), "heads_a_zero_mean": str(a)}


def test_select_heads_rule_and_controls():
    table = [_row("L0H0", -0.5, 0.0), _row("L0H1", 0.1, -0.9), _row("L1H0", 0.3, 0.8),
             _row("L1H1", 0.0, 0.01), _row("L2H0", 0.01, 0.02), _row("L2H1", 0.0, 0.0)]
    sel, ctl = G.select_heads(table, seed=0, k_c=2, k_a=2, n_ctl=2)
    # |c| order: L0H0 (0.5), L1H0 (0.3); then |a| order skipping L1H0: L0H1 (0.9), L2H0 (0.02)
    assert sel == ["L0H0", "L1H0", "L0H1", "L2H0"]
    assert len(ctl) == 2 and set(ctl) <= {"L1H1", "L2H1"}
    assert G.select_heads(table, seed=0, k_c=2, k_a=2, n_ctl=1) == G.select_heads(table, 0, 2, 2, 1)
    assert G.parse_head("L15H5") == (15, 5)


def test_attention_log_ratio_and_pruned_share_by_hand():
    nan = np.nan
    par = np.array([[[[2.0, 4.0]], [[nan, nan]], [[1.0, 1.0]]]])  # [B=1,S=3,L=1,H=2]
    non = np.array([[[[1.0, 1.0]], [[1.0, 1.0]], [[2.0, 2.0]]]])
    # step 0: log(3 / 1); step 1: undefined; step 2: log(1 / 2)
    assert G.attention_log_ratio(par, non)[0] == pytest.approx((math.log(3.0) + math.log(0.5)) / 2)
    assert np.isnan(G.attention_log_ratio(par[:, 1:2], non[:, 1:2])[0])

    class FakeTrace:
        def steps(self):
            m = lambda p: {"pruned": p}
            return [{"members": [m(False)]}, {"members": [m(False), m(True), m(False), m(True)]},
                    {"members": [m(False), m(True)]}]

    assert G.pruned_share(FakeTrace()) == pytest.approx(100.0 * 3 / 6)


def test_vmapped_ablated_worlds_equal_separate_runs(tiny_model):
    _, cfg, params = tiny_model
    gcfg = GenerationConfig(max_steps=5, min_steps=5, max_width=3, threshold=0.02, prune=True,
                            prune_window=1, prune_rule="relative", prune_rho=0.5, eos="top",
                            prompt_bucket=8, capacity=32)
    heads = [(0, 0), (cfg.num_layers - 1, cfg.num_heads - 1)]
    worlds = G.ablation_inputs(gcfg.inputs(cfg), cfg, heads)
    from tempo_jax.engine.inputs import stack

    traces, attn = G.run_worlds(params, cfg, gcfg, PROMPT, stack(worlds))
    assert len(traces) == 3 and attn.shape == (3,)
    for lh, tr in zip([None, *heads], traces):
        sc = np.ones((cfg.num_layers, cfg.num_heads), np.float32)
        if lh is not None:
            sc[lh] = 0.0
        iv = Interventions(head_scale=jnp.asarray(sc),
                           head_mean=jnp.zeros((cfg.num_layers, cfg.num_heads, cfg.head_dim)))
        ref = generate(params, cfg, PROMPT, gcfg, inputs=gcfg.inputs(cfg).replace(interventions=iv))
        np.testing.assert_array_equal(tr.arrays["tokens"], ref.arrays["tokens"])
        np.testing.assert_array_equal(tr.arrays["pruned_at"], ref.arrays["pruned_at"])
        np.testing.assert_allclose(tr.arrays["probs"], ref.arrays["probs"], rtol=1e-4, atol=1e-6)
    # the clean world is the plain generation, and ablating a head changes something
    plain = generate(params, cfg, PROMPT, gcfg)
    np.testing.assert_array_equal(traces[0].arrays["tokens"], plain.arrays["tokens"])
    assert not np.allclose(traces[0].arrays["probs"], traces[1].arrays["probs"], equal_nan=True)


@pytest.mark.heavy  # ~15 s; the zero-ablation test above covers the same vmapped-worlds mechanism by default
def test_mean_ablated_worlds_equal_separate_runs(tiny_model):
    """Worlds 1 + n .. 2n (mean arm) equal generate() with head_scale 0 and head_mean = the given
    means; a mean-ablated world differs from the zero-ablated world of the same head."""
    _, cfg, params = tiny_model
    gcfg = GenerationConfig(max_steps=4, min_steps=4, max_width=3, threshold=0.02, prune=True,
                            prune_window=1, prune_rule="relative", prune_rho=0.5, eos="top",
                            prompt_bucket=8, capacity=32)
    heads = [(0, 1), (cfg.num_layers - 1, 0)]
    means = np.random.default_rng(3).normal(0.0, 1.0, (cfg.num_layers, cfg.num_heads, cfg.head_dim))
    worlds = G.ablation_inputs(gcfg.inputs(cfg), cfg, heads, means)
    assert len(worlds) == 1 + 2 * len(heads)
    from tempo_jax.engine.inputs import stack

    traces, attn = G.run_worlds(params, cfg, gcfg, PROMPT, stack(worlds))
    assert len(traces) == 5 and attn.shape == (5,)
    for lh, tr in zip(heads, traces[1 + len(heads):]):
        sc = np.ones((cfg.num_layers, cfg.num_heads), np.float32)
        sc[lh] = 0.0
        iv = Interventions(head_scale=jnp.asarray(sc), head_mean=jnp.asarray(means, jnp.float32))
        ref = generate(params, cfg, PROMPT, gcfg, inputs=gcfg.inputs(cfg).replace(interventions=iv))
        np.testing.assert_array_equal(tr.arrays["tokens"], ref.arrays["tokens"])
        np.testing.assert_array_equal(tr.arrays["pruned_at"], ref.arrays["pruned_at"])
        np.testing.assert_allclose(tr.arrays["probs"], ref.arrays["probs"], rtol=1e-4, atol=1e-6)
    # mean (a nonzero vector) is not zero ablation of the same head
    assert not np.allclose(traces[1].arrays["probs"], traces[1 + len(heads)].arrays["probs"], equal_nan=True)
    with pytest.raises(ValueError, match="means must have shape"):
        G.ablation_inputs(gcfg.inputs(cfg), cfg, heads, means[:, :1])


def test_mean_columns_do_not_match_zero_arm_globs():
    """The mean arm's columns must not fall into the registered zero-arm families."""
    import fnmatch

    mean_cols = ["msel_ppl_L1H5", "mctl_attn_L19H3", "msel_vs_ctl_ppl", "msel_correct", "msel_parses"]
    zero = [h for h in G.DESIGN.hypotheses if not h.name.endswith("m")]
    for h in zero:
        assert not any(fnmatch.fnmatchcase(c, h.column) for c in mean_cols), h.name
    names = {h.name: h for h in G.DESIGN.hypotheses}
    for z in zero:  # every zero-arm hypothesis has a mean twin with the same direction and margin
        m = names[z.name + "m"]
        assert (m.expect, m.margin) == (z.expect, z.margin) and m.family != z.family
