"""The generate command end to end on the default model, and the trace files it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tempo_jax.cli import main
from tempo_jax.trace import SCHEMA_VERSION, Trace


@pytest.mark.slow
def test_generate_command_writes_trace(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["generate", "--prompt", "The cat sat on the", "--max-steps", "6", "--threshold", "0.05",
               "--prune", "--prune-window", "1", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.startswith("The cat sat on the") and "clean text:" in printed
    meta = json.loads((out / "trace_000.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION and len(meta["steps"]) == 6
    assert meta["config"]["threshold"] == 0.05 and meta["config"]["prune"] is True
    for st in meta["steps"]:
        probs = [m["prob"] for m in st["members"]]
        assert probs == sorted(probs, reverse=True)
        assert len(probs) == 1 or min(probs) >= 0.05
    tr = Trace.load(out, "trace_000")
    assert tr.steps() == meta["steps"]
    text = (out / "trace_000.txt").read_text()
    assert "\033[" not in text  # files are plain
    assert any(len(st["members"]) > 1 for st in meta["steps"]) == ("[" in text.split("clean:")[0])


@pytest.mark.slow
@pytest.mark.heavy  # compiles the unstacked layout of the real model (half a minute); the layouts are
# compared on every engine path by tests/unit/model/test_unstacked_layout.py and the golden traces
def test_generate_layout_unstacked_prints_the_same_run(tmp_path, capsys):
    args = ["generate", "--prompt", "The cat sat on the", "--max-steps", "5", "--threshold", "0.05",
            "--max-width", "2", "--no-colour"]
    printed = {}
    for layout in ("stacked", "unstacked"):
        assert main(args + ["--layout", layout, "--out", str(tmp_path / layout)]) == 0
        printed[layout] = capsys.readouterr().out.replace(str(tmp_path / layout), "OUT")
    assert printed["stacked"] == printed["unstacked"] and "clean text:" in printed["stacked"]


def test_render_marks_sets_and_pruned_members():
    arrays = {
        "tokens": np.array([[7, 8], [9, 0]]), "probs": np.array([[0.5, 0.3], [0.9, 0.0]]),
        "slots": np.array([[3, 4], [5, -1]]), "positions": np.array([[3.0, 3.0], [4.0, 0.0]]),
        "valid": np.array([[True, True], [True, False]]), "tau": np.array([0.2, 0.2]),
        "entropy": np.array([1.0, 0.5]), "set_n": np.array([2, 1]),
        "prune_score": np.array([np.nan] * 3 + [0.4, 0.01, np.nan]),
        "pruned_at": np.array([-1, -1, -1, -1, 1, -1]),
    }
    tr = Trace("m", {}, [1, 2], arrays)
    words = {1: "A", 2: "B", 7: " x", 8: " y", 9: " z"}
    decode = lambda ids: "".join(words[i] for i in ids)
    assert tr.render(decode) == "AB[ x/~ y~] z"
    coloured = tr.render(decode, colour=True)
    assert "\033[9;2m y" in coloured and "\033[32m x" in coloured
    assert tr.clean_ids() == [7, 9]
    steps = tr.steps()
    assert steps[0]["members"][1] == {"token": 8, "prob": 0.3, "slot": 4, "position": 3.0,
                                      "pruned": True, "prune_score": pytest.approx(0.01),
                                      "pruned_at": 1}
    assert steps[0]["members"][0]["prune_score"] == pytest.approx(0.4)
