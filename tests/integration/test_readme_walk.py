"""A new user's walk through README.md: every command of its ```bash blocks and its ```python
block, in order, as written, from a fresh working folder, with small settings where a command
would take minutes. Each must exit 0 with no traceback, and the walk must leave the repository's
tracked files as they were."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from repo import ROOT as REPO_ROOT  # noqa: E402

ROOT = REPO_ROOT

# commands the walk does not run, each with its reason
SKIP = [
    (r"^pip install", "installing is what CI itself does first"),
    (r"python -m pytest", "the test command runs this walk"),
    (r"path/to", "a placeholder for the user's own checkpoint"),
    (r"^python benchmarks/|^bash benchmarks/", "benchmarks take minutes each (README gives their figures)"),
    (r"research run rq1\.1\s*$", "a full experiment on the test split takes minutes"),
    (r"ablate_each_head", "about 20 minutes on 2 cores (README says so and offers small.yaml)"),
    # two more only to keep CI within its time; each runs in its own tests
    (r"--layout unstacked", "a one-minute compile; tests/integration/test_cli_and_trace.py runs this command"),
    (r"research run rq1\.1 --quick", "40 s; tests/experiments/test_research_experiments.py runs quick experiments"),
]
# small settings: (pattern, replacement), applied to the commands that run
SMALL = [
    (r"--max-steps (\d+)", lambda m: f"--max-steps {min(int(m.group(1)), 16)}"),
    (r"--budget (\d+)", lambda m: f"--budget {min(int(m.group(1)), 16)}"),
    (r"--max-tokens (\d+)", lambda m: f"--max-tokens {min(int(m.group(1)), 8)}"),
]


def readme_commands() -> list[tuple[str, str]]:
    """``(kind, text)`` in README order: kind "bash" (one command line, its comment removed) or
    "python" (a whole block)."""
    text = (ROOT / "README.md").read_text()
    out = []
    for lang, body in re.findall(r"```(bash|python)\n(.*?)```", text, re.S):
        if lang == "python":
            out.append(("python", body))
            continue
        for line in body.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            line = re.sub(r"\s{2,}#.*$", "", line).strip()
            for part in line.split(" && "):
                out.append(("bash", part.strip()))
    return out


def test_readme_commands_are_found():
    cmds = [c for k, c in readme_commands() if k == "bash"]
    assert any(c.startswith("tempo-jax generate") for c in cmds)
    assert any(c.startswith("tempo-jax explain") for c in cmds)
    assert sum(k == "python" for k, _ in readme_commands()) == 1


def _skip_reason(cmd: str) -> str | None:
    return next((why for pat, why in SKIP if re.search(pat, cmd)), None)


def _small(cmd: str) -> str:
    for pat, rep in SMALL:
        cmd = re.sub(pat, rep, cmd)
    return cmd


_UNTRACKED = {".git", ".venv", "runs", "results", "__pycache__", ".pytest_cache"}


def _tracked_digest() -> str:
    """A digest of the repository's files: git's tracked files, or without git metadata every file
    outside the folders commands and tools write (_UNTRACKED)."""
    if (ROOT / ".git").exists():
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        names = files.decode().split("\0")
    else:
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not _UNTRACKED & set(p.relative_to(ROOT).parts)
                 and not any(part.endswith(".egg-info") for part in p.parts)]
    h = hashlib.sha256()
    for name in sorted(names):
        p = ROOT / name
        if name and p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.mark.heavy  # minutes: outside the default run (python -m pytest -m heavy)
@pytest.mark.slow
def test_a_new_user_walks_through_the_readme(tmp_path):
    for name in ("experiments", "benchmarks", "docs"):  # what README's commands read, by path
        (tmp_path / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # tempo-jax, python
    before = _tracked_digest()
    ran, skipped = [], []
    for kind, cmd in readme_commands():
        if kind == "python":
            args = [sys.executable, "-c", cmd]
        else:
            if why := _skip_reason(cmd):
                skipped.append((cmd, why))
                continue
            cmd = _small(cmd)
            args = ["bash", "-c", cmd]
        t0 = time.perf_counter()
        r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (cmd, r.returncode, r.stderr[-3000:])
        ran.append(f"{time.perf_counter() - t0:6.1f} s  {cmd.splitlines()[0][:100]}")
    print(f"\nREADME walk: {len(ran)} commands ran, {len(skipped)} skipped:")
    print("\n".join(ran))
    for cmd, why in skipped:
        print(f"  skipped {cmd!r}: {why}")
    assert len(ran) >= 20
    assert _tracked_digest() == before, "README's commands changed tracked files of the repository"
    assert not [p for p in ROOT.rglob("*.html") if p.name in ("FINDINGS.html", "compare.html")
                and "runs" not in p.relative_to(ROOT).parts], "a generated page landed in the source tree"
