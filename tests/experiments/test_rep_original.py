"""The replication instrument (experiments/research/rep_original.py): the original metrics on
hand-computed cases, the original loop against the engine's upstream-compatible mode, and the
verdict and cross-fitting helpers of the rep* experiments."""

from types import SimpleNamespace

import numpy as np
import pytest

from experiments.research import rep_original as R
from tempo_jax.slots import PROMPT, UNWRITTEN


def test_displayed_parallel_indices():
    # prompt of 3 tokens, sets of 1, 2, 1, 3 members: displayed 3 | 4 5 | 6 | 7 8 9
    assert R.displayed_parallel(3, [1, 2, 1, 3]) == {4, 5, 7, 8, 9}
    assert R.displayed_parallel(3, [1, 1]) == set()


def test_original_ratio_hand_computed():
    a = np.array([0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    # displayed parallel {4, 5}; the non-parallel group holds the sink and the prompt: 0.8 / 4
    par, non = R.original_ratio(a, 3, [1, 2])
    assert par == pytest.approx(0.1) and non == pytest.approx(0.2)
    # only indices below the key count are read
    par, non = R.original_ratio(a[:5], 3, [1, 2])
    assert par == pytest.approx(0.1) and non == pytest.approx(0.2)
    assert R.original_ratio(a, 3, [1, 1]) is None


def test_original_isolation_mask_hits_misaligned_slots():
    # sets [1, 2], step 1 feeds the last member (displayed 5) at slot P + 2 = 5: displayed 4 hidden
    assert R.original_isolation_hidden(3, [1, 2], 1) == [4]
    # sets [1, 1, 3], step 2: displayed 5 6 7, query at slot 6; slots 5 and 6 (itself) are hidden
    assert R.original_isolation_hidden(3, [1, 1, 3], 2) == [5, 6]
    # a set after a large one: its displayed indices lie beyond the cache, nothing is hidden
    assert R.original_isolation_hidden(3, [4, 2], 1) == []
    assert R.original_isolation_hidden(3, [1, 1], 1) == []


def test_slot_ratio_sink_separate_and_included():
    slot_step = np.array([PROMPT, PROMPT, PROMPT, 0, 0, 1, UNWRITTEN])
    alive = np.ones(7, bool)
    a = np.array([0.4, 0.1, 0.1, 0.1, 0.1, 0.2])  # step 1's query over the 6 written slots
    par, non, sink = R.slot_ratio(a, slot_step, alive, [2, 1], 1)
    assert (par, non, sink) == pytest.approx((0.1, 0.1, 0.4))
    par, non, _ = R.slot_ratio(a, slot_step, alive, [2, 1], 1, sink_in_nonparallel=True)
    assert non == pytest.approx(0.6 / 3) and par / non == pytest.approx(0.5)
    assert R.slot_ratio(a, slot_step, alive, [2, 1], 0) is None  # no earlier parallel set


def test_entropy_bands_locality_classes():
    assert R.entropy_nats(np.full(4, 0.25)) == pytest.approx(np.log(4))
    assert R.entropy_nats(np.array([1.0, 0.0])) == 0.0
    b = R.bands(28)  # the original's 0-5 / 6-15 / 16-27
    assert list(np.flatnonzero(b == 0)) == list(range(6)) and list(np.flatnonzero(b == 2)) == list(range(16, 28))
    x = np.where(b == 1, 2.0, np.where(b == 0, 1.0, 0.5))
    assert R.band_means(x) == pytest.approx([1.0, 2.0, 0.5]) and R.funnel(x)
    assert not R.funnel(np.arange(28.0))  # rising entropy: the late band is highest
    a = np.array([[0.6, 0.1, 0.1, 0.2]])
    recent = np.array([False, False, True, True])
    assert R.locality(a, recent, ~recent)[0] == pytest.approx(0.15 / (0.15 + 0.35))
    assert list(R.tertile_classes(np.linspace(0.1, 0.9, 9))) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert R.cohen_kappa([0, 1, 2, 2], [0, 1, 2, 2]) == pytest.approx(1.0)
    # po = 0.5, pe = 0.5 * 0.5 + 0.5 * 0.5 = 0.5 -> kappa 0
    assert R.cohen_kappa([0, 0, 1, 1], [0, 1, 0, 1], labels=(0, 1)) == pytest.approx(0.0)


def test_verdict_line():
    assert R.verdict_line(True, None, "does not hold").endswith("artefact of the original procedure")
    assert R.verdict_line(False, None, "holds") == ("does not reproduce under the original procedure; "
                                                     "holds in the sound design")
    assert "cannot tell" in R.verdict_line(None, None, "cannot tell")
    assert R.verdict_line(True, None, "descriptive").endswith("descriptive only (its contrast is not a registered test)")


def test_rep2_1_verdict_follows_its_registered_test():
    """The original procedure "reproduces" only when the registered test over the test prompts
    (equivalence within 0.10) says so, whatever the one original prompt shows."""
    import json

    from experiments.research import PROJECT
    from experiments.research.rep2_1 import replication

    folder = PROJECT.results / "rep2.1"
    result = json.loads((folder / "result.json").read_text())
    row = replication(result, folder)
    orig = {t["column"]: t for t in result["tests"]}["orig_d"]
    assert (orig["p_tost_adj"] < 0.05) == row["verdict"].startswith("reproduces")
    assert "descriptive only" in row["verdict"]


def test_cross_fitted_gap_and_kappa():
    from experiments.research.rep6_1 import cross_fit_gaps, split_kappa

    base = np.linspace(0.0, 0.8, 9)
    loc = np.tile(base, (10, 1))  # every prompt has the same head ordering
    gaps = cross_fit_gaps(loc, np.random.default_rng(0))
    assert gaps == pytest.approx(np.full(10, base[6:].mean() - base[:3].mean()))
    assert split_kappa(loc, np.random.default_rng(0), 5) == pytest.approx(1.0)


@pytest.mark.parametrize("which", ["llama", "gemma"])
def test_original_loop_matches_upstream_engine(which, tiny_model):
    """The original feed loop equals the engine's upstream-compatible mode; on the tiny Gemma (window
    of 4 positions) the run is longer than the window."""
    from tinymodel import tiny_gemma

    _, cfg, params = tiny_model if which == "llama" else tiny_gemma()
    m = SimpleNamespace(params=params, cfg=cfg)
    ids = [1, 5, 9, 13, 17]
    up = R.engine_run(m, ids, compat="upstream", tau=0.05, steps=6)
    mine = R.original_loop(params, cfg, ids, isolate=False, tau=0.05, steps=6, eos_ids=(2,))
    assert up.sets == mine.sets and any(len(s) > 1 for s in up.sets)
    for a, b in zip(up.attn, mine.attn):
        np.testing.assert_allclose(a, b, atol=2e-5)
    iso = R.original_loop(params, cfg, ids, isolate=True, tau=0.05, steps=6, eos_ids=(2,))
    hidden = [(s, R.original_isolation_hidden(len(ids), iso.sizes, s)) for s in range(len(iso.sets))]
    hit = [(s, h) for s, h in hidden if h]
    assert hit, "the tiny run should have a step whose original isolated mask hides slots"
    for s, h in hit:
        assert np.all(iso.attn[s][..., h] == 0.0)


def test_findings_replication_table_from_stored_results(tmp_path):
    """FINDINGS' replication section: one row per rep* result and model family, built from the stored
    statistics; a result whose table is missing gets a 'row not built' row instead of breaking the
    report."""
    import dataclasses
    import json

    from experiments.research import harness as H
    from experiments.research.rep2_3 import DESIGN

    def test(col, est, lo, hi, verdict):
        return {"hypothesis": "x", "column": col, "family": "primary", "expect": "<0", "n": 24,
                "estimate": est, "lo": lo, "hi": hi, "p": 0.001, "p_tost": 1.0, "d_z": -1.0,
                "p_adj": 0.001, "p_tost_adj": 1.0, "verdict": verdict, "margin": 0.1, "note": ""}

    design = json.loads(json.dumps(dataclasses.asdict(DESIGN)))
    for eid, with_table, folder, model in (("rep2.3", True, "rep2.3", "m"), ("rep1.3", False, "rep1.3", "m"),
                                           ("rep2.3", True, "rep2.3@gemma3-270m", "gemma3-270m:g")):
        d = tmp_path / folder
        d.mkdir()
        res = {"id": eid, "questions": ["2.3"], "title": H.get(eid).DESIGN.title, "design": design,
               "provenance": {"n_prompts": 24, "split": "test", "genres": ["prose"], "model": model,
                              "params_hash": "0" * 64, "commit": "0" * 40, "dirty": False,
                              "corpus_hash": "c", "seed": 0, "run_seconds": 1.0, "command": "c"},
               "tests": [test("funnel_rho", -0.46, -0.53, -0.38, "differs (-)"),
                         test("uncert_rho", -0.06, -0.19, 0.08, "cannot tell at this n")] if with_table
               else [test(c, 0.1, 0.05, 0.15, "differs (+)") for c in
                     ("mid_minus_late", "mid_minus_early", "ns_mid_minus_late", "ns_mid_minus_early")],
               "answer": "a"}
        (d / "result.json").write_text(json.dumps(res))
        if with_table:
            (d / "table_original_prompt.csv").write_text(
                "column,layer_min,layer_max,head_min,head_max,funnel_rho\n"
                "original procedure,0.59,1.71,1.02,1.22,-0.56\ncorrect mechanics,0.52,1.5,0.89,1.08,0.2\n")
    text = H.write_findings(tmp_path, tmp_path / "F.md").read_text()
    section = text[text.index("## Replication of the original findings"):]
    row = next(line for line in section.splitlines() if "[rep2.3]" in line)
    assert "funnel rho -0.56" in row and "funnel rho -0.46 [-0.53, -0.38] (differs (-))" in row
    assert row.rstrip(" |").endswith("reproduces under the original procedure; holds in the sound design")
    broken = next(line for line in section.splitlines() if "[rep1.3]" in line)
    assert "row not built" in broken
    # another family's result gets its own row, named by its model, linking its own folder
    other = next(line for line in section.splitlines() if "[rep2.3 on gemma3-270m:g]" in line)
    assert "(results/rep2.3@gemma3-270m/summary.md)" in other and "funnel rho -0.46" in other


def test_confirmatory_replication_helpers():
    """rep6.1c's bimodality coefficient (5/9 uniform, 1/3 normal, higher for two modes) and mixture
    BIC; rep2.3c's range columns; rep1.3c's sound-design rule reads its one primary test."""
    from experiments.research.rep1_3c import sound
    from experiments.research.rep2_3c import range_columns
    from experiments.research.rep6_1c import bimodality_coefficient, gmm_bic

    rng = np.random.default_rng(0)
    assert bimodality_coefficient(rng.uniform(size=50_000)) == pytest.approx(5 / 9, abs=0.01)
    assert bimodality_coefficient(rng.normal(size=50_000)) == pytest.approx(1 / 3, abs=0.01)
    two = np.r_[rng.normal(0, 1, 2000), rng.normal(6, 1, 2000)]
    assert bimodality_coefficient(two) > 0.6
    assert np.isnan(bimodality_coefficient([1.0, 2.0, np.nan]))
    bic = {k: gmm_bic(two, k) for k in (1, 2, 3)}
    assert min(bic, key=bic.get) == 2
    one = rng.normal(size=600)
    assert gmm_bic(one, 1) < gmm_bic(one, 2)
    got = range_columns([0.5, 1.3, 0.9])
    assert got == pytest.approx({"head_low": 0.5, "head_high": 1.3, "range_low_minus_040": 0.1,
                                 "range_high_minus_121": 0.09})
    v = lambda s: {"mid_minus_late": {"verdict": s}}  # noqa: E731
    assert sound(v("differs (+)")) == "holds" and sound(v("no effect within +-0.05")) == "does not hold"
    assert sound(v("differs (-)")) == "does not hold" and sound(v("cannot tell at this n")) == "cannot tell"


@pytest.mark.heavy  # about 20 s; the light measure only caches a subset of the full one's keys
def test_light_measure_is_the_full_measures_isolated_run(tiny_model):
    """The confirmatory replications' light measure (the correct isolated run only) equals the same
    keys of the full four-run measure."""
    _, cfg, params = tiny_model
    m = SimpleNamespace(params=params, cfg=cfg)
    ids = [1, 5, 9, 13, 17, 21]
    full, light = R.measure_prompt(m, ids), R.measure_prompt(m, ids, light=True)
    assert set(light) < set(full) and "up" not in light and "loc" in light
    for k, v in light.items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(full[k]), err_msg=k)


def test_recency_matched_ratio_hand_computed():
    """Prompt of 3 (slot 0 the sink), sets of 2, 1, 1, 1 at positions 3..6; step s's queries are set
    s's members (as the engine captures). Parallel set 0 is seen at distances 1, 2, 3 (steps 1-3);
    non-parallel keys at those distances come from other steps."""
    slot_step = np.array([PROMPT, PROMPT, PROMPT, 0, 0, 1, 2, 3])
    slot_pos = np.array([0, 1, 2, 3, 3, 4, 5, 6])
    att = [[0.4, 0.1, 0.3, 0.1, 0.1],  # step 0: queries slots 3, 4 (pos 3)
           [0.5, 0.1, 0.1, 0.05, 0.05, 0.2],  # step 1: slot 5 (pos 4)
           [0.4, 0.1, 0.2, 0.04, 0.06, 0.1, 0.1],  # step 2: slot 6 (pos 5)
           [0.3, 0.1, 0.1, 0.03, 0.03, 0.2, 0.1, 0.14]]  # step 3: slot 7 (pos 6)
    attn = [np.broadcast_to(np.asarray(a), (2, 3, q, len(a))) for a, q in zip(att, (2, 1, 1, 1))]
    run = R.Run(sets=[[7, 8], [9], [10], [11]], attn=attn, prompt_len=3, slot_step=slot_step,
                slot_pos=slot_pos, alive=np.ones(8, bool))
    t = R.age_table(run)
    par = {d: (np.mean(t["par", d][0]), np.mean(t["par", d][1])) for d in (1, 2, 3)}
    assert par == {1: pytest.approx((0.05, 0.1)), 2: pytest.approx((0.05, 0.1)), 3: pytest.approx((0.03, 0.06))}
    assert sorted(t["non", 1][0]) == pytest.approx([0.1, 0.1, 0.3])  # prompt pos 2 (step 0), sets 1, 2
    assert sorted(t["non", 2][0]) == pytest.approx([0.1, 0.1, 0.2])  # prompt pos 1, 2; set 1 (step 3)
    assert sorted(t["non", 3][0]) == pytest.approx([0.1, 0.2])  # prompt pos 1 (step 1), pos 2 (step 2)
    assert ("non", 5) in t and ("par", 5) not in t and not any(0.4 in v[0] or 0.5 in v[0] for v in t.values())
    per_key = np.mean([np.log(0.05 / (0.5 / 3)), np.log(0.05 / (0.4 / 3)), np.log(0.03 / 0.15)])
    per_pos = np.mean([np.log(0.10 / (0.5 / 3)), np.log(0.10 / (0.4 / 3)), np.log(0.06 / 0.15)])
    assert R.matched_ratio(run) == pytest.approx((per_key, per_pos))
    # without parallel sets no distance is shared: NaN
    single = R.Run(sets=[[7], [9]], attn=[attn[0][..., :1, :4], attn[1][..., :5]], prompt_len=3,
                   slot_step=np.array([PROMPT, PROMPT, PROMPT, 0, 1]), slot_pos=np.arange(5.0), alive=np.ones(5, bool))
    assert np.isnan(R.matched_ratio(single)).all()


def test_rep1_1c_and_rep2_1c_rows():
    """rep1.1c's band columns sit at the claimed band's middle (a ratio of sqrt(0.4 * 0.6)) with its
    half-width as margin, so "inside 40-60% less" is the TOST's region; rep2.1c's primary is the
    same-age ratio of the isolated run minus the visible run's, in ratio points."""
    from experiments.research import rep1_1c, rep2_1c

    assert np.exp(rep1_1c.MID) == pytest.approx(np.sqrt(0.4 * 0.6))
    assert (rep1_1c.MID - rep1_1c.HALF, rep1_1c.MID + rep1_1c.HALF) == pytest.approx((np.log(0.4), np.log(0.6)))
    p = SimpleNamespace(id="x", genre="prose")
    r = {"up": 0.5, "iso": 2.0, "iso_sinkin": 0.8, "iso_matched_lr": np.log(0.6), "iso_matched_pos_lr": np.log(1.2),
         "vis_matched_lr": np.log(0.9), "up_iso": 0.45, "vis": 1.5}
    row = rep1_1c.rows_of([(p, r)])[0]
    assert row["matched_band"] == pytest.approx(rep1_1c.HALF)  # 40% less: the band's upper edge
    assert row["orig_band"] == pytest.approx(np.log(0.5) - rep1_1c.MID) and row["corr_lr"] == pytest.approx(np.log(2))
    assert row["matched_pos_lr"] == pytest.approx(np.log(1.2))
    row2 = rep2_1c.rows_of([(p, r)])[0]
    assert row2["matched_d"] == pytest.approx(0.6 - 0.9) and row2["orig_d"] == pytest.approx(-0.05)
    assert row2["corr_d"] == pytest.approx(0.5)
    v = lambda c, s: {c: {"verdict": s}}  # noqa: E731
    for mod, col in ((rep1_1c, "matched_band"), (rep2_1c, "matched_d")):
        assert mod.sound(v(col, "no effect within +-0.2")) == "holds"
        assert mod.sound(v(col, "differs (-), within +-0.1")) == "holds"  # a small change: inside the margin
        assert mod.sound(v(col, "differs (+)")) == "does not hold"
        assert mod.sound(v(col, "cannot tell at this n")) == "cannot tell"
