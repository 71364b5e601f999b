"""Bad inputs and damaged checkpoints give clear errors; a sharded HF folder converts faithfully."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conversion.common import CheckpointError
from tempo_jax.config import ModelConfig, UnsupportedConfigError, config_from_hf
from tempo_jax.model import forward, init_cache, init_params
from tinymodel import seeded_weights

CFG = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8)
B, T, K = 1, 4, 6


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0), scale=0.15)


def good_inputs():
    tokens = jnp.arange(B * T, dtype=jnp.int32).reshape(B, T)
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.float32), (B, T))
    slots = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    mask = jnp.broadcast_to(jnp.arange(K)[None, :] <= jnp.arange(T)[:, None], (B, T, K))
    return dict(tokens=tokens, positions=positions, slots=slots, mask=mask, cache=init_cache(CFG, B, K))


def call(params, **override):
    kw = {**good_inputs(), **override}
    return forward(params, CFG, **kw)


# ---------------------------------------------------------------- forward inputs

def test_positions_shape_mismatch(params):
    with pytest.raises(ValueError, match=r"positions must have the shape of tokens"):
        call(params, positions=jnp.zeros((B, T + 1), jnp.float32))


def test_tokens_not_2d(params):
    with pytest.raises(ValueError, match=r"tokens must be \[B,T\]"):
        call(params, tokens=jnp.arange(T, dtype=jnp.int32))


def test_slots_shape_mismatch(params):
    with pytest.raises(ValueError, match=r"slots must have the shape of tokens"):
        call(params, slots=jnp.zeros((B, T - 1), jnp.int32))


def test_slot_beyond_capacity(params):
    with pytest.raises(ValueError, match=r"slots must lie in \[0, 6\)"):
        call(params, slots=jnp.array([[0, 1, 2, K]], jnp.int32))
    with pytest.raises(ValueError, match=r"slots must lie in"):
        call(params, slots=jnp.array([[0, 1, -1, 3]], jnp.int32))


@pytest.mark.parametrize("bad", [97, -1, 1000])
def test_token_out_of_vocab(params, bad):
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 97\)"):
        call(params, tokens=jnp.array([[0, 1, bad, 3]], jnp.int32))


def test_float_tokens_refused(params):
    with pytest.raises(TypeError, match=r"tokens and slots must be integer"):
        call(params, tokens=jnp.zeros((B, T), jnp.float32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int32])
def test_non_bool_mask(params, dtype):
    with pytest.raises(TypeError, match=r"mask must be boolean"):
        call(params, mask=good_inputs()["mask"].astype(dtype))


@pytest.mark.parametrize("shape,msg", [
    ((B, T, K + 1), r"does not broadcast .*axis K"),
    ((B, T - 1, K), r"does not broadcast .*axis T"),
    ((2, T, K), r"does not broadcast .*axis B"),
    ((B, 3, 1, T, K), r"does not broadcast .*axis L"),
    ((B, 1, 3, T, K), r"does not broadcast .*axis H"),
    ((T, K), r"mask must be \[B,T,K\] or \[B,L,H,T,K\]"),
    ((B, 1, T, K), r"mask must be \[B,T,K\] or \[B,L,H,T,K\]"),
])
def test_mask_of_wrong_shape(params, shape, msg):
    with pytest.raises(ValueError, match=msg):
        call(params, mask=jnp.ones(shape, bool))


def test_cache_batch_mismatch(params):
    with pytest.raises(ValueError, match=r"cache holds batch 2 but tokens have batch 1"):
        call(params, cache=init_cache(CFG, 2, K))


def test_integer_positions_equal_float_positions(params):
    ints = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    a, _, _ = call(params, positions=ints)
    b, _, _ = call(params, positions=ints.astype(jnp.float32))
    chex.assert_trees_all_equal(a, b)
    c, _, _ = call(params, positions=np.arange(T)[None])  # plain NumPy int64 too
    chex.assert_trees_all_equal(a, c)


# ---------------------------------------------------------------- configs

def _llama_dict(**kw):
    d = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 97, "hidden_size": 32,
         "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
    d.update(kw)
    return d


def test_unknown_architecture():
    with pytest.raises(UnsupportedConfigError, match=r"architectures=\['GPT2LMHeadModel'\] is not supported"):
        config_from_hf(_llama_dict(architectures=["GPT2LMHeadModel"], model_type="gpt2"))
    with pytest.raises(UnsupportedConfigError, match=r"model_type='gpt2' is not supported"):
        config_from_hf(_llama_dict(architectures=None, model_type="gpt2"))


@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters"])
def test_unknown_rope_type(key):
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    with pytest.raises(UnsupportedConfigError, match=r"rope_type='yarn' is not implemented"):
        config_from_hf(_llama_dict(**{key: rope}))


def test_mistral_sliding_window_refused():
    d = _llama_dict(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=4096)
    with pytest.raises(UnsupportedConfigError, match=r"sliding_window=4096 is not implemented"):
        config_from_hf(d)
    assert config_from_hf({**d, "sliding_window": None}).num_layers == 2


def test_qwen2_sliding_window_refused():
    d = _llama_dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=True,
                    sliding_window=4096)
    with pytest.raises(UnsupportedConfigError, match=r"use_sliding_window=true"):
        config_from_hf(d)


def test_other_unsupported_fields():
    with pytest.raises(UnsupportedConfigError, match=r"hidden_act='gelu'"):
        config_from_hf(_llama_dict(hidden_act="gelu"))
    with pytest.raises(UnsupportedConfigError, match=r"mlp_bias"):
        config_from_hf(_llama_dict(mlp_bias=True))


# ---------------------------------------------------------------- checkpoint files

def _hf_model(seed=0):
    pytest.importorskip("torch", reason="the HF reference needs torch (pip install -e .[test])")
    transformers = pytest.importorskip("transformers", reason="the HF reference needs transformers")
    hc = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                                  tie_word_embeddings=False, attn_implementation="eager")
    hc.architectures = ["LlamaForCausalLM"]
    model = transformers.LlamaForCausalLM(hc).eval()
    seeded_weights(model, seed)
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return model, hc, state


def _write_folder(folder, hc, state, shards=1):
    """A HF model folder: config.json + safetensors (``shards`` files with an index if > 1)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hc.to_dict()))
    names = sorted(state)
    if shards == 1:
        save_file(state, str(folder / "model.safetensors"))
        return [folder / "model.safetensors"]
    files, weight_map = [], {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[i::shards]}
        save_file(part, str(folder / fname))
        weight_map.update({n: fname for n in part})
        files.append(folder / fname)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return files


