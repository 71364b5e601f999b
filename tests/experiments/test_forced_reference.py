"""The teacher-forced TEMPO run behind rq2.1c, rq4.3c and rq5.1c (``forced_run``): with one member per step it
is ordinary decoding along the reference, so its NLL equals the one-token-per-position NLL; at step 0
it scores the prompt's own next-token distribution and its coverage flag follows the threshold; and
the per-prompt columns of rq5.1c and rq4.3c (error choice, membership) on hand-made cases."""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest

from experiments.research.rq2_1c_isolation import forced_run, single_nll
from experiments.research.rq5_1c_thresholds import prompt_row


@pytest.mark.parametrize("combine", ["top", "mixture"])
def test_one_member_per_step_is_ordinary_decoding(combine, tiny_model):
    _, cfg, params = tiny_model
    m = types.SimpleNamespace(params=params, cfg=cfg)
    rng = np.random.default_rng(3)
    prompt = rng.integers(4, cfg.vocab_size, 9).tolist()
    ref = rng.integers(4, cfg.vocab_size, 6).tolist()
    nll, size, covered = forced_run(m, prompt, ref, "isolated", threshold=1.0, combine=combine)
    np.testing.assert_allclose(nll, single_nll(m, prompt, ref), rtol=1e-4, atol=1e-5)
    assert np.all(size == 1) and not covered.any()


def test_step_zero_scores_the_prompt_distribution(tiny_model):
    _, cfg, params = tiny_model
    m = types.SimpleNamespace(params=params, cfg=cfg)
    rng = np.random.default_rng(4)
    prompt = rng.integers(4, cfg.vocab_size, 9).tolist()
    from experiments.research.reference_sets import all_logits
    import jax.numpy as jnp

    logits, _ = all_logits(params, cfg, jnp.asarray(np.pad(np.asarray(prompt, np.int32), (0, 23))), 32)
    d = np.asarray(jax.nn.softmax(logits[len(prompt) - 1]), np.float64)
    order = np.argsort(-d)
    tau = float(d[order[2]])  # exactly three tokens reach it
    for ref0, want in ((int(order[1]), True), (int(order[5]), False)):
        nll, size, covered = forced_run(m, prompt, [ref0, 5, 6], "isolated", threshold=tau, max_width=8)
        assert nll[0] == pytest.approx(-np.log(d[ref0]), rel=1e-4)
        assert bool(covered[0]) is want
        assert size[0] == (3 if want else 4)  # the forced reference joins the model's three candidates


def test_prompt_row_by_hand():
    def r(nll, size, cov):
        return (np.array(nll), np.array(size, float), np.array(cov, bool))

    runs = {"c005": r([1.0, 3.0], [4, 4], [1, 1]), "c010": r([1.0, 2.0], [2, 2], [1, 0]),
            "c020": r([0.5, 1.5], [1, 1], [0, 0])}
    got = prompt_row(runs)  # rq5.1c: against constant 0.1
    assert got["dnll_c005"] == 0.5 and got["dnll_c020"] == -0.5 and got["dcov_c005"] == 0.5
    assert got["dsize_c005"] == 2.0 and got["n_tokens"] == 2 and got["nll_c010"] == 1.5
    got = prompt_row({"lin": r([1.0, 1.5], [2, 1], [1, 0]), "c020": runs["c020"]})  # rq5.2c: against 0.2
    assert got["dnll_lin_c020"] == 0.25 and got["dcov_lin_c020"] == 0.5 and got["dsize_lin_c020"] == 0.5
    assert "dnll_lin" not in got


def test_rq4_3c_error_and_membership_by_hand():
    from experiments.research.rq4_3c_recovery import in_set, prompt_row, wrong_first

    d = np.array([0.05, 0.4, 0.3, 0.15, 0.1])
    assert wrong_first(d, 1) == 2 and wrong_first(d, 2) == 1  # the most probable other token
    # w = 3 forced above all: ref 1 (0.4) is then second; ref 4 (0.1) is fourth of W = 3 -> out
    assert in_set(d, 3, 1, 0.1, 3) and not in_set(d, 3, 4, 0.1, 3) and in_set(d, 3, 4, 0.1, 4)
    assert not in_set(d, 1, 0, 0.1, 8)  # below the threshold
    assert in_set(d, 1, 2, 0.1, 2)  # w was already above the reference: it does not push it out
    nll = {"greedy_clean": np.array([9.0, 1.0, 1.0]), "greedy_err": np.array([9.0, 2.0, 1.5]),
           "tempo_clean": np.array([9.0, 1.2, 1.0]), "tempo_err": np.array([9.0, 1.6, 1.2])}
    got = prompt_row(nll, True, False)
    assert got["cost_greedy"] == pytest.approx(0.75) and got["cost_tempo"] == pytest.approx(0.3)
    assert got["d_recover"] == pytest.approx(0.45) == got["d_recover_inset"]
    assert got["d_recover_next"] == pytest.approx(1.0 - 0.4) and got["n_tokens"] == 2
    assert np.isnan(prompt_row(nll, False, True)["d_recover_inset"])


