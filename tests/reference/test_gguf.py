"""GGUF conversion on tiny llama.cpp-style files written here with ``gguf.GGUFWriter``.

The q/k rows are permuted exactly as llama.cpp's ``convert_hf_to_gguf.py`` does (``Model.permute``);
the loaded model must give the logits of the HF model built from the unpermuted weights.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="GGUF support needs the gguf package")
torch = pytest.importorskip("torch", reason="the HF reference needs torch (pip install -e .[test])")
transformers = pytest.importorskip("transformers", reason="the HF reference needs transformers")

from conversion.gguf_file import load_gguf, unpermute_rows  # noqa: E402
from tempo_jax.model import forward, init_cache  # noqa: E402
from tinymodel import seeded_weights  # noqa: E402


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (n_head is n_head_kv for k)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


# A byte-level BPE vocabulary: 3 control tokens, the 95 printable ASCII bytes (space is "Ġ"), 2 merges.
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BYTES = ["Ġ"] + [chr(c) for c in range(33, 127)]
MERGES = ["h e", "Ġ c"]
TOKENS = SPECIAL + BYTES + ["he", "Ġc"]
VOCAB = len(TOKENS)  # 100


def make_hf(heads, kv_heads, hidden, tied, seed):
    hc = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, intermediate_size=48,
        num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=tied,
        rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=128, attn_implementation="eager")
    model = transformers.LlamaForCausalLM(hc).eval()
    seeded_weights(model, seed)
    return model, hc


def write_gguf(path, model, hc) -> None:
    """What llama.cpp's converter writes for a Llama model, with F32 tensors."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    h, g = hc.num_attention_heads, hc.num_key_value_heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test")
    w.add_block_count(hc.num_hidden_layers)
    w.add_context_length(hc.max_position_embeddings)
    w.add_embedding_length(hc.hidden_size)
    w.add_feed_forward_length(hc.intermediate_size)
    w.add_head_count(h)
    w.add_head_count_kv(g)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(hc.rms_norm_eps)
    w.add_rope_dimension_count(hc.head_dim)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS)
    w.add_token_merges(MERGES)
    w.add_token_types([gguf.TokenType.CONTROL] * len(SPECIAL)
                      + [gguf.TokenType.NORMAL] * (VOCAB - len(SPECIAL)))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not hc.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(hc.num_hidden_layers):
        for hf_name, gg_name in names.items():
            t = sd[f"model.layers.{i}.{hf_name}.weight"]
            if gg_name == "attn_q":
                t = llamacpp_permute(t, h)
            elif gg_name == "attn_k":
                t = llamacpp_permute(t, g)
            w.add_tensor(f"blk.{i}.{gg_name}.weight", np.ascontiguousarray(t))  # numpy [out, in]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def hf_from_gguf(folder, name):
    """HF's own reading of a GGUF file (it reverse-permutes q/k itself), float32, eager attention.

    ``from_pretrained(..., gguf_file=)`` needs ``accelerate``; without it, the same HF reader
    (``load_gguf_checkpoint``) fills a model built from HF's GGUF-derived config.
    """
    import importlib.util

    if importlib.util.find_spec("accelerate") is not None:
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(folder), gguf_file=name, dtype=torch.float32, attn_implementation="eager").eval()
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = transformers.AutoConfig.from_pretrained(str(folder), gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                          attn_implementation="eager").eval()
    tensors = load_gguf_checkpoint(str(folder / name), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    allowed = {"lm_head.weight"} if config.tie_word_embeddings else set()
    assert set(missing) <= allowed and not unexpected, (missing, unexpected)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(tokens), use_cache=False).logits.numpy()


def our_logits(cfg, params, tokens):
    b, t = tokens.shape
    params = jax.tree_util.tree_map(jnp.asarray, params)
    pos = np.broadcast_to(np.arange(t), (b, t))
    mask = np.broadcast_to(np.tril(np.ones((t, t), bool)), (b, t, t))
    logits, _, _ = forward(params, cfg, jnp.asarray(tokens, jnp.int32), jnp.asarray(pos, jnp.float32),
                           jnp.asarray(pos, jnp.int32), jnp.asarray(mask), init_cache(cfg, b, t))
    return np.asarray(logits)


