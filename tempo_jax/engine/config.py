"""Generation settings. ``GenerationConfig`` is what a user sets; it splits into a hashable
:class:`StaticSpec` (changes the compiled program: width, steps, selection method, rules) and
:class:`~tempo_jax.engine.inputs.EngineInputs` (arrays: thresholds, pruning weights, sibling codes,
PRNG key, interventions), so sweeps over the inputs never recompile.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.config import ModelConfig
from tempo_jax.engine.inputs import EngineInputs
from tempo_jax.engine.pruning import PruneRule, PruneTiming
from tempo_jax.engine.methods import Compat, Method
from tempo_jax.engine.rules import PositionVariant
from tempo_jax.engine.siblings import SiblingRule
from tempo_jax.engine.schedules import Schedule, thresholds
from tempo_jax.engine.selection import CombineRule, EosRule, Greedy, Sample, Threshold

MAX_DRAFT_LEN = 64


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: ``lo``/``hi`` bounds (None: unbounded), each closed
    unless marked open; NaN and infinities are never in range. ``what`` names the unit."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    what: str = ""

    def contains(self, value) -> bool:
        try:
            v = float(value)
        except OverflowError:  # an int too large for a float is out of every range here
            return False
        return (np.isfinite(v)
                and (self.lo is None or (v > self.lo if self.lo_open else v >= self.lo))
                and (self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)))

    def text(self) -> str:
        unit = f" ({self.what})" if self.what else ""
        if self.lo is not None and self.hi is not None:
            return (f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
                    f"{')' if self.hi_open else ']'}{unit}")
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}{unit}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}{unit}"
        return f"a finite number{unit}"

    def check(self, name: str, value) -> None:
        """A one-line ValueError unless ``value`` (or None, where the setting may be unset) is in range."""
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                or not self.contains(value):
            raise ValueError(f"{name} must be {self.text()}, got {value!r}")


def _option(default, help: str, *, lo=None, hi=None, lo_open=False, hi_open=False, what="",
            choices: Any = None):
    """A GenerationConfig field with what the command line and :meth:`GenerationConfig.validate`
    read from it: its help text, its choices (a Choice family or an enum of ``rules``) and, for a number, its Range
    (every numeric field has one; unbounded ones still refuse NaN and infinities)."""
    meta: dict = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    elif lo is not None or hi is not None or (isinstance(default, (int, float))
                                              and not isinstance(default, bool)):
        meta["range"] = Range(lo, hi, lo_open, hi_open, what)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Every knob of a generation run. Words follow ``semantics.md``."""

    max_steps: int = _option(32, "logical steps (candidate sets)", lo=1, what="steps")
    max_width: int = _option(8, "W: most members per set", lo=1, what="members per set")
    threshold: float = _option(0.1, "tau_0: keep every token with p >= tau", lo=0.0, hi=1.0, lo_open=True)
    schedule: str = _option("constant", "how tau moves from --threshold to --threshold-final over the "
                                         "steps", choices=Schedule)
    threshold_final: float | None = _option(None, "tau at the last step (scheduled runs; unset: tau_0)",
                                            lo=0.0, hi=1.0, lo_open=True)
    schedule_k: float = _option(3.0, "exponential schedule: steepness (0 is linear)")
    bezier_p1: float = _option(0.25, "bezier schedule: first control point", lo=0.0, hi=1.0)
    bezier_p2: float = _option(0.75, "bezier schedule: second control point", lo=0.0, hi=1.0)
    relu_a: float = _option(0.5, "relu schedule: share of the steps before tau starts to move",
                            lo=0.0, hi=1.0, hi_open=True)
    siblings: str = _option("isolated", "which same-step siblings a member attends to", choices=SiblingRule)
    isolate_above: float | None = _option(
        None, "adaptive isolation: a step whose distribution has entropy above this (nats) isolates "
              "its siblings (unset: never)", lo=0.0, what="nats")
    isolate_size_above: int | None = _option(
        None, "adaptive isolation: a set with more members than this is isolated (unset: never)",
        lo=1, what="members")
    positions: str = _option("shared", "logical (RoPE) positions of a set's members", choices=PositionVariant)
    offset_delta: float = _option(0.001, "offset positions: member i at P + i*delta", lo=0.0, what="positions")
    combine: str = _option("mixture", "how the members' next-token distributions are combined",
                           choices=CombineRule)
    eos: str = _option("top", "stop when EOS is the top member, any member, or all members", choices=EosRule)
    min_steps: int = _option(0, "steps before EOS may stop the run", lo=0, what="steps")
    prune: bool = _option(False, "retroactive pruning on")
    prune_window: int = _option(2, "steps of later attention a member is scored on before it is judged",
                                lo=1, what="steps")
    prune_timing: str = _option("window", "judge once the window is full, or at every step while it is "
                                          "open", choices=PruneTiming)
    prune_rule: str = _option("relative", "how a member's attention score is turned into keep or prune",
                              choices=PruneRule)
    prune_rho: float = _option(0.5, "relative rule: prune below rho x the set's mean score", lo=0.0, hi=1.0)
    prune_theta: float = _option(0.01, "absolute/sigmoid rule: score threshold", lo=0.0, hi=1.0)
    prune_k: float = _option(100.0, "sigmoid rule: steepness", lo=0.0, lo_open=True)
    prune_layers: tuple[int, ...] | None = _option(
        None, "comma-separated layers whose attention scores members (unset: all)")
    prune_layer_weights: tuple[float, ...] | None = _option(
        None, "comma-separated weights, one per chosen layer (unset: equal)")
    prune_heads: tuple[int, ...] | None = _option(
        None, "comma-separated heads whose attention scores members (unset: all)")
    method: str = _option("tempo", "TEMPO, or a baseline: greedy, sampling, speculative (greedy's tokens, "
                                   "drafted by the first layers), beam search", choices=Method)
    temperature: float = _option(1.0, "sampling temperature", lo=0.0, lo_open=True)
    top_k: int = _option(0, "sampling: keep the k most probable (0: off)", lo=0, what="0 = off")
    top_p: float = _option(1.0, "sampling: nucleus mass", lo=0.0, hi=1.0, lo_open=True)
    compat: str = _option("none", "upstream: replicate the original PyTorch implementation's feed sequence",
                          choices=Compat)
    draft_layers: int | None = _option(None, "speculative: the draft is the model's first k layers "
                                             "(unset: half)", lo=1, what="layers")
    draft_len: int = _option(4, "speculative: tokens the draft proposes per full-model forward",
                             lo=1, hi=MAX_DRAFT_LEN)
    beam_width: int = _option(4, "beam search: beams kept", lo=1, what="beams")
    length_penalty: float = _option(1.0, "beam search: rank beams by score / length**penalty")
    seed: int = _option(0, "PRNG seed (sampling; recorded in the trace)")
    capacity: int | None = _option(None, "KV-cache slots (unset: prompt bucket + max steps x max width)",
                                   lo=1, what="slots")
    prompt_bucket: int = _option(32, "prompts are padded to a multiple of this (fewer compiles)",
                                 lo=1, what="tokens")

    def validate(self, model: ModelConfig | None = None) -> None:
        """Raise ValueError with a clear message for any bad setting (before any compute)."""
        for f in dataclasses.fields(self):
            if "choices" in f.metadata:
                f.metadata["choices"].check(getattr(self, f.name))
        if self.compat == "upstream" and self.prune:
            raise ValueError("pruning does not apply in compat mode 'upstream' (its siblings never "
                             "enter the cache); drop --prune or use compat 'none'")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type.startswith("int") and value is not None and (
                    isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise ValueError(f"{f.name} must be a whole number, got {value!r}")
            if "range" in f.metadata:
                f.metadata["range"].check(f.name, value)
        if Method.check(self.method).own_driver and (self.compat != "none" or self.prune):
            raise ValueError(f"method {self.method!r} runs its own search: it takes neither pruning nor "
                             "compat mode 'upstream'")
        if model is not None and self.method == "speculative":
            self.draft_layers_for(model)
        if model is not None:
            for name, idx, n in (("prune_layers", self.prune_layers, model.num_layers),
                                 ("prune_heads", self.prune_heads, model.num_heads)):
                if idx is not None and (not idx or min(idx) < 0 or max(idx) >= n):
                    raise ValueError(f"{name} must be a non-empty subset of 0..{n - 1}, got {idx}")
        if self.prune_layer_weights is not None:
            n = len(self.prune_layers) if self.prune_layers is not None else (
                model.num_layers if model is not None else len(self.prune_layer_weights))
            if len(self.prune_layer_weights) != n or min(self.prune_layer_weights) < 0 or \
                    sum(self.prune_layer_weights) <= 0:
                raise ValueError(f"prune_layer_weights needs {n} non-negative weights with a positive "
                                 f"sum (one per chosen layer), got {self.prune_layer_weights}")

    @property
    def width(self) -> int:
        """W actually compiled: 1 for the methods that keep one member per step."""
        return 1 if Method.check(self.method).single else self.max_width

    def draft_layers_for(self, model: ModelConfig) -> int:
        """The speculative draft's depth k for ``model`` (default L // 2), checked to be in 1..L-1."""
        L = model.num_layers
        k = self.draft_layers if self.draft_layers is not None else max(1, L // 2)
        if not 1 <= k < L:
            raise ValueError(f"draft_layers must be in 1..{L - 1} (the model has {L} layers), got {k}")
        return k

    def bucketed(self, prompt_len: int) -> int:
        b = self.prompt_bucket
        return -(-prompt_len // b) * b

    def capacity_for(self, prompt_len: int) -> int:
        """K needed: bucketed prompt + one refed token in compat mode + S * W."""
        need = self.bucketed(prompt_len) + 1 + self.max_steps * self.width
        if self.capacity is None:
            return need
        if self.capacity < need:
            raise ValueError(
                f"capacity {self.capacity} is too small: prompt ({prompt_len} tokens, bucket "
                f"{self.bucketed(prompt_len)}) + 1 + max_steps ({self.max_steps}) x max_width "
                f"({self.width}) needs {need} slots")
        return self.capacity

    def static(self) -> "StaticSpec":
        prune = PruneSpec(self.prune_window, PruneTiming.check(self.prune_timing),
                          PruneRule.check(self.prune_rule)) if self.prune else None
        return StaticSpec(width=self.width, steps=self.max_steps,
                          selection=Method.check(self.method).selection(self.width),
                          combine=CombineRule.check(self.combine), eos=EosRule.check(self.eos), prune=prune,
                          compat=Compat.check(self.compat), sibling_rules=SiblingRule.members())

    def inputs(self, model: ModelConfig) -> EngineInputs:
        """The array inputs of the compiled program (one world)."""
        L, H = model.num_layers, model.num_heads
        lw = np.zeros(L, np.float32)
        layers = self.prune_layers if self.prune_layers is not None else tuple(range(L))
        weights = self.prune_layer_weights if self.prune_layer_weights is not None else (1.0,) * len(layers)
        lw[list(layers)] = weights
        hw = np.zeros(H, np.float32)
        hw[list(self.prune_heads if self.prune_heads is not None else range(H))] = 1.0
        taus = thresholds(self.schedule, self.threshold, self.threshold_final, self.max_steps,
                          k=self.schedule_k, p1=self.bezier_p1, p2=self.bezier_p2, a=self.relu_a)
        return EngineInputs(
            thresholds=jnp.asarray(taus),
            siblings=jnp.full((L, H), SiblingRule.check(self.siblings).code, jnp.int32),
            isolate_above=jnp.float32(np.inf if self.isolate_above is None else self.isolate_above),
            isolate_size_above=jnp.int32(np.iinfo(np.int32).max if self.isolate_size_above is None
                                         else self.isolate_size_above),
            member_stride=jnp.float32(PositionVariant.check(self.positions).stride(self.offset_delta)),
            advance_by_members=jnp.bool_(PositionVariant.check(self.positions).advance_by_members),
            member_offsets=jnp.zeros(self.width, jnp.float32),
            min_steps=jnp.int32(self.min_steps),
            prune_layer_w=jnp.asarray(lw / lw.sum()),
            prune_head_w=jnp.asarray(hw / hw.sum()),
            prune_rho=jnp.float32(self.prune_rho),
            prune_theta=jnp.float32(self.prune_theta),
            prune_k=jnp.float32(self.prune_k),
            temperature=jnp.float32(self.temperature),
            top_k=jnp.int32(self.top_k),
            top_p=jnp.float32(self.top_p),
            key=jax.random.key_data(jax.random.key(self.seed)),
        )


@dataclasses.dataclass(frozen=True)
class PruneSpec:
    """Static pruning choices: look-ahead window (steps), timing, decision rule."""

    window: int
    timing: PruneTiming
    rule: PruneRule


@dataclasses.dataclass(frozen=True)
class StaticSpec:
    """The part of a GenerationConfig that shapes the compiled program (hashable; static under jit)."""

    width: int
    steps: int
    selection: Threshold | Greedy | Sample
    combine: CombineRule
    eos: EosRule
    prune: PruneSpec | None  # None: no pruning
    compat: Compat
    sibling_rules: tuple[SiblingRule, ...] | None = None  # the rules in code order (None: the registry)


def sibling_codes(rules: Sequence[Sequence[str]]) -> np.ndarray:
    """``[L][H]`` rule names -> int codes ``[L,H]`` (partial isolation per layer and head)."""
    return np.asarray([[SiblingRule.check(r, "sibling rule in table").code for r in row]
                       for row in rules], np.int32)
