"""Nothing lost, nothing deleted: every case through the real CLI in a subprocess, with the exit
status, the one line on stderr and the file system before and after. Ctrl-C is a real SIGINT sent
to a running process."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from test_front_door import assert_user_error as assert_one_error  # exit 2, one line, no traceback
from repo import ROOT as REPO_ROOT  # noqa: E402

ROOT = REPO_ROOT
CLI = [sys.executable, "-m", "tempo_jax.cli"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "XLA_FLAGS")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'tests'}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(*args, cwd, timeout=240):
    return subprocess.run(CLI + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=_env())


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> sha256 of a file's bytes, or "dir"."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(folder: Path) -> list[str]:
    """Temporary siblings a command would have left behind."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith((".partial", ".old")))


def interrupt(args, cwd, ready, timeout=240):
    """Start the CLI, send SIGINT once ``ready()`` is true (polled), return (rc, stdout, stderr)."""
    p = subprocess.Popen(CLI + [str(a) for a in args], cwd=cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env())
    err: list[str] = []
    out: list[str] = []
    pumps = [threading.Thread(target=lambda f=f, acc=acc: acc.extend(iter(lambda: f.read(1), "")), daemon=True)
             for f, acc in ((p.stderr, err), (p.stdout, out))]
    for t in pumps:
        t.start()
    try:
        deadline = time.monotonic() + timeout
        while not ready("".join(err)):
            assert p.poll() is None, f"finished before it could be interrupted: {''.join(err)[-2000:]}"
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.02)
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=120)
    finally:
        if p.poll() is None:  # a failed check above, or a child that ignored the signal
            p.kill()
            p.wait()
    for t in pumps:
        t.join(timeout=10)
    return rc, "".join(out), "".join(err)


def assert_interrupted(rc, err, *words):
    assert rc == 130, (rc, err[-3000:])
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("tempo-jax: interrupted"), err[-3000:]
    assert [ln for ln in err.splitlines() if ln.startswith("tempo-jax:")] == [last]
    for w in words:
        assert w in last, (w, last)


