"""Statistics: coverage of CIs at small n on simulated data, the sign-flip test against full
enumeration, corrections and equivalence tests against hand computations, AUROC, grouped folds
and grouped cross-validation on hand cases."""

import itertools

import numpy as np
import pytest

from tempo_jax import stats as S

SIMS, N = 400, 10


@pytest.mark.parametrize("dist", ["normal", "lognormal"])
def test_ci_coverage_at_n10(dist, capsys):
    """Observed coverage of the true mean by the t and BCa 95% intervals at n = 10, 400 simulated
    data sets. Binomial SE of a coverage near 0.95 at 400 simulations is ~0.011.
    Stated tolerances (about 3 SE around the long-run values): normal data, t interval (exact
    here): 0.95 +- 0.035; BCa under-covers at n = 10 (long-run ~0.90 in 1000 simulations of
    this set-up), accepted in [0.85, 0.97]. Lognormal (sigma 1, skewed): both intervals
    under-cover at n = 10 (~0.80-0.85); accepted in [0.75, 0.95], printed so the shortfall is
    visible."""
    rng = np.random.default_rng(11)
    true = 0.0 if dist == "normal" else float(np.exp(0.5))
    hit_t = hit_bca = 0
    for i in range(SIMS):
        x = rng.normal(0, 1, N) if dist == "normal" else rng.lognormal(0, 1, N)
        lo, hi = S.t_ci(x)
        hit_t += lo <= true <= hi
        b = S.bootstrap_ci(x, n_boot=999, seed=i)
        hit_bca += b["lo"] <= true <= b["hi"]
    cov_t, cov_bca = hit_t / SIMS, hit_bca / SIMS
    with capsys.disabled():
        print(f"\n  coverage at n={N} ({dist}, {SIMS} sims): t {cov_t:.3f}, BCa {cov_bca:.3f} "
              "(nominal 0.95)")
    if dist == "normal":
        assert abs(cov_t - 0.95) <= 0.035
        assert 0.85 <= cov_bca <= 0.97
    else:
        assert 0.75 <= cov_t <= 0.95 and 0.75 <= cov_bca <= 0.95


def test_bootstrap_edge_cases():
    r = S.bootstrap_ci([0.3])
    assert r["mean"] == 0.3 and np.isnan(r["lo"]) and np.isnan(r["hi"])
    r = S.bootstrap_ci([2.0, 2.0, 2.0, np.nan])
    assert (r["lo"], r["hi"], r["n"]) == (2.0, 2.0, 3)
    a, b = S.bootstrap_ci([1, 5, 2, 8, 3], seed=4), S.bootstrap_ci([1, 5, 2, 8, 3], seed=4)
    assert a == b  # explicit seed: reproducible


def test_sign_flip_exact_matches_enumeration():
    d = np.array([0.5, -0.2, 1.3, 0.7, 0.1, -0.4, 0.9])
    signs = np.array(list(itertools.product([1, -1], repeat=len(d))))
    hand = float((np.abs((signs * d).mean(1)) >= abs(d.mean()) - 1e-12).mean())
    r = S.sign_flip_test(d)
    assert r["exact"] and r["p"] == pytest.approx(hand)
    assert S.sign_flip_test([1, 2, 3, 4, 5])["p"] == pytest.approx(2 / 32)
    assert S.paired_permutation_test([2, 3, 4], [1, 1, 1])["stat"] == pytest.approx(2.0)


def test_sign_flip_planted_and_null():
    rng = np.random.default_rng(7)
    assert S.sign_flip_test(rng.normal(1.0, 1.0, 20), n_perm=5000, seed=1)["p"] < 0.01
    ps = np.array([S.sign_flip_test(rng.normal(0, 1, 10))["p"] for _ in range(100)])
    assert np.mean(ps > 0.05) >= 0.85 and 0.3 < ps.mean() < 0.7
    mc = np.array([S.sign_flip_test(rng.normal(0, 1, 16), n_perm=500, seed=i)["p"] for i in range(40)])
    assert np.mean(mc > 0.05) >= 0.8


