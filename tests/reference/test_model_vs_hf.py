"""Equivalence of our forward with Hugging Face transformers (torch, CPU, float32, eager attention).

Tiny random models cover every value of each axis at least once: head layout (MHA / GQA / MQA),
RoPE (default / linear / llama3 with a small original context so the scaling changes frequencies),
explicit vs implicit head_dim, tied vs untied embeddings; plus a Qwen2 model (q/k/v biases),
repeated positions with a custom 4-D mask, and a batch of two different sequences.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the HF reference needs torch (pip install -e .[test])")
transformers = pytest.importorskip("transformers", reason="the HF reference needs transformers")

from conversion.hf import params_from_state  # noqa: E402
from tempo_jax.config import config_from_hf  # noqa: E402
from tempo_jax.model import TapsSpec, forward, init_cache  # noqa: E402

VOCAB, WIDTH, LAYERS, MLP = 97, 64, 2, 96
HEAD_LAYOUTS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}
ROPES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
}

# (heads, rope, head_dim (None = implicit hidden/heads), tied): every value of every axis appears.
CASES = [
    ("mha", "default", None, False),
    ("gqa", "linear", 24, True),
    ("mqa", "llama3", None, False),
    ("mha", "llama3", 24, True),
    ("gqa", "default", 24, False),
    ("mqa", "linear", None, True),
    ("gqa", "llama3", None, True),
    ("mha", "linear", 24, False),
    ("mqa", "default", 24, True),
]

_fwd = jax.jit(forward, static_argnames=("cfg", "taps"))


def _randomise(model: "torch.nn.Module", seed: int) -> None:
    """Weights large enough that attention is far from uniform and logits are O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.15 * noise)


def make_llama(heads="gqa", rope=None, head_dim=None, tied=False, seed=0, **extra):
    h, g = HEAD_LAYOUTS[heads]
    kw = dict(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS, intermediate_size=MLP,
              num_attention_heads=h, num_key_value_heads=g, tie_word_embeddings=tied,
              max_position_embeddings=64, rms_norm_eps=1e-5, attn_implementation="eager", **extra)
    if head_dim is not None:
        kw["head_dim"] = head_dim
    if rope is not None:
        kw["rope_scaling"] = dict(rope)
    hc = transformers.LlamaConfig(**kw)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(hc).eval()
    _randomise(model, seed)
    hf_dict = hc.to_dict()
    if head_dim is None:
        hf_dict.pop("head_dim", None)  # exercise the hidden/heads fallback of config_from_hf
    return model, hf_dict


def ours_from(model, hf_dict):
    cfg = config_from_hf(hf_dict)
    sd = model.state_dict()
    params = params_from_state(cfg, lambda n: sd[n].detach().numpy())
    return cfg, jax.tree_util.tree_map(jnp.asarray, params)


def causal_np(b, t, k):
    """Plain causal mask [B,T,K] for queries at slots 0..T-1 (slots >= T never visible)."""
    return np.broadcast_to(np.arange(k)[None, :] <= np.arange(t)[:, None], (b, t, k)).copy()


def run_ours(cfg, params, tokens, positions, mask, extra_slots=3):
    b, t = tokens.shape
    k = t + extra_slots
    if mask.shape[-1] != k:
        full = np.zeros((b, t, k), bool)
        full[..., : mask.shape[-1]] = mask
        mask = full
    cache = init_cache(cfg, b, k)
    slots = np.broadcast_to(np.arange(t), (b, t))
    logits, _, taps = _fwd(params, cfg, jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.float32),
                           jnp.asarray(slots, jnp.int32), jnp.asarray(mask), cache, taps=TapsSpec(attn=True))
    return np.asarray(logits), np.asarray(taps["attn"])


def run_hf(model, tokens, **kw):
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(tokens, dtype=torch.long), output_attentions=True,
                    use_cache=False, **kw)
    return out.logits.numpy(), np.stack([a.numpy() for a in out.attentions])  # [L,B,H,T,T]


def assert_attn_matches(ours, ref, atol=1e-5):
    t = ref.shape[-1]
    chex.assert_shape(ours[..., :t], ref.shape)
    chex.assert_trees_all_close(ours[..., :t], ref, atol=atol, rtol=0)
    assert np.all(ours[..., t:] == 0.0), "attention to empty cache slots must be exactly 0"


@pytest.mark.parametrize("heads,rope,head_dim,tied", CASES,
                         ids=[f"{h}-{r}-hd{d or 'auto'}-{'tied' if t else 'untied'}" for h, r, d, t in CASES])
