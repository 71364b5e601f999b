"""Hand-checked helpers of experiment rq7.3 (speculative decoding vs TEMPO)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.research.rq7_3_speculative import _log_or, draft_cost_fraction
from tempo_jax.config import ModelConfig


def test_draft_cost_fraction_counts_layers_and_the_head():
    cfg = ModelConfig(vocab_size=10, hidden_size=4, intermediate_size=8, num_layers=3, num_heads=2,
                      num_kv_heads=1, head_dim=2)
    per_layer = 4 * 2 * 2 * 2 + 4 * 1 * 2 * 2 + 3 * 4 * 8  # q,o + k,v + gate,up,down = 128
    head = 10 * 4
    assert draft_cost_fraction(cfg, 3) == pytest.approx(1.0)
    assert draft_cost_fraction(cfg, 1) == pytest.approx((per_layer + head) / (3 * per_layer + head))


def test_log_odds_ratio_with_half_added_to_each_cell():
    y = np.array([1, 1, 0, 0, 0, 1], bool)  # rejected
    x = np.array([1, 1, 1, 0, 0, 0], bool)  # branched
    # cells: y&x 2, ~y&x 1, y&~x 1, ~y&~x 2 -> OR = (2.5 * 2.5) / (1.5 * 1.5)
    assert _log_or(y, x) == pytest.approx(np.log(2.5 * 2.5 / (1.5 * 1.5)))
