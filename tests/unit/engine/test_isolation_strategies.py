"""Directional ("reverse") and adaptive sibling isolation: masks against hand-built ones, adaptive
switching decided in-graph, defaults unchanged, bad values refused in one line."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from tempo_jax.capture import CaptureWriter, load_capture
from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.engine.config import sibling_codes
from tempo_jax.engine.masks import adaptive_siblings, step_mask
from tempo_jax.engine.siblings import SiblingRule
from tinymodel import tiny

PROMPT = [5, 9, 13, 17, 21]


def _hand_mask(rule: str, n_prompt: int, n: int, width: int, capacity: int) -> np.ndarray:
    """[W,K] by hand: prompt slots, own slot, and siblings j (j < n) the rule allows."""
    m = np.zeros((width, capacity), bool)
    for i in range(width):
        m[i, :n_prompt] = True
        m[i, n_prompt + i] = True
        for j in range(n):
            if j == i:
                continue
            if (rule == "visible" and j < i) or rule == "full" or (rule == "reverse" and j > i):
                m[i, n_prompt + j] = True
    return m


@pytest.mark.parametrize("rule", ["isolated", "visible", "full", "reverse"])
def test_step_mask_matches_hand_built(rule):
    K, P, W, n = 12, 3, 4, 3  # three real members, one padding query
    alive = np.arange(K) < P
    slot_step = np.where(alive, -1, -2)
    table = jnp.full((2, 3), SiblingRule.check(rule).code, jnp.int32)
    got = np.asarray(step_mask(jnp.asarray(alive), jnp.asarray(slot_step), jnp.int32(0), jnp.int32(P),
                               jnp.int32(n), W, table))
    assert got.shape == (2, 3, W, K)
    want = _hand_mask(rule, P, n, W, K)
    for layer in range(2):
        for head in range(3):
            np.testing.assert_array_equal(got[layer, head], want)
    if rule == "reverse":  # the mirror image of visible over the real members
        vis = _hand_mask("visible", P, n, W, K)[:n, P:P + n]
        np.testing.assert_array_equal(want[:n, P:P + n], vis.T)


def test_step_mask_mixed_table_per_layer_and_head():
    K, P, W, n = 10, 2, 3, 3
    alive = np.arange(K) < P
    slot_step = np.where(alive, -1, -2)
    table = sibling_codes([["isolated", "reverse"], ["visible", "full"]])
    got = np.asarray(step_mask(jnp.asarray(alive), jnp.asarray(slot_step), jnp.int32(0), jnp.int32(P),
                               jnp.int32(n), W, jnp.asarray(table)))
    for (layer, head), rule in {(0, 0): "isolated", (0, 1): "reverse", (1, 0): "visible",
                                (1, 1): "full"}.items():
        np.testing.assert_array_equal(got[layer, head], _hand_mask(rule, P, n, W, K))


def test_adaptive_siblings_switches_on_entropy_and_size():
    table = jnp.asarray([[1, 2], [3, 1]], jnp.int32)
    inf, big = jnp.float32(np.inf), jnp.int32(2 ** 31 - 1)
    f = lambda ent, n, thr, size: np.asarray(adaptive_siblings(table, jnp.float32(ent), jnp.int32(n),
                                                               jnp.float32(thr), jnp.int32(size)))
    np.testing.assert_array_equal(f(5.0, 8, inf, big), table)  # defaults: the table, unchanged
    np.testing.assert_array_equal(f(1.5, 2, 1.0, big), 0)  # entropy above: isolated everywhere
    np.testing.assert_array_equal(f(1.0, 2, 1.0, big), table)  # not above (equal): the table
    np.testing.assert_array_equal(f(0.1, 3, inf, 2), 0)  # more members than 2: isolated
    np.testing.assert_array_equal(f(0.1, 2, inf, 2), table)


def _leak(tmp_path, g, inputs=None):
    _, cfg, params = tiny(0)
    w = CaptureWriter(tmp_path)
    tr = generate(params, cfg, PROMPT, g, on_step=w, capture="full", inputs=inputs)
    return tr, np.asarray(load_capture(tmp_path)["attn"][0])


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_reverse_on_tiny_model_attends_only_to_higher_members(tmp_path):
    g = GenerationConfig(max_steps=6, threshold=0.05, max_width=5, siblings="reverse")
    tr, attn = _leak(tmp_path, g)
    a = tr.arrays
    multi = 0
    for s in range(tr.n_steps):
        n, base = a["set_n"][s], a["cache_len"][s]
        x = attn[s][:, :, :n, base:base + n]  # [L,H,i,j] attention of member i on member j
        if n > 1:
            multi += 1
            lower = np.tril(np.ones((n, n), bool), -1)
            assert np.all(x[:, :, lower] == 0)  # j < i: masked
            assert np.all(x[:, :, np.triu(np.ones((n, n), bool), 1)] > 0)  # j > i: seen
    assert multi > 0  # the test needs multi-member sets


def test_adaptive_extremes_equal_plain_rules():
    _, cfg, params = tiny(0)
    base = dict(max_steps=6, threshold=0.05, max_width=5)
    run = lambda **kw: generate(params, cfg, PROMPT, GenerationConfig(**base, **kw)).arrays
    iso, full = run(siblings="isolated"), run(siblings="full")
    always = run(siblings="full", isolate_above=0.0)  # every step has entropy > 0
    never = run(siblings="full", isolate_above=1e6)
    by_size = run(siblings="full", isolate_size_above=1)  # every multi-member set isolated
    assert not np.array_equal(iso["probs"], full["probs"])  # the rules do differ here
    for got, want in ((always, iso), (never, full), (by_size, iso)):
        np.testing.assert_array_equal(got["tokens"], want["tokens"])
        np.testing.assert_allclose(got["probs"], want["probs"], atol=1e-6)


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_adaptive_entropy_threshold_isolates_only_high_entropy_steps(tmp_path):
    probe = GenerationConfig(max_steps=8, threshold=0.05, max_width=5, siblings="full")
    tr0, _ = _leak(tmp_path / "p", probe)
    a0 = tr0.arrays
    ent = a0["entropy"][a0["set_n"] > 1]
    assert len(ent) >= 2 and ent.max() > ent.min()
    thr = float(np.median(ent))
    tr, attn = _leak(tmp_path / "a", GenerationConfig(max_steps=8, threshold=0.05, max_width=5,
                                                      siblings="full", isolate_above=thr))
    a = tr.arrays
    seen = set()
    for s in range(tr.n_steps):
        n, base = a["set_n"][s], a["cache_len"][s]
        if n < 2:
            continue
        x = attn[s][:, :, :n, base:base + n]
        off = ~np.eye(n, dtype=bool)
        if a["entropy"][s] > thr:
            assert np.all(x[:, :, off] == 0)
            seen.add("isolated")
        else:
            assert np.all(x[:, :, off] > 0)
            seen.add("full")
    assert seen == {"isolated", "full"}


def test_bad_values_refused_in_one_line():
    _, cfg, params = tiny(0)
    for kw, msg in (({"isolate_above": -0.5}, "isolate_above must be >= 0 \(nats\)"),
                    ({"isolate_above": float("nan")}, "isolate_above must be >= 0 \(nats\)"),
                    ({"isolate_size_above": 0}, "isolate_size_above must be >= 1"),
                    ({"siblings": "backward"}, "unknown sibling rule 'backward'; allowed: isolated, "
                                               "visible, full, reverse")):
        with pytest.raises(ValueError, match=msg) as e:
            generate(params, cfg, PROMPT, GenerationConfig(max_steps=2, **kw))
        assert "\n" not in str(e.value)
    g = GenerationConfig(max_steps=2)
    with pytest.raises(ValueError, match=r"siblings must hold sibling-rule codes \(0 isolated, 1 visible, 2 full, 3 reverse\); got values in \[0, 4\]"):
        generate(params, cfg, PROMPT, g, inputs=g.inputs(cfg).replace(
            siblings=jnp.asarray([[0, 1, 2, 4]] * 2, jnp.int32)))
    with pytest.raises(ValueError, match="isolate_above must be a number of nats"):
        generate(params, cfg, PROMPT, g, inputs=g.inputs(cfg).replace(isolate_above=jnp.float32(np.nan)))
    assert SiblingRule.check("reverse").code == 3
