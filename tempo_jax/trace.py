"""The trace of a run: what was selected, where it went, what got pruned. JSON + npz on disk.

Schema (``schema_version`` 1), JSON object:
  schema_version, model, config (GenerationConfig fields), prompt_ids, timings, steps: list of
  {step, threshold, entropy, members: [{token, prob, slot, position, pruned, prune_score,
  pruned_at}]} (slot -1: never entered the cache, as in compat mode; prune_score null: never scored).
  The file is strict JSON: a number that is not finite (NaN, inf; e.g. the entropy of a beam-search
  step, which beam search does not compute) is written as null.
The npz holds the same arrays: tokens/probs/slots/positions/valid [S,W], tau/entropy/set_n [S],
slot maps slot_step/slot_member/slot_pos/slot_token/alive/prune_score/pruned_at [K].
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
_COLOURS = ["\033[32m", "\033[33m", "\033[36m", "\033[35m", "\033[34m", "\033[31m"]
_PRUNED, _RESET = "\033[9;2m", "\033[0m"
_EOS = "\033[1;7m"  # bold, reverse video


def _strict(x):
    """``x`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


@dataclasses.dataclass
class Trace:
    """Host-side record of one generation (see module docstring for the schema)."""

    model: str
    config: dict
    prompt_ids: list[int]
    arrays: dict[str, np.ndarray]
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_state(cls, st, gcfg, prompt_ids, model_id: str = "", timings=None) -> "Trace":
        names = ["tokens", "probs", "slots", "positions", "valid", "tau", "entropy", "set_n",
                 "slot_step", "slot_member", "slot_pos", "slot_token", "alive", "prune_score",
                 "pruned_at", "fed_tokens", "fed_pos", "fed_n", "cache_len"]
        arrays = {n: np.asarray(getattr(st, n)) for n in names}
        n_steps = int(st.step)
        for n in ["tokens", "probs", "slots", "positions", "valid", "tau", "entropy", "set_n",
                  "fed_tokens", "fed_pos", "fed_n", "cache_len"]:
            arrays[n] = arrays[n][:n_steps]
        arrays["n_written"] = np.asarray(st.n_written)
        return cls(model_id, dataclasses.asdict(gcfg), list(prompt_ids), arrays, dict(timings or {}))

    @property
    def n_steps(self) -> int:
        return len(self.arrays["tau"])

    def steps(self) -> list[dict[str, Any]]:
        a = self.arrays
        out = []
        for s in range(self.n_steps):
            members = []
            for i in np.flatnonzero(a["valid"][s]):
                slot = int(a["slots"][s, i])
                scored = slot >= 0 and not np.isnan(a["prune_score"][slot])
                pruned_at = int(a["pruned_at"][slot]) if slot >= 0 else -1
                members.append({
                    "token": int(a["tokens"][s, i]), "prob": float(a["probs"][s, i]), "slot": slot,
                    "position": float(a["positions"][s, i]), "pruned": pruned_at >= 0,
                    "prune_score": float(a["prune_score"][slot]) if scored else None,
                    "pruned_at": pruned_at if pruned_at >= 0 else None})
            out.append({"step": s, "threshold": float(a["tau"][s]), "entropy": float(a["entropy"][s]),
                        "members": members})
        return out

    def to_json(self) -> dict:
        """The JSON object of the module docstring (non-finite numbers as None)."""
        return _strict({"schema_version": self.schema_version, "model": self.model,
                        "config": self.config, "prompt_ids": self.prompt_ids,
                        "timings": self.timings, "steps": self.steps()})

    def save(self, out_dir, stem: str = "trace") -> tuple[Path, Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        j, z = out_dir / f"{stem}.json", out_dir / f"{stem}.npz"
        j.write_text(json.dumps(self.to_json(), indent=1, allow_nan=False))
        np.savez_compressed(z, **self.arrays)  # type: ignore[arg-type]  # numpy stub: **kwds as bool
        return j, z

    @classmethod
    def load(cls, out_dir, stem: str = "trace") -> "Trace":
        out_dir = Path(out_dir)
        meta = json.loads((out_dir / f"{stem}.json").read_text())
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"trace schema version {meta.get('schema_version')} is not "
                             f"{SCHEMA_VERSION}")
        with np.load(out_dir / f"{stem}.npz") as z:
            arrays = {k: z[k] for k in z.files}
        return cls(meta["model"], meta["config"], meta["prompt_ids"], arrays, meta["timings"])

    # --- text views -------------------------------------------------------------------------
    def render(self, decode, colour: bool = False, prompt: bool = True, eos_ids=()) -> str:
        """Bracket notation ``prompt[ a/ b] c``; pruned members shown as ``~x~`` (or struck in colour);
        a member whose token is in ``eos_ids`` as ``{EOS:<text>}`` (bold reverse video in colour)."""
        eos = {int(t) for t in eos_ids}
        parts = [decode(self.prompt_ids)] if prompt else []
        for st in self.steps():
            words = []
            for i, m in enumerate(st["members"]):
                w = decode([m["token"]])
                if m["token"] in eos:
                    w = f"{_EOS}{{EOS:{w}}}{_RESET}" if colour else f"{{EOS:{w}}}"
                    if m["pruned"]:
                        w = f"{_PRUNED}{w}{_RESET}" if colour else f"~{w}~"
                elif m["pruned"]:
                    w = f"{_PRUNED}{w}{_RESET}" if colour else f"~{w}~"
                elif colour and len(st["members"]) > 1:
                    w = f"{_COLOURS[i % len(_COLOURS)]}{w}{_RESET}"
                words.append(w)
            parts.append(words[0] if len(words) == 1 else "[" + "/".join(words) + "]")
        return "".join(parts)

    def clean_ids(self, eos_ids=()) -> list[int]:
        """Token ids along the most probable alive member of each step. With ``eos_ids``, the path
        ends where that member is an EOS token (the EOS itself is left out); generation may go on
        past it when EOS was a member but not the top one, and the steps after it are not part of
        this path. Without ``eos_ids`` every step contributes."""
        eos = {int(t) for t in eos_ids}
        out = []
        for st in self.steps():
            alive = [m for m in st["members"] if not m["pruned"]] or st["members"]
            if alive[0]["token"] in eos:
                break
            out.append(alive[0]["token"])
        return out

    def clean_text(self, decode, eos_ids=()) -> str:
        """The prompt and :meth:`clean_ids` decoded."""
        return decode(self.prompt_ids + self.clean_ids(eos_ids))
