"""The research harness on a toy experiment (no model: a stand-in object with parameters, synthetic
per-prompt rows with a planted effect and planted nulls), run into tmp_path: statistics equal a
direct computation with tempo_jax.stats, correction covers each declared family, verdict wording
for a big-n null vs a tiny-n null, provenance, refusals before compute, and an interrupted run
leaving earlier results intact."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from repo import ROOT as REPO_ROOT  # noqa: E402

ROOT = REPO_ROOT
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.research import PROJECT  # noqa: E402
from tempo_jax import research as R  # noqa: E402
from tempo_jax import stats as S  # noqa: E402
from tempo_jax.research import provenance, render, runner  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ToyProject(R.Project):
    """The repository's project with its experiments replaced by toy modules."""

    modules: tuple = ()

    def registry(self):
        return {m.DESIGN.id: m for m in self.modules}


class _Harness:
    """The library harness bound to the toy project of the test (``register`` sets its modules)."""

    Hypothesis, Design, Output = R.Hypothesis, R.Design, R.Output
    RESULTS = PROJECT.results
    params_hash = staticmethod(provenance.params_hash)
    json_safe = staticmethod(provenance.json_safe)
    natural = staticmethod(render._natural)

    def __init__(self):
        self.project = ToyProject(**{f.name: getattr(PROJECT, f.name) for f in dataclasses.fields(PROJECT)})

    def use(self, *modules):
        self.project = dataclasses.replace(self.project, modules=tuple(modules))

    def run_experiment(self, exp_id, **kw):
        return runner.run_experiment(self.project, exp_id, **kw)

    def write_findings(self, results_dir, path):
        return render.write_findings(self.project, results_dir, path)


H = _Harness()

MARGIN = 0.2


def toy_design(**kw):
    base = dict(
        id="toy1", questions=("9.9",), title="toy: planted effect and planted nulls",
        primary_metric="synthetic difference per prompt", contrast="condition B - condition A",
        hypotheses=(
            H.Hypothesis("E", "B raises the metric", "eff", ">0"),
            H.Hypothesis("N", "B leaves the metric unchanged within the margin", "null", "=0"),
            H.Hypothesis("S", "secondary columns fall", "sec_*", "<0", family="secondary"),
        ),
        margin=MARGIN, margin_note="toy units", metrics=("eff", "null", "sec_*"),
        families={"primary": "holm", "secondary": "fdr_bh"},
        genres=("prose", "code", "facts"), n_per_genre=None, quick_n=1, seed=3,
        caveats=("synthetic data",))
    base.update(kw)
    return H.Design(**base)


class Toy:
    """A toy experiment module; remembers its rows and whether run() was called."""

    def __init__(self, design=None, fail=False):
        self.DESIGN = design or toy_design()
        self.fail, self.calls, self.rows = fail, 0, None

    def module(self):
        mod = types.ModuleType("toy_experiment")
        mod.DESIGN, mod.run = self.DESIGN, self.run
        return mod

    def run(self, ctx):
        self.calls += 1
        if self.fail:
            raise RuntimeError("interrupted inside run")
        rng = np.random.default_rng(ctx.seed)
        n = len(ctx.prompts)
        rows = [{"prompt_id": p.id, "genre": p.genre, "eff": float(e), "null": float(z),
                 "sec_a": float(a), "sec_b": float(b)}
                for p, e, z, a, b in zip(ctx.prompts, rng.normal(0.5, 1.0, n), rng.normal(0.0, 0.3, n),
                                         rng.normal(-0.4, 1.0, n), rng.normal(0.0, 1.0, n))]
        self.rows = rows
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.hist([r["eff"] for r in rows])
        ctx.figure(fig, "eff")
        return H.Output(rows=rows, notes=["toy note"])


def fake_model(scale=1.0):
    params = {"layer": {"w": np.arange(6.0).reshape(2, 3) * scale, "b": np.zeros(2, np.float32)}}
    return types.SimpleNamespace(params=params, source="toy:seeded")


