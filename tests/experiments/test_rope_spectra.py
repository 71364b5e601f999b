"""RQ 1.1b's RoPE spectra: the extracted pre-RoPE q/k pairs reproduce the model's attention logits."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.research.rope_spectra import logit, probe_qk


def test_logit_of_pairs_is_the_rotated_dot_product():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=8), rng.normal(size=(2, 8))
    theta = np.array([1.0, 0.3, 0.01, 0.002])
    dist = np.array([3.0, 7.5])

    def rot(x, p):  # rotate-half RoPE by hand
        c, s = np.cos(np.concatenate([theta, theta]) * p), np.sin(np.concatenate([theta, theta]) * p)
        return x * c + np.concatenate([-x[4:], x[:4]]) * s

    want = [rot(q, 10.0) @ rot(k[j], 10.0 - dist[j]) / np.sqrt(8) for j in range(2)]
    z = lambda x: x[..., :4] + 1j * x[..., 4:]
    assert logit(z(q), z(k), theta, dist) == pytest.approx(want, rel=1e-10)


def test_probe_qk_reproduces_attention_ratios(tiny_model):
    _, cfg, params = tiny_model
    n, gap = 3, 5
    zq, zk, attn = probe_qk(params, cfg, [5, 9, 17, 33, 8, 12], n, 7, gap)
    L, H, F = cfg.num_layers, cfg.num_heads, cfg.head_dim // 2
    assert zq.shape == (L, H, F) and zk.shape == (L, H, n, F) and attn.shape == (L, H, n)
    s = logit(zq, zk, np.asarray(cfg.inv_freq(), np.float64), np.full(n, float(gap)))
    # softmax over the keys: log attention ratios between members are logit differences
    np.testing.assert_allclose(np.log(attn[..., 1:] / attn[..., :1]), s[..., 1:] - s[..., :1], atol=1e-4)
