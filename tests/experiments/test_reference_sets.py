"""The confirmatory RQ 3.1 instrument and statistics: teacher-forced sets judged by one look-ahead
query (experiments/research/reference_sets.py) equal the forced-set probe of position_probe on a cache
of the same context, on the tiny Llama and the tiny windowed Gemma; the per-prompt statistics of
rq3.1c on hand-computed sets; the reference split at the tokenizer's boundary."""

from __future__ import annotations

import types

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.research.position_probe import probe_forward, prompt_state
from experiments.research.reference_sets import JudgedSets, all_logits, judge_sets
from experiments.research.rq3_1c_reference import reference_ids, set_stats


def test_set_stats_by_hand():
    # set A: attention 0.5 / 0.1 / 0.4 (mean 1/3, rule prunes below 0.267: member 1, the reference);
    # probability prunes the least probable instead (member 2) and keeps the reference.
    # set B: equal attention, nothing pruned; the reference is the more probable member 0.
    s = JudgedSets(position=np.array([0, 3]), n=np.array([3, 2]), tokens=np.array([[5, 6, 7], [8, 9, 0]]),
                   prob=np.array([[0.6, 0.3, 0.1], [0.7, 0.2, 0.0]]),
                   attn=np.array([[0.5, 0.1, 0.4], [0.3, 0.3, 0.0]]),
                   is_ref=np.array([[False, True, False], [True, False, False]]), probe_token=np.array([1, 2]))
    got = set_stats(s, rho=0.8)
    want = {"keep_rule_vs_prob": (-1 + 0) / 2, "keep_rule_vs_random": (-2 / 3 + 0) / 2,
            "conc_att": (-0.5 + 0.0) / 2, "conc_prob": (0.0 + 0.5) / 2, "conc_att_minus_prob": -0.5,
            "ref_pruned_rule": 0.5, "pruned_share": (1 / 3 + 0) / 2, "n_judged": 2}
    assert got == pytest.approx(want)
    empty = set_stats(JudgedSets(*(np.zeros((0,)) for _ in range(7))))
    assert empty["n_judged"] == 0 and np.isnan(empty["keep_rule_vs_prob"])


def test_reference_ids_split_at_the_token_boundary():
    vocab = {"The": 1, " capital": 2, " is": 3, " Paris": 4, "is": 5, "Par": 6, "is Paris": 7}

    def tok(text):  # a toy tokenizer: greedy longest match over the vocabulary
        out, i = [], 0
        while i < len(text):
            w = max((w for w in vocab if text.startswith(w, i)), key=len)
            out.append(vocab[w])
            i += len(w)
        return types.SimpleNamespace(input_ids=out)

    assert reference_ids(tok, "The capital is", "Paris", "facts") == ([1, 2, 3], [4])  # the answer's space
    # a boundary that merges: "...is" + " Paris" never splits there, the shared prefix is the prompt
    assert reference_ids(tok, "The capital", " is Paris", "prose") == ([1, 2], [3, 4])


@pytest.mark.parametrize("which", ["llama", "gemma"])
def test_judged_sets_equal_the_forced_set_probe(which, tiny_model):
    if which == "gemma":
        from tinymodel import tiny_gemma

        _, cfg, params = tiny_gemma()
    else:
        _, cfg, params = tiny_model
    rng = np.random.default_rng(1)
    ids = rng.integers(4, cfg.vocab_size, 14).astype(np.int32)  # longer than Gemma's window of 4
    W = 4
    _, cache = all_logits(params, cfg, jnp.asarray(np.pad(ids, (0, 18))), 32 + W + 1)
    cs = np.array([6, 11], np.int32)
    members = rng.integers(4, cfg.vocab_size, (2, W)).astype(np.int32)
    ns = np.array([3, 2], np.int32)
    attn, probe = judge_sets(params, cfg, cache, jnp.asarray(cs), jnp.asarray(members), jnp.asarray(ns))
    for s, (c, n) in enumerate(zip(cs, ns)):
        _, ref_cache = prompt_state(params, cfg, jnp.asarray(np.pad(ids[:c], (0, 32 - c))), jnp.int32(c), 32 + n + 2)
        r = probe_forward(params, cfg, ref_cache, jnp.int32(c), jnp.asarray(members[s, :n]), jnp.int32(probe[s]),
                          jnp.full((1, n), float(c)), jnp.full((1,), c + 1.0), n=int(n))
        assert int(r["member_top"][0]) == int(probe[s])  # the probe is member 0's greedy next token
        want = np.asarray(r["member_attn"])[:, 0].mean((0, 1))  # [n]
        np.testing.assert_allclose(np.asarray(attn[s, :n]), want, rtol=1e-4, atol=1e-7)
        assert np.all(np.asarray(attn[s, n:]) == 0)
