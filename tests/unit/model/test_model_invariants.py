"""Invariants of the forward that hold whatever the weights: caching, batching, dtype, masks, RoPE."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tempo_jax.config import ModelConfig, RopeScaling
from tempo_jax.model import TapsSpec, causal_mask, forward, init_cache, init_params, rope

CFG = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=16, rope_theta=10000.0,
                  rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 16), rms_norm_eps=1e-5)
ATTN = TapsSpec(attn=True)
ALL_TAPS = TapsSpec(attn=True, resid=True, attn_received=True)

_fwd = jax.jit(forward, static_argnames=("cfg", "taps"))


@pytest.fixture(scope="module")
def params():
    # scale 0.15 so attention is far from uniform and logits are O(1)
    return init_params(CFG, jax.random.PRNGKey(0), scale=0.15)


def causal_np(b, t, k, start=0):
    return np.broadcast_to(np.arange(k)[None, :] <= start + np.arange(t)[:, None], (b, t, k)).copy()


def run(params, tokens, positions, slots, mask, cache=None, taps=ATTN, cfg=CFG):
    tokens = np.asarray(tokens)
    b = tokens.shape[0]
    if cache is None:
        cache = init_cache(cfg, b, np.asarray(mask).shape[-1], params["embed"].dtype)
    return _fwd(params, cfg, jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.float32),
                jnp.asarray(slots, jnp.int32), jnp.asarray(mask), cache, taps=taps)


def test_causal_mask_matches_numpy():
    got = np.asarray(causal_mask(2, 3, 6, start=2))
    want = np.zeros((2, 3, 6), bool)
    for q in range(3):
        want[:, q, : 2 + q + 1] = True
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_incremental_decoding_equals_full_forward(params):
    t_total, t_prefill, k = 11, 5, 14
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, (1, t_total))
    pos = np.arange(t_total)[None]
    full_logits, _, full_taps = run(params, tokens, pos, pos, causal_np(1, t_total, k))

    cache = init_cache(CFG, 1, k)
    logits, cache, taps = run(params, tokens[:, :t_prefill], pos[:, :t_prefill], pos[:, :t_prefill],
                              causal_np(1, t_prefill, k), cache)
    step_logits, step_attn = [logits], [taps["attn"]]
    for s in range(t_prefill, t_total):
        logits, cache, taps = run(params, tokens[:, s:s + 1], pos[:, s:s + 1], pos[:, s:s + 1],
                                  causal_np(1, 1, k, start=s), cache)
        step_logits.append(logits)
        step_attn.append(taps["attn"])
    chex.assert_trees_all_close(np.concatenate(step_logits, axis=1), np.asarray(full_logits),
                                atol=1e-5, rtol=0)
    chex.assert_trees_all_close(np.concatenate(step_attn, axis=3), np.asarray(full_taps["attn"]),
                                atol=1e-6, rtol=0)


def test_out_of_order_slots_equal_in_order(params):
    """Where a token's key is stored does not matter, only which slots the mask shows."""
    t, k = 6, 8
    tokens = np.random.default_rng(1).integers(0, CFG.vocab_size, (1, t))
    pos = np.arange(t)[None]
    ref, _, _ = run(params, tokens, pos, pos, causal_np(1, t, k))
    perm = np.array([[7, 2, 5, 0, 3, 6]])
    mask = np.zeros((1, t, k), bool)
    for q in range(t):
        mask[0, q, perm[0, : q + 1]] = True
    got, _, _ = run(params, tokens, pos, perm, mask)
    chex.assert_trees_all_close(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=0)


def test_batched_equals_unbatched(params):
    t, k = 7, 9
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, CFG.vocab_size, (3, t))
    positions = np.arange(t)[None] + np.array([[0.0], [3.0], [10.5]])  # different per row
    mask = causal_np(3, t, k)
    mask[1, :, 0] = False  # row 1 cannot see its first token (rows 1.. still see themselves)
    mask[1, 0, 0] = True
    slots = np.broadcast_to(np.arange(t), (3, t))
    logits, _, taps = run(params, tokens, positions, slots, mask)
    for i in range(3):
        li, _, ti = run(params, tokens[i:i + 1], positions[i:i + 1], slots[i:i + 1], mask[i:i + 1])
        chex.assert_trees_all_close(np.asarray(logits[i:i + 1]), np.asarray(li), atol=1e-5, rtol=0)
        chex.assert_trees_all_close(np.asarray(taps["attn"][:, i:i + 1]), np.asarray(ti["attn"]),
                                    atol=1e-6, rtol=0)


def test_bfloat16_close_to_float32(params):
    t, k = 16, 16
    tokens = np.random.default_rng(3).integers(0, CFG.vocab_size, (2, t))
    pos = np.broadcast_to(np.arange(t), (2, t))
    mask = causal_np(2, t, k)
    ref, _, _ = run(params, tokens, pos, pos, mask)
    p16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
    got, cache, _ = run(params=p16, tokens=tokens, positions=pos, slots=pos, mask=mask)
    assert got.dtype == jnp.float32 and cache.k.dtype == jnp.bfloat16
    ref, got = np.asarray(ref), np.asarray(got)
    assert np.all(np.isfinite(got))
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() / scale < 5e-2
    agree = (got.argmax(-1) == ref.argmax(-1)).mean()
    assert agree >= 0.9, f"argmax agrees on only {agree:.0%} of positions"


