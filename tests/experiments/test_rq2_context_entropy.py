"""RQ 2.2 / 2.3 instruments: Jensen-Shannon divergence, partial Spearman, the per-prompt reductions
on hand-made attention, and the generation-side data on the tiny random model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import spearmanr

from experiments.research import rq2_2_context as R2
from experiments.research import rq2_3_entropy as R3
from tempo_jax import stats as S


def test_js_bits_hand_computed():
    p, q = np.array([1.0, 0.0]), np.array([0.5, 0.5])
    # m = [.75, .25]; KL(p|m) = log2(4/3); KL(q|m) = .5 log2(2/3) + .5 log2(2)
    want = 0.5 * np.log2(4 / 3) + 0.5 * (0.5 * np.log2(2 / 3) + 0.5)
    assert R2.js_bits(p, q) == pytest.approx(want, abs=1e-12)
    assert R2.js_bits(q, p) == pytest.approx(want, abs=1e-12)
    assert R2.js_bits(q, q) == pytest.approx(0.0, abs=1e-12)
    assert R2.js_bits([1.0, 0, 0], [0, 0.3, 0.7]) == pytest.approx(1.0)  # disjoint supports
    np.testing.assert_allclose(R2.renorm(np.array([[2.0, 6.0], [0.0, 0.0]])), [[0.25, 0.75], [0.5, 0.5]])


def test_partial_spearman():
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    y = x + rng.normal(size=60)
    assert S.partial_spearman(x, y, np.ones(60)) == pytest.approx(spearmanr(x, y)[0], abs=1e-12)
    z = rng.normal(size=2000)  # a shared confounder: raw rho large, partial near 0
    a, b = z + 0.5 * rng.normal(size=2000), z + 0.5 * rng.normal(size=2000)
    assert spearmanr(a, b)[0] > 0.6 and abs(S.partial_spearman(a, b, z)) < 0.1
    assert np.isnan(S.partial_spearman(z, a, z))  # x is a function of the covariate


def _step(s, toks, attn_ctx, slot_steps):
    a = np.asarray(attn_ctx, np.float32)[None, None]  # [1,1,n,C]
    return (s, np.asarray(toks), np.log(np.full(len(toks), 1 / len(toks))), np.asarray(slot_steps), a)


def test_prompt_stats_sibling_and_cross_step_on_common_support():
    embed = np.eye(4)
    embed[1] = embed[0]  # tokens 0 and 1 have the same input embedding (cosine 1)
    # step 2 (context: prompt slots with step -1 x2): members attend to slot A only
    s2 = _step(2, [0, 2], [[1.0, 0.0], [0.9, 0.0]], [-1, -1])
    # step 5 (context: the two prompt slots + three later slots): identical siblings that look at
    # prompt slot B (on the common support) and at a later slot
    s5 = _step(5, [0, 1], [[0, 0.4, 0.6, 0, 0], [0, 0.4, 0.6, 0, 0]], [-1, -1, 2, 2, 3])
    r = R2.prompt_stats([s2, s5], embed)
    assert r["n_multi"] == 2 and r["n_null"] == 1
    assert r["js_sib_S"][0] == pytest.approx(0.0, abs=1e-9)  # identical siblings
    assert r["js_cross_S"][0] == pytest.approx(1.0)  # slot B vs slot A: disjoint on the support
    assert r["top_sib"][0] == 1.0 and r["top_cross"][0] == 0.0
    assert r["js_sib_W"][0] == pytest.approx(0.0, abs=1e-9) and r["js_cross_W"][0] == pytest.approx(1.0)
    # per-pair records: step, cosine, |log p gap|, JS per layer
    assert [(s, c) for s, c, _, _ in r["pairs"]] == [(2, pytest.approx(0.0)), (5, pytest.approx(1.0))]
    assert r["pairs"][0][3][0] == pytest.approx(0.0, abs=1e-9)  # step 2: both all on slot A


@pytest.fixture(scope="module")
def tiny(tiny_model):
    _, cfg, params = tiny_model
    tok = lambda text: SimpleNamespace(input_ids=[1, 5, 9, 12, 7, 3][: max(2, len(text.split()))])
    return SimpleNamespace(params=params, cfg=cfg, tokenizer=tok)


def test_rq22_context_rows_leave_out_sink_and_own_step(tiny, monkeypatch):
    monkeypatch.setattr(R2, "GEN", {**R2.GEN, "max_steps": 6})
    steps = R2._steps(tiny, SimpleNamespace(prompt="a b c d e f"), seed=0)
    assert steps, "the tiny model should produce at least one multi-member set"
    for s, tok, lp, ss, a in steps:
        assert (ss < s).all() and (ss >= -1).all()  # context: prompt or earlier steps only
        # the sink and the member itself carry the rest of the row
        assert a.shape[2] == len(tok) >= 2 and (a.sum(-1) < 1.0).all() and (a >= 0).all()


def test_rq23_visible_and_isolated_agree_before_the_first_multi_member_step(tiny, monkeypatch):
    monkeypatch.setattr(R3, "GEN", {**R3.GEN, "max_steps": 6, "min_steps": 6})
    ids = [1, 5, 9, 12]
    from tempo_jax.engine import GenerationConfig

    tr, iso = R3._member_entropy(tiny, ids, GenerationConfig(**R3.GEN))
    multi = [s for s in range(tr.n_steps) if tr.arrays["set_n"][s] >= 2]
    assert multi
    s_star = multi[0]
    _, vis = R3._member_entropy(tiny, ids, GenerationConfig(**{**R3.GEN, "siblings": "visible"}), stop_at=s_star)
    assert max(vis) == s_star  # stopped right after the step of interest
    for s in range(s_star):
        np.testing.assert_allclose(vis[s], iso[s], atol=1e-6)
    assert not np.allclose(vis[s_star], iso[s_star], atol=1e-6)  # siblings now visible
    d = R3.prompt_data(tiny, SimpleNamespace(prompt="a b c d"), seed=0)
    assert d["vis"]["s_star"] == s_star
    assert len(d["steps"]) == tr.n_steps - 1 and all(r["plen"] == 4 for r in d["steps"])
    np.testing.assert_allclose(d["vis"]["iso"], iso[s_star].mean(2), atol=1e-6)
