"""Interventions as data, checked against independent references (edited weights, identities)."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tempo_jax.interventions import Interventions, ablate_heads
from tempo_jax.model import logit_lens
from tempo_jax.model import TapsSpec, causal_mask, forward, init_cache
from tinymodel import tiny

TOKS = jnp.asarray([[5, 9, 13, 17, 21, 3]])
T = TOKS.shape[1]


def run(params, cfg, iv=None, taps=TapsSpec(attn=True, resid=True)):
    return forward(params, cfg, TOKS, jnp.arange(T)[None].astype(jnp.float32), jnp.arange(T)[None],
                   causal_mask(1, T, T), init_cache(cfg, 1, T), taps, interventions=iv)


def test_ablating_every_head_equals_zero_attention_output():
    _, cfg, params = tiny(0)
    all_heads = [(l, h) for l in range(cfg.num_layers) for h in range(cfg.num_heads)]
    got, _, _ = run(params, cfg, ablate_heads(cfg, all_heads))
    zero_wo = {**params, "layers": {**params["layers"], "wo": jnp.zeros_like(params["layers"]["wo"])}}
    want, _, _ = run(zero_wo, cfg)
    chex.assert_trees_all_close(got, want, atol=1e-6)


def test_mean_ablation_equals_edited_weights_with_bias():
    _, cfg, params = tiny(0)
    mean = jax.random.normal(jax.random.key(1), (cfg.num_layers, cfg.num_heads, cfg.head_dim))
    heads = [(0, 1), (1, 3)]
    got, _, _ = run(params, cfg, ablate_heads(cfg, heads, mean))
    wo = np.array(params["layers"]["wo"])  # [L,H,D,E]
    bo = np.zeros((cfg.num_layers, cfg.hidden_size), np.float32)
    for l, h in heads:
        bo[l] += np.asarray(mean[l, h]) @ wo[l, h]
        wo[l, h] = 0
    ref_cfg = dataclasses.replace(cfg, o_bias=True)
    ref = {**params, "layers": {**params["layers"], "wo": jnp.asarray(wo), "bo": jnp.asarray(bo)}}
    want, _, _ = run(ref, ref_cfg)
    chex.assert_trees_all_close(got, want, atol=1e-5)


def test_attention_bias_zero_is_identity_and_large_negative_zeroes_a_slot():
    _, cfg, params = tiny(0)
    base, _, taps0 = run(params, cfg)
    zero = Interventions(attn_bias=jnp.zeros((1, cfg.num_layers, cfg.num_heads, T)))
    got, _, taps1 = run(params, cfg, zero)
    chex.assert_trees_all_close((got, taps1), (base, taps0), atol=0)
    bias = jnp.zeros((1, cfg.num_layers, 1, T)).at[0, 1, 0, 2].set(-1e9)  # layer 1, every head, slot 2
    got, _, taps2 = run(params, cfg, Interventions(attn_bias=bias))
    a = np.asarray(taps2["attn"])  # [L,B,H,T,K]
    assert (a[1, 0, :, 2:, 2] == 0).all()
    np.testing.assert_array_equal(a[0], np.asarray(taps0["attn"])[0])  # layer 0 untouched
    np.testing.assert_allclose(a[1].sum(-1), 1.0, atol=1e-6)
    # a positive bias raises the attention a slot receives
    _, _, taps3 = run(params, cfg, Interventions(attn_bias=-bias * 2e-9))
    assert (np.asarray(taps3["attn"])[1, 0, :, 2:, 2] > np.asarray(taps0["attn"])[1, 0, :, 2:, 2]).all()


def test_residual_patching_identity_and_transfer():
    _, cfg, params = tiny(0)
    base, _, taps = run(params, cfg)
    everywhere = jnp.ones((cfg.num_layers, 1, T), bool)
    same, _, _ = run(params, cfg, Interventions(resid_patch=taps["resid"], resid_patch_mask=everywhere))
    chex.assert_trees_all_close(same, base, atol=0)
    # patch another run's last-layer residual at the last query: that query's logits become the other's
    other_toks = TOKS.at[0, 2].set(40)
    other, _, otaps = forward(params, cfg, other_toks, jnp.arange(T)[None].astype(jnp.float32),
                              jnp.arange(T)[None], causal_mask(1, T, T), init_cache(cfg, 1, T),
                              TapsSpec(resid=True))
    m = jnp.zeros((cfg.num_layers, 1, T), bool).at[-1, 0, -1].set(True)
    got, _, _ = run(params, cfg, Interventions(resid_patch=otaps["resid"], resid_patch_mask=m))
    np.testing.assert_allclose(got[0, -1], other[0, -1], atol=1e-5)
    np.testing.assert_allclose(got[0, :-1], base[0, :-1], atol=0)


def test_logit_lens_of_last_layer_equals_logits():
    _, cfg, params = tiny(0)
    logits, _, taps = run(params, cfg)
    np.testing.assert_allclose(logit_lens(params, cfg, taps["resid"][-1]), logits, atol=1e-5)


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_interventions_vmap_over_worlds():
    _, cfg, params = tiny(0)
    scales = jnp.ones((3, cfg.num_layers, cfg.num_heads)).at[1, 0, 0].set(0).at[2, 1, 2].set(0)
    batched = jax.vmap(lambda s: run(params, cfg, Interventions(head_scale=s))[0])(scales)
    for w in range(3):
        # vmapped and plain programs fuse differently: equal to float32 rounding of logits ~3
        np.testing.assert_allclose(batched[w], run(params, cfg, Interventions(head_scale=scales[w]))[0],
                                   atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_engine_applies_interventions(family):
    from tempo_jax.engine import GenerationConfig, generate
    from tinymodel import tiny_gemma

    _, cfg, params = tiny(0) if family == "llama" else tiny_gemma(0)
    g = GenerationConfig(max_steps=4, threshold=0.05, max_width=4)
    plain = generate(params, cfg, [5, 9, 13], g)
    all_heads = [(l, h) for l in range(cfg.num_layers) for h in range(cfg.num_heads)]
    ablated = generate(params, cfg, [5, 9, 13], g, inputs=g.inputs(cfg).replace(interventions=ablate_heads(cfg, all_heads)))
    zero_wo = {**params, "layers": {**params["layers"], "wo": jnp.zeros_like(params["layers"]["wo"])}}
    ref = generate(zero_wo, cfg, [5, 9, 13], g)
    np.testing.assert_array_equal(ablated.arrays["tokens"], ref.arrays["tokens"])
    np.testing.assert_allclose(ablated.arrays["probs"], ref.arrays["probs"], atol=1e-5)
    assert not np.array_equal(plain.arrays["probs"], ablated.arrays["probs"])


@pytest.mark.parametrize("iv, match", [
    (Interventions(head_scale=jnp.ones((3, 4))), "head_scale must have shape"),
    (Interventions(attn_bias=jnp.zeros((1, 2, 4, 99))), "attn_bias must have shape"),
    (Interventions(resid_patch=jnp.zeros((2, 1, T, 32))), "go together"),
    (Interventions(head_mean=jnp.zeros((2, 4, 8))), "needs head_scale"),
])
def test_bad_interventions(iv, match):
    _, cfg, params = tiny(0)
    with pytest.raises(ValueError, match=match):
        run(params, cfg, iv)


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_member_position_offsets_and_partial_isolation():
    from tempo_jax.engine import GenerationConfig, generate
    from tempo_jax.engine.config import sibling_codes

    _, cfg, params = tiny(0)
    prompt = [5, 9, 13, 17, 21]
    g = GenerationConfig(max_steps=3, threshold=0.05, max_width=4)
    offsets = jnp.asarray([0.0, 0.5, -0.25, 2.0])
    tr = generate(params, cfg, prompt, g, inputs=g.inputs(cfg).replace(member_offsets=offsets))
    P = len(prompt)
    for s in range(tr.n_steps):
        n = tr.arrays["set_n"][s]
        np.testing.assert_allclose(tr.arrays["positions"][s, :n], P + s + np.asarray(offsets)[:n])
    # partial isolation: layer 0 isolated, layer 1 full siblings
    table = sibling_codes([["isolated"] * cfg.num_heads, ["full"] * cfg.num_heads])
    caps = []
    one = GenerationConfig(max_steps=1, threshold=0.05, max_width=4)
    tr = generate(params, cfg, prompt, one,
                  inputs=one.inputs(cfg).replace(siblings=jnp.asarray(table)), capture="summary",
                  on_step=lambda s, st, c: caps.append(np.asarray(c.leakage)))
    n = tr.arrays["set_n"][0]
    assert n > 1
    assert (caps[0][0, :, :n] == 0).all() and (caps[0][1, :, :n] > 0).all()
