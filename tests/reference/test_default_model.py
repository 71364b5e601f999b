"""The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against HF transformers reading the same file.

Both sides dequantise the GGUF to float32, so logits agree to float32 rounding. The first run downloads
and converts the model into the tempo-jax cache (TEMPO_JAX_CACHE or ~/.cache/tempo-jax); later runs reuse it.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the HF reference needs torch (pip install -e .[test])")
transformers = pytest.importorskip("transformers", reason="the HF reference needs transformers")

from tempo_jax.model import forward, init_cache  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = ["The cat sat on the", "In 1905, Albert Einstein published", "def fibonacci(n):\n    return"]
PAD_T, CAPACITY, NEW_TOKENS = 16, 64, 32

_fwd = jax.jit(forward, static_argnames=("cfg", "taps"))


@pytest.fixture(scope="module")
def ours():
    from tempo_jax.loading import load_model

    return load_model(verbose=False)


@pytest.fixture(scope="module")
def hf():
    """HF's model from the same GGUF file, float32, eager attention (loaded once per module)."""
    from tempo_jax.named_models import gguf_path

    path = gguf_path(verbose=False)
    folder, name = path.parent, path.name
    if importlib.util.find_spec("accelerate") is not None:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(folder), gguf_file=name, dtype=torch.float32, attn_implementation="eager")
    else:  # from_pretrained(gguf_file=) insists on accelerate; use the same HF GGUF reader directly
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        config = transformers.AutoConfig.from_pretrained(str(folder), gguf_file=name)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                              attn_implementation="eager")
        tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model,
                                       torch_dtype=torch.float32)["tensors"]
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
        model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model.eval()


def _ids(ours, text):
    return ours.tokenizer(text)["input_ids"]


def _prefill(ours, ids):
    """Our logits for ``ids`` (padded to PAD_T; padding sits after the prompt, so causality hides it)."""
    n = len(ids)
    assert n <= PAD_T
    tokens = np.zeros((1, PAD_T), np.int32)
    tokens[0, :n] = ids
    pos = np.arange(PAD_T)[None]
    mask = np.arange(CAPACITY)[None, None, :] <= np.arange(PAD_T)[None, :, None]
    cache = init_cache(ours.cfg, 1, CAPACITY)
    logits, cache, _ = _fwd(ours.params, ours.cfg, jnp.asarray(tokens), jnp.asarray(pos, jnp.float32),
                            jnp.asarray(pos, jnp.int32), jnp.asarray(mask), cache)
    return np.asarray(logits[0, :n]), cache


def test_tokenizer_and_eos(ours):
    assert _ids(ours, "The cat sat on the") == [504, 2644, 2643, 335, 260]
    assert ours.tokenizer.eos_token_id == 2
    assert ours.cfg.eos_token_ids == (2,)
    assert ours.tokenizer.decode([504, 2644, 2643, 335, 260]) == "The cat sat on the"


def test_tokenizer_matches_hf_gguf_tokenizer(ours):
    """Our GGUF-built tokenizer splits text exactly as HF's tokenizer read from the same file."""
    from tempo_jax.named_models import gguf_path

    path = gguf_path(verbose=False)
    ref = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    texts = PROMPTS + ["In 1905, 12345 papers.", "  leading spaces\ttab\n\n", "Café naïve — “quotes” 日本語 🙂",
                       "<|im_start|>user\nHi<|im_end|>\n", "don't I'll we've"]
    for text in texts:
        assert _ids(ours, text) == ref(text)["input_ids"], text
    assert (ours.tokenizer.eos_token_id, ours.tokenizer.bos_token_id) == (ref.eos_token_id, ref.bos_token_id)


def test_config_matches_hf(ours, hf):
    hc, cfg = hf.config, ours.cfg
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_layers) == (
        hc.vocab_size, hc.hidden_size, hc.intermediate_size, hc.num_hidden_layers)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (
        hc.num_attention_heads, hc.num_key_value_heads, hc.hidden_size // hc.num_attention_heads)
    assert cfg.tie_embeddings


@pytest.mark.parametrize("leaf,hf_name", [
    ("wv", "self_attn.v_proj"), ("wo", "self_attn.o_proj"), ("w_down", "mlp.down_proj"),
    ("wq", "self_attn.q_proj"), ("wk", "self_attn.k_proj"),
])
def test_weights_match_hf(ours, hf, leaf, hf_name):
    """Our dequantised weights equal HF's (HF reverse-permutes llama.cpp's q/k rows itself)."""
    sd = hf.state_dict()
    for layer in (0, ours.cfg.num_layers - 1):
        w = np.asarray(ours.params["layers"][leaf][layer])
        got = w.reshape(-1, w.shape[-1]) if leaf == "wo" else w.reshape(w.shape[0], -1)
        np.testing.assert_array_equal(
            got, sd[f"model.layers.{layer}.{hf_name}.weight"].numpy().T,
            err_msg="our cached conversion differs from HF's reading of the GGUF; if the converter was "
                    "fixed after the cache was filled, delete tempo_jax.named_models.converted_dir()")
    np.testing.assert_array_equal(np.asarray(ours.params["embed"]), sd["model.embed_tokens.weight"].numpy())


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_hf(ours, hf, prompt):
    ids = _ids(ours, prompt)
    logits, _ = _prefill(ours, ids)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([ids]), use_cache=False).logits[0].numpy()
    assert logits.shape == ref.shape
    np.testing.assert_allclose(logits, ref, atol=1e-3, rtol=0)


def test_greedy_continuation_matches_hf(ours, hf):
    ids = _ids(ours, "Once upon a time, in a small village,")
    eos = set(ours.cfg.eos_token_ids)
    logits, cache = _prefill(ours, ids)
    out, nxt = [], int(logits[-1].argmax())
    for step in range(NEW_TOKENS):
        out.append(nxt)
        if nxt in eos or step == NEW_TOKENS - 1:
            break
        s = len(ids) + step  # slot and position of the token just chosen
        mask = (np.arange(CAPACITY) <= s)[None, None, :]
        lg, cache, _ = _fwd(ours.params, ours.cfg, jnp.array([[nxt]], jnp.int32),
                            jnp.array([[s]], jnp.float32), jnp.array([[s]], jnp.int32), jnp.asarray(mask), cache)
        nxt = int(np.asarray(lg)[0, -1].argmax())

    with torch.no_grad():
        gen = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=sorted(eos),
                          pad_token_id=sorted(eos)[0])
    ref = gen[0, len(ids):].tolist()
    ref = ref[: ref.index(sorted(eos)[0]) + 1] if sorted(eos)[0] in ref else ref
    assert out == ref, (ours.tokenizer.decode(out), ours.tokenizer.decode(ref))
