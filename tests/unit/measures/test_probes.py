"""Optax tools: a probe learns a planted linear signal; a fitted slot bias closes an attention gap."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from tempo_jax.probes import fit_slot_bias, train_linear_probe


def test_probe_learns_planted_linear_signal():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 20)).astype(np.float32) * 3 + 5
    w = rng.normal(size=20)
    y = x @ w > np.median(x @ w)
    probe = train_linear_probe(x, y, steps=400)
    assert probe.test_acc > 0.93
    # labels independent of x: held-out accuracy near chance
    noise = train_linear_probe(x, rng.random(600) > 0.5, steps=400)
    assert noise.test_acc < 0.7


def test_probe_rejects_single_class():
    with pytest.raises(ValueError, match="one class"):
        train_linear_probe(np.ones((10, 3)), np.zeros(10, bool))


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_slot_bias_equalises_attention():
    from tempo_jax.engine.masks import step_mask
    from tempo_jax.model import causal_mask, forward, init_cache
    from tinymodel import tiny

    _, cfg, params = tiny(0)
    P, K = 6, 12
    cache = init_cache(cfg, 1, K)
    prompt = jnp.asarray([[5, 9, 13, 17, 21, 3]])
    _, cache, _ = forward(params, cfg, prompt, jnp.arange(P)[None] * 1.0, jnp.arange(P)[None],
                          causal_mask(1, P, K), cache)
    # three members at one shared position, isolated; then one query of the next step sees all
    members = jnp.asarray([[7, 8, 11]])
    alive = jnp.arange(K) < P
    slot_step = jnp.where(alive, -1, -2)
    m = step_mask(alive, slot_step, 0, P, 3, 3, jnp.zeros((1, 1), jnp.int32))[0, 0][None]
    _, cache, _ = forward(params, cfg, members, jnp.full((1, 3), P * 1.0), P + jnp.arange(3)[None], m, cache)
    q_mask = (jnp.arange(K) <= P + 3)[None, None]
    target = (jnp.arange(K) >= P) & (jnp.arange(K) < P + 3)
    ref = (jnp.arange(K) >= 1) & (jnp.arange(K) < P)  # prompt without the sink
    bias, before, after = fit_slot_bias(params, cfg, jnp.asarray([[4]]), jnp.full((1, 1), P + 1.0),
                                        jnp.full((1, 1), P + 3), q_mask, cache, target, ref,
                                        steps=150, lr=0.2)
    assert np.abs(after).max() < 0.2 * np.abs(before).max()
    assert np.abs(before).max() > 1e-3