@pytest.fixture
def register(monkeypatch):
    def reg(*toys):
        monkeypatch.setattr(H, "project", H.project)  # restored after the test
        H.use(*[t.module() for t in toys])
    return reg


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One full run on every test prompt of the corpus (module scope: ~360 prompts, BCa 4999)."""
    mp = pytest.MonkeyPatch()
    toy = Toy()
    mp.setattr(H, "project", H.project)
    H.use(toy.module())
    root = tmp_path_factory.mktemp("results")
    dest = H.run_experiment("toy1", out=root / "toy1", loaded_model=fake_model())
    mp.undo()
    return toy, dest, json.loads((dest / "result.json").read_text())


def test_statistics_match_direct_computation(full_run):
    toy, dest, res = full_run
    d = toy.DESIGN
    tests = {t["column"]: t for t in res["tests"]}
    assert set(tests) == {"eff", "null", "sec_a", "sec_b"}
    direct = {c: S.summarize_paired([r[c] for r in toy.rows], n_boot=4999, seed=d.seed, margin=MARGIN)
              for c in tests}
    for c, t in tests.items():
        r = direct[c]
        assert t["n"] == r["n"] == len(toy.rows)
        for k_h, k_s in (("estimate", "mean"), ("lo", "lo"), ("hi", "hi"), ("p", "p"),
                         ("p_tost", "p_tost"), ("d_z", "d_z")):
            assert t[k_h] == pytest.approx(r[k_s], rel=1e-12, abs=1e-15), (c, k_h)
    # correction within each declared family, with the family's method
    prim = S.correct([direct["eff"]["p"], direct["null"]["p"]], "holm").p_adj
    prim_t = S.correct([direct["eff"]["p_tost"], direct["null"]["p_tost"]], "holm").p_adj
    sec = S.correct([direct["sec_a"]["p"], direct["sec_b"]["p"]], "fdr_bh").p_adj
    assert tests["eff"]["p_adj"] == pytest.approx(prim[0]) and tests["null"]["p_adj"] == pytest.approx(prim[1])
    assert tests["null"]["p_tost_adj"] == pytest.approx(prim_t[1])
    assert tests["sec_a"]["p_adj"] == pytest.approx(sec[0]) and tests["sec_b"]["p_adj"] == pytest.approx(sec[1])
    assert tests["sec_a"]["family"] == "secondary"
    # verdicts: planted effect found, planted null equivalent within the margin at this n
    assert tests["eff"]["verdict"].startswith("differs (+)")
    assert tests["null"]["verdict"] == f"no effect within +-{MARGIN:.3g}"
    assert tests["sec_a"]["verdict"].startswith("differs (-)")


def test_outputs_and_provenance(full_run):
    toy, dest, res = full_run
    for f in ("result.json", "rows.csv", "summary.md", "fig_eff.png"):
        assert (dest / f).is_file(), f
    assert not list(dest.parent.glob("*.partial")) and not list(dest.parent.glob("*.old"))
    prov = res["provenance"]
    for k in ("model", "params_hash", "commit", "dirty", "corpus_hash", "split", "seed", "versions",
              "run_seconds", "n_prompts", "prompt_ids", "command"):
        assert k in prov, k
    assert prov["params_hash"] == H.params_hash(fake_model().params)
    from experiments import corpus

    assert prov["corpus_hash"] == corpus.corpus_hash() and prov["split"] == "test"
    assert prov["n_prompts"] == len(corpus.load(split="test")) == len(toy.rows)
    for lib in ("python", "jax", "flax", "numpy", "scipy", "statsmodels"):
        assert prov["versions"].get(lib), lib
    assert res["design"]["id"] == "toy1" and res["design"]["margin"] == MARGIN
    lines = (dest / "rows.csv").read_text().splitlines()
    assert lines[0].startswith("prompt_id,genre,eff") and len(lines) == len(toy.rows) + 1
    assert "toy note" in (dest / "summary.md").read_text()


def test_findings_wording_big_n_null_vs_tiny_n_null(full_run, register, tmp_path):
    _, dest, _ = full_run
    toy = Toy()
    register(toy)
    results = tmp_path / "results"
    import shutil

    shutil.copytree(dest, results / "toy1")
    quick = H.run_experiment("toy1", quick=True, out=results / "toy1q", loaded_model=fake_model())
    q = json.loads((quick / "result.json").read_text())
    assert q["provenance"]["n_prompts"] == 3  # quick_n = 1 per genre
    assert q["provenance"]["split"] == "dev"  # a smoke run never reads the reported (test) split
    from experiments import corpus

    assert not set(q["provenance"]["prompt_ids"]) & {p.id for p in corpus.load(split="test")}
    assert {t["column"]: t for t in q["tests"]}["null"]["verdict"] == "cannot tell at this n"
    path = H.write_findings(results, tmp_path / "FINDINGS.md")
    text = path.read_text()
    assert "Generated by `tempo-jax research report`" in text
    assert f"no effect within +-{MARGIN:.3g}" in text and "cannot tell at this n" in text
    assert "results/toy1/result.json" in text and "synthetic data" in text


def test_params_hash_is_order_free_and_sensitive():
    a = {"x": np.ones(3), "y": {"z": np.arange(4.0)}}
    b = {"y": {"z": np.arange(4.0)}, "x": np.ones(3)}
    assert H.params_hash(a) == H.params_hash(b)
    c = {"x": np.ones(3), "y": {"z": np.arange(4.0) + 1e-7}}
    assert H.params_hash(a) != H.params_hash(c)
    assert H.params_hash({"x": np.ones(3, np.float32)}) != H.params_hash({"x": np.ones(3, np.float64)})


def test_refusals_are_one_line_and_before_compute(register, tmp_path):
    toy = Toy()
    register(toy)
    with pytest.raises(ValueError) as e:
        H.run_experiment("nope", out=tmp_path / "x", loaded_model=fake_model())
    assert "unknown experiment 'nope'" in one_line(e) and "toy1" in one_line(e)

    bad = Toy(toy_design(hypotheses=(H.Hypothesis("E", "s", "zzz", ">0"),)))
    register(bad)
    with pytest.raises(ValueError) as e:
        H.run_experiment("toy1", out=tmp_path / "x", loaded_model=fake_model())
    assert "unknown metric 'zzz'" in one_line(e) and bad.calls == 0

    register(toy)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    with pytest.raises(ValueError) as e:
        H.run_experiment("toy1", prompt_file=blank, out=tmp_path / "x", loaded_model=fake_model())
    assert "no usable prompt" in one_line(e) and toy.calls == 0


def test_existing_results_of_another_model_or_corpus_refused(register, tmp_path):
    toy = Toy()
    register(toy)
    dest = tmp_path / "results" / "toy1"
    H.run_experiment("toy1", quick=True, out=dest, loaded_model=fake_model())
    assert toy.calls == 1
    with pytest.raises(ValueError) as e:
        H.run_experiment("toy1", quick=True, out=dest, loaded_model=fake_model(scale=2.0))
    assert "another model" in one_line(e) and toy.calls == 1
    assert not list(dest.parent.glob("*.partial"))
    res = json.loads((dest / "result.json").read_text())
    res["provenance"]["corpus_hash"] = "0" * 64
    (dest / "result.json").write_text(json.dumps(res))
    with pytest.raises(ValueError) as e:
        H.run_experiment("toy1", quick=True, out=dest, loaded_model=fake_model())
    assert "another corpus" in one_line(e) and toy.calls == 1
    H.run_experiment("toy1", quick=True, out=dest, loaded_model=fake_model(scale=2.0), force=True)
    assert toy.calls == 2
    assert json.loads((dest / "result.json").read_text())["provenance"]["params_hash"] == \
        H.params_hash(fake_model(scale=2.0).params)


def test_interrupted_run_leaves_earlier_results_intact(register, tmp_path):
    dest = tmp_path / "results" / "toy1"
    register(Toy())
    H.run_experiment("toy1", quick=True, out=dest, loaded_model=fake_model())
    before = {f.name: f.read_bytes() for f in dest.iterdir()}
    failing = Toy(fail=True)
    register(failing)
    with pytest.raises(RuntimeError, match="interrupted inside run"):
        H.run_experiment("toy1", quick=True, out=dest, loaded_model=fake_model())
    assert failing.calls == 1
    assert {f.name: f.read_bytes() for f in dest.iterdir()} == before
    assert sorted(p.name for p in dest.parent.iterdir()) == ["toy1"]


def test_quick_run_never_writes_the_committed_results(register, tmp_path):
    register(Toy())
    with pytest.raises(ValueError) as e:
        H.run_experiment("toy1", quick=True, out=H.RESULTS / "toy1", loaded_model=fake_model())
    assert "committed results" in one_line(e)
    assert not (H.RESULTS / "toy1").exists()


def test_research_list_discovers_designs(capsys):
    """The real registry: every rq*.py with a DESIGN is listed; modules without one are skipped."""
    import argparse

    from tempo_jax import research_cli

    p = argparse.ArgumentParser()
    research_cli.add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["research", "list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    reg = PROJECT.registry()
    assert reg and all(k in out for k in reg)
    for path in (ROOT / "experiments" / "research").glob("rq*.py"):
        if "DESIGN" not in path.read_text():
            assert path.stem not in {m.__name__.rsplit(".", 1)[-1] for m in reg.values()}


def test_prompt_file_runs_and_another_file_is_refused(register, tmp_path):
    toy = Toy()
    register(toy)
    pf = tmp_path / "prompts.txt"
    pf.write_text("The cat sat on the\n\nOnce upon a time\n")
    dest = tmp_path / "out" / "toy1"
    H.run_experiment("toy1", prompt_file=pf, out=dest, loaded_model=fake_model())
    res = json.loads((dest / "result.json").read_text())
    assert res["provenance"]["n_prompts"] == 2 and res["provenance"]["split"] == "custom"
    assert res["provenance"]["prompt_file"] == "prompts.txt"  # no machine path recorded
    assert {t["column"]: t for t in res["tests"]}["null"]["verdict"] == "cannot tell at this n"
    pf.write_text("A different prompt\nand another one\n")
    with pytest.raises(ValueError) as e:
        H.run_experiment("toy1", prompt_file=pf, out=dest, loaded_model=fake_model())
    assert "another corpus" in one_line(e) and toy.calls == 1


def test_findings_orders_mixed_ids(tmp_path):
    for i, eid in enumerate(["rq10.1", "rq2.1b", "rq2.1"]):
        d = tmp_path / eid
        d.mkdir()
        design = json.loads(json.dumps(dataclasses.asdict(toy_design(id=eid))))
        prov = {"n_prompts": 3, "split": "test", "genres": ["prose"]}
        (d / "result.json").write_text(json.dumps({"id": eid, "questions": ["9.9"], "title": eid,
                                                   "design": design, "provenance": prov, "tests": [],
                                                   "answer": f"answer {eid}"}))
    text = H.write_findings(tmp_path, tmp_path / "FINDINGS.md").read_text()
    assert text.index("## rq2.1 ") < text.index("## rq2.1b") < text.index("## rq10.1")


def test_refresh_equivalence_reverts_zero_spread_equivalence(tmp_path):
    """A stored result from before stats.tost's zero-spread rule: 16 prompts whose 0/1 gold retention
    never changed were called equivalent within 0.1 with p = 0; the refresh makes it 'cannot tell'
    (0.9^16 = 0.185) and leaves the other tests alone."""
    import json

    from experiments.research import harness as H

    src = json.loads((H.RESULTS / "rq3.3" / "result.json").read_text())
    for t in src["tests"]:
        if t["column"] == "dgold_eager2":
            t.update(p_tost=0.0, p_tost_adj=0.0, verdict="no effect within +-0.1")
    before = {t["column"]: t["verdict"] for t in src["tests"]}
    path = Path(tmp_path) / "result.json"
    path.write_text(json.dumps(src))
    changed = render.refresh_equivalence(PROJECT, path)
    after = {t["column"]: t for t in json.loads(path.read_text())["tests"]}
    assert changed == ["dgold_eager2: no effect within +-0.1 -> cannot tell at this n"]
    assert after["dgold_eager2"]["p_tost"] == pytest.approx(0.9 ** 16)
    assert {c: t["verdict"] for c, t in after.items() if c != "dgold_eager2"} == \
        {c: v for c, v in before.items() if c != "dgold_eager2"}
    assert render.refresh_equivalence(PROJECT, path) == []  # idempotent


def test_findings_order_is_natural():
    ids = ["rep1.1", "rq10.1", "rq1.3", "rq1.1b", "rq1.1", "rq2.1", "rq9.2"]
    assert sorted(ids, key=H.natural) == ["rq1.1", "rq1.1b", "rq1.3", "rq2.1", "rq9.2", "rq10.1", "rep1.1"]


def test_map_batched_computes_uncached_prompts_in_batches_and_resumes(tmp_path):
    prompts = [types.SimpleNamespace(id=f"p{i}", genre="prose", prompt=str(i)) for i in range(5)]
    design = toy_design()
    ctx = R.Context(design=design, prompts=prompts, out_dir=tmp_path, seed=0, quick=False)
    ctx.cache_dir = tmp_path / "cache"
    calls = []

    def fn(batch):
        calls.append([p.id for p in batch])
        return [int(p.prompt) ** 2 for p in batch]

    got = list(ctx.map_batched(fn, batch=2))
    assert [(p.id, r) for p, r in got] == [(f"p{i}", i * i) for i in range(5)]
    assert calls == [["p0", "p1"], ["p2", "p3"], ["p4"]]
    # an interrupted run resumes: only the prompts without a cached result are computed again
    for f in sorted(ctx.cache_dir.glob("*.pkl"))[:2]:
        f.unlink()
    calls.clear()
    again = list(ctx.map_batched(fn, batch=3))
    assert [r for _, r in again] == [i * i for i in range(5)]
    assert len(calls) == 1 and len(calls[0]) == 2
    with pytest.raises(ValueError, match="batch must be >= 1"):
        list(ctx.map_batched(fn, batch=0))


def test_result_folder_per_model_family():
    assert runner.result_folder("rq1.1c", None) == "rq1.1c"
    assert runner.result_folder("rq1.1c", "smollm2-135m") == "rq1.1c"
    assert runner.result_folder("rq1.1c", "gemma3-270m") == "rq1.1c@gemma3-270m"
    assert runner.result_folder("rq1.1c", "/some/converted/folder") == "rq1.1c"


def _stored(eid, model, split, verdicts):
    """A stored result whose primary tests have the given (column, expect, estimate, p_adj, p_tost_adj)."""
    design = json.loads(json.dumps(dataclasses.asdict(toy_design(id=eid))))
    tests = []
    for col, expect, est, p, pt in verdicts:
        t = dataclasses.asdict(R.TestResult(col.upper(), col, "primary", expect, 40, est, est - 0.1, est + 0.1,
                                            p, pt, p_adj=p, p_tost_adj=pt, margin=MARGIN))
        t["verdict"] = render.verdict(R.TestResult(**t), 0.05)
        tests.append(t)
    prov = {"n_prompts": 40, "split": split, "genres": ["prose"], "model": model}
    return {"id": eid, "questions": ["9.9"], "title": eid, "design": design, "provenance": prov,
            "tests": tests, "answer": f"answer {eid} on {model}"}


def test_findings_show_each_model_and_where_predictions_hold(tmp_path):
    """One experiment on two model families: one heading, a section per model, and per primary
    test whether its registered prediction holds on both, one (which) or neither; confirmatory
    results come before the exploratory record."""
    both = [("eff", ">0", 0.5, 0.001, 1.0), ("null", "=0", 0.01, 1.0, 0.001), ("mixed", "<0", -0.4, 0.01, 1.0),
            ("none", "<0", 0.3, 0.01, 1.0)]
    # "=0" holds on a significant TOST even beside a significant difference inside the margin
    other = [("eff", ">0", 0.6, 0.002, 1.0), ("null", "=0", 0.05, 0.01, 0.003), ("mixed", "<0", -0.1, 0.3, 0.4),
             ("none", "<0", 0.0, 0.6, 0.5)]
    for folder, model, rows in (("rq7.7", "default:SmolLM2", both), ("rq7.7@gemma3-270m", "gemma3-270m:g", other)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "result.json").write_text(json.dumps(_stored("rq7.7", model, "confirm", rows)))
    (tmp_path / "rq1.9").mkdir()
    (tmp_path / "rq1.9" / "result.json").write_text(json.dumps(_stored("rq1.9", "default:SmolLM2", "test", both)))
    text = H.write_findings(tmp_path, tmp_path / "FINDINGS.md").read_text()
    assert text.count("## rq7.7 ") == 1 and "### On default:SmolLM2" in text and "### On gemma3-270m:g" in text
    assert text.index("# Confirmatory results") < text.index("## rq7.7 ") < text.index("# Exploratory record") \
        < text.index("## rq1.9 ")
    holds = {line.split("|")[2].strip(" `"): line.split("|")[-2].strip()
             for line in text.splitlines() if line.startswith("| ") and line.count("|") == 6 and "`" in line}
    assert holds == {"eff": "both", "null": "both", "mixed": "one (default:SmolLM2)", "none": "neither"}


def test_findings_link_a_confirmatory_result_to_the_exploratory_one_it_supersedes(tmp_path):
    res = tmp_path / "results"
    for folder, split in (("rq7.7", "test"), ("rq7.7c", "confirm")):
        (res / folder).mkdir(parents=True)
        r = _stored(folder, "default:SmolLM2", split, [("eff", ">0", 0.5, 0.001, 1.0)])
        (res / folder / "result.json").write_text(json.dumps(r))
    (tmp_path / "supersedes.json").write_text(json.dumps(
        {"rq7.7c": {"supersedes": ["rq7.7"], "changed": "the effect holds with a control"}}))
    project = dataclasses.replace(H.project, folder=tmp_path)
    text = render.write_findings(project, res, tmp_path / "FINDINGS.md").read_text()
    assert "**Supersedes** rq7.7 (exploratory). What changed: the effect holds with a control" in text
    assert text.index("**Supersedes**") < text.index("# Exploratory record") < text.index("**Superseded by** rq7.7c")
