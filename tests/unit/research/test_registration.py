"""Verifiable registration (tempo_jax.research.registration) in a throwaway git repository holding a
toy project: a confirmatory run refuses, in one line each, an unregistered experiment, an
uncommitted registration, a dirty tree and code that differs from the registered hash (the
experiment module or a shared instrument it imports); the result names its registration commit,
which history shows before it; an amendment after a result is recorded and its new test labelled
post hoc; an underpowered design is refused unless declared exploratory, and a test that can never
reject is refused outright."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from tempo_jax.errors import UsageError
from tempo_jax.research import registration, runner
from tempo_jax.research.registry import Project

MODULE = '''
import numpy as np

from tempo_jax.research import Design, Hypothesis, Output
from toyreg.helper import measure

DESIGN = Design(
    id="toyc", questions=("9.9",), title="toy confirmatory", primary_metric="eff",
    contrast="B - A", margin=0.3, margin_note="toy units", metrics=("eff", "null"),
    hypotheses=(Hypothesis("E", "B raises it", "eff", ">0", sesoi=0.5),
                Hypothesis("N", "B leaves it", "null", "=0"),{extra}),
    split="confirm", n_per_genre={n}, quick_n=3, genres=("prose", "code"), exploratory={exploratory})


def run(ctx):
    rng = np.random.default_rng(ctx.seed)
    rows = [{{"prompt_id": p.id, "genre": p.genre, "eff": measure(rng.normal(0.6, 1.0)),
              "null": float(rng.normal(0.0, 0.2))}} for p in ctx.prompts]
    return Output(rows=rows)
'''


class ToyCorpus:
    """2 genres; 3 dev prompts and 60 confirm prompts each."""

    @staticmethod
    def load(split, genres, limit_per_genre):
        size = {"dev": 3, "confirm": 60}[split]
        n = size if limit_per_genre is None else min(size, limit_per_genre)
        return [types.SimpleNamespace(id=f"{split}-{g}-{i}", genre=g, prompt=f"{g} {i}")
                for g in genres for i in range(n)]

    @staticmethod
    def corpus_hash(split=None):
        return f"toy-{split}"


def git(root, *args):
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def fake_model():
    return types.SimpleNamespace(params={"w": np.arange(4.0)}, source="toy:model")


@pytest.fixture
def repo(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    pkg = root / "toyreg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("def measure(x):\n    return float(x)\n")
    write_module(pkg, n=None)
    git(root, "init", "-q")
    git(root, "config", "user.email", "t@t")
    git(root, "config", "user.name", "t")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "toy project")
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m.startswith("toyreg")]:
        monkeypatch.delitem(sys.modules, name)
    project = Project(package="toyreg", folder=pkg, root=root, results=root / "results",
                      findings=root / "FINDINGS.md", runs=tmp_path / "runs", corpus=ToyCorpus(),
                      patterns=("rq*.py",))
    return types.SimpleNamespace(root=root, pkg=pkg, project=project)


def write_module(pkg, n, extra="", exploratory=False):
    (pkg / "rq_toy.py").write_text(textwrap.dedent(MODULE).format(n=n, extra=extra, exploratory=exploratory))
    importlib.invalidate_caches()
    if "toyreg.rq_toy" in sys.modules:
        importlib.reload(sys.modules["toyreg.rq_toy"])


def run(repo):
    return runner.run_experiment(repo.project, "toyc", loaded_model=fake_model(), findings=False)


def pilot(repo, tmp_path):
    return runner.run_experiment(repo.project, "toyc", quick=True, out=tmp_path / "pilot",
                                 loaded_model=fake_model(), findings=False)


def test_a_confirmatory_run_needs_a_committed_registration_of_the_same_code(repo, tmp_path):
    pilot_dir = pilot(repo, tmp_path)  # dev split: allowed without registration
    with pytest.raises(UsageError, match="no registration"):
        run(repo)
    path = registration.register(repo.project, "toyc", pilot_dir)
    reg = json.loads(path.read_text())
    assert set(reg["files"]) == {"toyreg/rq_toy.py", "toyreg/helper.py"}  # the shared instrument too
    rows = {r["hypothesis"]: r for r in reg["power"]}
    assert rows["E"]["smallest_effect"] == 0.5 and rows["E"]["alpha_corrected"] == pytest.approx(0.025)
    assert rows["E"]["n_used"] == 120 and all(r["powered"] for r in reg["power"])
    with pytest.raises(UsageError, match="not committed"):
        run(repo)
    git(repo.root, "add", "-A")
    git(repo.root, "commit", "-qm", "register toyc")
    reg_commit = git(repo.root, "rev-parse", "HEAD")
    (repo.pkg / "helper.py").write_text("def measure(x):\n    return 2 * float(x)\n")
    with pytest.raises(UsageError, match="uncommitted changes"):
        run(repo)
    git(repo.root, "commit", "-qam", "change the instrument")
    with pytest.raises(UsageError, match=r"differs from its registration \(toyreg/helper.py\)"):
        run(repo)
    git(repo.root, "revert", "--no-edit", "HEAD")
    dest = run(repo)
    result = json.loads((dest / "result.json").read_text())
    assert result["provenance"]["registration"]["commit"] == reg_commit
    assert not result["provenance"]["dirty"]
    # history shows the registration commit before the commit the result ran from
    assert git(repo.root, "merge-base", "--is-ancestor", reg_commit, result["provenance"]["commit"]) == ""
    assert not any(t["post_hoc"] for t in result["tests"])


def test_an_amendment_after_a_result_labels_its_new_test_post_hoc(repo, tmp_path):
    pilot_dir = pilot(repo, tmp_path)
    registration.register(repo.project, "toyc", pilot_dir)
    git(repo.root, "add", "-A")
    git(repo.root, "commit", "-qm", "register")
    run(repo)
    write_module(repo.pkg, n=None, extra='\n                Hypothesis("N2", "again", "null", "=0"),')
    with pytest.raises(UsageError, match="--amend"):
        registration.register(repo.project, "toyc", pilot_dir)
    path = registration.register(repo.project, "toyc", pilot_dir, amend="a second equivalence test")
    reg = json.loads(path.read_text())
    assert reg["amendments"][0]["reason"] == "a second equivalence test"
    assert reg["amendments"][0]["results_seen"] and reg["post_hoc"] == ["N2"]
    git(repo.root, "add", "-A")
    git(repo.root, "commit", "-qm", "amend")
    result = json.loads((run(repo) / "result.json").read_text())
    labelled = {t["hypothesis"]: t["post_hoc"] for t in result["tests"]}
    assert labelled == {"E": False, "N": False, "N2": True}
    summary = (repo.project.results / "toyc" / "summary.md").read_text()
    assert "N2 (post hoc)" in summary and "tests added after a result (post hoc): N2" in summary
    assert "n needed for 80% power / n used (primary tests, each pilot): eff (toy:model) " in summary
    assert "(post hoc)" in registration.power_summary(path)


def test_underpowered_designs_and_tests_that_cannot_reject(repo, tmp_path):
    pilot_dir = pilot(repo, tmp_path)
    write_module(repo.pkg, n=10)  # 20 prompts: E needs about 40
    with pytest.raises(UsageError, match=r"underpowered: E \(eff\) needs n=\d+"):
        registration.register(repo.project, "toyc", pilot_dir)
    write_module(repo.pkg, n=10, exploratory=True)
    reg = json.loads(registration.register(repo.project, "toyc", pilot_dir).read_text())
    assert not {r["hypothesis"]: r["powered"] for r in reg["power"]}["E"]
    registration.path_of(repo.project, "toyc").unlink()
    write_module(repo.pkg, n=2, exploratory=True)  # 4 prompts: the sign-flip p floor 0.125 > 0.025
    with pytest.raises(UsageError, match="can never reject"):
        registration.register(repo.project, "toyc", pilot_dir)


def test_a_pilot_must_come_from_the_dev_split(repo, tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "result.json").write_text(json.dumps({"id": "toyc", "provenance": {"split": "confirm"}}))
    (fake / "rows.csv").write_text("prompt_id,eff,null\na,1,0\nb,2,0\n")
    with pytest.raises(UsageError, match="dev split"):
        registration.register(repo.project, "toyc", fake)
    (fake / "result.json").write_text(json.dumps({"id": "other", "provenance": {"split": "dev"}}))
    with pytest.raises(UsageError, match="a result of 'other', not of toyc"):
        registration.register(repo.project, "toyc", fake)


def test_one_pilot_per_model_family_and_every_n_must_be_reached(repo, tmp_path):
    """Two pilots (one per family): a power row per pilot and test, each naming its model; the
    design is refused when the noisier pilot's n is out of reach although the other's is not."""
    quiet = pilot(repo, tmp_path)
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    stored = json.loads((quiet / "result.json").read_text())
    stored["provenance"]["model"] = "gemma3-270m:toy"
    (noisy / "result.json").write_text(json.dumps(stored))
    (noisy / "rows.csv").write_text("prompt_id,eff,null\na,40,0\nb,-40,0.1\nc,35,-0.1\n")
    with pytest.raises(UsageError, match="underpowered"):
        registration.register(repo.project, "toyc", [quiet, noisy])
    reg = json.loads(registration.register(repo.project, "toyc", [quiet]).read_text())
    assert {r["pilot_model"] for r in reg["power"]} == {"toy:model"}


def test_an_underpowered_secondary_test_is_recorded_but_does_not_block(repo, tmp_path):
    """A secondary test on the noisy column with a tiny smallest effect: its power row says it is
    underpowered, and the design (whose primary tests are powered) registers."""
    write_module(repo.pkg, n=None, extra='\n                Hypothesis("S", "tiny", "eff", ">0", family="more", '
                                          'sesoi=0.01),')
    text = (repo.pkg / "rq_toy.py").read_text().replace('exploratory=False)', 'exploratory=False, '
                                                        'families={"primary": "holm", "more": "holm"})')
    (repo.pkg / "rq_toy.py").write_text(text)
    importlib.invalidate_caches()
    if "toyreg.rq_toy" in sys.modules:
        importlib.reload(sys.modules["toyreg.rq_toy"])
    reg = json.loads(registration.register(repo.project, "toyc", pilot(repo, tmp_path)).read_text())
    powered = {r["hypothesis"]: r["powered"] for r in reg["power"]}
    assert powered == {"E": True, "N": True, "S": False}


def test_a_confirmatory_design_from_an_exploratory_one():
    """experiments/research/confirm.py: one primary test, the other former primaries secondary, the
    confirm split, and an unknown primary refused."""
    from experiments.research.confirm import confirmatory
    from tempo_jax.research import Design, Hypothesis

    base = Design(id="x", questions=("9.9",), title="x", primary_metric="m", contrast="c",
                  hypotheses=(Hypothesis("A", "a", "a", ">0"), Hypothesis("B", "b", "b", "=0"),
                              Hypothesis("L", "l", "L*", "<0", family="layers")),
                  margin=0.1, margin_note="u", metrics=("a", "b", "L*"),
                  families={"primary": "holm", "layers": "fdr_bh"}, caveats=("One model (X).", "kept"))
    d = confirmatory(base, id="xc", title="xc", primary="B", n_per_genre=40, sesoi=0.2)
    d.check()
    assert [(h.name, h.family) for h in d.hypotheses] == [("A", "secondary"), ("B", "primary"), ("L", "layers")]
    assert d.hypotheses[1].sesoi == 0.2 and d.split == "confirm" and d.n_per_genre == 40
    assert d.caveats == ("kept",) and d.families["secondary"] == "holm"
    with pytest.raises(ValueError, match="no hypothesis 'Z'"):
        confirmatory(base, id="xc", title="xc", primary="Z", n_per_genre=40)
    # a new, narrower primary: every former primary becomes secondary
    d2 = confirmatory(base, id="xc", title="xc", primary=Hypothesis("P", "one layer", "L03", "<0"),
                      n_per_genre=40, sesoi=0.1)
    assert [(h.name, h.family) for h in d2.hypotheses][:3] == [("P", "primary"), ("A", "secondary"),
                                                               ("B", "secondary")]
    d2.check()
    # its answer leads with the primary test, then the exploratory wording
    from experiments.research.confirm import primary_first
    from tempo_jax.research import TestResult

    tests = [TestResult("A", "a", "secondary", ">0", 30, 0.5, 0.1, 0.9, 0.01, 1.0, verdict="differs (+)"),
             TestResult("B", "b", "primary", "=0", 30, 0.01, -0.02, 0.04, 0.5, 0.001, verdict="no effect within +-0.1")]
    said = primary_first(lambda tests, design: "A first, as it was.")(tests, d)
    assert said == "Primary test B (b): +0.01 [-0.02, +0.04] (no effect within +-0.1). A first, as it was."


def test_pilot_cells_without_a_value_are_nan():
    """A prompt with no value in a column (an empty rows.csv cell) counts as missing, not as text."""
    import math

    assert math.isnan(registration._num("")) and registration._num("0.5") == 0.5
    assert registration._num("prose") == "prose"
