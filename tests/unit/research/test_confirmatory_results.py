"""Every committed confirmatory result can be verified against its registration: it ran from a
clean tree on the confirm split, names a registration whose file is committed, carries that
registration's module hash (the code that ran is the code registered, or an amendment's), and the
registration commit is an ancestor of the commit the result ran from."""

from __future__ import annotations

import json
import subprocess

import pytest

from experiments.research import PROJECT
from tempo_jax.research.registration import CONFIRMATORY, path_of

RESULTS = sorted(p for p in PROJECT.results.glob("*/result.json")
                 if (json.loads(p.read_text()).get("provenance") or {}).get("split") in CONFIRMATORY)


def _git(*args) -> int:
    """git's exit status in the repository (128 when git itself is missing)."""
    try:
        return subprocess.run(["git", *args], cwd=PROJECT.root, capture_output=True, text=True).returncode
    except OSError:
        return 128


@pytest.mark.parametrize("path", RESULTS, ids=[p.parent.name for p in RESULTS])
def test_confirmatory_result_matches_its_registration(path):
    res = json.loads(path.read_text())
    prov = res["provenance"]
    assert not prov["dirty"] and not prov["quick"], "a confirmatory result runs from a clean tree, in full"
    reg_meta = prov["registration"]
    assert reg_meta, "a confirmatory result names its registration"
    reg = json.loads(path_of(PROJECT, res["id"]).read_text())
    hashes = {reg["module_hash"]} | {a["previous_module_hash"] for a in reg["amendments"]}
    assert reg_meta["module_hash"] in hashes
    assert res["design"]["split"] == reg["design"]["split"] == prov["split"]
    assert {t["hypothesis"] for t in res["tests"] if t.get("post_hoc")} <= set(reg["post_hoc"])
    have = _git("cat-file", "-e", f"{reg_meta['commit']}^{{commit}}") == 0 and \
        _git("cat-file", "-e", f"{prov['commit']}^{{commit}}") == 0
    if not have:
        pytest.skip(reason="this checkout lacks the history of the registration (a shallow clone, or no git)")
    assert _git("merge-base", "--is-ancestor", reg_meta["commit"], prov["commit"]) == 0, \
        "the registration commit precedes the commit the result ran from"


def test_there_are_confirmatory_results():
    assert RESULTS, "no confirmatory result is committed"
