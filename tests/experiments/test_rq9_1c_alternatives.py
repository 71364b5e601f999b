"""rq9.1c: the member and control arms from the step-0 distribution, the per-prompt columns by hand, and
the engine's step-0 distribution seen by ``before_step`` is the prompt's next-token distribution (HF)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.research import rq9_1c_alternatives as X


def test_arms_by_hand():
    d = np.asarray([0.05, 0.3, 0.02, 0.25, 0.2, 0.08, 0.1])  # ranks: 1, 3, 4, 6, 5, 0, 2
    assert X.arms(d, 3) == ([3, 4], [6, 5])  # set {1, 3, 4}: alternatives ranks 1-2, controls ranks 3-4
    assert X.arms(d, 6) == ([3, 4, 6], [2])  # k = 3 alternatives; only one token left after the set
    assert X.arms(d, 1) == ([], [])


def test_row_of_by_hand():
    r = {"correct": 0.0, "correct_prune": 1.0, "set_n0": 3, "fix_member": [0.0, 1.0], "fix_control": [0.0, 0.0]}
    row = X.row_of(r)
    assert (row["fix_member"], row["fix_control"], row["d_fix"], row["n_alt"]) == (1.0, 0.0, 1.0, 2)
    assert row["d_correct_prune"] == 1.0
    right = X.row_of({"correct": 1.0, "correct_prune": 1.0, "set_n0": 2, "fix_member": [], "fix_control": []})
    assert np.isnan(right["d_fix"]) and right["d_correct_prune"] == 0.0


def test_before_step_zero_sees_the_prompt_distribution(tiny_model):
    from scipy.special import softmax
    from tinymodel import full_logits

    from tempo_jax.engine import GenerationConfig, generate

    hf, cfg, params = tiny_model
    ids = [5, 9, 11, 3, 17, 21, 8]
    seen = []

    def keep(s, st):
        if s == 0:
            seen.append(np.asarray(st.dist, np.float64))
        return st

    generate(params, cfg, ids, GenerationConfig(**{**X.GEN, "max_steps": 2}), before_step=keep)
    want = softmax(full_logits(hf, ids)[-1].astype(np.float64))
    np.testing.assert_allclose(seen[0], want, atol=1e-5)
    assert seen[0].sum() == pytest.approx(1.0, abs=1e-5)
