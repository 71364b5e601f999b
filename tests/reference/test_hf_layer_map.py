"""Both directions of the Hugging Face layer map in conversion/hf.py.

Our params -> HF state dict (``to_hf``) -> our params is exact, and so is HF -> ours -> HF; the config
map inverts ``config_from_hf``; and the HF model the benchmarks build from ``to_hf``
(benchmarks/hf_reference.py) gives the logits of our forward on tiny random models (torch, CPU,
float32, eager attention), covering GQA / MHA / MQA, tied and untied embeddings, RoPE scalings,
explicit head_dim, q/k/v biases (Qwen2) and Llama's attention_bias.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conversion.common import CheckpointError
from conversion.hf import hf_config, params_from_state, to_hf
from tempo_jax.config import ModelConfig, RopeScaling, UnsupportedConfigError, config_from_hf
from tempo_jax.model import causal_mask, forward, init_cache, init_params
from repo import ROOT as REPO_ROOT  # noqa: E402

BASE = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=16, max_position_embeddings=64, bos_token_id=1,
                   eos_token_ids=(2,), name="tiny-map")
CONFIGS = {
    "gqa-untied": BASE,
    "mha-tied-llama3-hd24": dataclasses.replace(
        BASE, num_kv_heads=4, head_dim=24, tie_embeddings=True, eos_token_ids=(),
        rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 16)),
    "mqa-qkv-bias-linear": dataclasses.replace(
        BASE, num_kv_heads=1, qkv_bias=True, rope_theta=1000.0, rms_norm_eps=1e-6,
        rope_scaling=RopeScaling("linear", 2.0)),
    "gqa-attention-bias": dataclasses.replace(BASE, qkv_bias=True, o_bias=True, eos_token_ids=(2, 5)),
    "gemma3-window": dataclasses.replace(
        BASE, num_kv_heads=1, tie_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6, family="gemma3",
        embed_scale=8.0, norm_offset=1.0, qk_norm=True, sandwich_norms=True, query_scale=256 ** -0.5,
        mlp_act="gelu_tanh", sliding_window=4, layer_types=("sliding", "full"), local_rope_theta=1e4),
}
IDS = list(CONFIGS)


def _params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Random NumPy params, large enough that attention is far from uniform and logits are O(1)."""
    return jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.key(seed), scale=0.15))


def _hf_reference_module():
    path = REPO_ROOT / "benchmarks" / "hf_reference.py"
    spec = importlib.util.spec_from_file_location("hf_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", IDS)
def test_config_round_trip(name):
    cfg = CONFIGS[name]
    assert config_from_hf(hf_config(cfg), name=cfg.name) == cfg


def test_config_without_hf_architecture_refused():
    with pytest.raises(UnsupportedConfigError, match=r"output-projection bias"):
        hf_config(dataclasses.replace(BASE, o_bias=True))


@pytest.mark.parametrize("name", IDS)
def test_params_to_hf_and_back_exact(name):
    cfg = CONFIGS[name]
    params = _params(cfg)
    sd = to_hf(cfg, params)
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    assert ("lm_head.weight" in sd) == (not cfg.tie_embeddings)
    assert ("model.layers.1.self_attn.q_proj.bias" in sd) == cfg.qkv_bias
    assert ("model.layers.1.self_attn.o_proj.bias" in sd) == cfg.o_bias
    back = params_from_state(cfg, sd.__getitem__)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                            jax.tree_util.tree_leaves(back)):
        assert a.dtype == b.dtype and np.array_equal(a, b), jax.tree_util.keystr(path)


def test_hf_state_to_params_and_back_exact():
    """Ours from a real HF model's state dict, written back: every HF tensor, bit for bit."""
    pytest.importorskip("torch", reason="the HF reference needs torch (pip install -e .[test])")
    pytest.importorskip("transformers", reason="the HF reference needs transformers")
    from tinymodel import tiny

    hf, cfg, params = tiny(0)
    want = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    got = to_hf(cfg, params)
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape and np.array_equal(got[k], want[k]), k


def test_to_hf_refuses_leaves_the_config_lacks():
    cfg = CONFIGS["mha-tied-llama3-hd24"]
    params = _params(cfg)
    params["lm_head"] = params["embed"].T  # a tied model has no lm_head leaf
    with pytest.raises(CheckpointError, match=r"do not fit the config"):
        to_hf(cfg, params)


def test_checkpoint_tensor_of_wrong_shape_refused():
    sd = to_hf(BASE, _params(BASE))
    sd["model.layers.1.self_attn.k_proj.weight"] = sd["model.layers.1.self_attn.q_proj.weight"]
    with pytest.raises(CheckpointError, match=r"k_proj.weight has shape \(64, 64\), the config implies "
                                              r"\(32, 64\)"):
        params_from_state(BASE, sd.__getitem__)


@pytest.mark.parametrize("name", IDS)
def test_hf_model_from_to_hf_gives_our_logits(name):
    torch = pytest.importorskip("torch", reason="the HF reference needs torch (pip install -e .[test])")
    pytest.importorskip("transformers", reason="the HF reference needs transformers")
    from tinymodel import full_logits

    cfg = CONFIGS[name]
    params = _params(cfg, seed=len(name))
    model = _hf_reference_module().hf_model(cfg, params)
    assert config_from_hf(model.config.to_dict(), name=cfg.name) == cfg
    assert all(p.dtype == torch.float32 for p in model.parameters())

    t = 12
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, t)
    ref = full_logits(model, ids)
    pos = np.arange(t)[None]
    logits, _, _ = forward(jax.tree_util.tree_map(jnp.asarray, params), cfg,
                           jnp.asarray(ids[None], jnp.int32), jnp.asarray(pos, jnp.float32),
                           jnp.asarray(pos, jnp.int32), causal_mask(1, t, t), init_cache(cfg, 1, t),
                           key_pos=jnp.asarray(pos, jnp.float32) if cfg.has_window else None)
    assert ref.shape == (t, cfg.vocab_size) and ref.std() > 0.3
    np.testing.assert_allclose(np.asarray(logits[0]), ref, atol=1e-4, rtol=0)
