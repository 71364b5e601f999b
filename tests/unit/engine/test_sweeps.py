"""Sweeps: vmapped == one by one, 8 simulated devices (data x model mesh) == 1 device, SIGKILL and
resume == uninterrupted, 2-process multi-host == 1 process, bad specs refused before compute."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from tempo_jax.sweeps import SweepSpec, expand, load_results, run_sweep
from repo import ROOT as REPO_ROOT  # noqa: E402

REPO = REPO_ROOT
SPEC = {
    "prompts": [[5, 9, 13, 17, 21], [7, 8, 9]],
    "thresholds": [0.05, 0.2],
    "siblings": ["isolated", "full"],
    "positions": ["shared", "distinct"],
    "heads": [[], [[0, 1]], [[1, 3], [0, 0]]],
    "seeds": [0],
    "fixed": {"max_steps": 5, "max_width": 4, "prune": True, "prune_window": 1},
    "chunk": 8,
}  # 48 worlds, 6 chunks
DISCRETE = ("tokens", "valid", "set_n", "n_steps", "n_written", "pruned_at", "positions", "tau")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny model saved as a converted folder (reachable from child processes), the spec file and
    the single-process reference run."""
    from conversion.store import save_converted
    from tempo_jax.loading import load_model
    from tinymodel import tiny

    root = tmp_path_factory.mktemp("sweeps")
    _, cfg, params = tiny(0)
    folder = save_converted(root / "tiny", cfg, params)
    spec_file = root / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({**SPEC, "model": str(folder)}))
    model = load_model(str(folder), verbose=False)
    spec = SweepSpec.from_yaml(spec_file)
    ref = run_sweep(spec, root / "ref", model=model, progress=False)
    return {"root": root, "folder": folder, "spec_file": spec_file, "spec": spec, "model": model,
            "ref": ref}


def assert_same(a, b, exact=True):
    assert a.coords == b.coords
    for k in a.arrays:
        if exact or k in DISCRETE:
            np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
        else:
            np.testing.assert_allclose(a.arrays[k], b.arrays[k], atol=1e-5, err_msg=k)


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", **extra}
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def _py(code, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=_env(**env),
                          capture_output=True, text=True, timeout=120)


