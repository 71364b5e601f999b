"""``tempo-jax convert SRC OUT``: a Hugging Face folder or GGUF file -> converted tempo-jax folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conversion.common import CheckpointError
from conversion.hf import PICKLE_SUFFIXES
from conversion.store import write_converted


class _FirstTensorBar:
    """A progress bar that appears with the first tensor read, so that a checkpoint refused on its
    config leaves one error line and no bar."""

    def __init__(self, **kw):
        self.kw, self.bar = kw, None

    def update(self, n: int = 1) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=None, **self.kw)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_checkpoint(src, dtype=np.float32, progress: bool = False):
    """Read ``src`` (HF folder or ``.gguf`` file) -> ``(cfg, params, tokenizer or None)``."""

    src = Path(src)
    if src.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{src} is a pickled checkpoint; loading pickle can run arbitrary code, so it is refused. "
            "Convert it to safetensors first (with torch and transformers: "
            "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(out, safe_serialization=True)) "
            "and pass that folder.")
    bar = _FirstTensorBar(desc=f"converting {src.name}", unit="tensor", disable=not progress)
    try:
        if src.is_dir():
            from conversion.hf import load_hf_folder

            cfg, params = load_hf_folder(src, dtype, bar)
            tokenizer = None
            if (src / "tokenizer.json").exists():
                from transformers import PreTrainedTokenizerFast

                tokenizer = PreTrainedTokenizerFast.from_pretrained(str(src))
        elif src.suffix == ".gguf":
            from conversion.gguf_file import _open, load_gguf
            from conversion.tokenizer import tokenizer_from_gguf

            cfg, params = load_gguf(src, dtype, bar)
            tokenizer = tokenizer_from_gguf(_open(src))
        elif not src.exists():
            raise CheckpointError(f"{src} does not exist")
        else:
            raise CheckpointError(f"{src}: expected a Hugging Face model folder or a .gguf file")
    finally:
        bar.close()
    return cfg, params, tokenizer


def convert(src, out, dtype=np.float32, progress: bool = False, force: bool = False) -> Path:
    """Convert ``src`` and save it to ``out`` (orbax params + config + tokenizer + marker).

    ``out`` is checked before ``src`` is read: it must be new or empty, or, with ``force``, a
    previous conversion (which is replaced); never the source or a folder inside or around it.
    The model is written into a temporary sibling and renamed at the end."""
    from tempo_jax.destinations import check_convert_destination, staged_replace

    check_convert_destination(src, out, force)
    with staged_replace(out) as tmp:  # made first: an unwritable place is refused before reading
        cfg, params, tokenizer = read_checkpoint(src, dtype, progress)
        write_converted(tmp, cfg, params, tokenizer, source=Path(src).name)
    return Path(out).absolute()
