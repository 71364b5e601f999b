"""RQ 6.1 helpers: the one-step ablation screen against single (un-vmapped) engine steps, mean head
outputs against an identity, the head classes and the exact sign-flip p against stats."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.research import rq6_1_head_roles as R
from tempo_jax import stats as S
from tempo_jax.engine import core
from tempo_jax.engine.inputs import stack
from tempo_jax.interventions import ablate_heads
from tempo_jax.model import causal_mask, forward, init_cache
from tinymodel import tiny


def test_sign_flip_p_equals_exact_permutation_test():
    d = np.random.default_rng(3).normal(0.4, 1.0, (10, 5))
    d[:, 4] = 0.0
    got = R.sign_flip_p(d)
    want = [S.sign_flip_test(d[:, j], exact_max=12)["p"] for j in range(4)] + [1.0]
    np.testing.assert_allclose(got, want, atol=1e-12)
    # all ten differences positive: only the all-plus and all-minus sign vectors are as extreme
    assert R.sign_flip_p(np.ones((10, 1)))[0] == pytest.approx(2 / 2 ** 10)


def test_classify_picks_the_highest_percentile_role():
    sink = np.array([0.9, 0.1, 0.2, 0.3])
    loc = np.array([0.5, 0.9, 0.1, 0.6])
    par = np.array([0.1, 0.2, 0.3, 0.95])
    # head 0: sink rank 1.0 beats locality 0.5; head 1: locality 1.0; head 2: long-range (locality
    # lowest) 1.0; head 3: parallel preference 1.0 beats locality 0.75
    np.testing.assert_array_equal(R.classify(sink, loc, par), [2, 1, 0, 3])
    # a NaN feature never wins
    assert R.classify(np.array([np.nan, 0.0]), np.array([0.5, 0.4]), np.array([0.1, 0.2]))[0] != 2


def test_branch_step_and_feed_width():
    assert R.branch_step([1, 1, 3, 1, 2, 1], 6) == 2
    assert R.branch_step([1, 1, 1, 1, 1, 4], 6) is None  # step 5 has no next step
    assert R.branch_step([1, 2], 2) is None
    assert [R.feed_width(n, 4) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]


def test_screen_measures_hand_case():
    dist = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1]])
    score = np.array([[0.0, 0.4, 0.2, 0.9], [0.0, 0.3, 0.3, 0.9]])
    pruned_at = np.array([[-1, -1, 3, -1], [-1, -1, -1, -1]])
    par = np.full((2, 2, 2), 0.2)
    nonpar = np.full((2, 2, 2), 0.1)
    sc = R.screen_measures(dist, score, pruned_at, par, nonpar, np.array([1, 2]), 3)
    np.testing.assert_allclose(sc.a, np.log(2.0))
    np.testing.assert_allclose(sc.z_min, [0.2 / 0.3, 1.0])
    np.testing.assert_array_equal(sc.flips, [0, 1])
    np.testing.assert_allclose(sc.logp_top, np.log([0.7, 0.5]))
    np.testing.assert_allclose(sc.kl[1], 0.7 * np.log(0.7 / 0.5) + 0.2 * np.log(0.2 / 0.4), rtol=1e-9)
    assert sc.kl[0] == 0.0


def test_mean_of_one_token_reproduces_the_clean_forward():
    _, cfg, params = tiny(0)
    heads = [(l, h) for l in range(cfg.num_layers) for h in range(cfg.num_heads)]

    def logits(ids, iv=None):
        t = len(ids)
        ar = jnp.arange(t)
        out, _, _ = forward(params, cfg, jnp.asarray([ids]), ar[None].astype(jnp.float32), ar[None],
                            causal_mask(1, t, t), init_cache(cfg, 1, t), interventions=iv)
        return np.asarray(out[0])

    s, n = R.head_output_sums(params, cfg, [7])
    assert n == 1
    # one token: each head's output IS its mean, so mean-ablating every head changes nothing
    np.testing.assert_allclose(logits([7], ablate_heads(cfg, heads, jnp.asarray(s, jnp.float32))),
                               logits([7]), atol=1e-5)
    s2, n2 = R.head_output_sums(params, cfg, [7, 30, 11])
    assert n2 == 3
    assert not np.allclose(logits([7, 30, 11], ablate_heads(cfg, heads, jnp.asarray(s2 / 3, jnp.float32))),
                           logits([7, 30, 11]), atol=1e-3)


def test_screen_worlds_equal_single_engine_steps():
    _, cfg, params = tiny(0)
    gcfg = R.gen_config(threshold=0.05)
    for ids in ([5, 9, 13], [3, 17, 21, 8], [11, 4], [40, 2, 33, 9, 1]):
        states, _ = R.clean_run(params, cfg, gcfg, ids)
        b = R.branch_step(np.asarray(states[-1].set_n), len(states) - 1)
        if b is not None:
            break
    assert b is not None, "no tiny prompt with a multi-member set"
    L, H, D = cfg.num_layers, cfg.num_heads, cfg.head_dim
    means = np.random.default_rng(0).normal(size=(L, H, D)).astype(np.float32)
    worlds = R.world_inputs(gcfg.inputs(cfg), cfg, means)
    assert len(worlds) == 1 + 2 * L * H
    sc = R.run_screen(params, cfg, gcfg, states, b, [stack(worlds)])
    spec, base = gcfg.static(), gcfg.inputs(cfg)
    step = jax.jit(core.step, static_argnames=("mcfg", "spec"))

    def single(iv):
        new, _ = step(params, cfg, spec, base.replace(interventions=iv), states[b + 1])
        return np.asarray(new.dist, np.float64)

    top = int(np.argmax(np.asarray(states[b + 2].dist)))
    # world 0 is the clean step b + 1: its next distribution is the clean run's
    np.testing.assert_allclose(sc.logp_top[0], np.log(np.asarray(states[b + 2].dist)[top]), rtol=1e-4)
    assert sc.kl[0] == 0.0 and sc.flips[0] == 0
    for l, h in ((0, 1), (1, 2)):
        i = 1 + l * H + h
        want = single(ablate_heads(cfg, [(l, h)]))
        np.testing.assert_allclose(sc.logp_top[i], np.log(want[top]), rtol=1e-4, atol=1e-6)
        wm = single(ablate_heads(cfg, [(l, h)], jnp.asarray(means)))
        np.testing.assert_allclose(sc.logp_top[i + L * H], np.log(wm[top]), rtol=1e-4, atol=1e-6)
    # the ablations do something: some world's next distribution differs from the clean one
    assert np.max(sc.kl) > 1e-6
