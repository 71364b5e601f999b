"""Chunked prefill equals one unchunked forward (logits, cache, reduced taps); refusals."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tempo_jax import model as M
from tempo_jax.config import ModelConfig

CFG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, tie_embeddings=True, max_position_embeddings=64)


@pytest.fixture(scope="module")
def params():
    return M.init_params(CFG, jax.random.key(1), scale=0.3)


def _unchunked(params, tokens, k):
    b, t = tokens.shape
    ar = jnp.broadcast_to(jnp.arange(t), (b, t))
    return M.forward(params, CFG, tokens, ar, ar, M.causal_mask(b, t, k),
                     M.init_cache(CFG, b, k), M.TapsSpec(attn=True, resid=True, attn_received=True))


@pytest.mark.parametrize("t,chunk", [(13, 4), (13, 32)])
@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_chunked_prefill_matches_one_forward(params, t, chunk):
    k = 16
    tokens = jax.random.randint(jax.random.key(t), (2, t), 0, CFG.vocab_size)
    last = jnp.array([t - 1, t // 2])
    logits, cache, taps = _unchunked(params, tokens, k)
    got, gcache, gtaps = M.prefill(params, CFG, tokens, M.init_cache(CFG, 2, k), last, chunk=chunk,
                                   taps=M.TapsSpec(resid=True, attn_received=True), attn_last=True)
    rows = np.arange(2)
    np.testing.assert_allclose(got, np.asarray(logits)[rows, np.asarray(last)], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(gcache.k, cache.k, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(gcache.v, cache.v, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(gtaps["resid"], taps["resid"], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(gtaps["attn_received"], taps["attn_received"], atol=2e-5)
    want_last = np.asarray(taps["attn"])[:, rows, :, np.asarray(last)]  # [B,L,H,K]
    np.testing.assert_allclose(gtaps["attn_last"], np.moveaxis(want_last, 0, 1), atol=1e-6)
    # slots beyond the prompt are never written (no padding queries)
    assert not np.asarray(gcache.k)[:, :, t:].any()


def test_prefill_refusals(params):
    tokens = jnp.zeros((1, 8), jnp.int32)
    with pytest.raises(ValueError, match="attn_last"):
        M.prefill(params, CFG, tokens, M.init_cache(CFG, 1, 8), 7, taps=M.TapsSpec(attn=True))
    with pytest.raises(ValueError, match="does not fit"):
        M.prefill(params, CFG, tokens, M.init_cache(CFG, 1, 4), 3)
    with pytest.raises(ValueError, match="chunk"):
        M.prefill(params, CFG, tokens, M.init_cache(CFG, 1, 8), 7, chunk=0)


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_attend_prefix_equals_full_capacity(params):
    """forward(attend=A) reads only slots < A and gives the full-capacity results (taps padded)."""
    k, a = 24, 10
    cache = M.init_cache(CFG, 1, k)
    cache = cache.replace(k=jax.random.normal(jax.random.key(5), cache.k.shape),
                          v=jax.random.normal(jax.random.key(6), cache.v.shape))
    tok = jnp.array([[3, 4]])
    pos, slots = jnp.array([[7.0, 7.0]]), jnp.array([[8, 9]])
    mask = jnp.broadcast_to(jnp.arange(k) < 8, (1, 2, k)) | (jnp.arange(k) == slots[0][:, None])[None]
    taps = M.TapsSpec(attn=True, attn_received=True)
    full = M.forward(params, CFG, tok, pos, slots, mask, cache, taps)
    pre = M.forward(params, CFG, tok, pos, slots, mask, cache, taps, attend=a)
    np.testing.assert_allclose(pre[0], full[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(pre[1].k, full[1].k, atol=1e-5, rtol=1e-5)
    for name in ("attn", "attn_received"):
        np.testing.assert_allclose(pre[2][name], full[2][name], atol=1e-6)
    with pytest.raises(ValueError, match="attend"):
        M.forward(params, CFG, tok, pos, slots, mask, cache, attend=k + 1)


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_host_driver_views_do_not_change_the_trace(params, monkeypatch):
    """The host driver's bucketed attended prefix (core.view_for) leaves every trace array as with
    the whole capacity attended (TEMPO with pruning, capacity > the smallest view)."""
    from tempo_jax.engine import GenerationConfig, core, generate

    # a wide prompt bucket makes K > VIEW_MIN in few steps (K = 256 + 1 + 8 x 8)
    g = GenerationConfig(max_steps=8, max_width=8, threshold=0.05, prune=True, prune_window=1,
                         min_steps=8, prompt_bucket=256)
    ids = [1, 5, 9, 11, 3]
    assert g.capacity_for(len(ids)) > core.VIEW_MIN
    got = generate(params, CFG, ids, g).arrays
    monkeypatch.setattr(core, "view_for", lambda needed, capacity: capacity)
    want = generate(params, CFG, ids, g).arrays
    assert got["set_n"].max() > 1  # sets with several members were fed
    for name, w in want.items():
        if np.issubdtype(np.asarray(w).dtype, np.floating):
            np.testing.assert_allclose(got[name], w, atol=1e-5, equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], w, err_msg=name)


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_bfloat16_params_and_cache_track_float32(params):
    """The engine runs on bfloat16 parameters with a bfloat16 cache; its logits stay float32 and
    close to the float32 model's (top-1 agreement, bounded logit difference)."""
    from tempo_jax.engine import GenerationConfig, core, generate

    p16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
    tokens = jax.random.randint(jax.random.key(7), (1, 20), 0, CFG.vocab_size)
    ar = jnp.arange(20)[None]
    out = {}
    for name, p in (("f32", params), ("bf16", p16)):
        logits, cache, _ = M.forward(p, CFG, tokens, ar, ar, M.causal_mask(1, 20, 20),
                                     M.init_cache(CFG, 1, 20, p["embed"].dtype))
        assert logits.dtype == jnp.float32 and cache.k.dtype == p["embed"].dtype
        out[name] = np.asarray(logits[0])
    assert (out["f32"].argmax(-1) == out["bf16"].argmax(-1)).mean() >= 0.9
    assert np.abs(out["f32"] - out["bf16"]).max() < 0.15 * np.abs(out["f32"]).max()
    g = GenerationConfig(max_steps=4, max_width=4, threshold=0.1)
    st = core.init_state(p16, CFG, g.static(), g.inputs(CFG), jnp.asarray([1, 2, 3, 0]), jnp.int32(3), 40)
    assert st.cache.k.dtype == jnp.bfloat16
    tr = generate(p16, CFG, [1, 2, 3], g)
    assert tr.n_steps == 4 and np.isfinite(tr.arrays["probs"]).all()


