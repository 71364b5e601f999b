"""Where commands write: destinations checked before any compute, written into a temporary sibling,
moved into place at the end; nothing is deleted that tempo-jax did not write.

Two kinds of folder are replaced by a later command:
- a run folder (``generate --out``): it holds ``run.json``, the manifest of what the run wrote; a new
  run replaces those entries and the run-shaped names beside them (``trace_NNN.*``, ``capture*/``,
  e.g. a page ``report`` added) and leaves any other file in the folder alone;
- a converted model (``convert``): it holds ``tempo-jax-model.json``; ``convert --force`` replaces it
  whole, and refuses any other non-empty folder.
A folder from before these markers is recognised by its contents (trace files only; or
``config.json`` with a ``format_version`` beside ``params/``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from tempo_jax.errors import UsageError

RUN_MANIFEST = "run.json"
MODEL_MARKER = "tempo-jax-model.json"
# what `generate` writes into a run folder, by name (a run before run.json existed holds only these)
_RUN_ENTRY = re.compile(r"(trace_\d{3}\.(json|npz|txt|html)|capture(_\d{3})?|run\.json"
                        r"|\.run\.\w+\.partial|\.previous-run\.\w+\.old)")


def check_folder_destination(path, what: str) -> Path:
    """``path`` as a folder to write into: refused in one line if it is a file, or if no folder can
    be made there (an unwritable or missing-and-unmakeable parent). Makes nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} is a file; give a folder (new, or one this command wrote)")
    _check_writable_place(path, what, path if path.exists() else None)
    return path


def check_file_destination(path, what: str) -> Path:
    """``path`` as a file to write: refused in one line if it is a folder or no file can be made
    there (a file where a parent folder should be, or an unwritable parent). Makes nothing."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; give the file to write")
    _check_writable_place(path, what)
    return path


def _check_writable_place(path: Path, what: str, writes_into: Path | None = None) -> None:
    """The nearest existing folder above ``path`` (or ``writes_into``) must be a writable folder."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{what} {path}: {parent} is a file, so no folder can be made there")
    target = writes_into or parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: {target} is not writable")


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: a reader
    (or an interrupted command) never sees half a file."""
    path = Path(path)
    path.absolute().parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.absolute().parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_sibling(dest: Path) -> Path:
    """A new, empty folder beside ``dest`` (hidden, ending in ``.partial``), made with mkdtemp so it
    never collides with, or deletes, anything there."""
    try:
        dest.absolute().parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.absolute().parent))
    except OSError as e:
        raise UsageError(f"{dest}: cannot write there ({e.strerror or e}: {e.filename or dest.parent})") from None
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result gets a normal folder's mode
    return tmp


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """While finished results are moved into place, Ctrl-C is ignored: the few renames complete,
    so the destination never holds half of one run and half of another."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


# ---------------------------------------------------------------- run folders

