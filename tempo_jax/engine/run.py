"""Run a generation: input checks (before any compute), the host and on-device drivers, the trace.

The mechanics of a mode (its ``init_state``, ``step`` and ``feed_widths``) are chosen ONCE, here,
from ``spec.compat``: :mod:`tempo_jax.engine.core` (TEMPO) or :mod:`tempo_jax.engine.upstream`.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from tempo_jax.config import ModelConfig
# the drivers define the methods speculative and beam and the compat modes none and upstream
from tempo_jax.engine import core, upstream, speculative, beam  # noqa: F401, I001
from tempo_jax.engine.config import GenerationConfig, StaticSpec
from tempo_jax.engine.inputs import EngineInputs
from tempo_jax.engine.outputs import StepCapture, StepRecords
from tempo_jax.engine.request import check_prompt, check_request, pad_prompt  # noqa: F401  (public here too)
from tempo_jax.engine.methods import Compat, Method
from tempo_jax.engine.rules import Capture
from tempo_jax.engine.core import TempoState
from tempo_jax.trace import Trace


Method.seal()  # every built-in method and compat mode is defined by now
Compat.seal()


def mechanics(spec: StaticSpec) -> ModuleType:
    """The module holding ``init_state``, ``step`` and ``feed_widths`` for the spec's mode."""
    return spec.compat.mechanics()


def run_on_device(params, mcfg: ModelConfig, spec: StaticSpec, inputs: EngineInputs, prompt,
                  prompt_len, capacity: int, record: bool = False, fit_width: bool = True):
    """Whole generation inside ``lax.while_loop`` (jit/vmap friendly; no host round trips).

    ``fit_width``: each step feeds only as many queries as it has members, like the host driver:
    one inner ``while_loop`` per compiled width (1, 2, 4, ..., W) runs the steps whose
    ``state.next_n`` that width is the smallest to hold, and an outer loop repeats the widths
    until the run is done. (Loops, not a ``lax.switch``: XLA:CPU copied the KV cache into and out
    of switch branches every step.) Attention reads only a bucketed written prefix, as on the host
    (:func:`core.views`: one loop per bucket, in order, since the written prefix only grows).
    False feeds the full width W every step and attends to the whole cache: under ``vmap`` the
    worlds' loops run in lockstep, so batched callers (sweeps) pass False. Results do not depend on
    it (float rounding aside).
    Returns the final :class:`TempoState`; with ``record`` also :class:`StepRecords` (per-step
    ``[S,L,H]`` attention reductions, NaN for steps not run).
    """
    mech = mechanics(spec)
    widths = mech.feed_widths(spec) if fit_width else (spec.width,)
    bounds = jnp.asarray(widths)
    capture = Capture.SUMMARY if record else Capture.NONE

    # attended prefixes as the host driver buckets them (core.view_for); the written prefix only
    # grows, so the views are visited in order, once each
    views = core.views(capacity) if fit_width and mech is core else (None,)

    def advance(carry, w: int, v):  # one step at feed width w (>= next_n), attending v slots
        before, rec = carry
        view = {} if v is None else {"view": v}
        new, cap = mech.step(params, mcfg, spec, inputs, before, capture=capture, feed_width=w,
                             **view)
        if record:
            s = before.step
            rec = rec.set(s, StepRecords.of_step(cap, before.alive, before.slot_step, before.set_n,
                                                 s, new.fed_n[s]))
        return new, rec

    def room(c, n: int, v) -> jax.Array | bool:  # does a feed of n queries fit in view v?
        return True if v is None or v == capacity else c[0].n_written + n <= v

    def each_width(carry, v):
        for i, w in enumerate(widths):
            def fits(c, i=i, w=w):
                return ~c[0].done & (jnp.searchsorted(bounds, c[0].next_n) == i) & room(c, w, v)

            def body(c, w=w):
                return advance(c, w, v)

            carry = jax.lax.while_loop(fits, body, carry)
        return carry

    carry = (mech.init_state(params, mcfg, spec, inputs, prompt, prompt_len, capacity),
             StepRecords.empty(spec.steps, mcfg.num_layers, mcfg.num_heads) if record else None)
    for v in views:
        def more(c, v=v):
            return ~c[0].done & room(c, widths[-1], v)

        def widths_once(c, v=v):
            return each_width(c, v)

        carry = jax.lax.while_loop(more, widths_once, carry)
    st, rec = carry
    return (st, rec) if record else st


def _jit_init(mech):
    return jax.jit(mech.init_state, static_argnames=("mcfg", "spec", "capacity"))


def _jit_step(mech):
    static = ("mcfg", "spec", "capture", "feed_width") + (("view",) if mech is core else ())
    return jax.jit(mech.step, static_argnames=static,
                   donate_argnames=("st",))