@pytest.mark.parametrize("head_dim", [2, 4, 8, 16, 64])
def test_unpermute_rows_inverts_llamacpp_permute(head_dim):
    n_head = 3
    w = np.random.default_rng(0).standard_normal((n_head * head_dim, 5)).astype(np.float32)
    b = w[:, 0].copy()
    np.testing.assert_array_equal(unpermute_rows(llamacpp_permute(w, n_head), n_head), w)
    np.testing.assert_array_equal(unpermute_rows(llamacpp_permute(b, n_head), n_head), b)


CASES = [
    # heads, kv heads, hidden (head_dim = hidden / heads), tied
    pytest.param(8, 2, 32, True, id="gqa-hd4-tied"),
    pytest.param(4, 2, 64, False, id="gqa-hd16-untied"),
    pytest.param(4, 1, 64, True, id="mqa-hd16-tied"),
]


@pytest.mark.parametrize("heads,kv_heads,hidden,tied", CASES)
def test_gguf_logits_match_hf(tmp_path, heads, kv_heads, hidden, tied):
    model, hc = make_hf(heads, kv_heads, hidden, tied, seed=heads + kv_heads)
    path = tmp_path / "tiny.gguf"
    write_gguf(path, model, hc)
    cfg, params = load_gguf(path)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_layers) == (VOCAB, hidden, 48, 2)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (heads, kv_heads, hidden // heads)
    assert cfg.tie_embeddings == tied and not cfg.qkv_bias and cfg.rope_scaling is None
    assert cfg.rope_theta == 10000.0 and cfg.eos_token_ids == (2,) and cfg.bos_token_id == 1
    assert abs(cfg.rms_norm_eps - 1e-5) < 1e-9
    # Weights that are not permuted must come back exactly (transposed to input-major).
    sd = model.state_dict()
    np.testing.assert_array_equal(params["layers"]["wv"][1].reshape(hidden, -1),
                                  sd["model.layers.1.self_attn.v_proj.weight"].numpy().T)
    tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 10))
    chex.assert_trees_all_close(our_logits(cfg, params, tokens), hf_logits(model, tokens), atol=1e-4, rtol=0)
    # q and k themselves, in the HF layout
    np.testing.assert_array_equal(params["layers"]["wq"][0].reshape(hidden, -1),
                                  sd["model.layers.0.self_attn.q_proj.weight"].numpy().T)
    np.testing.assert_array_equal(params["layers"]["wk"][0].reshape(hidden, -1),
                                  sd["model.layers.0.self_attn.k_proj.weight"].numpy().T)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_hf_reads_our_test_file_like_llamacpp(tmp_path, tied):
    """Sanity check of the test's own writer: HF's GGUF loader undoes our permutation exactly."""
    model, hc = make_hf(4, 2, 64, tied, seed=1)
    write_gguf(tmp_path / "tiny.gguf", model, hc)
    fields = gguf.GGUFReader(str(tmp_path / "tiny.gguf")).fields
    for key in ("block_count", "context_length", "embedding_length", "feed_forward_length",
                "attention.head_count", "attention.head_count_kv", "rope.freq_base",
                "attention.layer_norm_rms_epsilon", "rope.dimension_count"):
        assert f"llama.{key}" in fields, key
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    ref = hf_from_gguf(tmp_path, "tiny.gguf")
    want, got = model.state_dict(), ref.state_dict()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                 "lm_head.weight"):
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy())
    tokens = np.random.default_rng(1).integers(0, VOCAB, (1, 8))
    np.testing.assert_allclose(hf_logits(ref, tokens), hf_logits(model, tokens), atol=1e-5, rtol=0)


