"""RQ 3.2 instruments: offline per-layer pruning scores equal the engine's, the offline relative rule
equals the engine's decision, cached batched branch continuations equal a plain recompute."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.research import layer_pruning_data as L
from tempo_jax.engine import GenerationConfig, generate, pruning
from tempo_jax.model import causal_mask, forward, init_cache

GEN = dict(max_steps=8, min_steps=8, threshold=0.05, max_width=4, siblings="isolated", prune_window=2)
PROMPT = [1, 5, 9, 17, 3, 22, 40]


def test_offline_layer_scores_equal_engine_scores(tiny_model):
    _, cfg, params = tiny_model
    tr, rows = L.layer_scores(params, cfg, PROMPT, GenerationConfig(**GEN))
    assert len(rows["slot"]) >= 4, "the tiny model should give several judged sets"
    assert rows["recv"].shape == (len(rows["slot"]), cfg.num_layers)
    w = np.array([0.3, 0.7])
    # rho = 0: nothing is ever pruned, so the trajectory equals the unpruned one and the engine
    # records the window score of every judged slot
    eng = generate(params, cfg, PROMPT, GenerationConfig(**GEN, prune=True, prune_rho=0.0,
                                                         prune_layer_weights=tuple(w)))
    np.testing.assert_array_equal(eng.arrays["tokens"], tr.arrays["tokens"])
    got = eng.arrays["prune_score"][rows["slot"]]
    np.testing.assert_allclose(rows["recv"] @ w, got, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="prune=False"):
        L.layer_scores(params, cfg, PROMPT, GenerationConfig(**GEN, prune=True))


def test_relative_keep_matches_engine_decide():
    rng = np.random.default_rng(0)
    sizes = [2, 3, 4, 2, 5]
    set_id = np.repeat(np.arange(len(sizes)), sizes)
    score = rng.uniform(0.0, 1.0, len(set_id))
    score[0] = score[1]  # a tie inside a set: both are "best", neither is pruned
    keep = L.relative_keep(score, set_id, 0.8)
    # the engine on slot maps: set g written at step g, all due at step g + window
    window, k = 2, len(set_id)
    for g in range(len(sizes)):
        slot_step = jnp.asarray(set_id, jnp.int32)
        set_n = jnp.asarray(sizes + [0] * 8, jnp.int32)
        pr, _ = pruning.decide(jnp.asarray(score, jnp.float32), jnp.ones(k, bool), slot_step, set_n,
                               g + window, window, "window", "relative", 0.8, 0.0, 1.0, None)
        sel = set_id == g
        np.testing.assert_array_equal(keep[sel], ~np.asarray(pr)[sel])
    assert keep[0] and keep[1]
    # hand case: mean 0.5, 0.8 * mean = 0.4 -> 0.3 pruned, 0.45 kept, 0.75 (best) kept
    np.testing.assert_array_equal(L.relative_keep(np.array([0.3, 0.45, 0.75]), np.zeros(3), 0.8),
                                  [False, True, True])


def test_pair_concordance_hand_case():
    # set 0: good = [2, 1, 0], score = [0.9, 0.1, 0.5]: pairs (0>1 ok), (0>2 ok), (1>2 wrong) -> 2/3
    # set 1: good equal -> no pair; set 2: good [1, 0], tie in score -> 1/2
    c, n = L.pair_concordance([0.9, 0.1, 0.5, 0.3, 0.3, 0.2, 0.2],
                              [2, 1, 0, 5, 5, 1, 0], [0, 0, 0, 1, 1, 2, 2])
    assert n == 4
    assert c == pytest.approx((2 + 0.5) / 4)
    assert np.isnan(L.pair_concordance([1.0, 2.0], [1, 1], [0, 0])[0])


T_PAD = 24


@functools.lru_cache(maxsize=None)
def _plain_logp(cfg):
    """log-softmax of one plain causal forward over a sequence padded to T_PAD (one compile)."""
    def f(params, seq):
        ar = jnp.arange(T_PAD)
        logits, _, _ = forward(params, cfg, seq[None], ar[None].astype(jnp.float32), ar[None],
                               causal_mask(1, T_PAD, T_PAD), init_cache(cfg, 1, T_PAD))
        return jax.nn.log_softmax(logits[0], -1)
    return jax.jit(f)


def _logp_after(params, cfg, seq):
    pad = np.zeros(T_PAD, np.int32)
    pad[:len(seq)] = seq
    return np.asarray(_plain_logp(cfg)(params, jnp.asarray(pad)), np.float64)[len(seq) - 1]


def _greedy_recompute(params, cfg, seq, n):
    toks, lps, seq = [], [], list(seq)
    for _ in range(n):
        lp = _logp_after(params, cfg, seq)
        toks.append(int(np.argmax(lp)))
        lps.append(float(lp.max()))
        seq.append(toks[-1])
    return toks, lps


def test_branch_continuations_equal_plain_recompute(tiny_model):
    _, cfg, params = tiny_model
    prefix = PROMPT + [11, 12, 13, 14]
    starts, members = [7, 9, 11, 8], [30, 31, 7, 12]
    cont, lp, mlp = L.branch_continuations(params, cfg, prefix, starts, members, 5, bucket=8,
                                           batch_bucket=8)
    assert cont.shape == (4, 5) and lp.shape == (4, 5) and mlp.shape == (4,)
    for b, (s, mem) in enumerate(zip(starts, members)):
        toks, lps = _greedy_recompute(params, cfg, prefix[:s] + [mem], 5)
        np.testing.assert_array_equal(cont[b], toks)
        np.testing.assert_allclose(lp[b], lps, atol=2e-4)
        assert mlp[b] == pytest.approx(_logp_after(params, cfg, prefix[:s])[mem], abs=2e-4)
    with pytest.raises(ValueError, match="starts must lie"):
        L.branch_continuations(params, cfg, prefix, [0], [3], 2)
