"""RoPE positions as an integer base plus a float offset (model.Positions): an offset of 0.001 at
position 30,000 rotates exactly as it does at position 0, where one float32 position would round it
to 0.00195; integer positions rotate as Hugging Face computes them."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from tempo_jax.model import Positions, TapsSpec, causal_mask, forward, init_cache, rope
from tinymodel import tiny_gemma

D = 64
INV = (1.0 / (1e6 ** (np.arange(0, D, 2) / D))).astype(np.float32)  # Gemma 3's global base


def _ref(x, base: int, offset: float):
    """float64 rotate-half RoPE by HF's float32 angle at the integer ``base`` plus ``offset``'s."""
    angle = (np.float32(base) * INV).astype(np.float64) + offset * INV.astype(np.float64)
    cos, sin = np.cos(np.concatenate([angle, angle])), np.sin(np.concatenate([angle, angle]))
    x = x.astype(np.float64)
    return x * cos + np.concatenate([-x[..., D // 2:], x[..., :D // 2]], -1) * sin


def test_an_offset_at_30000_is_kept():
    x = np.random.default_rng(0).standard_normal((1, 1, 1, D)).astype(np.float32)
    got = np.asarray(rope(jnp.asarray(x), Positions(jnp.asarray([[30000]]), jnp.asarray([[0.001]])), INV))
    want = _ref(x, 30000, 0.001)
    err = np.abs(got - want).max()
    assert err < 2e-6
    # the shift the offset makes is the shift it makes at position 0
    moved = got - np.asarray(rope(jnp.asarray(x), jnp.asarray([[30000]]), INV))
    np.testing.assert_allclose(moved, want - _ref(x, 30000, 0.0), atol=2e-6)
    assert np.abs(moved).max() > 100 * 2e-6  # a real shift, far above the tolerance
    # one float32 position cannot carry it: 30000.001 is stored as 30000.00195
    assert np.float32(30000.001) == np.float32(30000.001953125)
    lossy = np.asarray(rope(jnp.asarray(x), jnp.asarray([[30000.001]], jnp.float32), INV))
    assert np.abs(lossy - want).max() > 100 * err


def test_integer_positions_rotate_as_hf_and_split_floats_agree():
    x = np.random.default_rng(1).standard_normal((1, 3, 2, D)).astype(np.float32)
    ints = jnp.asarray([[0, 7, 29999]])
    got = np.asarray(rope(jnp.asarray(x), ints, INV))
    freqs = (np.asarray(ints, np.float32)[..., None] * INV)  # HF: position_ids.float() @ inv_freq
    emb = np.concatenate([freqs, freqs], -1)[:, :, None]
    hf = x * np.cos(emb) + np.concatenate([-x[..., D // 2:], x[..., :D // 2]], -1) * np.sin(emb)
    np.testing.assert_allclose(got, hf, rtol=1e-6, atol=1e-6)  # XLA's and numpy's cos: an ulp apart
    p = Positions.of(jnp.asarray([[2.25, 5.0, 6.75]]))
    np.testing.assert_array_equal(p.base, [[2, 5, 7]])
    np.testing.assert_allclose(p.offset, [[0.25, 0.0, -0.25]])


def test_forward_takes_positions_far_into_the_context():
    """Keys at 30,000 + j and queries offset by 0.001: forward's q and k taps are the float64
    rotations of its q_pre and k_pre taps (sliding layers read key positions too)."""
    _, cfg, params = tiny_gemma(0)
    t = 5
    base = 30000 + jnp.arange(t)[None]
    at = Positions(base, jnp.full((1, t), 0.001, jnp.float32))
    _, _, taps = forward(params, cfg, jnp.asarray([[2, 5, 9, 13, 17]]), at, jnp.arange(t)[None],
                         causal_mask(1, t, t), init_cache(cfg, 1, t), TapsSpec.of("q_pre", "q"),
                         key_pos=at.value())
    inv = cfg.layer_inv_freq()
    for layer in range(cfg.num_layers):
        q_pre = np.asarray(taps["q_pre"][layer], np.float64)  # [B,T,H,D]
        d = q_pre.shape[-1]
        angle = (np.asarray(base, np.float32)[..., None] * inv[layer]).astype(np.float64) + 0.001 * inv[layer]
        emb = np.concatenate([angle, angle], -1)[:, :, None]
        want = q_pre * np.cos(emb) + np.concatenate([-q_pre[..., d // 2:], q_pre[..., :d // 2]], -1) * np.sin(emb)
        np.testing.assert_allclose(np.asarray(taps["q"][layer]), want, atol=1e-5 * np.abs(want).max())
