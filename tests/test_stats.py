"""Statistics: coverage of CIs at small n on simulated data, corrections and equivalence tests
against hand computations, AUROC and grouped folds on hand cases."""

import numpy as np
import pytest

from tempo_jax import stats as S


@pytest.mark.parametrize("dist", ["normal", "lognormal"])
def test_ci_coverage_at_n10(dist, capsys):
    rng = np.random.default_rng(11)
    sims, n = 300, 10
    true = 0.0 if dist == "normal" else float(np.exp(0.5))
    hit_t = hit_bca = 0
    for i in range(sims):
        x = rng.normal(0, 1, n) if dist == "normal" else rng.lognormal(0, 1, n)
        lo, hi = S.t_ci(x)
        hit_t += lo <= true <= hi
        b = S.bootstrap_ci(x, n_boot=999, seed=i)
        hit_bca += b["lo"] <= true <= b["hi"]
    cov_t, cov_bca = hit_t / sims, hit_bca / sims
    with capsys.disabled():
        print(f"\n  coverage at n=10 ({dist}, {sims} sims): t {cov_t:.3f}, BCa {cov_bca:.3f} (nominal 0.95)")
    if dist == "normal":
        assert 0.91 <= cov_t <= 0.99  # exact interval under normality
        assert 0.85 <= cov_bca <= 0.97  # bootstrap intervals under-cover somewhat at n = 10
    else:
        assert 0.78 <= cov_t <= 0.97 and 0.75 <= cov_bca <= 0.97  # skewed: both under-cover


def test_holm_and_bh_match_hand_computation():
    p = [0.01, 0.04, 0.03, np.nan]
    # Holm over the 3 finite values: sorted 0.01, 0.03, 0.04 -> 0.03, 0.06, 0.06 (monotone)
    np.testing.assert_allclose(S.correct(p, "holm")[:3], [0.03, 0.06, 0.06])
    assert np.isnan(S.correct(p, "holm")[3])
    # BH: 0.01*3/1 = 0.03, 0.03*3/2 = 0.045, 0.04*3/3 = 0.04 -> min from the top: 0.03, 0.04, 0.04
    np.testing.assert_allclose(S.correct(p, "fdr_bh")[:3], [0.03, 0.04, 0.04])
    with pytest.raises(ValueError, match="unknown correction"):
        S.correct(p, "bonf")


def test_tost_verdicts():
    rng = np.random.default_rng(3)
    tight = rng.normal(0.0, 0.05, 200)
    assert S.tost(tight, 0.05)["p"] < 0.001  # clearly inside +-0.05
    shifted = rng.normal(0.2, 0.05, 200)
    assert S.tost(shifted, 0.05)["p"] > 0.5  # clearly outside
    small = rng.normal(0.0, 1.0, 5)
    assert S.tost(small, 0.05)["p"] > 0.2  # too few to claim equivalence
    with pytest.raises(ValueError, match="margin"):
        S.tost(tight, 0.0)


def test_summarize_paired_and_dz():
    d = [1.0, 2.0, 3.0]
    r = S.summarize_paired(d, margin=5.0, n_boot=999)
    assert r["d_z"] == pytest.approx(2.0) and r["mean"] == pytest.approx(2.0)
    assert r["t_lo"] < 2.0 < r["t_hi"] and r["exact"] and r["p"] == pytest.approx(0.25)
    assert "p_tost" in r and r["p_tost"] < 0.2


def test_auroc_hand_cases_and_cluster_ci():
    assert S.auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert S.auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert S.auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts half
    assert S.auroc([0, 1, 0, 1], [0.1, 0.3, 0.35, 0.8]) == pytest.approx(0.75)
    assert np.isnan(S.auroc([1, 1], [0.1, 0.2]))
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 5)
    y = rng.random(200) < 0.5
    s = y + rng.normal(0, 1, 200)
    r = S.auroc_ci(y, s, groups, n_boot=300)
    assert r["lo"] < r["value"] < r["hi"] and r["n_groups"] == 40 and r["value"] > 0.6
    d = S.auroc_diff_ci(y, s, rng.normal(0, 1, 200), groups, n_boot=300)
    assert d["value"] > 0 and d["lo"] > 0 and d["p"] < 0.05


def test_grouped_folds_keep_groups_whole():
    groups = np.repeat(np.arange(10), 3)
    folds = S.grouped_kfold(groups, k=5, seed=1)
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen.tolist()) == list(range(30))
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
    with pytest.raises(ValueError, match="needs >= 5 groups"):
        S.grouped_kfold(np.arange(3), k=5)


def test_cluster_corr_detects_relation():
    rng = np.random.default_rng(5)
    x = rng.normal(size=300)
    r = S.cluster_corr(x, x + rng.normal(0, 0.5, 300), np.repeat(np.arange(60), 5), n_boot=300)
    assert r["lo"] > 0.6 and r["n"] == 300
