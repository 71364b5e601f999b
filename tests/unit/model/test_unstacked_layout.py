"""The unstacked decode layout (model.unstack_layers): the same forward as the stacked layout, in
every input the forward takes, and no per-layer weight copies in the compiled program."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tempo_jax.config import ModelConfig
from tempo_jax.interventions import Interventions
from tempo_jax.model import (TapsSpec, forward, init_cache, init_params, is_unstacked,
                             unstack_layers)

CFG = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4,
                  num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5)
BIASED = dataclasses.replace(CFG, qkv_bias=True, o_bias=True, name="biased")
ALL_TAPS = TapsSpec.of(*[f.name for f in dataclasses.fields(TapsSpec)])  # every named tap
_fwd = jax.jit(forward, static_argnames=("cfg", "taps", "attend"))


def _inputs(cfg, b=2, t=5, k=12, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, (b, t))
    positions = np.array([[0, 1, 1, 2.5, 3]] * b, np.float32)  # shared and fractional positions
    slots = np.array([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])[:b]
    mask = rng.random((b, cfg.num_layers, cfg.num_heads, t, k)) < 0.7  # per layer and head
    mask[..., 0] = True
    mask[..., 8:] = False  # nothing beyond slot 7, so attend=8 is allowed
    return (jnp.asarray(tokens, jnp.int32), jnp.asarray(positions), jnp.asarray(slots, jnp.int32),
            jnp.asarray(mask), init_cache(cfg, b, k))


@pytest.mark.parametrize("cfg", [CFG, BIASED], ids=["llama", "qkv+o bias"])
@pytest.mark.parametrize("attend", [None, 8])
@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_unstacked_forward_equals_stacked(cfg, attend):
    params = init_params(cfg, jax.random.PRNGKey(1), scale=0.15)
    flat = unstack_layers(params)
    tokens, pos, slots, mask, cache = _inputs(cfg)
    b, t = tokens.shape
    rng = np.random.default_rng(2)
    L, H = cfg.num_layers, cfg.num_heads
    iv = Interventions(  # mean-ablate some heads, bias some slots, patch some residual rows
        head_scale=jnp.asarray(rng.random((L, H)) < 0.8, jnp.float32),
        head_mean=jnp.asarray(rng.normal(size=(L, H, cfg.head_dim)), jnp.float32),
        attn_bias=jnp.asarray(rng.normal(size=(b, L, H, 12)), jnp.float32),
        resid_patch=jnp.asarray(rng.normal(size=(L, b, t, cfg.hidden_size)), jnp.float32),
        resid_patch_mask=jnp.asarray(rng.random((L, b, t)) < 0.2))
    want = _fwd(params, cfg, tokens, pos, slots, mask, cache, ALL_TAPS, iv, attend=attend)
    got = _fwd(flat, cfg, tokens, pos, slots, mask, cache, ALL_TAPS, iv, attend=attend)
    for w, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)
    assert set(want[2]) == set(got[2]) == set(ALL_TAPS.names()) and len(ALL_TAPS.names()) == 12


def test_unstack_layers_layout_and_idempotence():
    params = init_params(BIASED, jax.random.PRNGKey(0))
    flat = unstack_layers(params)
    assert is_unstacked(flat) and not is_unstacked(params)
    assert unstack_layers(flat) is flat
    assert len(flat["layers"]) == BIASED.num_layers
    lp = flat["layers"][1]
    e, h, g, d, f = 64, 4, 2, 16, 96
    assert lp["wqkv"].shape == (e, (h + 2 * g) * d) and lp["w_gate_up"].shape == (e, 2 * f)
    assert lp["bqkv"].shape == (h + 2 * g, d)
    # the fused columns are the stacked matrices, in order q, k, v and gate, up
    np.testing.assert_array_equal(lp["wqkv"][:, h * d:(h + g) * d],
                                  params["layers"]["wk"][1].reshape(e, -1))
    np.testing.assert_array_equal(lp["w_gate_up"][:, f:], params["layers"]["w_up"][1])
    np.testing.assert_array_equal(lp["wo"], params["layers"]["wo"][1])


def test_wrong_layer_count_is_refused():
    flat = unstack_layers(init_params(CFG, jax.random.PRNGKey(0)))
    short = dict(flat, layers=flat["layers"][:2])
    tokens, pos, slots, mask, cache = _inputs(CFG)
    with pytest.raises(ValueError, match="2 unstacked layers, the config 3"):
        forward(short, CFG, tokens, pos, slots, mask, cache)


def _weight_copies(params, cfg) -> list[str]:
    """HLO instructions of a compiled 1-query forward that produce an array of a layer weight's
    shape (a copy of that weight: the forward itself makes no weight-shaped values)."""
    tokens, pos, slots, mask, cache = _inputs(cfg, b=1, t=1)
    hlo = _fwd.lower(params, cfg, tokens, pos[:, :1], slots[:, :1], mask[..., :1, :], cache,
                     TapsSpec()).compile().as_text()
    shapes = {f"f32[{cfg.hidden_size},{cfg.intermediate_size}]",
              f"f32[{cfg.intermediate_size},{cfg.hidden_size}]"}
    return [ln for ln in hlo.splitlines() if "=" in ln and not ln.lstrip().startswith("ROOT")
            and ln.split("=", 1)[1].strip().split(" ")[0].split("{")[0] in shapes
            and "parameter(" not in ln]


def test_unstacked_program_reads_weights_in_place():
    """The reason for the layout: the stacked scan copies each layer's MLP matrices out of the stack
    (XLA:CPU), the unstacked program does not. If XLA stops copying, this test says the layout has
    lost its point on this backend (read docs/performance.md before deleting it)."""
    params = init_params(CFG, jax.random.PRNGKey(0))
    assert _weight_copies(params, CFG), "the stacked scan no longer copies weight slices"
    assert _weight_copies(unstack_layers(params), CFG) == []


ENGINE_RUNS = {
    "greedy/host": (dict(method="greedy"), "host"),
    "tempo-prune/host": (dict(threshold=0.05, max_width=4, prune=True, prune_rho=0.9), "host"),
    "tempo-visible/device": (dict(threshold=0.05, max_width=4, siblings="visible"), "device"),
    "speculative/host": (dict(method="speculative", draft_layers=1, draft_len=2), "host"),
}


@pytest.mark.parametrize("name", list(ENGINE_RUNS))
@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_engine_runs_the_same_on_either_layout(name):
    """Every driver and method gives the same trace on the HF-built tiny model from both layouts:
    integer arrays identical, floats to 1e-5."""
    from tinymodel import tiny

    from tempo_jax.engine import GenerationConfig, generate

    _, cfg, params = tiny(0)
    kw, driver = ENGINE_RUNS[name]
    g = GenerationConfig(max_steps=12, min_steps=12, **kw)
    want = generate(params, cfg, [5, 9, 11, 7], g, driver=driver).arrays
    got = generate(unstack_layers(params), cfg, [5, 9, 11, 7], g, driver=driver).arrays
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        w, v = np.asarray(w), np.asarray(got[k])
        if np.issubdtype(w.dtype, np.floating):
            np.testing.assert_allclose(v, w, rtol=0, atol=1e-5, equal_nan=True, err_msg=k)
        else:
            np.testing.assert_array_equal(v, w, err_msg=k)


def test_beam_search_runs_the_same_on_either_layout():
    from tinymodel import tiny

    from tempo_jax.engine.beam import beam_search

    _, cfg, params = tiny(0)
    want = beam_search(params, cfg, [5, 9, 11, 7], width=3, max_steps=8).arrays
    got = beam_search(unstack_layers(params), cfg, [5, 9, 11, 7], width=3, max_steps=8).arrays
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        np.testing.assert_allclose(np.asarray(got[k], float), np.asarray(w, float), rtol=0,
                                   atol=1e-5, err_msg=k)
