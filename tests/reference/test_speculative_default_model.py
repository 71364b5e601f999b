"""Self-speculative decoding on the real default model: the same tokens as greedy decoding."""

from __future__ import annotations

import numpy as np
import pytest

from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.engine.speculative import SpecStats

pytestmark = pytest.mark.slow

PROMPTS = ["The cat sat on the",
           "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"]  # ends on EOS early


@pytest.mark.parametrize("k,g", [(22, 3), pytest.param(10, 2, marks=pytest.mark.heavy)])
def test_speculative_equals_greedy_on_the_default_model(default_model, k, g):
    m = default_model
    for prompt in PROMPTS:
        ids = m.tokenizer(prompt).input_ids
        gr = generate(m.params, m.cfg, ids, GenerationConfig(method="greedy", max_steps=24))
        sp = generate(m.params, m.cfg, ids, GenerationConfig(method="speculative", max_steps=24,
                                                             draft_layers=k, draft_len=g))
        np.testing.assert_array_equal(sp.arrays["tokens"], gr.arrays["tokens"])
        np.testing.assert_allclose(sp.arrays["probs"], gr.arrays["probs"], atol=1e-4)
        st = SpecStats.of(sp)
        assert st.rounds <= st.steps and 0 <= st.accepted <= st.drafted
