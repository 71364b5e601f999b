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


def test_rq1_position_sharing_experiment(tmp_path):
    import numpy as np

    from tinymodel import save_tiny_with_tokenizer

    model = save_tiny_with_tokenizer(tmp_path / "tiny")
    pf = tmp_path / "prompts.txt"
    pf.write_text("\n".join(f"w{a} w{a + 1} w{a + 2} w{a + 3}" for a in range(5, 35, 5)))
    mod = _load("experiments/research/rq1_position_sharing.py")
    out = tmp_path / "out"
    assert mod.main(["--prompt-file", str(pf), "--model", str(model), "--n-parallel", "2", "3",
                     "--deltas", "0", "0.5", "--out", str(out), "--n-boot", "200"]) == 0
    rep = json.loads((out / "rq1.json").read_text())
    assert rep["axes"] == ["prompt", "n", "delta", "layer", "head"] and len(rep["rows"]) == 4
    with np.load(out / "rq1.npz") as z:
        assert z["member_per_token"].shape == (6, 2, 2, 2, 4)
        # attention groups plus the probe's own slot sum to one
        n = np.array([2, 3])[None, :, None, None, None]
        total = z["sink"] + z["members_total"] + z["prompt_per_token"] * 3 + z["self"]
        np.testing.assert_allclose(total, 1.0, atol=1e-5)
        np.testing.assert_allclose(z["members_total"], z["member_per_token"] * n, rtol=1e-5)
    assert (out / "rq1.png").exists()