@pytest.mark.parametrize("keep", [0.5, 0.99, 20])
def test_truncated_safetensors(tmp_path, keep):
    from conversion.hf import load_hf_folder

    _, hc, state = _hf_model()
    (path,) = _write_folder(tmp_path / "m", hc, state)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(CheckpointError, match=r"truncated or corrupted"):
        load_hf_folder(tmp_path / "m")


def test_missing_shard(tmp_path):
    from conversion.hf import load_hf_folder

    _, hc, state = _hf_model()
    files = _write_folder(tmp_path / "m", hc, state, shards=2)
    files[1].unlink()
    with pytest.raises(CheckpointError, match=r"named in the index is missing"):
        load_hf_folder(tmp_path / "m")


def test_pickled_folder_refused(tmp_path):
    from conversion.hf import load_hf_folder
    from conversion.convert import read_checkpoint

    _, hc, _ = _hf_model()
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hc.to_dict()))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match=r"pickle.*safetensors"):
        load_hf_folder(folder)
    with pytest.raises(CheckpointError, match=r"pickle.*safetensors"):
        read_checkpoint(folder / "pytorch_model.bin")


def test_converted_folder_of_unknown_format_version(tmp_path):
    from conversion.store import load_converted, save_converted

    out = save_converted(tmp_path / "c", CFG, jax.tree_util.tree_map(np.asarray, init_params(
        CFG, jax.random.PRNGKey(1))))
    d = json.loads((out / "config.json").read_text())
    d["format_version"] = 999
    (out / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"unknown format version"):
        load_converted(out)
    with pytest.raises(CheckpointError, match=r"is not a complete converted tempo-jax model"):
        load_converted(tmp_path)


def test_missing_config(tmp_path):
    from conversion.hf import load_hf_folder

    with pytest.raises(CheckpointError, match=r"has no config.json"):
        load_hf_folder(tmp_path)