class _PerModule(dict):
    """Module -> its jitted function, made on first use (any compat mode's mechanics)."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, mech):
        self[mech] = self.make(mech)
        return self[mech]


_init = _PerModule(_jit_init)
_step = _PerModule(_jit_step)
_device = jax.jit(run_on_device, static_argnames=("mcfg", "spec", "capacity", "record", "fit_width"))


def generate(params, mcfg: ModelConfig, prompt_ids: Sequence[int], gcfg: GenerationConfig,
             driver: str = "host", progress: bool = False,
             on_step: Callable[[int, TempoState, StepCapture], None] | None = None,
             model_id: str = "", inputs: EngineInputs | None = None,
             capture: str | None = None,
             before_step: Callable[[int, TempoState], TempoState] | None = None) -> Trace:
    """Generate from one prompt and return its :class:`Trace`.

    driver "host": a Python loop over the jitted step (streams per-step data to ``on_step(s, state,
    captured)``, shows progress, and feeds each step only as many queries as it has members, from a
    few compiled widths 1, 2, 4, ..., W); "device": one ``lax.while_loop`` program at full width W.
    ``capture`` ("none" | "summary" | "full"; default "full" when ``on_step`` is given) chooses the
    fields of ``captured`` (:class:`~tempo_jax.engine.outputs.StepCapture`). Use
    :class:`tempo_jax.capture.CaptureWriter` as ``on_step`` to stream it to disk.
    ``before_step(s, state) -> state`` (host driver; not speculative) edits the state step
    ``s`` starts from, e.g. its distribution ``state.dist`` with a matching ``state.next_n`` (a
    forced token); the step then feeds ``state.next_n`` members.
    ``inputs`` replaces the array inputs ``gcfg.inputs(mcfg)``; change fields with
    ``gcfg.inputs(mcfg).replace(siblings=table)`` (partial isolation), ``interventions=...``
    (:class:`tempo_jax.interventions.Interventions`, batch axis 1, K = the run's capacity), etc.
    """
    method = Method.check(gcfg.method)
    if method.own_driver:  # speculative rounds, beam search: a search of their own
        if before_step is not None:
            raise ValueError(f"before_step needs the step loop; method {method.name!r} runs its own search")
        return method.generate(params, mcfg, prompt_ids, gcfg, driver, progress, on_step, model_id, inputs,
                               capture)
    if driver not in ("host", "device"):
        raise ValueError(f"unknown driver {driver!r}; allowed: host, device")
    capture = Capture.check(capture or ("full" if on_step is not None else "none"), "capture mode")
    if capture != Capture.NONE and driver != "host":
        raise ValueError("capture streams per step, so it needs driver='host'")
    if before_step is not None and driver != "host":
        raise ValueError("before_step edits the state between steps, so it needs driver='host'")
    capacity = check_request(mcfg, gcfg, prompt_ids)
    spec = gcfg.static()
    inputs = gcfg.inputs(mcfg) if inputs is None else inputs
    if not isinstance(inputs, EngineInputs):
        raise ValueError(f"inputs must be an EngineInputs (gcfg.inputs(model).replace(...)), got "
                         f"{type(inputs).__name__}")
    inputs.check(mcfg, gcfg.max_steps, gcfg.width, capacity)
    prompt = pad_prompt(gcfg, prompt_ids)
    plen = jnp.int32(len(prompt_ids))
    mech = mechanics(spec)
    t0 = time.perf_counter()
    timings = {}
    if driver == "device":
        st = _device(params, mcfg, spec, inputs, prompt, plen, capacity)
        jax.block_until_ready(st.step)
        timings["total_s"] = time.perf_counter() - t0
    else:
        st = _init[mech](params, mcfg, spec, inputs, prompt, plen, capacity)
        jax.block_until_ready(st.dist)
        timings["prompt_s"] = time.perf_counter() - t0
        from tqdm.auto import tqdm

        bar = tqdm(total=gcfg.max_steps, desc="tempo", unit="step", disable=not progress)
        widths = mech.feed_widths(spec)
        next_n, n_written = int(st.next_n), int(st.n_written)
        for s in range(gcfg.max_steps):
            if before_step is not None:
                st = before_step(s, st)
                next_n, n_written = jax.device_get((st.next_n, st.n_written))
            # feed only as many queries as this step has members (smallest compiled width), and
            # attend only to a bucketed written prefix (core.view_for), not the whole capacity
            width = next(w for w in widths if w >= next_n)
            view = {"view": core.view_for(n_written + width, capacity)} if mech is core else {}
            st, captured = _step[mech](params, mcfg, spec, inputs, st, capture, width, **view)
            bar.update(1)
            if on_step is not None:
                on_step(s, st, captured)
            done, next_n, n_written = jax.device_get((st.done, st.next_n, st.n_written))
            if done:
                break
        bar.close()
        timings["total_s"] = time.perf_counter() - t0
    return Trace.from_state(st, gcfg, list(map(int, prompt_ids)), model_id, timings)