def test_holm_and_bh_match_hand_computation():
    p = [0.01, 0.04, 0.03, np.nan]
    # Holm over the 3 finite values: sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, 1*0.04 -> monotone
    # 0.03, 0.06, 0.06 (back in input order: 0.03, 0.06, 0.06)
    holm = S.correct(p, "holm")
    np.testing.assert_allclose(holm.p_adj[:3], [0.03, 0.06, 0.06])
    assert np.isnan(holm.p_adj[3]) and holm.reject.tolist() == [True, False, False, False]
    # BH: 0.01*3/1 = 0.03, 0.03*3/2 = 0.045, 0.04*3/3 = 0.04 -> min from the top: 0.03, 0.04, 0.04
    bh = S.correct(p, "fdr_bh")
    np.testing.assert_allclose(bh.p_adj[:3], [0.03, 0.04, 0.04])
    assert bh.reject.tolist() == [True, True, True, False]
    p_adj, reject = S.correct([0.2], "holm")  # a family of one: unchanged
    assert p_adj[0] == 0.2 and not reject[0]
    with pytest.raises(ValueError, match="unknown correction"):
        S.correct(p, "bonf")


def test_tost_verdicts():
    rng = np.random.default_rng(3)
    tight = rng.normal(0.0, 0.05, 200)
    r = S.tost(tight, 0.05)
    assert r["p"] < 0.001 and r["equivalent"] and -0.05 < r["ci_lo"] < r["ci_hi"] < 0.05
    shifted = rng.normal(0.2, 0.05, 200)
    assert S.tost(shifted, 0.05)["p"] > 0.5 and not S.tost(shifted, 0.05)["equivalent"]
    small = rng.normal(0.0, 1.0, 5)
    assert S.tost(small, 0.05)["p"] > 0.2  # too few to claim equivalence
    with pytest.raises(ValueError, match="margin"):
        S.tost(tight, 0.0)


def test_summarize_paired_and_dz():
    assert S.d_z([1, 2, 3]) == pytest.approx(2.0) and S.cohens_d_paired is S.d_z
    assert np.isnan(S.d_z([1.0])) and np.isnan(S.d_z([2.0, 2.0]))
    d = [1.0, 2.0, 3.0]
    r = S.summarize_paired(d, margin=5.0, n_boot=999)
    assert r["d_z"] == pytest.approx(2.0) and r["mean"] == pytest.approx(2.0) and r["n"] == 3
    assert r["t_lo"] < 2.0 < r["t_hi"] and r["exact"] and r["p"] == pytest.approx(0.25)
    assert r["p_t"] == pytest.approx(S.sps.ttest_1samp(d, 0).pvalue)
    # TOST against +-5: upper one-sided t = (2 - 5) / (1 / sqrt 3), df 2 -> p ~ 0.0175
    assert r["p_tost"] == pytest.approx(S.sps.t.cdf((2 - 5) * np.sqrt(3), 2)) and r["equivalent"]
    assert not S.summarize_paired(d, margin=2.5, n_boot=99)["equivalent"]
    big = S.summarize_paired(np.random.default_rng(0).normal(0, 0.1, 300), margin=0.05, n_boot=999)
    assert big["equivalent"] and big["lo"] < 0 < big["hi"]
    assert "p_tost" not in S.summarize_paired(d, n_boot=99)


def test_auroc_hand_cases_and_cluster_ci():
    assert S.auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert S.auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert S.auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts half
    assert S.auroc([0, 1, 0, 1], [0.1, 0.3, 0.35, 0.8]) == pytest.approx(0.75)
    assert np.isnan(S.auroc([1, 1], [0.1, 0.2]))
    rng = np.random.default_rng(9)
    yy, ss = rng.random(50) < 0.4, rng.integers(0, 5, 50).astype(float)  # many ties
    u = S.sps.mannwhitneyu(ss[yy], ss[~yy]).statistic
    assert S.auroc(yy, ss) == pytest.approx(u / (yy.sum() * (~yy).sum()))
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 5)
    y = rng.random(200) < 0.5
    s = y + rng.normal(0, 1, 200)
    r = S.auroc_ci(y, s, groups, n_boot=300)
    assert r["lo"] < r["value"] < r["hi"] and r["n_groups"] == 40 and r["value"] > 0.6
    d = S.auroc_diff_ci(y, s, rng.normal(0, 1, 200), groups, n_boot=300)
    assert d["value"] > 0 and d["lo"] > 0 and d["p"] < 0.05