def previous_run_entries(dest: Path) -> set[str] | None:
    """Names a previous run wrote into ``dest`` (empty if ``dest`` is missing or empty), or None if
    ``dest`` holds something that is not a tempo-jax run."""
    if not dest.exists():
        return set()
    names = {p.name for p in dest.iterdir()}
    manifest = dest / RUN_MANIFEST
    if manifest.is_file():
        try:
            listed = set(json.loads(manifest.read_text())["entries"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        # `report RUN` adds trace_NNN.html after the run: every run-shaped name is the run's too
        return (listed | {n for n in names if _RUN_ENTRY.fullmatch(n)}) & names | {RUN_MANIFEST}
    if all(_RUN_ENTRY.fullmatch(n) for n in names):
        return names
    return None


def check_run_destination(dest, what: str = "--out") -> Path:
    """A run folder may be new, empty, or a previous run's (which the new run replaces); anything
    else is refused in one line, before any compute."""
    dest = check_folder_destination(dest, what)
    if previous_run_entries(dest) is None:
        if (dest / RUN_MANIFEST).is_file():
            raise UsageError(f"{what} {dest}: its {RUN_MANIFEST} cannot be read, so which files a run "
                             "wrote is unknown; give a new or empty folder")
        others = sorted(p.name for p in dest.iterdir() if not _RUN_ENTRY.fullmatch(p.name))
        raise UsageError(f"{what} {dest} holds files that a tempo-jax run did not write ("
                         f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); give a new "
                         "or empty folder, or a previous run's")
    return dest


@contextlib.contextmanager
def staged_run(dest, command: str = "") -> Iterator[Path]:
    """Yield an empty temporary folder (inside ``dest`` if it exists, so every later rename stays on
    one file system; beside it otherwise). When the body finishes, its entries replace the previous
    run in ``dest`` and ``run.json`` lists them; other files in ``dest`` are kept. The previous
    run's entries are moved aside first and put back if a move fails. If the body raises (an
    error or Ctrl-C), the temporary folder is removed and ``dest`` is untouched."""
    dest = check_run_destination(dest)
    tmp = _temporary_sibling(dest / "run") if dest.is_dir() else _temporary_sibling(dest)
    keep = False
    try:
        yield tmp
        old = previous_run_entries(dest)
        if old is None:  # other files appeared in dest while the run ran: they are kept
            old = {p.name for p in dest.iterdir() if _RUN_ENTRY.fullmatch(p.name)}
        old = {n for n in old if not n.endswith(".partial")}  # this run's folder, or another's
        new = sorted(p.name for p in tmp.iterdir())
        (tmp / RUN_MANIFEST).write_text(json.dumps(
            {"written_by": "tempo-jax generate", "command": command, "entries": new}, indent=1) + "\n")
        with _sigint_ignored():
            if not dest.exists():
                os.replace(tmp, dest)
                return
            keep = True  # from here on a failure keeps the new run where it is
            _replace_entries(dest, tmp, sorted(old | {RUN_MANIFEST}), new + [RUN_MANIFEST])
            keep = False
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_entries(dest: Path, tmp: Path, old: list[str], new: list[str]) -> None:
    """Move ``old`` entries of ``dest`` aside, ``new`` entries of ``tmp`` in; on a failure put
    everything back as it was and say, in one line, where the new run was kept."""
    aside = Path(tempfile.mkdtemp(prefix=".previous-run.", suffix=".old", dir=dest))
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for name in old:
            if (dest / name).exists() or (dest / name).is_symlink():
                os.replace(dest / name, aside / name)
                moved_old.append(name)
        for name in new:
            os.replace(tmp / name, dest / name)
            moved_new.append(name)
    except OSError as e:
        for name in moved_new:
            os.replace(dest / name, tmp / name)
        for name in moved_old:
            os.replace(aside / name, dest / name)
        shutil.rmtree(aside, ignore_errors=True)
        raise UsageError(f"--out {dest}: the run could not be moved into place ({e.strerror or e}); "
                         f"the previous run is as it was and the new one is in {tmp}") from None
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def check_sweep_destination(dest) -> Path:
    """A sweep's --out: new, empty, or a sweep's own folder (its sweep.json; a rerun resumes)."""
    dest = check_folder_destination(dest, "--out")
    if dest.exists() and any(dest.iterdir()) and not (dest / "sweep.json").is_file():
        raise UsageError(f"--out {dest} is not empty and holds no sweep (no sweep.json); give a new "
                         "or empty folder, or the folder of the sweep to resume")
    return dest


# ---------------------------------------------------------------- converted models

def is_converted_model(folder: Path) -> bool:
    """True for a folder written by ``tempo-jax convert`` (its marker, or the older layout)."""
    if (folder / MODEL_MARKER).is_file():
        return True
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "format_version" in cfg and (folder / "params").is_dir()


def check_convert_destination(src, out, force: bool) -> Path:
    """``convert SRC OUT``'s destination, refused in one line before anything is read: a file, OUT
    equal to, inside or holding SRC, a non-empty OUT without --force, and with --force any OUT
    that is not a previous conversion."""
    src, out = Path(src).resolve(), Path(out)
    check_folder_destination(out, "OUT")
    o = out.resolve()
    if o == src or src in o.parents:
        raise UsageError(f"OUT {out} is {'the source itself' if o == src else 'inside the source'} "
                         f"{src}; write the converted model to a folder outside it")
    if o in src.parents:
        raise UsageError(f"OUT {out} holds the source {src}; write the converted model elsewhere")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UsageError(f"OUT {out} is not empty; give a new or empty folder, or --force to "
                             "replace a previous conversion")
        if not is_converted_model(out):
            raise UsageError(f"OUT {out} is not a model written by `tempo-jax convert` (no "
                             f"{MODEL_MARKER}); --force replaces only a previous conversion")
    return out


@contextlib.contextmanager
def staged_replace(dest) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest``; when the body finishes it becomes ``dest``
    (a previous ``dest`` is moved aside first and removed last). If the body raises, the temporary
    folder is removed and ``dest`` is untouched. The caller decides whether ``dest`` may be
    replaced (:func:`check_convert_destination`)."""
    dest = Path(dest).absolute()
    tmp = _temporary_sibling(dest)
    try:
        yield tmp
        with _sigint_ignored():
            aside = None
            if dest.exists():
                aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
                os.replace(dest, aside / dest.name)
            os.replace(tmp, dest)
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
