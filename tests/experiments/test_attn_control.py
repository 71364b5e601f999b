"""The attention-bias worlds of experiments/research/attn_control.py (RQ 9.3, RQ 1.3b) on the tiny
random model: a zero-bias world equals ``generate``; a bias on generated slots only equals
``generate`` with that intervention (the prompt cannot see those slots, so prefilling without the
bias changes nothing); a bias on prompt slots leaves step 0 alone and changes later steps; slot
masks and rule-chosen spans by hand."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.research import attn_control as A
from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.interventions import Interventions
from tempo_jax.slots import PROMPT, UNWRITTEN

PROMPT_IDS = [5, 9, 17, 3, 22, 41]
G = GenerationConfig(max_steps=6, threshold=0.05, max_width=4)


def test_worlds_match_generate(tiny_model):
    _, cfg, params = tiny_model
    L, P = cfg.num_layers, len(PROMPT_IDS)
    K = A.check_request(cfg, G, PROMPT_IDS)
    gen_slots = np.arange(K) >= P
    prompt_slots = (np.arange(K) >= 1) & (np.arange(K) < P)
    bias = np.stack([A.span_bias(L, K, gen_slots, [0.0])[0], A.span_bias(L, K, gen_slots, [3.0])[0],
                     A.span_bias(L, K, prompt_slots, [6.0])[0]])
    seen = []

    def bias_for(s, h):
        seen.append((s, h["slot_step"].shape))
        return bias

    tr = A.bias_worlds(params, cfg, PROMPT_IDS, G, 3, bias_for)
    assert seen[0] == (0, (3, K))
    ref0 = generate(params, cfg, PROMPT_IDS, G)
    iv = Interventions(attn_bias=jnp.asarray(bias[1][None, :, None, :]))
    ref1 = generate(params, cfg, PROMPT_IDS, G, inputs=G.inputs(cfg).replace(interventions=iv))
    for got, ref in ((tr[0], ref0), (tr[1], ref1)):
        np.testing.assert_array_equal(got.arrays["tokens"], ref.arrays["tokens"])
        np.testing.assert_allclose(got.arrays["probs"], ref.arrays["probs"], rtol=1e-4, atol=1e-6)
    # the +3 bias on generated slots changes the run (so the equality above is not vacuous)
    assert not np.allclose(tr[1].arrays["probs"], ref0.arrays["probs"], atol=1e-4)
    # a bias on prompt slots during generation only: step 0's set comes from the unbiased prefill
    np.testing.assert_array_equal(tr[2].arrays["tokens"][0], ref0.arrays["tokens"][0])
    np.testing.assert_allclose(tr[2].arrays["probs"][0], ref0.arrays["probs"][0], rtol=1e-5)
    assert not np.allclose(tr[2].arrays["probs"][1:], ref0.arrays["probs"][1:], atol=1e-4)
    with pytest.raises(ValueError, match=r"bias_for must return \[B,L,K\]"):
        A.bias_worlds(params, cfg, PROMPT_IDS, G, 2, lambda s, h: bias)


def test_parallel_and_control_slots_by_hand():
    #            sink  prompt x3          step0 (2)  step1 (1)  step2 (3)  unwritten
    slot_step = np.array([PROMPT, PROMPT, PROMPT, PROMPT, 0, 0, 1, 2, 2, 2, UNWRITTEN])
    alive = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0], bool)  # slot 5 pruned
    set_n = np.array([2, 1, 3, 0])
    par = A.parallel_slots(slot_step, alive, set_n, s=3)
    np.testing.assert_array_equal(np.flatnonzero(par), [4, 7, 8, 9])
    # at step 2, step 2's own slots are not earlier members
    np.testing.assert_array_equal(np.flatnonzero(A.parallel_slots(slot_step, alive, set_n, 2)), [4])
    # batched form (leading world axis) agrees
    np.testing.assert_array_equal(A.parallel_slots(slot_step[None], alive[None], set_n[None], 3)[0], par)
    prio = np.array([9, 8, 1, 7, 0, 0, 5, 0, 0, 0, 9.0])
    ctrl = A.control_slots(par, slot_step, alive, 3, prio)
    # eligible: prompt slots 1-3 and single-member slot 6, never the sink, parallel or unwritten
    assert set(np.flatnonzero(ctrl)) == {1, 2, 3, 6}
    few = A.control_slots(np.arange(11) == 4, slot_step, alive, 3, prio)
    assert set(np.flatnonzero(few)) == {1}  # one slot, the highest priority eligible one
    assert not A.control_slots(np.zeros(11, bool), slot_step, alive, 3, prio).any()


def test_span_bias_layers_and_worlds():
    b = A.span_bias(4, 6, np.array([0, 1, 1, 0, 0, 0], bool), [-2.0, 3.0], layers=[1, 2])
    assert b.shape == (2, 4, 6)
    assert b[0, 1, 1] == -2.0 and b[1, 2, 2] == 3.0
    assert b[:, [0, 3]].sum() == 0 and b[:, :, [0, 3, 4, 5]].sum() == 0


def test_rule_spans_and_blocks():
    t = "The capital of Bosnia and Herzegovina is"
    s = A.rule_span(t, "facts")
    assert t[s[0]:s[1]] == "Bosnia and Herzegovina"
    t = "Da Nang is a city in"
    s = A.rule_span(t, "facts")
    assert t[s[0]:s[1]] == "Da Nang"
    t = "import os\n\ndef get_running_loop():\n    pass\n"
    s = A.rule_span(t, "code")
    assert t[s[0]:s[1]] == "get_running_loop"
    t = "Enormous dogs walked quietly along"
    s = A.rule_span(t, "prose")
    assert t[s[0]:s[1]] == "quietly"  # the first word is never the span; first of equal length
    assert A.rule_span("x = 1", "code") is None
    offsets = [(0, 3), (3, 11), (11, 14), (14, 21), (21, 22)]
    np.testing.assert_array_equal(A.token_span(offsets, 4, 13), [1, 2])
    rng = np.random.default_rng(0)
    for _ in range(20):
        blk = A.random_block(10, np.array([4, 5]), rng)
        assert len(blk) == 2 and np.all(np.diff(blk) == 1)
        assert not {0, 4, 5} & set(blk.tolist()) and blk.max() < 10
    assert A.random_block(4, np.array([1, 2]), rng) is None  # [3] alone is too short
