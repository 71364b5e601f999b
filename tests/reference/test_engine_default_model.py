"""TEMPO on the real default model: tau > 0.5 is exactly HF transformers greedy generate."""

from __future__ import annotations

import numpy as np
import pytest

from tempo_jax.engine import GenerationConfig, generate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models():
    import torch
    from transformers import AutoModelForCausalLM

    from tempo_jax.named_models import gguf_path
    from tempo_jax.loading import load_model

    ours = load_model(verbose=False)
    path = gguf_path(verbose=False)
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                              torch_dtype=torch.float32,
                                              attn_implementation="eager").eval()
    return ours, hf


@pytest.mark.parametrize("prompt", ["The cat sat on the", "Once upon a time, in a small village,"])
def test_tempo_above_half_equals_hf_greedy_32_tokens(models, prompt):
    import torch

    ours, hf = models
    ids = ours.tokenizer(prompt).input_ids
    trace = generate(ours.params, ours.cfg, ids,
                     GenerationConfig(max_steps=32, threshold=0.51, max_width=4, min_steps=32))
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=32, min_new_tokens=32,
                          pad_token_id=2)
    assert trace.clean_ids() == out[0, len(ids):].tolist()
    assert (trace.arrays["set_n"] == 1).all()


def test_parallel_sets_on_the_default_model(models):
    """tau 0.05 gives real parallel sets; every member's probability passes tau, sorted."""
    ours, _ = models
    ids = ours.tokenizer("The cat sat on the").input_ids
    tr = generate(ours.params, ours.cfg, ids, GenerationConfig(max_steps=8, threshold=0.05, max_width=8))
    a = tr.arrays
    assert a["set_n"].max() > 1
    for s in range(tr.n_steps):
        p = a["probs"][s, : a["set_n"][s]]
        assert (np.diff(p) <= 0).all()
        assert a["set_n"][s] == 1 or (p >= a["tau"][s]).all()