def steps_done(at_least: int):
    """ready(): the progress bar shows at least ``at_least`` finished steps."""
    def ready(err: str) -> bool:
        got = re.findall(r"tempo:\s+\d+%\|[^|]*\|\s*(\d+)/\d+", err)
        return bool(got) and int(got[-1]) >= at_least
    return ready


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder holding a tiny converted model with a 4096-position context (runs long enough to
    interrupt) and a small GGUF to convert."""
    from test_bad_inputs import _write_small_gguf
    from tinymodel import save_tiny_with_tokenizer

    root = tmp_path_factory.mktemp("nothing_lost")
    save_tiny_with_tokenizer(root / "tiny", max_positions=4096)
    _write_small_gguf(root / "small.gguf")
    return root


# ---------------------------------------------------------------- convert

def test_convert_refuses_a_non_empty_out_and_keeps_its_files(work, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert_one_error(cli("convert", work / "small.gguf", out, cwd=tmp_path), "not empty", "--force")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_convert_never_writes_over_or_into_its_source(work, tmp_path, where):
    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"weights")
    out = {"same": src, "inside": src / "converted", "around": tmp_path}[where]
    args = [src / "model.safetensors", tmp_path, "--force"] if where == "around" else [src, out]
    before = snapshot(tmp_path)
    r = cli("convert", *args, cwd=tmp_path)
    assert_one_error(r, {"same": "is the source itself", "inside": "inside the source",
                         "around": "holds the source"}[where])
    assert snapshot(tmp_path) == before


def test_convert_to_an_existing_file(work, tmp_path):
    (tmp_path / "model-jax").write_text("a file")
    before = snapshot(tmp_path)
    assert_one_error(cli("convert", work / "small.gguf", tmp_path / "model-jax", cwd=tmp_path), "is a file")
    assert snapshot(tmp_path) == before


def test_convert_force_replaces_only_a_previous_conversion(work, tmp_path):
    out = tmp_path / "converted"
    r = cli("convert", work / "small.gguf", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "params", "tempo-jax-model.json", "tokenizer"]
    first = snapshot(out)
    assert_one_error(cli("convert", work / "small.gguf", out, cwd=tmp_path), "not empty")
    assert snapshot(out) == first
    r = cli("convert", work / "small.gguf", out, "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "tempo-jax-model.json").exists() and leftovers(tmp_path) == []
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")  # looks like a model folder, but no conversion marker
    before = snapshot(tmp_path)
    assert_one_error(cli("convert", work / "small.gguf", other, "--force", cwd=tmp_path),
                     "tempo-jax-model.json", "only a previous conversion")
    assert snapshot(tmp_path) == before


def test_interrupted_convert_leaves_nothing(tmp_path):
    """A real SIGINT while convert reads its source (a GGUF that takes a while: 12 layers, d 1024)."""
    from test_bad_inputs import _write_small_gguf

    src = tmp_path / "big.gguf"
    _write_small_gguf(src, E=1024, F=2048, V=4096, H=8, G=8, D=128, n_layers=12)
    out = tmp_path / "converted"
    rc, _, err = interrupt(["convert", src, out], tmp_path,
                           lambda e: re.search(r"converting big.gguf: [1-9]\d* ?tensor", e) is not None)
    assert_interrupted(rc, err, "nothing written")
    assert not out.exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------- generate: destinations

@pytest.mark.parametrize("case", ["file", "under-a-file", "unwritable"])
def test_generate_checks_out_before_loading_the_model(work, tmp_path, case):
    (tmp_path / "f").write_text("a file")
    out = {"file": tmp_path / "f", "under-a-file": tmp_path / "f" / "run",
           "unwritable": Path("/proc/tempo-jax-test/run")}[case]
    before = snapshot(tmp_path)
    r = cli("generate", "--model", work / "tiny", "--prompt", "w5 w9", "--out", out, cwd=tmp_path)
    # root may pass os.access on /proc and fail at mkdir; anyone else fails the access check
    assert_one_error(r, str(out))
    if case == "unwritable":
        assert "cannot write there" in r.stderr or "is not writable" in r.stderr, r.stderr
    assert r.stdout == "" and snapshot(tmp_path) == before


def test_generate_refuses_a_folder_of_other_files(work, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    r = cli("generate", "--model", work / "tiny", "--prompt", "w5 w9", "--out", out, cwd=tmp_path)
    assert_one_error(r, "notes.txt", "did not write")
    assert r.stdout == "" and snapshot(tmp_path) == before


def test_generate_replaces_its_previous_run_and_keeps_other_files(work, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w5 w9\nw7 w8 w9\n")
    out = tmp_path / "run"
    r = cli("generate", "--model", work / "tiny", "--prompt-file", prompts, "--max-steps", 3,
            "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "=== prompt 1 of 2: trace_000 ===" in r.stdout and "=== prompt 2 of 2: trace_001 ===" in r.stdout
    assert {p.name for p in out.iterdir()} == {"run.json", *(f"trace_00{k}.{x}" for k in (0, 1)
                                                             for x in ("json", "npz", "txt"))}
    (out / "notes.txt").write_text("mine: written after the first run")
    r = cli("generate", "--model", work / "tiny", "--prompt", "w6", "--max-steps", 3, "--out", out,
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "=== prompt" not in r.stdout  # one prompt: no label
    assert {p.name for p in out.iterdir()} == {"run.json", "notes.txt", "trace_000.json",
                                               "trace_000.npz", "trace_000.txt"}
    assert (out / "notes.txt").read_text() == "mine: written after the first run"
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- generate: Ctrl-C and capture size

def test_ctrl_c_during_generate_writes_nothing(work, tmp_path):
    out = tmp_path / "run"
    rc, stdout, err = interrupt(["generate", "--model", work / "tiny", "--prompt", "w5 w9", "--method",
                                 "greedy", "--max-steps", 4000, "--out", out], tmp_path, steps_done(5))
    assert_interrupted(rc, err, "after step", "of 4000", "nothing written")
    n = int(re.search(r"after step (\d+) of", err).group(1))
    assert 5 <= n < 4000
    assert not out.exists() and leftovers(tmp_path) == [] and stdout == ""


def test_ctrl_c_during_html_run_keeps_the_previous_run_intact(work, tmp_path):
    out = tmp_path / "run"
    r = cli("generate", "--model", work / "tiny", "--prompt", "w5 w9", "--max-steps", 4, "--html",
            "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--html writes up to" in r.stderr  # the capture's size is printed before the run
    page = (out / "trace_000.html").read_text()
    assert "tempo-jax run run/trace_000" in page and ".partial" not in page  # named as it ends up
    before = snapshot(tmp_path)
    assert {"capture", "trace_000.html", "run.json"} <= set(before) | {p.name for p in out.iterdir()}
    rc, _, err = interrupt(["generate", "--model", work / "tiny", "--prompt", "w7 w8", "--method",
                            "greedy", "--max-steps", 3000, "--html", "--max-capture-mb", 4096,
                            "--out", out], tmp_path, steps_done(5))
    assert_interrupted(rc, err, "nothing written")
    assert snapshot(tmp_path) == before  # the old trace and capture, byte for byte; no partial files
    r = cli("report", out, cwd=tmp_path)
    assert r.returncode == 0 and "disagree" not in r.stdout + r.stderr


def test_a_capture_over_the_limit_is_refused_before_it_runs(work, tmp_path):
    out = tmp_path / "run"
    r = cli("generate", "--model", work / "tiny", "--prompt", "w5 w9", "--max-steps", 3000, "--html",
            "--out", out, cwd=tmp_path)
    assert_one_error(r, "--html would capture up to", "GB", "over the 512 MB limit", "--max-capture-mb")
    assert r.stdout == "" and not out.exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------- values and damaged folders

@pytest.mark.parametrize("args, words", [
    (["--threshold-final", "2"], ["--threshold-final", "(0, 1]", "2.0"]),
    (["--min-steps", "-1"], ["--min-steps", ">= 0"]),
    (["--prune-rho", "1.5"], ["--prune-rho", "[0, 1]"]),
    (["--prune-rho", "nan"], ["--prune-rho", "nan"]),
    (["--offset-delta", "-0.1"], ["--offset-delta", ">= 0"]),
    (["--temperature", "0"], ["--temperature", "> 0"]),
    (["--max-capture-mb", "0"], ["--max-capture-mb", "> 0"]),
], ids=["threshold-final", "min-steps", "prune-rho", "prune-rho-nan", "offset-delta", "temperature",
        "max-capture-mb"])
def test_values_outside_their_meaning_are_refused(work, tmp_path, args, words):
    r = cli("generate", "--model", work / "tiny", "--prompt", "w5", "--out", tmp_path / "run", *args,
            cwd=tmp_path)
    assert_one_error(r, *words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage, words", [
    ("no-params", ["params is missing", "convert the checkpoint again"]),
    ("garbage-config", ["config.json: not valid JSON"]),
    ("foreign-config", ["config.json", "format version"]),
    ("empty-params", ["params: cannot be restored"]),
])
def test_a_damaged_converted_folder_names_the_broken_file(work, tmp_path, damage, words):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(work / "tiny", folder)
    if damage == "no-params":
        shutil.rmtree(folder / "params")
    elif damage == "garbage-config":
        (folder / "config.json").write_text("garbage{")
    elif damage == "foreign-config":
        (folder / "config.json").write_text('{"hidden_size": 8}')
    else:
        shutil.rmtree(folder / "params")
        (folder / "params").mkdir()
    r = cli("generate", "--model", folder, "--prompt", "w5", "--out", tmp_path / "run", cwd=tmp_path)
    assert_one_error(r, str(folder), *words)
    assert not (tmp_path / "run").exists()


def test_range_declarations_check_every_bounded_field():
    """GenerationConfig's ranges, in-process: the edges of each kind of interval."""
    import dataclasses

    from tempo_jax.engine import GenerationConfig

    ok = dict(threshold=1.0, threshold_final=1.0, prune_rho=0.0, min_steps=0, offset_delta=0.0,
              top_p=1.0, draft_len=64, relu_a=0.0)
    GenerationConfig(**ok).validate()
    for field, bad in [("threshold", 0.0), ("threshold", float("inf")), ("prune_rho", 1.0001),
                       ("relu_a", 1.0), ("draft_len", 65), ("max_steps", 2.5), ("top_k", True),
                       ("isolate_above", -0.5), ("prune_window", 0)]:
        with pytest.raises(ValueError, match=f"^{field} must be"):
            GenerationConfig(**{field: bad}).validate()
    bounded = [f.name for f in dataclasses.fields(GenerationConfig) if "range" in f.metadata]
    assert {"threshold", "threshold_final", "prune_rho", "min_steps", "offset_delta", "max_width"} <= set(bounded)


