"""Interpretability metrics on hand-built attention, and the two analysis scripts end to end on a
tiny model (the statistics themselves: tests/test_stats.py)."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from tempo_jax import metrics as M
from repo import ROOT as REPO_ROOT  # noqa: E402

ROOT = REPO_ROOT

# --- a hand-built step -------------------------------------------------------------------------
# slots: 0,1,2 prompt; 3,4 step 0 (2 members); 5 step 1 (1 member); 6,7 step 2 (current, 2 members);
# 8 unwritten. Queries: rows 0,1 -> slots 6,7; row 2 is padding (W=3).
SLOT_STEP = np.array([-1, -1, -1, 0, 0, 1, 2, 2, -2])
SET_N = np.array([2, 1, 2, 0])
ALIVE = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0], bool)
Q0 = [0.2, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1, 0.1, 0.0]
Q1 = [0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0, 0.1, 0.0]
ATTN = np.array([[[Q0, Q1, [0.5] * 9]]])  # [L=1,H=1,W=3,K=9]
QS = np.array([6, 7])


def H(p):
    p = np.asarray(p)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def JS(p, q):
    p, q = np.asarray(p) / np.sum(p), np.asarray(q) / np.sum(q)
    m = (p + q) / 2
    kl = lambda x: float(np.sum(np.where(x > 0, x * np.log(np.where(x > 0, x, 1) / m), 0)))
    return 0.5 * kl(p) + 0.5 * kl(q)


def test_slot_groups():
    g = M.slot_groups(SLOT_STEP, ALIVE, SET_N, 2)
    assert np.flatnonzero(g["sink"]).tolist() == [0]
    assert np.flatnonzero(g["parallel"]).tolist() == [3, 4]
    assert np.flatnonzero(g["nonparallel"]).tolist() == [1, 2, 5]
    assert np.flatnonzero(g["own"]).tolist() == [6, 7]


def test_parallel_attention_known_values():
    r = M.parallel_attention(ATTN, SLOT_STEP, ALIVE, SET_N, 2, QS)
    exp = {"par_total": 0.25, "par_per_token": 0.125, "nonpar_total": 0.3, "nonpar_per_token": 0.1,
           "sink": 0.3, "self": 0.1, "sibling": 0.05}
    for k, v in exp.items():
        assert r[k].shape == (1, 1)
        np.testing.assert_allclose(r[k][0, 0], v, atol=1e-12, err_msg=k)
    assert r["n_par"] == 2 and r["n_nonpar"] == 3


def test_pruned_slot_leaves_groups_and_alive_during_forward():
    alive = ALIVE.copy()
    alive[4] = False  # pruned earlier: not visible
    r = M.parallel_attention(ATTN, SLOT_STEP, alive, SET_N, 2, QS)
    np.testing.assert_allclose(r["par_total"][0, 0], (0.2 + 0.1) / 2)
    np.testing.assert_allclose(r["par_per_token"][0, 0], (0.2 + 0.1) / 2)
    pruned_at = np.full(9, -1)
    pruned_at[4] = 2  # pruned by THIS step: it was visible in the forward
    af = M.alive_during_forward(alive, pruned_at, 2)
    assert af[4] and not af[8]
    np.testing.assert_allclose(M.parallel_attention(ATTN, SLOT_STEP, af, SET_N, 2, QS)["par_total"], 0.25)


def test_no_parallel_context_is_nan():
    set_n = np.array([1, 1, 2, 0])
    r = M.parallel_attention(ATTN, SLOT_STEP, ALIVE, set_n, 2, QS)
    assert np.isnan(r["par_per_token"]).all() and r["n_par"] == 0
    np.testing.assert_allclose(r["nonpar_total"][0, 0], (0.6 + 0.5) / 2)


def test_entropy_leakage_js():
    e = M.attention_entropy(ATTN, SLOT_STEP, ALIVE, QS)
    np.testing.assert_allclose(e[0, 0], [H(Q0), H(Q1)], atol=1e-12)
    lk = M.sibling_leakage(ATTN, SLOT_STEP, ALIVE, 2, QS)
    np.testing.assert_allclose(lk[0, 0], [0.1, 0.0], atol=1e-12)  # q0 -> slot 7: 0.1; q1 -> slot 6: 0
    js = M.sibling_js(ATTN, SLOT_STEP, ALIVE, 2, QS)
    np.testing.assert_allclose(js[0, 0], JS(Q0[:6], Q1[:6]), atol=1e-12)


def test_js_bounds_and_single_member():
    a = np.zeros((1, 1, 2, 4))
    ss = np.array([-1, -1, 0, 0])
    a[0, 0, 0, 0] = a[0, 0, 1, 1] = 1.0  # disjoint context attention
    np.testing.assert_allclose(M.sibling_js(a, ss, np.ones(4, bool), 0, np.array([2, 3])), math.log(2))
    a[0, 0, 1] = a[0, 0, 0]
    np.testing.assert_allclose(M.sibling_js(a, ss, np.ones(4, bool), 0, np.array([2, 3])), 0.0, atol=1e-15)
    assert np.isnan(M.sibling_js(a, ss, np.ones(4, bool), 0, np.array([2]))).all()


def test_semantic_diversity_and_tree_stats():
    embed = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    np.testing.assert_allclose(M.semantic_diversity(embed, [0, 1, 2]), 4 / 3)
    np.testing.assert_allclose(M.semantic_diversity(embed, [0, 0]), 0.0, atol=1e-12)
    assert np.isnan(M.semantic_diversity(embed, [1]))
    t = M.tree_stats([1, 2, 3, 1])
    assert t == {"branching": 1.75, "parallel_fraction": 0.5, "steps": 4, "max_width": 3}


def test_step_metrics_bundle():
    tokens = np.array([[0, 1], [2, 0], [0, 2], [0, 0]])
    embed = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    r = M.step_metrics(ATTN, SLOT_STEP, ALIVE, np.full(9, -1), SET_N, np.array([3, 5, 6, 0]),
                       np.array([2, 1, 2, 0]), tokens, 2, embed=embed)
    np.testing.assert_allclose(r["leakage"][0, 0], 0.05)
    np.testing.assert_allclose(r["entropy"][0, 0], (H(Q0) + H(Q1)) / 2)
    np.testing.assert_allclose(r["diversity"], 2.0)  # tokens 0 and 2 are opposite
    assert r["set_n"] == 2


# --- end to end on a tiny model ----------------------------------------------------------------
def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / "analysis" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tinymodel import save_tiny_with_tokenizer

    return save_tiny_with_tokenizer(tmp_path_factory.mktemp("m") / "tiny")


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_scripts_end_to_end(tiny_model_dir, tmp_path, capsys):
    ana = _load_script("analyze_attention_mech_interp")
    sta = _load_script("statistical_confidence_analysis")
    pf = tmp_path / "prompts.txt"
    pf.write_text("w5 w9 w13 w17 w21\nw7 w8 w30\n\nw40 w41 w42 w43\n")
    out = tmp_path / "res"
    assert ana.main(["--prompt-file", str(pf), "--max-tokens", "6", "--threshold", "0.05",
                     "--max-width", "4", "--output-dir", str(out), "--model", str(tiny_model_dir)]) == 0
    for k in range(3):
        d = out / f"prompt_{k:03d}"
        for f in ("trace.json", "trace.npz", "metrics.npz", "metrics.json", "summary.md",
                  "attention_by_layer.png", "heatmap_step.png"):
            assert (d / f).exists(), (d, f)
        meta = json.loads((d / "metrics.json").read_text())
        assert meta["axes"]["par_per_token"] == ["step", "layer", "head"]
        with np.load(d / "metrics.npz") as z:
            S_, L, H_ = z["par_per_token"].shape
            assert (L, H_) == (2, 4) and S_ == len(z["set_n"]) >= 1
            assert np.all(z["leakage"] == 0)  # isolated siblings: no leakage
    with np.load(out / "metrics.npz") as z:
        assert z["par_per_token"].shape[0] == 3 and z["par_per_token"].ndim == 4
    assert sta.main(["--data-dir", str(out), "--n-boot", "500"]) == 0
    st = json.loads((out / "stats.json").read_text())
    assert st["unit"] == "prompt" and len(st["rows"]) == 3  # 2 layers + overall
    assert "| layer 0 |" in capsys.readouterr().out
    assert (out / "stats.md").exists()
    assert (out / "stats_layers.png").exists() and (out / "stats_heads.png").exists()

    # a single prompt: no fake CIs
    one = tmp_path / "one"
    assert ana.main(["--prompt", "w5 w9 w13 w17 w21", "--max-tokens", "4", "--threshold", "0.05",
                     "--output-dir", str(one), "--model", str(tiny_model_dir), "--no-plots"]) == 0
    assert sta.main(["--data-dir", str(one), "--n-boot", "200"]) == 0
    st = json.loads((one / "stats.json").read_text())
    assert "several prompts" in st["note"]
    assert all(r["lo"] is None for r in st["rows"])


def test_help_explains_options():
    ana = _load_script("analyze_attention_mech_interp")
    h = ana.build_parser().format_help()
    for opt in ("--prompt-file", "--model", "--threshold", "--max-width", "--siblings", "--positions",
                "--seed", "--max-tokens", "--output-dir"):
        assert opt in h


def test_convergence_depth_and_pruning_survival_hand_built():
    from tempo_jax.metrics import convergence_depth, pruning_survival

    d = convergence_depth([1, 3, 2, 1, 2, 2])
    np.testing.assert_array_equal(np.isnan(d), [True, False, False, True, True, True])
    assert d[1] == 2 and d[2] == 1
    arrays = {"set_n": np.array([2, 1, 3]),
              "tokens": np.zeros((3, 3), int),
              "slots": np.array([[4, 5, -1], [6, -1, -1], [7, 8, 9]]),
              "pruned_at": np.array([-1] * 4 + [-1, 2, -1, -1, 3, 3])}
    out = pruning_survival(arrays)
    np.testing.assert_array_equal(out["count"], [2, 2, 1])
    np.testing.assert_array_equal(out["survived"], [1.0, 0.0, 0.0])
