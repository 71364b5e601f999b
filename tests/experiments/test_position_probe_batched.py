"""The forced-set probe run over several prompts at once (position_probe.measure_prompts, one
compiled program per step with the prompts as a batch axis) equals the one-prompt-at-a-time probe,
for prompts of different lengths and padding buckets, on the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.research.position_probe import measure_prompt, measure_prompts

NS, DELTAS, GAP = (1, 3), (0.0, 1.0), 6


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_batched_equals_one_by_one(tiny_model):
    _, cfg, params = tiny_model
    rng = np.random.default_rng(0)
    prompts = [rng.integers(4, cfg.vocab_size, n).tolist() for n in (5, 40)]  # buckets 32 and 64
    batched = measure_prompts(params, cfg, prompts, NS, DELTAS, GAP)
    for ids, got in zip(prompts, batched):
        want = measure_prompt(params, cfg, ids, NS, DELTAS, GAP)
        assert got["probe_token"] == want["probe_token"]
        for k in ("per_token", "per_set", "sink", "kl", "top_mass"):
            assert got[k].shape == want[k].shape, k
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert batched[0]["per_token"].shape[:2] == (len(NS), len(DELTAS) + 1)