def test_grouped_splits_keep_groups_whole_and_are_deterministic():
    groups = np.repeat(np.arange(10), 3)
    folds = S.grouped_cv_splits(groups, k=5, seed=1)
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen.tolist()) == list(range(30))
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
        assert len(tr) + len(te) == 30
    again = S.grouped_cv_splits(groups, k=5, seed=1)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again))
    assert S.grouped_kfold is S.grouped_cv_splits
    with pytest.raises(ValueError, match="needs >= 5 groups"):
        S.grouped_cv_splits(np.arange(3), k=5)


def test_cv_compare_predictor_vs_baselines():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(30), 6)
    x = rng.normal(size=(180, 3))
    y = (x[:, 0] + 0.5 * rng.normal(size=180)) > 0
    r = S.cv_compare(x, y, groups, baselines={"noise": rng.normal(size=180), "x2": x[:, [2]]},
                     k=5, seed=0, n_boot=300)
    assert r["predictor"]["value"] > 0.8 and r["predictor"]["n_groups"] == 30
    assert set(r["baselines"]) == {"noise", "x2", "shuffled labels"}
    for name in ("noise", "x2", "shuffled labels"):
        assert abs(r["baselines"][name]["value"] - 0.5) < 0.2
        assert r["vs"][name]["lo"] > 0 and r["vs"][name]["p"] < 0.05
    r2 = S.cv_compare(x, y, groups, k=5, seed=0, n_boot=300)
    np.testing.assert_array_equal(r["oof_scores"], r2["oof_scores"])  # deterministic


def test_cluster_corr_detects_relation():
    rng = np.random.default_rng(5)
    x = rng.normal(size=300)
    r = S.cluster_corr(x, x + rng.normal(0, 0.5, 300), np.repeat(np.arange(60), 5), n_boot=300)
    assert r["lo"] > 0.6 and r["n"] == 300 and r["n_groups"] == 60
    p = S.cluster_corr(x, x ** 3, np.arange(300), method="pearson", n_boot=200)
    assert 0.6 < p["value"] < 1
    with pytest.raises(ValueError, match="unknown correlation"):
        S.cluster_corr(x, x, np.arange(300), method="kendall")


def test_tost_zero_spread_needs_enough_prompts():
    # nine prompts whose 0/1 outcome never changed: (1 - 0.1)^9 = 0.387, not evidence of equivalence
    few = S.tost(np.zeros(9), 0.10, bound=1.0)
    assert few["p"] == pytest.approx(0.9 ** 9) and not few["equivalent"]
    # thirty such prompts: 0.9^30 = 0.042 < 0.05
    many = S.tost(np.zeros(30), 0.10, bound=1.0)
    assert many["p"] == pytest.approx(0.9 ** 30) and many["equivalent"]
    # the same rule in other units: a margin of 0.2 percentage points on a 0..100 scale is a share
    # 0.2 / 100 of prompts, not 0.2 of them
    assert S.tost(np.zeros(30), 0.2, bound=100.0)["p"] == pytest.approx((1 - 0.002) ** 30)
    # without a bound (a log ratio, logits) identical values support no equivalence at any n
    unbounded = S.tost(np.zeros(10_000), 0.10)
    assert unbounded["p"] == 1.0 and not unbounded["equivalent"]
    with pytest.raises(ValueError, match="bound"):
        S.tost(np.zeros(5), 0.1, bound=0.0)
    assert S.tost(np.full(50, 0.2), 0.10)["p"] == 1.0
