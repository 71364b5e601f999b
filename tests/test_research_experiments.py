"""Research-question experiments run end to end on a tiny model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(rel):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rq3_1_probe_experiment(tmp_path):
    from tinymodel import save_tiny_with_tokenizer

    model = save_tiny_with_tokenizer(tmp_path / "tiny")
    pf = tmp_path / "prompts.txt"
    pf.write_text("\n".join(f"w{a} w{a + 1} w{a + 2}" for a in range(5, 45, 5)))
    mod = _load("experiments/research/rq3_1_pruning_survival_probe.py")
    out = tmp_path / "out"
    assert mod.main(["--prompt-file", str(pf), "--model", str(model), "--max-steps", "8",
                     "--threshold", "0.04", "--prune-rho", "0.9", "--out", str(out)]) == 0
    rep = json.loads((out / "rq3_1.json").read_text())
    assert rep["prompts"] == 8 and rep["n_members"] > 0
    assert "note" not in rep and 0 < rep["survival_rate"] < 1  # both classes present
    assert set(rep["layers"]) == {"0", "1"}
    for v in rep["layers"].values():
        assert 0 <= v["test_acc"] <= 1 and 0.5 <= v["majority"] <= 1
