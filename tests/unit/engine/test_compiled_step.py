"""What the compiled TEMPO step contains (structure, not timing): regressions of measured speed fixes.

``benchmarks/step_costs.py`` measures the costs; these tests only pin the compiled structure that
made the difference, so a refactor cannot silently bring a slow form back.
"""

from __future__ import annotations

import pytest
import dataclasses
import re

import jax
import jax.numpy as jnp

from tempo_jax.config import ModelConfig
from tempo_jax.engine import GenerationConfig
from tempo_jax.engine import core
from tempo_jax.engine.rules import Capture
from tempo_jax.engine.run import _init, _step, check_request, pad_prompt
from tempo_jax.engine.selection import top_k
from tempo_jax.model import init_params

V = 4099  # a vocabulary much larger than anything else in the step, so a sort over it is visible
CFG = ModelConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, max_position_embeddings=512, name="hlo-probe")
PROMPT = [5, 6, 7]


def _step_hlo(g: GenerationConfig, width: int) -> str:
    params = init_params(CFG, jax.random.key(0))
    cap = check_request(CFG, g, PROMPT)
    spec, inputs = g.static(), g.inputs(CFG)
    st = _init[core](params, CFG, spec, inputs, pad_prompt(g, PROMPT), jnp.int32(len(PROMPT)), cap)
    return _step[core].lower(params, CFG, spec, inputs, st, Capture.NONE, width,
                             view=cap).compile().as_text()


def _vocab_sorts(hlo: str) -> list[str]:
    return [l for l in hlo.splitlines() if re.search(r"\bsort\(", l) and f"[{V}]" in l]


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_threshold_step_selects_without_sorting_the_vocabulary():
    # without the barrier in selection.top_k, slices of top_k's result fuse into later ops and
    # XLA:CPU sorts all V entries every step (measured ~9 ms a step for V = 49152)
    for width in (1, 2, 8):
        hlo = _step_hlo(GenerationConfig(max_steps=4, max_width=8, threshold=0.1, prune=True), width)
        assert _vocab_sorts(hlo) == [], f"feed width {width}: the step sorts the vocabulary"


def test_top_k_helper_equals_lax_top_k_with_ties():
    x = jnp.asarray([0.1, 0.5, 0.5, 0.2, 0.5, 0.0])
    v, i = jax.jit(lambda x: top_k(x, 4))(x)
    v0, i0 = jax.lax.top_k(x, 4)
    assert i.tolist() == i0.tolist() == [1, 2, 4, 3]  # ties: lower index first
    assert v.tolist() == v0.tolist()
    two = jnp.stack([x, x[::-1]])
    assert jax.jit(lambda x: top_k(x, 2)[1])(two).tolist() == [[1, 2], [1, 3]]


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_device_driver_fitted_widths_equal_full_width():
    """run_on_device feeds each step only its members (one loop per width 1, 2, 4, 8) and attends
    only a bucketed written prefix (256 slots, then the capacity); the state and the per-step
    records equal the full-width, full-capacity program's (sets of 5 and 8 members here, and a
    run that writes past slot 256)."""
    import numpy as np

    from tempo_jax.engine.run import run_on_device

    cfg = dataclasses.replace(CFG, vocab_size=97)
    params = init_params(cfg, jax.random.key(0), scale=0.5)
    g = GenerationConfig(max_steps=40, max_width=8, threshold=0.02, prune=True, prune_window=1)
    cap = check_request(cfg, g, PROMPT)
    assert cap > 256
    run = lambda fit: jax.jit(lambda: run_on_device(
        params, cfg, g.static(), g.inputs(cfg), pad_prompt(g, PROMPT), jnp.int32(len(PROMPT)), cap,
        record=True, fit_width=fit))()
    (a, rec_a), (b, rec_b) = run(True), run(False)
    assert len(set(np.asarray(a.set_n).tolist())) > 1  # more than one feed width was used
    assert int(a.n_written) > 256  # and both attended prefixes
    for k in ("tokens", "valid", "set_n", "slots", "positions", "pruned_at", "fed_n"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)
    for k, v in rec_a.arrays().items():
        np.testing.assert_allclose(v, rec_b.arrays()[k], atol=1e-5, equal_nan=True, err_msg=k)
