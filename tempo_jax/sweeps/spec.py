"""The sweep spec: axes of worlds (prompts x thresholds x sibling rules x position variants x head
ablations x seeds) plus fixed :class:`GenerationConfig` fields, validated before any compute.

A world is one point of the grid; world b's coordinates are ``np.unravel_index(b, shape)`` over
``AXES`` (C order). Every axis is DATA in the engine, so one compiled program serves every world.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tempo_jax.config import ModelConfig
from tempo_jax.engine.config import GenerationConfig

AXES = ("prompt", "threshold", "siblings", "positions", "heads", "seed")
# spec key -> axis name
_AXIS_KEYS = {"prompts": "prompt", "thresholds": "threshold", "siblings": "siblings",
              "positions": "positions", "heads": "heads", "seeds": "seed"}
_TOP_KEYS = set(_AXIS_KEYS) | {"fixed", "chunk", "model", "mesh"}
# GenerationConfig fields an axis owns (cannot be fixed) and fields a sweep cannot vary/use
_AXIS_FIELDS = {"threshold", "siblings", "positions", "seed"}
_REFUSED_FIXED = {"method": "sweeps run TEMPO generations (method must stay 'tempo')",
                  "capacity": "the sweep picks one common capacity for all worlds"}


def _fail(msg: str):
    raise ValueError(f"bad sweep spec: {msg}")


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """Axes (each a non-empty tuple) and fixed generation settings.

    prompts: strings (tokenised with the model's tokenizer) or token-id lists.
    heads: per world, a tuple of (layer, head) pairs to zero-ablate; ``()`` = no ablation.
    The keyword ``"each"`` (as the whole axis or as one entry) expands to every single head.
    mesh: ``{"data": n or None, "model": m}``: devices per axis (data None = all remaining devices).
    """

    prompts: tuple = ()
    thresholds: tuple[float, ...] = (0.1,)
    siblings: tuple[str, ...] = ("isolated",)
    positions: tuple[str, ...] = ("shared",)
    heads: tuple = ((),)
    seeds: tuple[int, ...] = (0,)
    fixed: dict = dataclasses.field(default_factory=dict)
    chunk: int = 8
    model: str | None = None
    mesh: dict = dataclasses.field(default_factory=lambda: {"data": None, "model": 1})

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "SweepSpec":
        if not isinstance(d, dict):
            _fail(f"expected a mapping at the top level, got {type(d).__name__}")
        unknown = set(d) - _TOP_KEYS
        if unknown:
            _fail(f"unknown key(s) {sorted(unknown)}; axes are {sorted(_AXIS_KEYS)}, other keys "
                  f"{sorted(_TOP_KEYS - set(_AXIS_KEYS))}")
        kw: dict[str, Any] = {}
        for key in _AXIS_KEYS:
            if key not in d:
                continue
            v = d[key]
            if key == "heads" and v == "each":
                v = ["each"]
            if not isinstance(v, (list, tuple)):
                _fail(f"axis {key!r} must be a list, got {v!r}")
            kw[key] = tuple(v)
        if "fixed" in d:
            if not isinstance(d["fixed"], dict):
                _fail(f"'fixed' must be a mapping of GenerationConfig fields, got {d['fixed']!r}")
            kw["fixed"] = dict(d["fixed"])
        for key in ("chunk", "model", "mesh"):
            if key in d:
                kw[key] = d[key]
        return cls(**kw)

    @classmethod
    def from_yaml(cls, path) -> "SweepSpec":
        import yaml

        text = Path(path).read_text()
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            _fail(f"{path} is not valid YAML: {e}")
        return cls.from_dict(d)

    # --- checks and expansion -----------------------------------------------------------------
    def base_config(self) -> GenerationConfig:
        fields = {f.name for f in dataclasses.fields(GenerationConfig)}
        for k in self.fixed:
            if k in _AXIS_FIELDS:
                _fail(f"fixed field {k!r} is a sweep axis; use the axis "
                      f"{[a for a, n in _AXIS_KEYS.items() if n == k or a.rstrip('s') == k][0]!r}")
            if k in _REFUSED_FIXED:
                _fail(f"fixed field {k!r}: {_REFUSED_FIXED[k]}")
            if k not in fields:
                _fail(f"unknown fixed field {k!r}; GenerationConfig fields: "
                      f"{', '.join(sorted(fields - _AXIS_FIELDS - set(_REFUSED_FIXED)))}")
        fixed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in self.fixed.items()}
        return GenerationConfig(**fixed)

    def expand_heads(self, mcfg: ModelConfig) -> list[tuple[tuple[int, int], ...]]:
        """The heads axis with ``"each"`` expanded: a list of ablation sets, each ((l, h), ...)."""
        out: list[tuple[tuple[int, int], ...]] = []
        for entry in self.heads:
            if entry == "each":
                out += [((l, h),) for l in range(mcfg.num_layers) for h in range(mcfg.num_heads)]
                continue
            if not isinstance(entry, (list, tuple)):
                _fail(f"heads entry {entry!r} must be a list of [layer, head] pairs or 'each'")
            pairs: list[tuple[int, int]] = []
            for pair in entry:
                if not isinstance(pair, (list, tuple)) or len(pair) != 2 or \
                        not all(isinstance(x, (int, np.integer)) for x in pair):
                    _fail(f"heads entry {entry!r}: each item must be a [layer, head] pair of ints")
                l, h = int(pair[0]), int(pair[1])
                if not (0 <= l < mcfg.num_layers and 0 <= h < mcfg.num_heads):
                    _fail(f"head [{l}, {h}] is out of range: the model has layers 0..{mcfg.num_layers - 1} "
                          f"and heads 0..{mcfg.num_heads - 1}")
                pairs.append((l, h))
            out.append(tuple(pairs))
        return out

    def validate(self, mcfg: ModelConfig, prompt_ids: Sequence[Sequence[int]]) -> None:
        """Every check, before any compute (``prompt_ids``: the tokenised prompts axis)."""
        from tempo_jax.engine.run import check_request

        for key in _AXIS_KEYS:
            if len(getattr(self, key)) == 0:
                _fail(f"axis {key!r} is empty: give at least one value")
        if not isinstance(self.chunk, int) or self.chunk < 1:
            _fail(f"chunk must be a positive integer, got {self.chunk!r}")
        if not isinstance(self.mesh, dict) or set(self.mesh) - {"data", "model"}:
            _fail(f"mesh must be a mapping with keys 'data' and/or 'model', got {self.mesh!r}")
        for t in self.thresholds:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t <= 1.0:
                _fail(f"threshold {t!r} must be a number in (0, 1]")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
                _fail(f"seed {s!r} must be a non-negative integer")
        if len(set(map(float, self.thresholds))) != len(self.thresholds):
            _fail(f"thresholds contain duplicates: {list(self.thresholds)}")
        base = self.base_config()
        if base.method != "tempo":
            _fail("method must be 'tempo'")
        for sib in self.siblings:
            for pos in self.positions:
                try:
                    dataclasses.replace(base, siblings=sib, positions=pos,
                                        threshold=float(self.thresholds[0])).validate(mcfg)
                except ValueError as e:
                    _fail(str(e))
        self.expand_heads(mcfg)
        if len(prompt_ids) != len(self.prompts):
            _fail("internal: prompt ids do not match the prompts axis")
        for i, ids in enumerate(prompt_ids):
            for pos in self.positions:
                try:
                    check_request(mcfg, dataclasses.replace(base, positions=pos), ids)
                except ValueError as e:
                    _fail(f"prompt {i}: {e}")

    def normalised(self) -> dict:
        """A JSON-able canonical form (the hash of an output directory is taken over it)."""
        return json.loads(json.dumps({
            "prompts": [p if isinstance(p, str) else [int(x) for x in p] for p in self.prompts],
            "thresholds": [float(t) for t in self.thresholds],
            "siblings": list(self.siblings), "positions": list(self.positions),
            "heads": [h if h == "each" else [[int(a), int(b)] for a, b in h] for h in self.heads],
            "seeds": [int(s) for s in self.seeds],
            "fixed": dict(sorted(dataclasses.asdict(self.base_config()).items())),
            "chunk": int(self.chunk), "model": self.model}, sort_keys=True))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.normalised(), sort_keys=True).encode()).hexdigest()[:16]


def tokenize_prompts(spec: SweepSpec, tokenizer) -> list[list[int]]:
    """Token ids per entry of the prompts axis (strings need a tokenizer)."""
    out = []
    for p in spec.prompts:
        if isinstance(p, str):
            if tokenizer is None:
                _fail("prompts are strings but the model has no tokenizer; give token-id lists")
            out.append(list(tokenizer(p).input_ids))
        elif isinstance(p, (list, tuple)) and all(isinstance(x, (int, np.integer)) for x in p):
            out.append([int(x) for x in p])
        else:
            _fail(f"prompt {p!r} must be a string or a list of token ids")
    return out


@dataclasses.dataclass(frozen=True)
class Grid:
    """The expanded world grid: axis coordinates, shape and per-world settings."""

    coords: dict  # axis -> list of JSON-able labels
    shape: tuple[int, ...]
    prompt_ids: list
    heads: list  # expanded heads axis
    base: GenerationConfig

    @property
    def n_worlds(self) -> int:
        return int(np.prod(self.shape))

    def index(self, b: int) -> dict[str, int]:
        return dict(zip(AXES, map(int, np.unravel_index(b, self.shape))))


def expand(spec: SweepSpec, mcfg: ModelConfig, prompt_ids) -> Grid:
    """Validate and expand the spec into a :class:`Grid` (no compute)."""
    spec.validate(mcfg, prompt_ids)
    heads = spec.expand_heads(mcfg)
    coords: dict[str, list] = {
        "prompt": [p if isinstance(p, str) else list(map(int, p)) for p in spec.prompts],
        "threshold": [float(t) for t in spec.thresholds],
        "siblings": list(spec.siblings), "positions": list(spec.positions),
        "heads": [[list(p) for p in h] for h in heads], "seed": [int(s) for s in spec.seeds]}
    shape = tuple(len(coords[a]) for a in AXES)
    return Grid(coords, shape, [list(p) for p in prompt_ids], heads, spec.base_config())