def test_llama_matches_hf(heads, rope, head_dim, tied):
    model, hf_dict = make_llama(heads, ROPES[rope], head_dim, tied, seed=len(heads) + len(rope))
    cfg, params = ours_from(model, hf_dict)
    h, g = HEAD_LAYOUTS[heads]
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.tie_embeddings) == (h, g, tied)
    assert cfg.head_dim == (head_dim or WIDTH // h)
    assert "lm_head" not in params if tied else "lm_head" in params
    if rope != "default":  # the scaling must really change the frequencies HF uses
        hf_inv = model.model.rotary_emb.inv_freq.numpy()
        base = 1.0 / 10000.0 ** (np.arange(0, cfg.head_dim, 2) / cfg.head_dim)
        assert not np.allclose(hf_inv, base, rtol=1e-3)
        np.testing.assert_allclose(cfg.inv_freq(), hf_inv, rtol=1e-6)

    t = 12
    tokens = np.random.default_rng(1).integers(0, VOCAB, (1, t))
    ref_logits, ref_attn = run_hf(model, tokens)
    logits, attn = run_ours(cfg, params, tokens, np.arange(t)[None], causal_np(1, t, t))
    chex.assert_shape(logits, (1, t, VOCAB))
    chex.assert_trees_all_close(logits, ref_logits, atol=1e-4, rtol=0)
    chex.assert_shape(attn, (LAYERS, 1, h, t, t + 3))
    assert_attn_matches(attn, ref_attn)


def test_qwen2_with_qkv_bias_matches_hf():
    hc = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS,
                                  intermediate_size=MLP, num_attention_heads=4, num_key_value_heads=2,
                                  use_sliding_window=False, max_position_embeddings=64,
                                  rms_norm_eps=1e-6, rope_theta=1000.0, attn_implementation="eager")
    model = transformers.Qwen2ForCausalLM(hc).eval()
    _randomise(model, 7)
    sd = model.state_dict()
    assert "model.layers.0.self_attn.q_proj.bias" in sd
    assert "model.layers.0.self_attn.o_proj.bias" not in sd
    cfg, params = ours_from(model, hc.to_dict())
    assert cfg.qkv_bias and not cfg.o_bias
    t = 10
    tokens = np.random.default_rng(2).integers(0, VOCAB, (1, t))
    ref_logits, ref_attn = run_hf(model, tokens)
    logits, attn = run_ours(cfg, params, tokens, np.arange(t)[None], causal_np(1, t, t))
    chex.assert_trees_all_close(logits, ref_logits, atol=1e-4, rtol=0)
    assert_attn_matches(attn, ref_attn)


def test_llama_attention_bias_matches_hf():
    """Llama with attention_bias=True has biases on q, k, v and o."""
    model, hf_dict = make_llama("gqa", None, None, False, seed=5, attention_bias=True)
    assert "model.layers.0.self_attn.o_proj.bias" in model.state_dict()
    cfg, params = ours_from(model, hf_dict)
    assert cfg.qkv_bias and cfg.o_bias
    t = 8
    tokens = np.random.default_rng(4).integers(0, VOCAB, (1, t))
    ref_logits, ref_attn = run_hf(model, tokens)
    logits, attn = run_ours(cfg, params, tokens, np.arange(t)[None], causal_np(1, t, t))
    chex.assert_trees_all_close(logits, ref_logits, atol=1e-4, rtol=0)
    assert_attn_matches(attn, ref_attn)


def test_repeated_positions_with_custom_mask_match_hf():
    """Three tokens share position 4 and cannot see each other; the next token sees everything."""
    model, hf_dict = make_llama("gqa", ROPES["llama3"], None, False, seed=3)
    cfg, params = ours_from(model, hf_dict)
    positions = np.array([[0, 1, 2, 3, 4, 4, 4, 5]])
    t = positions.shape[1]
    allowed = np.zeros((t, t), bool)
    for q in range(t):
        allowed[q, : min(q, 3) + 1] = True  # the prompt 0..3 (causally) and ...
        allowed[q, q] = True  # ... itself
    allowed[7, :] = True
    expected = np.array([[1, 0, 0, 0, 0, 0, 0, 0],
                         [1, 1, 0, 0, 0, 0, 0, 0],
                         [1, 1, 1, 0, 0, 0, 0, 0],
                         [1, 1, 1, 1, 0, 0, 0, 0],
                         [1, 1, 1, 1, 1, 0, 0, 0],
                         [1, 1, 1, 1, 0, 1, 0, 0],
                         [1, 1, 1, 1, 0, 0, 1, 0],
                         [1, 1, 1, 1, 1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(allowed, expected)
    tokens = np.random.default_rng(3).integers(0, VOCAB, (1, t))

    additive = np.where(allowed, 0.0, np.finfo(np.float32).min).astype(np.float32)[None, None]
    ref_logits, ref_attn = run_hf(model, tokens, attention_mask=torch.from_numpy(additive),
                                  position_ids=torch.as_tensor(positions, dtype=torch.long))
    # HF really used our mask: zeros exactly where masked, non-zero where allowed.
    assert np.all(ref_attn[:, :, :, ~allowed] == 0.0)
    assert np.all(ref_attn[:, :, :, allowed] > 0.0)
    plain_logits, _ = run_hf(model, tokens)  # default causal, positions 0..7: must differ
    assert np.abs(plain_logits[0, 5:] - ref_logits[0, 5:]).max() > 1e-2

    logits, attn = run_ours(cfg, params, tokens, positions, allowed[None])
    chex.assert_trees_all_close(logits, ref_logits, atol=1e-4, rtol=0)
    assert_attn_matches(attn, ref_attn)


def test_batch_of_two_different_sequences_matches_hf():
    model, hf_dict = make_llama("gqa", ROPES["linear"], 24, False, seed=11)
    cfg, params = ours_from(model, hf_dict)
    t = 9
    tokens = np.random.default_rng(5).integers(0, VOCAB, (2, t))
    assert not np.array_equal(tokens[0], tokens[1])
    ref_logits, ref_attn = run_hf(model, tokens)
    logits, attn = run_ours(cfg, params, tokens, np.broadcast_to(np.arange(t), (2, t)), causal_np(2, t, t))
    chex.assert_shape(logits, (2, t, VOCAB))
    chex.assert_trees_all_close(logits, ref_logits, atol=1e-4, rtol=0)
    assert_attn_matches(attn, ref_attn)
    assert np.abs(logits[0] - logits[1]).max() > 1e-2
