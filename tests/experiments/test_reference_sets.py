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


@pytest.mark.parametrize("which", ["llama", "gemma"])
def test_lookahead_queries_equal_one_forward_of_the_whole_lattice(which, tiny_model):
    """K look-ahead queries written one at a time on the cache equal ONE forward of context, members
    and queries on an empty cache with the lattice mask and positions written out by hand; query 1
    equals the one-query judge; each query token is the greedy next token of the one before."""
    if which == "gemma":
        from tinymodel import tiny_gemma

        _, cfg, params = tiny_gemma()
    else:
        _, cfg, params = tiny_model
    from tempo_jax.model import TapsSpec, forward, init_cache
    from experiments.research.reference_sets import judge_sets_lookahead

    rng = np.random.default_rng(2)
    ids = rng.integers(4, cfg.vocab_size, 14).astype(np.int32)
    W, K, cap = 4, 3, 32 + 4 + 3
    _, cache = all_logits(params, cfg, jnp.asarray(np.pad(ids, (0, 18))), cap)
    cs = np.array([7, 12], np.int32)
    members = rng.integers(4, cfg.vocab_size, (2, W)).astype(np.int32)
    ns = np.array([3, 2], np.int32)
    steps, qs = judge_sets_lookahead(params, cfg, cache, jnp.asarray(cs), jnp.asarray(members), jnp.asarray(ns), K=K)
    one, probe = judge_sets(params, cfg, cache, jnp.asarray(cs), jnp.asarray(members), jnp.asarray(ns))
    np.testing.assert_allclose(np.asarray(steps[:, 0]).mean(1), np.asarray(one), rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(qs[:, 0]), np.asarray(probe))
    for s, (c, n) in enumerate(zip(cs, ns)):
        toks = np.concatenate([ids[:c], members[s, :n], np.asarray(qs[s])]).astype(np.int32)
        T = len(toks)
        pos = np.concatenate([np.arange(c), np.full(n, c), c + 1 + np.arange(K)]).astype(np.float32)
        mask = np.zeros((T, T), bool)
        mask[:c, :c] = np.tril(np.ones((c, c), bool))
        for i in range(n):  # a member sees the context and itself
            mask[c + i, :c] = True
            mask[c + i, c + i] = True
        for i in range(K):  # query i sees the context, the members and queries 1..i
            mask[c + n + i, :c + n + i + 1] = True
        logits, _, taps = forward(params, cfg, jnp.asarray(toks)[None], jnp.asarray(pos)[None],
                                  jnp.arange(T)[None], jnp.asarray(mask)[None], init_cache(cfg, 1, T),
                                  TapsSpec(attn=True), key_pos=jnp.asarray(pos)[None] if cfg.has_window else None)
        a = np.asarray(taps["attn"])[:, 0, :, c + n:, c:c + n].mean(1)  # [L,K,n]
        np.testing.assert_allclose(np.asarray(steps[s, :, :, :n]), a.transpose(1, 0, 2), rtol=1e-4, atol=1e-6)
        assert np.all(np.asarray(steps[s, :, :, n:]) == 0)
        nxt = np.asarray(logits[0]).argmax(-1)
        assert int(qs[s, 0]) == int(nxt[c])  # query 1 follows member 0
        np.testing.assert_array_equal(np.asarray(qs[s, 1:]), nxt[c + n:c + n + K - 1])


def test_lookahead_set_stats_by_hand():
    from experiments.research import rq3_2c_lookahead as X

    # one set of 3 members, the reference is member 1; 3 layers (thirds of one layer each), K = 5.
    steps = np.zeros((1, X.K, 3, 3))
    steps[0, :, 0] = [0.5, 0.1, 0.4]  # early layer: the reference lowest (concordance 0)
    steps[0, :, 2] = [0.1, 0.5, 0.4]  # late layer: the reference highest (concordance 1)
    steps[0, :, 1] = [0.2, 0.2, 0.2]  # middle: ties (1/2)
    steps[0, 2:, 1] = [0.0, 0.9, 0.0]  # queries 3-5 of the middle layer favour the reference
    s = JudgedSets(position=np.array([0]), n=np.array([3]), tokens=np.array([[5, 6, 7]]),
                   prob=np.array([[0.6, 0.3, 0.1]]), attn=steps[:, 0].mean(1), is_ref=np.array([[False, True, False]]),
                   probe_token=np.array([1]), steps=steps)
    got = X.set_stats(s)
    # window 2: early 0, middle 1/2, late 1; all layers: scores (0.8, 0.8, 1.0)/3 -> 1/2 (tie, loses)
    assert got["conc_early"] == -0.5 and got["conc_middle"] == 0 and got["conc_late"] == 0.5
    assert got["d_late_early"] == 1.0 and got["d_middle_early"] == 0.5
    assert got["conc_all"] == -0.25  # member 1 ties member 0 (0.8) and loses to member 2 (1.0)
    # window 5 over all layers: member 1 gets (0.1 + 0.5) * 5 + 0.2 * 2 + 0.9 * 3 = 6.1, the most
    assert got["conc_w5"] == 0.5 and got["conc_w1"] == -0.25 and got["d_w5_w1"] == 0.75
    assert got["conc_prob"] == 0.0 and got["d_w5_prob"] == 0.5
    assert got["layer_00"] == -0.5 and got["layer_02"] == 0.5 and got["n_judged"] == 1
    # the rule (rho 0.8) keeps the reference at window 5 (6.1 / 3 / 5 > 0.8 of the mean) and at window 1
    assert got["keep_w5"] == 1.0 and got["keep_w1"] == 1.0 and got["keep_w5_w1"] == 0.0
    # decay (weights 16/31, 8/31, ... over queries): member 1 (0.8/3 early, 1.6/3 late) still highest
    assert got["conc_decay"] == 0.5 and got["d_decay"] == 0.0
    empty = X.set_stats(JudgedSets(*(np.zeros((0,)) for _ in range(7)), steps=np.zeros((0, X.K, 3, 3))))
    assert empty["n_judged"] == 0 and np.isnan(empty["d_w5_w1"])