# ---------------------------------------------------------------- sweep

def test_ctrl_c_during_a_sweep_keeps_finished_chunks_and_the_rerun_resumes(work, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "prompts": [[5, 9, 13], [7, 8, 9]], "thresholds": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4],
        "siblings": ["isolated", "full"], "positions": ["shared", "distinct"], "heads": [[]],
        "seeds": [0], "fixed": {"max_steps": 6, "max_width": 4}, "chunk": 1,
        "model": str(work / "tiny")}))
    out = tmp_path / "sweep"
    chunks = out / "chunks"
    finished = lambda: {p.name for p in chunks.iterdir() if re.fullmatch(r"chunk_\d{6}", p.name)} \
        if chunks.is_dir() else set()
    rc, _, err = interrupt(["sweep", spec, "--out", out], tmp_path, lambda e: len(finished()) >= 2)
    assert_interrupted(rc, err, "finished chunks are kept", "rerun the same command to resume")
    assert int(re.search(r"interrupted; (\d+) finished chunks", err).group(1)) >= 2
    kept = finished()
    assert 2 <= len(kept) < 64 and not (out / "results.json").exists()
    r = cli("sweep", spec, "--out", out, "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "results.json").exists()


def test_sweep_refuses_a_folder_of_other_files(work, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert_one_error(cli("sweep", ROOT / "experiments" / "sweeps" / "ablate_each_head.yaml", "--out", out,
                         cwd=tmp_path), "holds no sweep")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- research run

def test_ctrl_c_during_a_research_run_keeps_finished_prompts_and_the_rerun_resumes(work, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"w{i % 50 + 5} w9 w7 w8 w{i % 30 + 10} w11\n" for i in range(1, 41)))
    out = tmp_path / "result"
    # a seed of its own: the per-prompt cache (keyed by model, seed, design, prompts) starts empty
    seed = int.from_bytes(os.urandom(3), "little")
    args = ["research", "run", "rq2.2", "--model", work / "tiny", "--prompt-file", prompts, "--out", out,
            "--seed", seed]

    def ready(err: str) -> bool:
        got = re.findall(r"rq2\.2 prompts:\s+\d+%\|[^|]*\|\s*(\d+)/40", err)
        return bool(got) and int(got[-1]) >= 3

    rc, _, err = interrupt(args, tmp_path, ready)
    assert_interrupted(rc, err, "of 40 prompts' results are kept", "rerun the same command to resume")
    kept = int(re.search(r"interrupted; (\d+) of 40", err).group(1))
    assert 3 <= kept < 40 and not out.exists()
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "result.json").exists() and leftovers(tmp_path) == []


def test_research_run_refuses_an_out_folder_of_other_files(work, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    r = cli("research", "run", "rq2.2", "--model", work / "tiny", "--quick", "--out", out, cwd=tmp_path)
    assert_one_error(r, "holds no experiment result")
    assert snapshot(tmp_path) == before


def test_ctrl_c_inside_a_deferred_block_arrives_after_it():
    """errors.sigint_deferred: a real SIGINT to this process inside the block lets the block finish,
    then arrives as KeyboardInterrupt; the previous handler is back afterwards."""
    from tempo_jax.errors import sigint_deferred

    before = signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here; the block goes on
            done.append("finished")
    assert done == ["finished"] and signal.getsignal(signal.SIGINT) is before
    with sigint_deferred():  # no signal: nothing raised
        done.append("again")
    assert done == ["finished", "again"]