def test_boost_worlds_follow_the_reference_and_the_unbiased_world_is_forced_run(tiny_model, monkeypatch):
    """rq1.3bc's seven teacher-forced worlds: the unbiased world equals ``forced_run`` (the rq2.1c
    instrument, run alone), every world stays on the reference, boosted worlds differ once a parallel
    set exists, and with a zero bias every world is the unbiased one."""
    from experiments.research import rq1_3bc_boost_forced as X

    _, cfg, params = tiny_model
    m = types.SimpleNamespace(params=params, cfg=cfg)
    rng = np.random.default_rng(5)
    prompt = rng.integers(4, cfg.vocab_size, 9).tolist()
    ref = rng.integers(4, cfg.vocab_size, 6).tolist()
    out = X.forced_worlds(m, prompt, ref, seed=1)
    nll, size, _ = forced_run(m, prompt, ref, "isolated")
    np.testing.assert_allclose(out["none"]["nll"], nll, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out["none"]["size"], size)
    assert size[0] > 1  # a parallel set from step 0, so later steps are boosted
    assert out["boost_early"]["slots"][1:].min() > 0 and out["ctrl_early"]["slots"][1:].min() > 0
    assert np.abs(out["boost_early"]["nll"][1:] - nll[1:]).max() > 1e-3
    np.testing.assert_allclose(out["boost_early"]["nll"][0], nll[0], rtol=1e-6)  # nothing to boost at step 0
    monkeypatch.setattr(X, "BIAS", 0.0)
    zero = X.forced_worlds(m, prompt, ref, seed=1)
    for w in X.WORLDS:
        np.testing.assert_allclose(zero[w]["nll"], nll, rtol=1e-4, atol=1e-5, err_msg=w)


def test_layer_thirds():
    from experiments.research.rq1_3bc_boost_forced import bands

    assert bands(30) == {"early": range(0, 10), "mid": range(10, 20), "late": range(20, 30)}
    assert bands(18) == {"early": range(0, 6), "mid": range(6, 12), "late": range(12, 18)}
    assert list(bands(4).values()) == [range(0, 2), range(2, 3), range(3, 4)]
    assert list(bands(2).values()) == [range(0, 1), range(1, 2), range(2, 2)]  # the tiny model: no last third


def test_isolation_strategy_worlds_equal_forced_runs(tiny_model, monkeypatch):
    """rq8.2c's six teacher-forced worlds in one program: each single-rule world equals ``forced_run``
    under that rule run alone; adaptive is visible when no step is above its threshold and isolated
    when every step is; partial (the middle third of the layers full) lies apart from both ends."""
    from experiments.research import rq8_2c_forced as X

    _, cfg, params = tiny_model
    m = types.SimpleNamespace(params=params, cfg=cfg)
    rng = np.random.default_rng(5)
    prompt = rng.integers(4, cfg.vocab_size, 9).tolist()
    ref = rng.integers(4, cfg.vocab_size, 6).tolist()
    out = X.forced_strategies(m, prompt, ref)
    alone = {r: forced_run(m, prompt, ref, r) for r in ("isolated", "visible", "reverse", "full")}
    for r, (nll, size, _) in alone.items():
        np.testing.assert_allclose(out[r]["nll"], nll, rtol=1e-4, atol=1e-5, err_msg=r)
        np.testing.assert_array_equal(out[r]["size"], size)
    assert alone["isolated"][1][0] > 1  # a parallel set from step 0: the rules differ later
    assert np.abs(out["visible"]["nll"][1:] - out["isolated"]["nll"][1:]).max() > 1e-3
    assert np.abs(out["partial"]["nll"][1:] - out["isolated"]["nll"][1:]).max() > 1e-3
    assert np.abs(out["partial"]["nll"][1:] - out["full"]["nll"][1:]).max() > 1e-3
    for nats, same in ((1e9, "visible"), (0.0, "isolated")):
        monkeypatch.setattr(X, "ADAPT_NATS", nats)
        np.testing.assert_allclose(X.forced_strategies(m, prompt, ref)["adaptive"]["nll"], out[same]["nll"],
                                   rtol=1e-4, atol=1e-5, err_msg=same)
    assert list(X.middle_third(30)) == list(range(10, 20)) and list(X.middle_third(18)) == list(range(6, 12))
