"""MCTS over TEMPO sets and the learned threshold policy (tempo_jax.search), on the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from tempo_jax.engine.config import GenerationConfig
from tempo_jax.engine.run import generate
from tempo_jax.search import threshold_policy as tp
from tempo_jax.search.mcts import MCTSConfig, search
from tinymodel import full_logits

PROMPT = [1, 5, 9, 13]


def _greedy(params, cfg, steps):
    tr = generate(params, cfg, PROMPT, GenerationConfig(method="greedy", max_steps=steps))
    return tr.arrays["tokens"][:, 0].tolist()


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_one_expansion_budget_equals_greedy(tiny_model):
    _, cfg, params = tiny_model
    mc = MCTSConfig(budget=40, max_steps=8, rollout_len=3, threshold=0.05, max_width=4)
    root_cost = len(search(params, cfg, PROMPT, mc).nodes[0].children)  # fed children of the root
    res = search(params, cfg, PROMPT, MCTSConfig(budget=root_cost, max_steps=8, rollout_len=3,
                                                 threshold=0.05, max_width=4))
    assert res.iterations == 0 and res.forward_tokens == root_cost  # expansion only, no rollout
    assert len(res.nodes[0].children) > 1  # a real choice was on offer
    assert res.tokens == _greedy(params, cfg, 8)


def test_tree_invariants_budget_and_determinism(tiny_model):
    _, cfg, params = tiny_model
    mc = MCTSConfig(budget=40, max_steps=8, rollout_len=3, threshold=0.05, max_width=4)
    res = search(params, cfg, PROMPT, mc)
    again = search(params, cfg, PROMPT, mc)
    assert res.tokens == again.tokens and [n.visits for n in res.nodes] == [n.visits for n in again.nodes]
    assert res.forward_tokens <= mc.budget
    assert len(res.tokens) == 8 and res.path_len >= 1
    nodes = res.nodes
    assert nodes[0].visits == res.iterations == sum(nodes[j].visits for j in nodes[0].children) > 0
    fed = sum(n.slot >= 0 for n in nodes)
    assert fed <= res.forward_tokens  # every fed node cost one token (rollouts cost the rest)
    for i, n in enumerate(nodes[1:], start=1):
        if n.children:  # expanded after its own evaluation: own visit + its children's
            assert n.visits == 1 + sum(nodes[j].visits for j in n.children)
            probs = [nodes[j].prior for j in n.children]
            assert probs == sorted(probs, reverse=True) and len(probs) <= mc.max_width
            assert all(p >= mc.threshold for p in probs) or len(probs) == 1
        assert nodes[n.parent].depth + 1 == n.depth
    # a smaller budget is respected too, and spends at most what it may
    small = search(params, cfg, PROMPT, MCTSConfig(budget=11, max_steps=8, rollout_len=3,
                                                   threshold=0.05, max_width=4))
    assert small.forward_tokens <= 11 and small.completion_tokens <= 8


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_tree_attention_gives_each_branch_its_own_distribution(tiny_model, family):
    from tinymodel import tiny_gemma

    hf, cfg, params = tiny_model if family == "llama" else tiny_gemma(0)
    res = search(params, cfg, PROMPT, MCTSConfig(budget=30, max_steps=6, rollout_len=2,
                                                 threshold=0.05, max_width=4))
    checked = 0
    for i, n in enumerate(res.nodes):
        if n.top_logp is None:
            continue
        path, j = [], i
        while j > 0:
            path.append(res.nodes[j].token)
            j = res.nodes[j].parent
        ref = full_logits(hf, PROMPT + path[::-1])[-1]
        ref = ref - np.logaddexp.reduce(ref)
        np.testing.assert_allclose(n.top_logp, ref[n.top_ids], atol=2e-4)
        assert n.top_ids[0] == np.argmax(ref)
        checked += 1
    assert checked >= 5


def test_task_check_steers_search_to_rewarded_token(tiny_model):
    _, cfg, params = tiny_model
    mc = MCTSConfig(budget=40, max_steps=6, rollout_len=2, threshold=0.05, max_width=4)
    first = search(params, cfg, PROMPT, mc)
    target = first.nodes[first.nodes[0].children[2]].token  # the third most probable first token
    assert target != _greedy(params, cfg, 1)[0]
    res = search(params, cfg, PROMPT, mc, check=lambda ids: float(ids[0] == target))
    assert res.tokens[0] == target
    root = res.nodes[0]
    best = max(root.children, key=lambda j: res.nodes[j].visits)
    assert res.nodes[best].token == target and res.nodes[best].value == 1.0


@pytest.mark.parametrize("kwargs, msg", [
    (dict(budget=0), "budget"), (dict(threshold=0.0), "threshold"), (dict(max_width=0), "max_width"),
    (dict(max_steps=0), "max_steps"), (dict(rollout_len=-1), "rollout_len"),
    (dict(c_uct=float("nan")), "c_uct"), (dict(max_iterations=0), "max_iterations")])
def test_mcts_bad_config_one_line(tiny_model, kwargs, msg):
    _, cfg, params = tiny_model
    with pytest.raises(ValueError, match=msg) as e:
        search(params, cfg, PROMPT, MCTSConfig(**kwargs))
    assert "\n" not in str(e.value)


def test_mcts_bad_inputs_one_line(tiny_model):
    _, cfg, params = tiny_model
    for prompt, check, msg in (([], None, "empty"), ([1, 999], None, "token ids"),
                               (PROMPT, 3, "callable")):
        with pytest.raises(ValueError, match=msg) as e:
            search(params, cfg, prompt, MCTSConfig(), check=check)
        assert "\n" not in str(e.value)


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_policy_with_zero_weights_equals_constant_threshold_run(tiny_model):
    _, cfg, params = tiny_model
    g = GenerationConfig(max_steps=6, max_width=4, threshold=0.1)
    ref = generate(params, cfg, PROMPT, g)
    got = tp.generate(params, cfg, PROMPT, g, tp.ThresholdPolicy.constant(0.1))
    for name in ("tokens", "valid", "set_n"):
        np.testing.assert_array_equal(got.arrays[name], ref.arrays[name])
    np.testing.assert_allclose(got.arrays["probs"], ref.arrays["probs"], atol=1e-6)
    assert ref.arrays["set_n"].max() > 1  # the threshold mattered
    # a policy that leans on the top-1 feature changes the thresholds step by step
    lean = tp.ThresholdPolicy(w=jnp.asarray([0.0, 3.0, 0.0]), b=jnp.float32(-4.0))
    r = tp.rollout(params, cfg, PROMPT, g, lean)
    np.testing.assert_allclose(r.trace.arrays["tau"], jax.nn.sigmoid(r.features[:r.n_steps] @ lean.w + lean.b),
                               rtol=1e-5)
    # step-0 features: entropy and top-1 of the prompt's next-token distribution (HF reference)
    ref0 = full_logits(tiny_model[0], PROMPT)[-1]
    p0 = np.exp(ref0 - np.logaddexp.reduce(ref0))
    np.testing.assert_allclose(r.features[0, :2], [-(p0 * np.log(p0)).sum(), p0.max()], rtol=1e-4)
    assert r.n_steps >= 2 and r.features[0, 2] == 0.0
    np.testing.assert_allclose(r.features[1, 2], r.trace.arrays["set_n"][0] / 4)


def test_reinforce_gradient_matches_analytic_direction():
    # R = -sum_s z_s prefers low thresholds: d E[R] / d b = -S, d E[R] / d w = -sum_s f_s
    N, S, sigma = 4000, 3, 0.5
    rng = np.random.default_rng(0)
    f = np.tile(np.asarray([1.0, 0.5, -2.0], np.float32), (N, S, 1))
    pol = tp.ThresholdPolicy(w=jnp.asarray([0.2, -0.1, 0.3]), b=jnp.float32(-1.0))
    mu = f @ np.asarray(pol.w) + float(pol.b)
    z = (mu + sigma * rng.standard_normal((N, S))).astype(np.float32)
    rewards = -z.sum(1)
    g = jax.grad(tp.reinforce_loss)(pol, f, z, np.ones((N, S), bool), rewards, sigma)
    # the loss is -E[R]: its gradient is +S for b and +S f for w, up to Monte Carlo error
    np.testing.assert_allclose(float(g.b), S, rtol=0.1)
    np.testing.assert_allclose(np.asarray(g.w), S * f[0, 0], rtol=0.1, atol=0.15)
    # steps that did not run carry no gradient
    g0 = jax.grad(tp.reinforce_loss)(pol, f, z, np.zeros((N, S), bool), rewards, sigma)
    assert float(g0.b) == 0.0


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_fit_moves_threshold_toward_reward(tiny_model):
    _, cfg, params = tiny_model
    g = GenerationConfig(max_steps=4, max_width=4, threshold=0.1)
    res = tp.fit(params, cfg, [PROMPT], g, lambda t: float(np.mean(t.arrays["set_n"])),
                 iterations=2, rollouts_per_prompt=4, sigma=0.5, learning_rate=0.1, seed=0)
    b0 = float(tp.ThresholdPolicy.constant(0.1).b)
    assert float(res.policy.b) < b0  # wider sets rewarded -> lower threshold
    assert len(res.mean_reward) == 2


def test_policy_bad_inputs_one_line(tiny_model):
    _, cfg, params = tiny_model
    g = GenerationConfig(max_steps=4, max_width=4)
    pol = tp.ThresholdPolicy.constant(0.1)
    cases = [(lambda: tp.ThresholdPolicy.constant(1.0), "tau"),
             (lambda: tp.rollout(params, cfg, PROMPT, GenerationConfig(method="greedy"), pol), "method"),
             (lambda: tp.rollout(params, cfg, PROMPT, g, pol, sigma=-1.0), "sigma"),
             (lambda: tp.rollout(params, cfg, PROMPT, g, pol, sigma=0.5), "key"),
             (lambda: tp.fit(params, cfg, [], g, len), "prompt"),
             (lambda: tp.fit(params, cfg, [PROMPT], g, len, rollouts_per_prompt=1), "rollouts_per_prompt"),
             (lambda: tp.fit(params, cfg, [PROMPT], g, 5), "callable")]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg) as e:
            call()
        assert "\n" not in str(e.value)


def test_cli_search_writes_tree_and_refuses_bad_budget(tmp_path, capsys):
    import json

    from tempo_jax.cli import main
    from tinymodel import save_tiny_with_tokenizer

    folder = save_tiny_with_tokenizer(tmp_path / "tiny")
    assert main(["search", "w5 w9 w13", "--model", str(folder), "--budget", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tempo-jax: error: budget") and "\n" not in err
    out = tmp_path / "run"
    assert main(["search", "w5 w9 w13", "--model", str(folder), "--budget", "12", "--max-steps", "5",
                 "--threshold", "0.05", "--out", str(out)]) == 0
    doc = json.loads((out / "search.json").read_text())
    assert doc["forward_tokens"] <= 12 and len(doc["tokens"]) <= 5
    root = doc["nodes"][0]
    assert root["visits"] == doc["iterations"] == sum(doc["nodes"][j]["visits"] for j in root["children"])