def test_gguf_tokenizer_and_convert_round_trip(tmp_path):
    from conversion.convert import convert
    from tempo_jax.loading import load_model

    model, hc = make_hf(8, 2, 32, True, seed=2)
    src = tmp_path / "tiny.gguf"
    write_gguf(src, model, hc)
    loaded = load_model(str(convert(src, tmp_path / "converted")), verbose=False)
    tok = loaded.tokenizer
    # "the cat": t + (h e -> he); Ġ c -> Ġc, a, t  (ids: specials 0-2, Ġ=3, '!'=4 ... '~'=97, he=98, Ġc=99)
    ids = tok("the cat")["input_ids"]
    assert ids == [3 + ord("t") - 32, 98, 99, 3 + ord("a") - 32, 3 + ord("t") - 32]
    assert tok.decode(ids) == "the cat"
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok("<|im_start|>hi")["input_ids"][0] == 1  # control tokens stay whole
    tokens = np.array([ids])
    chex.assert_trees_all_close(our_logits(loaded.cfg, loaded.params, tokens), hf_logits(model, tokens),
                                atol=1e-4, rtol=0)


def write_gemma3_gguf(path, hf, window: int) -> None:
    """What llama.cpp's converter writes for Gemma 3 (F32): norms stored as 1 + w, q/k rows NOT
    permuted (llama.cpp runs Gemma with rotate-half RoPE), tied embeddings, no query scale or
    local RoPE base in the metadata (llama.cpp fixes them: 1/sqrt(head_dim), 10000)."""
    hc = hf.config
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in hf.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_name("tiny-gemma")
    w.add_block_count(hc.num_hidden_layers)
    w.add_context_length(hc.max_position_embeddings)
    w.add_embedding_length(hc.hidden_size)
    w.add_feed_forward_length(hc.intermediate_size)
    w.add_head_count(hc.num_attention_heads)
    w.add_head_count_kv(hc.num_key_value_heads)
    w.add_key_length(hc.head_dim)
    w.add_value_length(hc.head_dim)
    w.add_rope_freq_base(hc.rope_parameters["full_attention"]["rope_theta"])
    w.add_layer_norm_rms_eps(hc.rms_norm_eps)
    w.add_sliding_window(window)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>" for i in range(hc.vocab_size)])
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"] + 1)
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
             "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(hc.num_hidden_layers):
        for hf_name, ours in names.items():
            t = sd[f"model.layers.{i}.{hf_name}.weight"]
            w.add_tensor(f"blk.{i}.{ours}.weight", t + 1 if "norm" in ours else t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gemma3_gguf_equals_the_hf_model(tmp_path):
    """A tiny Gemma 3 written as llama.cpp does (every 6th layer full: 6 layers here) loads to the
    config and weights of the HF model it came from, and gives its logits past the window."""
    from tempo_jax.model import causal_mask

    hc = transformers.Gemma3TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=6, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
        max_position_embeddings=128, rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1e6}})
    hc._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.Gemma3ForCausalLM(hc).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(0.0, 0.3 if "norm" in name else 0.2)
    path = tmp_path / "tiny-gemma.gguf"
    write_gemma3_gguf(path, hf, 4)
    cfg, params = load_gguf(path)
    assert cfg.family == "gemma3" and cfg.layer_types == ("sliding",) * 5 + ("full",)
    assert cfg.query_scale == 16 ** -0.5 and cfg.local_rope_theta == 10000.0 and cfg.tie_embeddings
    ids = [2, 5, 9, 13, 17, 21, 8, 3, 40, 11]
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0].numpy()
    t = len(ids)
    pos = jnp.arange(t)[None]
    got, _, _ = forward(jax.tree_util.tree_map(jnp.asarray, params), cfg, jnp.asarray([ids]),
                        pos.astype(jnp.float32), pos, causal_mask(1, t, t), init_cache(cfg, 1, t),
                        key_pos=pos.astype(jnp.float32))
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