def test_per_layer_head_mask_changes_only_that_head(params):
    t, k = 6, 6
    b, L, H = 1, CFG.num_layers, CFG.num_heads
    tokens = np.random.default_rng(4).integers(0, CFG.vocab_size, (b, t))
    pos = np.arange(t)[None]
    base3 = causal_np(b, t, k)
    base_logits, _, base = run(params, tokens, pos, pos, base3, taps=ALL_TAPS)
    base = jax.tree_util.tree_map(np.asarray, base)

    # The full 5-D form of the same mask gives the same result.
    full5 = np.broadcast_to(base3[:, None, None], (b, L, H, t, k)).copy()
    l5, _, t5 = run(params, tokens, pos, pos, full5, taps=ALL_TAPS)
    chex.assert_trees_all_close(np.asarray(l5), np.asarray(base_logits), atol=1e-6, rtol=0)

    # Layer 0, head 0: queries 1.. may no longer look at slot 0.
    m = full5.copy()
    m[:, 0, 0, 1:, 0] = False
    logits, _, taps = run(params, tokens, pos, pos, m, taps=ALL_TAPS)
    attn = np.asarray(taps["attn"])
    # Hand-computed: layer-0 scores do not depend on the mask, so head 0's probabilities are the
    # base ones with slot 0 removed and each row renormalised.
    want = base["attn"][0, :, 0].copy()
    want[:, 1:, 0] = 0.0
    want /= want.sum(-1, keepdims=True)
    chex.assert_trees_all_close(attn[0, :, 0], want, atol=1e-6, rtol=0)
    chex.assert_trees_all_close(attn[0, :, 1:], base["attn"][0, :, 1:], atol=1e-7, rtol=0)
    assert not np.allclose(np.asarray(taps["resid"][0]), base["resid"][0], atol=1e-4)
    assert not np.allclose(attn[1], base["attn"][1], atol=1e-4)  # changes propagate to layer 1
    assert not np.allclose(np.asarray(logits), np.asarray(base_logits), atol=1e-4)

    # Layer 1, head 2 only: layer 0 is untouched, and so are layer 1's other heads.
    m = full5.copy()
    m[:, 1, 2, 1:, 0] = False
    logits, _, taps = run(params, tokens, pos, pos, m, taps=ALL_TAPS)
    attn = np.asarray(taps["attn"])
    chex.assert_trees_all_close(attn[0], base["attn"][0], atol=1e-7, rtol=0)
    chex.assert_trees_all_close(np.asarray(taps["resid"][0]), base["resid"][0], atol=1e-7, rtol=0)
    chex.assert_trees_all_close(attn[1, :, [0, 1, 3]], base["attn"][1, :, [0, 1, 3]], atol=1e-7, rtol=0)
    assert not np.allclose(attn[1, :, 2], base["attn"][1, :, 2], atol=1e-4)
    assert not np.allclose(np.asarray(logits), np.asarray(base_logits), atol=1e-4)


def _rope_numpy(x, positions, inv_freq):
    """Rotate-half RoPE in float64: pair (i, i + D/2) is rotated by angle position * inv_freq[i]."""
    x = x.astype(np.float64)
    half = x.shape[-1] // 2
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            ang = positions[b, t] * inv_freq.astype(np.float64)
            c, s = np.cos(ang), np.sin(ang)
            x1, x2 = x[b, t, :, :half], x[b, t, :, half:]
            out[b, t, :, :half] = x1 * c - x2 * s
            out[b, t, :, half:] = x2 * c + x1 * s
    return out


def test_rope_fractional_positions_match_numpy():
    d = 16
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 3, d)).astype(np.float32)
    positions = np.array([[0.0, 0.5, 3.25, 7.75], [100.125, 2.0, 2.0, 1e-3]], np.float32)
    inv_freq = (1.0 / 10000.0 ** (np.arange(0, d, 2) / d)).astype(np.float32)
    got = np.asarray(rope(jnp.asarray(x), jnp.asarray(positions), jnp.asarray(inv_freq)))
    want = _rope_numpy(x, positions, inv_freq)
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=0)
    np.testing.assert_array_equal(got[0, 0], x[0, 0])  # position 0 is the identity
    # a rotation keeps every pair's norm
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_fractional_position_shift_leaves_logits_unchanged(params):
    """Attention depends on position differences only: shifting every position by 2.5 is a no-op."""
    t = 7
    tokens = np.random.default_rng(6).integers(0, CFG.vocab_size, (1, t))
    pos = np.arange(t)[None].astype(np.float32) * 0.75
    mask = causal_np(1, t, t)
    a, _, _ = run(params, tokens, pos, np.arange(t)[None], mask)
    b, _, _ = run(params, tokens, pos + 2.5, np.arange(t)[None], mask)
    chex.assert_trees_all_close(np.asarray(a), np.asarray(b), atol=1e-4, rtol=0)
    c, _, _ = run(params, tokens, np.arange(t)[None], np.arange(t)[None], mask)
    assert not np.allclose(np.asarray(a), np.asarray(c), atol=1e-3)  # the spacing does matter


def test_attention_rows_sum_to_one_and_masked_entries_are_zero(params):
    b, t, k = 2, 6, 10
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, CFG.vocab_size, (b, t))
    mask = rng.random((b, t, k)) < 0.4
    mask[:, np.arange(t), np.arange(t)] = True  # every row sees at least its own slot
    slots = np.broadcast_to(np.arange(t), (b, t))
    _, _, taps = run(params, tokens, rng.random((b, t)) * 20, slots, mask, taps=ALL_TAPS)
    attn = np.asarray(taps["attn"])
    chex.assert_shape(attn, (CFG.num_layers, b, CFG.num_heads, t, k))
    np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-6)
    blocked = np.broadcast_to(~mask[None, :, None], attn.shape)
    assert np.all(attn[blocked] == 0.0)
    assert np.all(attn[~blocked] > 0.0)
    chex.assert_trees_all_close(np.asarray(taps["attn_received"]), attn.sum(axis=3), atol=1e-6, rtol=0)
    chex.assert_shape(taps["resid"], (CFG.num_layers, b, t, CFG.hidden_size))
