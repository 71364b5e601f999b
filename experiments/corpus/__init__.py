"""The research prompt corpus: prompts from third-party packaged text, with references.

``prompts.jsonl`` (built by ``build.py``, described in ``README.md``) holds the dev and test
splits, one record per line; ``confirm.jsonl`` the confirm split (never run before the confirmatory
harness; asked for by name, never part of ``split=None``). This module reads them::

    from experiments.corpus import load
    prompts = load(split="test", genres=["facts"], limit_per_genre=50)

and reads a user's own prompt file (JSONL of the same schema, or plain text, one prompt a line)
with :func:`load_prompt_file`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORPUS_PATH = Path(__file__).resolve().with_name("prompts.jsonl")
MANIFEST_PATH = Path(__file__).resolve().with_name("MANIFEST.json")
CONFIRM_PATH = Path(__file__).resolve().with_name("confirm.jsonl")
SPLITS = ("dev", "test", "confirm")
CUSTOM = "custom"


@dataclass(frozen=True)
class CorpusPrompt:
    """One prompt.

    ``reference``: for prose and code the true continuation (``prompt + reference`` is the original
    text); for facts the gold answer without a leading space; ``""`` for custom prompts.
    ``aliases``: for facts every accepted answer, gold first; otherwise empty.
    ``split``: ``"dev"``, ``"test"`` or ``"confirm"`` in the corpus, ``"custom"`` for prompts from a
    user's file that does not say.
    """

    id: str
    genre: str
    relation: str | None
    prompt: str
    reference: str
    aliases: tuple[str, ...]
    split: str
    source: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


def _hash(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def _from_json(obj: Any, where: str, default_id: str) -> CorpusPrompt:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: 'prompt' must be a string")
    aliases = obj.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise ValueError(f"{where}: 'aliases' must be a list of strings")
    source = obj.get("source") or {}
    if not isinstance(source, dict):
        raise ValueError(f"{where}: 'source' must be an object")
    return CorpusPrompt(
        id=str(obj.get("id") or default_id),
        genre=str(obj.get("genre") or CUSTOM),
        relation=obj.get("relation"),
        prompt=prompt,
        reference=str(obj.get("reference") or ""),
        aliases=tuple(aliases),
        split=str(obj.get("split") or CUSTOM),
        source=source,
    )


def _read_jsonl(path: Path, text: str) -> list[CorpusPrompt]:
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"prompt file {path} line {n} is not valid JSON: {e.msg}") from None
        out.append(_from_json(obj, f"prompt file {path} line {n}", f"{path.stem}/{n}"))
    return out


def _read_all(split: str | None = None) -> list[CorpusPrompt]:
    path = CONFIRM_PATH if split == "confirm" else CORPUS_PATH
    return _read_jsonl(path, path.read_text(encoding="utf-8"))


def available_genres() -> tuple[str, ...]:
    """The genres present in the corpus, in file order."""
    return tuple(dict.fromkeys(p.genre for p in _read_all()))


def load(
    split: str | None = None,
    genres: Sequence[str] | None = None,
    limit_per_genre: int | None = None,
) -> list[CorpusPrompt]:
    """Corpus prompts, in file order (genre, relation, id).

    ``split``: ``"dev"``, ``"test"``, ``"confirm"``, or None for dev and test. ``genres``: a subset of the corpus genres
    (None: all). ``limit_per_genre``: keep at most this many per genre, the ones whose sha256(id)
    is smallest (a stable subsample that spreads over collections and relations).
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)} (or None for dev and test)")
    records = _read_all(split)
    known = tuple(dict.fromkeys(p.genre for p in records))
    if isinstance(genres, str):
        genres = [genres]
    if genres is not None:
        bad = [g for g in genres if g not in known]
        if bad:
            raise ValueError(f"unknown genre {bad[0]!r}; allowed: {', '.join(known)}")
        if not genres:
            raise ValueError(f"genres is empty; allowed: {', '.join(known)} (or None for all)")
    if limit_per_genre is not None and (isinstance(limit_per_genre, bool) or limit_per_genre < 0):
        raise ValueError(f"limit_per_genre must be a non-negative integer or None, got {limit_per_genre!r}")
    keep = [p for p in records
            if (split is None or p.split == split) and (genres is None or p.genre in genres)]
    if limit_per_genre is not None:
        chosen: set[str] = set()
        for g in dict.fromkeys(p.genre for p in keep):
            ids = sorted((p.id for p in keep if p.genre == g), key=_hash)
            chosen.update(ids[:limit_per_genre])
        keep = [p for p in keep if p.id in chosen]
    return keep


def corpus_hash(split: str | None = None) -> str:
    """sha256 (hex) of the bytes of the file holding ``split``: ``confirm.jsonl`` for the confirm
    split, ``prompts.jsonl`` otherwise (so results on dev and test keep their recorded hash)."""
    return hashlib.sha256((CONFIRM_PATH if split == "confirm" else CORPUS_PATH).read_bytes()).hexdigest()


def manifest() -> dict:
    """The build manifest (counts, sources, licences, the hash the file should have)."""
    return json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))


def load_prompt_file(path: str | Path) -> list[CorpusPrompt]:
    """Prompts from a user's file.

    A ``.jsonl`` file, or any file whose first non-blank line starts with ``{``, is read as JSON
    lines of the corpus schema (only ``prompt`` is required). Anything else is plain text: one
    prompt per line (genre ``"custom"``, reference ``""``), blank lines skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"prompt file {path} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    if path.suffix == ".jsonl" or first.lstrip().startswith("{"):
        records = _read_jsonl(path, text)
        usable = [p for p in records if p.prompt.strip()]
        if not usable:
            why = "it has no JSON records" if not records else "every record's 'prompt' is empty"
            raise ValueError(f"prompt file {path} has no usable prompt: {why}")
        return usable
    lines = [line.rstrip("\r") for line in text.split("\n")]
    prompts = [
        CorpusPrompt(id=f"{CUSTOM}/{path.stem}/{n}", genre=CUSTOM, relation=None, prompt=line,
                     reference="", aliases=(), split=CUSTOM, source={"file": path.name, "line": n})
        for n, line in enumerate(lines, start=1)
        if line.strip()
    ]
    if not prompts:
        why = "it is empty" if not text else "every line is blank"
        raise ValueError(f"prompt file {path} has no usable prompt: {why}")
    return prompts
