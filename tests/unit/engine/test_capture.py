"""Capture modes: the in-graph summary equals the same quantities computed from full capture."""

from __future__ import annotations

import numpy as np

from tempo_jax.metrics import slot_groups
import pytest

from tempo_jax.capture import CaptureWriter, load_capture
from tempo_jax.engine import GenerationConfig, generate
from tinymodel import tiny

PROMPT = [5, 9, 13, 17, 21]


@pytest.mark.parametrize("siblings", ["isolated", "full"])
@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_summary_equals_full_capture(tmp_path, siblings):
    _, cfg, params = tiny(0)
    g = GenerationConfig(max_steps=6, threshold=0.05, max_width=5, siblings=siblings)
    full_w, sum_w = CaptureWriter(tmp_path / "full"), CaptureWriter(tmp_path / "summary")
    tr = generate(params, cfg, PROMPT, g, on_step=full_w, capture="full")
    generate(params, cfg, PROMPT, g, on_step=sum_w, capture="summary")
    full = load_capture(tmp_path / "full")
    summ = load_capture(tmp_path / "summary")
    attn, axes = full["attn"]
    assert axes == ("step", "layer", "head", "query", "slot")
    assert attn.shape[0] == tr.n_steps
    a = tr.arrays
    for s in range(tr.n_steps):
        n, base = a["set_n"][s], a["cache_len"][s]
        x = np.asarray(attn[s])[:, :, :n]  # [L,H,n,K]
        np.testing.assert_allclose(summ["received"][0][s], x.sum(2), atol=1e-6)
        ent = -(x * np.log(np.where(x > 0, x, 1))).sum(-1)
        np.testing.assert_allclose(summ["entropy"][0][s][:, :, :n], ent, atol=1e-5)
        np.testing.assert_allclose(summ["sink"][0][s][:, :, :n], x[..., 0], atol=1e-7)
        leak = np.stack([x[:, :, i, [base + j for j in range(n) if j != i]].sum(-1) for i in range(n)], 2)
        np.testing.assert_allclose(summ["leakage"][0][s][:, :, :n], leak, atol=1e-7)
        if siblings == "isolated":
            assert (summ["leakage"][0][s] == 0).all()
        assert (summ["entropy"][0][s][:, :, n:] == 0).all()  # padding queries


def test_capture_streams_to_disk_record_per_step(tmp_path):
    _, cfg, params = tiny(0)
    w = CaptureWriter(tmp_path)
    sizes = []

    def on_step(s, st, captured):
        w(s, st, captured)
        sizes.append((tmp_path / "attn.f32").stat().st_size)

    tr = generate(params, cfg, PROMPT, GenerationConfig(max_steps=5, min_steps=5), on_step=on_step)
    per_step = sizes[0]
    assert sizes == [per_step * (i + 1) for i in range(tr.n_steps)]  # written as produced
    assert not any(isinstance(v, np.ndarray) for v in vars(w).values())  # nothing kept in memory
    assert set(vars(w)) == {"out", "shapes", "steps"}


def test_bad_capture_mode():
    _, cfg, params = tiny(0)
    with pytest.raises(ValueError, match="unknown capture mode"):
        generate(params, cfg, PROMPT, GenerationConfig(max_steps=2), capture="everything")
    with pytest.raises(ValueError, match="needs driver='host'"):
        generate(params, cfg, PROMPT, GenerationConfig(max_steps=2), capture="full", driver="device")


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_device_records_equal_numpy_from_full_capture(tmp_path):
    import jax

    from tempo_jax.engine.run import run_on_device
    from tempo_jax.engine.run import pad_prompt

    _, cfg, params = tiny(0)
    g = GenerationConfig(max_steps=6, threshold=0.05, max_width=4, siblings="visible", prune=True,
                         prune_window=1, prune_rho=0.9)
    w = CaptureWriter(tmp_path)
    tr = generate(params, cfg, PROMPT, g, on_step=w, capture="full")
    attn = load_capture(tmp_path)["attn"][0]
    K = g.capacity_for(len(PROMPT))
    st, rec = jax.jit(lambda: run_on_device(params, cfg, g.static(), g.inputs(cfg), pad_prompt(g, PROMPT),
                                            np.int32(len(PROMPT)), K, record=True))()
    rec = rec.arrays()
    a = tr.arrays
    slot_step, set_n, pruned_at = a["slot_step"], a["set_n"], a["pruned_at"]
    for s in range(tr.n_steps):
        n, base = a["set_n"][s], a["cache_len"][s]
        x = np.asarray(attn[s])[:, :, :n]  # [L,H,n,K]
        alive = (slot_step != -2) & ((pruned_at < 0) | (pruned_at >= s)) & (np.arange(K) < base)
        groups = slot_groups(slot_step, alive, set_n, s)
        par, non = groups["parallel"], groups["nonparallel"]
        np.testing.assert_allclose(rec["sink"][s], x[..., 0].mean(-1), atol=1e-6)
        if non.any():
            np.testing.assert_allclose(rec["nonpar_per_token"][s], x[..., non].sum(-1).mean(-1) / non.sum(),
                                       atol=1e-6)
        if par.any():
            np.testing.assert_allclose(rec["par_per_token"][s], x[..., par].sum(-1).mean(-1) / par.sum(),
                                       atol=1e-6)
        else:
            assert np.isnan(rec["par_per_token"][s]).all()
    assert np.isnan(rec["sink"][tr.n_steps:]).all()
    assert np.isfinite(rec["par_per_token"]).any()
