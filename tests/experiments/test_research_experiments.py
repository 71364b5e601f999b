"""The research experiments run end to end through the harness (``--quick``) on the default model,
and the harness refuses what it must refuse, before compute."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.research import harness

pytestmark = pytest.mark.slow


def test_rq1_quick_run_writes_results_with_provenance(default_model, tmp_path):
    out = harness.run_experiment("rq1.1", quick=True, out=tmp_path / "rq1", loaded_model=default_model)
    res = json.loads((out / "result.json").read_text())
    prov = res["provenance"]
    for key in ("model", "params_hash", "commit", "corpus_hash", "split", "seed", "versions",
                "prompt_ids"):
        assert key in prov
    assert prov["n_prompts"] == 6 and prov["split"] == "dev" and len(prov["params_hash"]) == 64
    tests = res["tests"]
    fams = {t["family"] for t in tests}
    assert {"primary", "causal", "offsets", "layers_tok", "layers_pos", "heads_pos"} <= fams
    assert sum(t["family"] == "heads_pos" for t in tests) == 270
    for t in tests:  # corrected p is never below the raw p
        if t["p"] is not None and t["p_adj"] is not None:
            assert t["p_adj"] >= t["p"] - 1e-12
    rows = (out / "rows.csv").read_text().splitlines()
    assert len(rows) == 7  # header + 6 prompts
    # the set's total over n = 1 equals its per-token value: log ratios are 0 for identical worlds
    row = dict(zip(rows[0].split(","), rows[1].split(",")))
    assert float(row["att_tok_n1"]) == pytest.approx(float(row["att_set_n1"]))
    assert float(row["att_set_n20"]) == pytest.approx(20 * float(row["att_tok_n20"]), rel=1e-4)
    assert (out / "fig_attention_vs_n.png").exists() and (out / "summary.md").exists()
    assert res["answer"].endswith(".")


@pytest.mark.heavy  # about a minute: outside the default run (python -m pytest -m heavy)
def test_rq3_quick_run(default_model, tmp_path):
    out = harness.run_experiment("rq3.1", quick=True, out=tmp_path / "rq3", loaded_model=default_model)
    res = json.loads((out / "result.json").read_text())
    cols = {t["column"] for t in res["tests"]}
    assert "auroc_early_minus_selection" in cols and "early_gap" in cols
    table = (out / "table_auroc.csv").read_text()
    assert "selection" in table and "resid_L20" in table


def test_refusals_before_compute(default_model, tmp_path):
    with pytest.raises(ValueError, match="unknown experiment 'rq9.9'; known: .*rq1.1"):
        harness.run_experiment("rq9.9", quick=True, out=tmp_path / "x")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no usable prompt"):
        harness.run_experiment("rq1.1", prompt_file=str(empty), out=tmp_path / "x")
    with pytest.raises(ValueError, match="may not overwrite the committed results"):
        harness.run_experiment("rq1.1", quick=True, out=harness.RESULTS / "rq1.1")
    bad = harness.Design(id="t", questions=("0",), title="t", primary_metric="m", contrast="c",
                         hypotheses=(harness.Hypothesis("H", "s", "nope", "<0"),), margin=0.1,
                         margin_note="", metrics=("x*",))
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        bad.check()
    # a results folder written for another model is refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "result.json").write_text(json.dumps({"provenance": {"params_hash": "0" * 64,
                                                                   "model": "someone-else"}}))
    with pytest.raises(ValueError, match="holds results of another model"):
        harness.run_experiment("rq1.1", quick=True, out=other, loaded_model=default_model)


def test_interrupted_run_keeps_earlier_results(default_model, tmp_path, monkeypatch):
    dest = tmp_path / "keep"
    dest.mkdir()
    (dest / "result.json").write_text("{}")  # no provenance: not another model's
    mod = harness.get("rq1.1")

    def boom(ctx):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(mod, "run", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        harness.run_experiment("rq1.1", quick=True, out=dest, loaded_model=default_model)
    assert (dest / "result.json").read_text() == "{}"
    assert not (tmp_path / "keep.partial").exists()


def test_verdicts_and_findings(tmp_path):
    rng = np.random.default_rng(0)
    h_eff = harness.Hypothesis("E", "effect", "eff", ">0")
    h_null = harness.Hypothesis("N", "null", "null", "=0")
    h_small = harness.Hypothesis("S", "tiny n", "small", "=0")
    design = harness.Design(id="toy", questions=("0.1",), title="toy", primary_metric="m",
                            contrast="c", hypotheses=(h_eff, h_null, h_small), margin=0.2,
                            margin_note="toy", metrics=("eff", "null", "small"))
    rows = [{"prompt_id": str(i), "genre": "x", "eff": 1 + rng.normal(0, 0.5),
             "null": rng.normal(0, 0.1), "small": rng.normal(0, 1) if i < 4 else np.nan}
            for i in range(200)]
    tests = {t.column: t for t in harness.evaluate(design, harness.Output(rows=rows))}
    assert tests["eff"].verdict == "differs (+)"
    assert tests["null"].verdict == "no effect within +-0.2"
    assert tests["small"].verdict == "cannot tell at this n" and tests["small"].n == 4
    # Holm over the family of three: adjusted p >= raw p
    assert all(t.p_adj >= t.p for t in tests.values())
    # FINDINGS is generated from results folders
    res_dir = tmp_path / "results"
    (res_dir / "toy").mkdir(parents=True)
    (res_dir / "toy" / "result.json").write_text(json.dumps(harness.json_safe({
        "id": "toy", "questions": ["0.1"], "title": "toy", "answer": "Toy answer.",
        "design": __import__("dataclasses").asdict(design), "tests": [
            __import__("dataclasses").asdict(t) for t in tests.values()],
        "provenance": {"n_prompts": 200, "split": "test", "genres": ["x"]}})))
    text = harness.write_findings(res_dir, tmp_path / "F.md").read_text()
    assert "Toy answer." in text and "no effect within +-0.2" in text and "n = 200 prompts" in text
