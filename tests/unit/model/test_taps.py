"""Named taps of model.forward: q/k/v against Hugging Face's projections (hooks, float32), attention
and MLP outputs against HF's o_proj and mlp outputs, and the invariants that tie taps together
(resid = previous resid + attn_out + mlp_out; z @ W_O = attn_out; q, k = RoPE of q_pre, k_pre;
the cache holds k and v); the per-layer functions give what forward computes."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from tempo_jax.model import (TapsSpec, attention_inputs, causal_mask, forward, init_cache, layer_params,
                             layer_weights, mlp, prefill, rope, unstack_layers)
from tinymodel import tiny

IDS = [5, 9, 13, 17, 21, 8, 3]
ALL = TapsSpec.of(*[f.name for f in dataclasses.fields(TapsSpec)])


def _run(params, cfg, taps=ALL):
    t = len(IDS)
    pos = jnp.arange(t)[None]
    return forward(params, cfg, jnp.asarray([IDS]), pos.astype(jnp.float32), pos, causal_mask(1, t, 16),
                   init_cache(cfg, 1, 16), taps)


def _hf_hooks(hf):
    import torch

    got = {}

    def hook(name):
        return lambda mod, inp, out: got.__setitem__(name, out.detach().numpy()[0])

    hs = []
    for l, layer in enumerate(hf.model.layers):
        for part, mod in (("q", layer.self_attn.q_proj), ("k", layer.self_attn.k_proj),
                          ("v", layer.self_attn.v_proj), ("o", layer.self_attn.o_proj), ("m", layer.mlp)):
            hs.append(mod.register_forward_hook(hook(f"{part}{l}")))
    with torch.no_grad():
        hf(torch.tensor([IDS]))
    for h in hs:
        h.remove()
    return got


def test_taps_equal_hugging_face_projections():
    hf, cfg, params = tiny(0)
    _, _, tp = _run(params, cfg)
    ref = _hf_hooks(hf)
    t, H, G, D = len(IDS), cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    # float32 in both libraries, summed in another order: entries reach |10| here, so compare to
    # 1e-5 of each array's largest entry
    close = lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    for l in range(cfg.num_layers):
        close(tp["q_pre"][l, 0], ref[f"q{l}"].reshape(t, H, D))
        close(tp["k_pre"][l, 0], ref[f"k{l}"].reshape(t, G, D))
        close(tp["v"][l, 0], ref[f"v{l}"].reshape(t, G, D))
        close(tp["attn_out"][l, 0], ref[f"o{l}"])
        close(tp["mlp_out"][l, 0], ref[f"m{l}"])


def test_taps_tie_together():
    _, cfg, params = tiny(0)
    _, cache, tp = _run(params, cfg)
    w = layer_weights(params, cfg)
    x0 = params["embed"][jnp.asarray([IDS])]
    prev = jnp.concatenate([x0[None], tp["resid"][:-1]])  # each layer's input
    np.testing.assert_allclose(tp["resid_mid"], prev + tp["attn_out"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tp["resid"], tp["resid_mid"] + tp["mlp_out"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jnp.einsum("lbthd,lhde->lbte", tp["z"], w.wo), tp["attn_out"], rtol=1e-5, atol=1e-6)
    inv = jnp.asarray(cfg.inv_freq())
    pos = jnp.arange(len(IDS), dtype=jnp.float32)[None]
    for l in range(cfg.num_layers):
        np.testing.assert_allclose(tp["q"][l], rope(tp["q_pre"][l], pos, inv), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(tp["k"][l], rope(tp["k_pre"][l], pos, inv), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(cache.k[l, 0, :len(IDS)], tp["k"][l, 0])
        np.testing.assert_array_equal(cache.v[l, 0, :len(IDS)], tp["v"][l, 0])
        # the per-layer functions recompute the taps from the layer's input
        for p in (params, unstack_layers(params)):
            qkv = attention_inputs(layer_params(p, l), cfg, prev[l], pos, l)
            np.testing.assert_allclose(qkv.q, tp["q"][l], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(qkv.k_pre, tp["k_pre"][l], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(mlp(layer_params(p, l), cfg, tp["resid_mid"][l]), tp["mlp_out"][l],
                                       rtol=1e-5, atol=1e-6)


def test_layer_weights_are_the_same_on_both_layouts():
    _, cfg, params = tiny(0)
    a, b = layer_weights(params, cfg), layer_weights(unstack_layers(params), cfg)
    for f in ("attn_norm", "wq", "wk", "wv", "wo"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert a.wq.shape == (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.head_dim)


def test_only_asked_taps_returned_and_bad_names_refused():
    _, cfg, params = tiny(0)
    _, _, tp = _run(params, cfg, TapsSpec.of("q", "mlp_out"))
    assert set(tp) == {"q", "mlp_out"}
    with pytest.raises(ValueError, match="unknown tap 'query'; known: q_pre"):
        TapsSpec.of("query")
    with pytest.raises(ValueError, match="not q; use forward"):
        prefill(params, cfg, jnp.asarray([IDS]), init_cache(cfg, 1, 16), jnp.int32(3), taps=TapsSpec.of("q"))