def _write_small_gguf(path, E=16, F=24, V=10, H=2, G=1, D=8, n_layers=1):
    """A random Llama GGUF (float32 tensors, a byte-free toy vocabulary); small by default."""
    gguf = pytest.importorskip("gguf", reason="GGUF support needs the gguf package")
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    for fn, v in [(w.add_block_count, n_layers), (w.add_context_length, 64), (w.add_embedding_length, E),
                  (w.add_feed_forward_length, F), (w.add_head_count, H), (w.add_head_count_kv, G),
                  (w.add_rope_dimension_count, D)]:
        fn(v)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([chr(97 + i) for i in range(V)] if V <= 26 else [f"t{i}" for i in range(V)])
    w.add_token_merges([])
    w.add_eos_token_id(0)
    shapes = {"token_embd.weight": (V, E), "output_norm.weight": (E,)}
    for i in range(n_layers):
        shapes |= {f"blk.{i}.attn_norm.weight": (E,), f"blk.{i}.ffn_norm.weight": (E,),
                   f"blk.{i}.attn_q.weight": (H * D, E), f"blk.{i}.attn_k.weight": (G * D, E),
                   f"blk.{i}.attn_v.weight": (G * D, E), f"blk.{i}.attn_output.weight": (E, H * D),
                   f"blk.{i}.ffn_gate.weight": (F, E), f"blk.{i}.ffn_up.weight": (F, E),
                   f"blk.{i}.ffn_down.weight": (E, F)}
    for name, shape in shapes.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_small_gguf_loads(tmp_path):
    """The file the corruption tests damage is itself readable."""
    from conversion.gguf_file import load_gguf

    _write_small_gguf(tmp_path / "ok.gguf")
    cfg, params = load_gguf(tmp_path / "ok.gguf")
    assert (cfg.num_layers, cfg.hidden_size, cfg.vocab_size, cfg.tie_embeddings) == (1, 16, 10, True)


@pytest.mark.parametrize("damage", ["garbage", "header_only", "cut_in_metadata", "cut_in_tensors"])
def test_corrupted_gguf(tmp_path, damage):
    from conversion.gguf_file import load_gguf

    good = tmp_path / "ok.gguf"
    _write_small_gguf(good)
    data = good.read_bytes()
    bad = tmp_path / "bad.gguf"
    if damage == "garbage":
        bad.write_bytes(np.random.default_rng(1).bytes(4096))
    elif damage == "header_only":
        bad.write_bytes(data[:12])
    elif damage == "cut_in_metadata":
        bad.write_bytes(data[:200])
    else:
        bad.write_bytes(data[: len(data) - 700])
    with pytest.raises(CheckpointError, match=r"truncated or corrupted"):
        load_gguf(bad)


def test_missing_gguf(tmp_path):
    from conversion.gguf_file import load_gguf

    with pytest.raises(CheckpointError, match=r"does not exist"):
        load_gguf(tmp_path / "nothing.gguf")


# ---------------------------------------------------------------- round trip

def test_sharded_folder_convert_round_trip(tmp_path):
    """HF-layout sharded safetensors -> convert -> load_converted gives HF's logits."""
    import torch

    from conversion.convert import convert
    from conversion.store import load_converted

    model, hc, state = _hf_model(seed=3)
    files = _write_folder(tmp_path / "hf", hc, state, shards=2)
    assert len(files) == 2 and (tmp_path / "hf" / "model.safetensors.index.json").exists()
    out = convert(tmp_path / "hf", tmp_path / "converted")
    cfg, params = load_converted(out)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.tie_embeddings) == (4, 2, 8, False)
    assert not (tmp_path / "converted.partial").exists()

    t = 9
    tokens = np.random.default_rng(0).integers(0, 97, (2, t))
    with torch.no_grad():
        ref = model(input_ids=torch.as_tensor(tokens), use_cache=False).logits.numpy()
    pos = np.broadcast_to(np.arange(t), (2, t))
    mask = np.broadcast_to(np.tril(np.ones((t, t), bool)), (2, t, t))
    logits, _, _ = forward(params, cfg, jnp.asarray(tokens, jnp.int32), jnp.asarray(pos, jnp.float32),
                           jnp.asarray(pos, jnp.int32), jnp.asarray(mask), init_cache(cfg, 2, t))
    chex.assert_trees_all_close(np.asarray(logits), ref, atol=1e-4, rtol=0)