def test_cli_dtype_option():
    from tempo_jax.cli import build_parser

    p = build_parser()
    assert p.parse_args(["generate", "--prompt", "x", "--dtype", "bfloat16"]).dtype == "bfloat16"
    assert p.parse_args(["forward", "--prompt", "x"]).dtype == "float32"
    with pytest.raises(SystemExit):
        p.parse_args(["forward", "--prompt", "x", "--dtype", "float16"])


def test_engine_prefill_chunks_long_prompts_and_refuses_beyond_context(params, monkeypatch):
    """Beyond PREFILL_CHUNK the engine's prompt forward runs in chunks with the same result; a
    prompt that does not fit the context is refused before any compute."""
    from tempo_jax.engine import GenerationConfig, core, generate

    prompt = jax.random.randint(jax.random.key(9), (32,), 0, CFG.vocab_size)
    plen = jnp.int32(27)
    want_logits, want_cache = core.prefill(params, CFG, prompt, plen, 40)
    monkeypatch.setattr(core, "PREFILL_CHUNK", 8)
    got_logits, got_cache = core.prefill(params, CFG, prompt, plen, 40)
    np.testing.assert_allclose(got_logits, want_logits, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(got_cache.k, want_cache.k, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="context of 64"):
        generate(params, CFG, list(range(1, 50)), GenerationConfig(max_steps=16, method="greedy"))