def _cli(*args, **env):
    return subprocess.Popen([sys.executable, "-m", "tempo_jax.cli", "sweep", *map(str, args),
                             "--no-progress"], cwd=REPO, env=_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _equal_one_by_one(ref, model, grid):
    """Every world of the sweep ``ref`` equals one ``generate`` run with the world's settings."""
    from tempo_jax.engine import generate
    from tempo_jax.interventions import ablate_heads

    cfg, params = model.cfg, model.params
    c = grid.coords
    for b in range(grid.n_worlds):
        ix = grid.index(b)
        g = dataclasses.replace(grid.base, threshold=c["threshold"][ix["threshold"]],
                                siblings=c["siblings"][ix["siblings"]],
                                positions=c["positions"][ix["positions"]], seed=c["seed"][ix["seed"]])
        tr = generate(params, cfg, grid.prompt_ids[ix["prompt"]], g, driver="device",
                      inputs=g.inputs(cfg).replace(interventions=ablate_heads(cfg, grid.heads[ix["heads"]])))
        n = tr.n_steps
        assert int(ref.flat("n_steps")[b]) == n
        for k in ("tokens", "valid", "positions", "set_n", "tau"):
            np.testing.assert_array_equal(ref.flat(k)[b][:n], tr.arrays[k], err_msg=f"{k} world {b}")
        np.testing.assert_allclose(ref.flat("probs")[b][:n], tr.arrays["probs"], atol=1e-5)
        slots = tr.arrays["slots"]
        pruned = np.where(slots >= 0, tr.arrays["pruned_at"][np.clip(slots, 0, None)], -1)
        np.testing.assert_array_equal(ref.flat("pruned_at")[b][:n], pruned)


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_vmapped_equals_one_by_one(setup):
    ref, model, spec = setup["ref"], setup["model"], setup["spec"]
    grid = expand(spec, model.cfg, [list(p) for p in spec.prompts])
    assert ref.world_shape() == grid.shape == (2, 2, 2, 2, 3, 1)
    _equal_one_by_one(ref, model, grid)
    # the summary and the store on disk
    assert (ref.flat("set_n") > 1).any() and (ref.flat("pruned_at") >= 0).any()
    assert "## heads" in (setup["root"] / "ref" / "summary.md").read_text()
    # per-step attention records: named dims; rows exactly for the steps each world ran
    assert ref.dims["sink"][-3:] == ("step", "layer", "head")
    sink, n_steps = ref.flat("sink"), ref.flat("n_steps")
    S = sink.shape[1]
    ran = np.arange(S)[None] < n_steps[:, None]
    assert np.isfinite(sink[ran]).all() and np.isnan(sink[~ran]).all()
    assert ((sink[ran] >= 0) & (sink[ran] <= 1)).all()
    assert_same(ref, load_results(setup["root"] / "ref"))


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_eight_simulated_devices_equal_one(setup):
    out = setup["root"] / "dev8"
    r = _py(f"""
        import dataclasses, jax
        assert jax.device_count() == 8, jax.devices()
        from tempo_jax.sweeps import SweepSpec, run_sweep
        spec = dataclasses.replace(SweepSpec.from_yaml({str(setup['spec_file'])!r}),
                                   mesh={{"data": 4, "model": 2}})
        run_sweep(spec, {str(out)!r}, progress=False)
        """, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert r.returncode == 0, r.stderr[-3000:]
    # the model axis splits matmuls, so floats may differ in the last bits; selections may not
    assert_same(setup["ref"], load_results(out), exact=False)


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_gemma_sweep_equals_one_by_one_and_eight_devices(tmp_path):
    """The same on a tiny Gemma 3 (a 4-position window, crossed by the prompt and the steps)."""
    from conversion.store import save_converted
    from tempo_jax.loading import load_model
    from tinymodel import tiny_gemma

    _, cfg, params = tiny_gemma(0)
    folder = save_converted(tmp_path / "gemma", cfg, params)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({**SPEC, "model": str(folder), "prompts": [[5, 9, 13, 17, 21, 8]],
                                         "thresholds": [0.05], "heads": [[], [[0, 1]]]}))
    model, spec = load_model(str(folder), verbose=False), SweepSpec.from_yaml(spec_file)
    ref = run_sweep(spec, tmp_path / "ref", model=model, progress=False)
    grid = expand(spec, model.cfg, [list(p) for p in spec.prompts])
    assert grid.n_worlds == 8 and (ref.flat("set_n") > 1).any()
    _equal_one_by_one(ref, model, grid)
    r = _py(f"""
        import dataclasses, jax
        assert jax.device_count() == 8, jax.devices()
        from tempo_jax.sweeps import SweepSpec, run_sweep
        spec = dataclasses.replace(SweepSpec.from_yaml({str(spec_file)!r}), mesh={{"data": 4, "model": 2}})
        run_sweep(spec, {str(tmp_path / "dev8")!r}, progress=False)
        """, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same(ref, load_results(tmp_path / "dev8"), exact=False)


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_sigkill_then_resume_equals_uninterrupted(setup):
    out = setup["root"] / "killed"
    r = _py(f"""
        import os, signal
        from tempo_jax.sweeps import SweepSpec, run_sweep
        kill = lambda i, res: os.kill(os.getpid(), signal.SIGKILL)
        run_sweep(SweepSpec.from_yaml({str(setup['spec_file'])!r}), {str(out)!r}, progress=False,
                  on_chunk=kill)
        """)
    assert r.returncode == -9, r.stderr[-3000:]
    done = sorted(p.name for p in (out / "chunks").iterdir())
    assert done == ["chunk_000000"] and not (out / "results.json").exists()
    p = _cli(setup["spec_file"], "--out", out)  # the same command again resumes
    log = p.communicate(timeout=120)[0]
    assert p.returncode == 0, log[-3000:]
    assert len(list((out / "chunks").iterdir())) == 6
    assert_same(setup["ref"], load_results(out))
    # a different spec in the same directory is refused, before any compute
    other = setup["root"] / "other.yaml"
    other.write_text(yaml.safe_dump({**SPEC, "thresholds": [0.3], "model": str(setup["folder"])}))
    p = _cli(other, "--out", out)
    log = p.communicate(timeout=120)[0]
    assert p.returncode != 0 and "different spec" in log


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_two_processes_equal_one(setup):
    out = setup["root"] / "multihost"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [_cli(setup["spec_file"], "--out", out, "--coordinator", f"127.0.0.1:{port}",
                  "--num-processes", 2, "--process-id", i) for i in range(2)]
    logs = [p.communicate(timeout=150)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(l[-2000:] for l in logs)
    assert_same(setup["ref"], load_results(out))


@pytest.mark.parametrize("change, match", [
    ({"colours": ["red"]}, "unknown key"),
    ({"thresholds": []}, "axis 'thresholds' is empty"),
    ({"thresholds": [0.1, 1.5]}, r"threshold 1.5 must be a number in \(0, 1\]"),
    ({"thresholds": [0.0]}, r"threshold 0.0 must be"),
    ({"heads": [[[0, 4]]]}, r"head \[0, 4\] is out of range"),
    ({"heads": [[[2, 0]]]}, r"head \[2, 0\] is out of range"),
    ({"siblings": ["sideways"]}, "unknown sibling rule"),
    ({"positions": ["spiral"]}, "unknown positions variant"),
    ({"fixed": {"threshold": 0.3}}, "is a sweep axis"),
    ({"fixed": {"max_widht": 3}}, "unknown fixed field 'max_widht'"),
    ({"fixed": {"max_width": 0}}, "max_width must be >= 1"),
    ({"chunk": 0}, "chunk must be a positive integer"),
    ({"prompts": [[5, 999]]}, "prompt token ids must lie in"),
])
def test_bad_spec_refused_before_compute(setup, tmp_path, change, match):
    spec = SweepSpec.from_dict({**SPEC, **change}) if "colours" not in change else None
    if spec is None:
        with pytest.raises(ValueError, match=match):
            SweepSpec.from_dict({**SPEC, **change})
        return
    with pytest.raises(ValueError, match=match):
        run_sweep(spec, tmp_path / "out", model=setup["model"], progress=False)
    assert not (tmp_path / "out").exists()  # refused before anything was written or computed


def test_each_head_expands_to_every_head(setup):
    cfg = setup["model"].cfg
    spec = SweepSpec.from_dict({**SPEC, "heads": "each"})
    grid = expand(spec, cfg, SPEC["prompts"])
    assert grid.heads == [((l, h),) for l in range(cfg.num_layers) for h in range(cfg.num_heads)]
    spec2 = SweepSpec.from_dict({**SPEC, "heads": [[], "each"]})
    assert len(expand(spec2, cfg, SPEC["prompts"]).heads) == 1 + cfg.num_layers * cfg.num_heads


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_param_partition_fits_both_layouts():
    """Every leaf gets a spec no longer than its rank, heads split over "model" on both layouts."""
    import jax
    from jax.sharding import PartitionSpec as P

    from tempo_jax.config import ModelConfig
    from tempo_jax.model import init_params, unstack_layers
    from tempo_jax.sweeps.runner import param_partition

    cfg = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=4, rope_theta=1e4, rms_norm_eps=1e-5)
    stacked = init_params(cfg, jax.random.PRNGKey(0))
    for params in (stacked, unstack_layers(stacked)):
        spec = param_partition(params, cfg, 2)
        pairs = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda s, x: (s, x.ndim), spec, params,
                                                                 is_leaf=lambda s: isinstance(s, P)),
                                          is_leaf=lambda t: isinstance(t, tuple) and isinstance(t[0], P))
        assert len(pairs) == len(jax.tree_util.tree_leaves(params))
        assert all(len(s) <= nd for s, nd in pairs)
    assert param_partition(stacked, cfg, 2)["layers"]["wo"] == P(None, "model", None, None)
    assert param_partition(unstack_layers(stacked), cfg, 2)["layers"][1]["wo"] == P("model", None, None)
