"""Run a generation: input checks (before any compute), the host and on-device drivers, the trace."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.config import ModelConfig
from tempo_jax.engine.config import GenerationConfig
from tempo_jax.engine.core import TempoState, feed_widths, init_state, run_on_device, step
from tempo_jax.trace import Trace

_init = jax.jit(init_state, static_argnames=("mcfg", "spec", "capacity"))
_step = jax.jit(step, static_argnames=("mcfg", "spec", "capture", "feed_width"),
               donate_argnames=("st",))
_device = jax.jit(run_on_device, static_argnames=("mcfg", "spec", "capacity"))


def check_request(mcfg: ModelConfig, gcfg: GenerationConfig, prompt_ids: Sequence[int]) -> int:
    """Validate everything before compute; returns the cache capacity K to use."""
    gcfg.validate(mcfg)
    p = len(prompt_ids)
    if p == 0:
        raise ValueError("the prompt is empty: give at least one token")
    ids = np.asarray(prompt_ids)
    if ids.min() < 0 or ids.max() >= mcfg.vocab_size:
        raise ValueError(f"prompt token ids must lie in [0, {mcfg.vocab_size})")
    advance = gcfg.max_steps * (gcfg.width if gcfg.positions == "distinct" else 1) + 1
    if p + advance > mcfg.max_position_embeddings:
        raise ValueError(
            f"prompt ({p} tokens) + {advance} generated positions exceeds the model's context of "
            f"{mcfg.max_position_embeddings} positions; shorten the prompt or lower max_steps")
    return gcfg.capacity_for(p)


def pad_prompt(gcfg: GenerationConfig, prompt_ids: Sequence[int]) -> jax.Array:
    pb = gcfg.bucketed(len(prompt_ids))
    return jnp.asarray(np.pad(np.asarray(prompt_ids, np.int32), (0, pb - len(prompt_ids))))


def generate(params, mcfg: ModelConfig, prompt_ids: Sequence[int], gcfg: GenerationConfig,
             driver: str = "host", progress: bool = False,
             on_step: Callable[[int, TempoState, Any], None] | None = None,
             model_id: str = "", data: dict | None = None, capture: str | None = None) -> Trace:
    """Generate from one prompt and return its :class:`Trace`.

    driver "host": a Python loop over the jitted step (streams per-step data to ``on_step(s, state,
    captured)``, shows progress, and feeds each step only as many queries as it has members, from a
    few compiled widths 1, 2, 4, ..., W); "device": one ``lax.while_loop`` program at full width W.
    ``capture`` ("none" | "summary" | "full"; default "full" when ``on_step`` is given) chooses what
    ``captured`` is: None, the in-graph summary dict, or the step's attention ``[L,H,W,K]``
    (see :func:`tempo_jax.engine.core.step`). Use :class:`tempo_jax.capture.CaptureWriter` as
    ``on_step`` to stream it to disk.
    ``data`` overrides the array inputs from ``gcfg.data(mcfg)``: e.g. ``siblings`` [L,H] (partial
    isolation) or ``interventions`` (:class:`tempo_jax.interventions.Interventions`, batch axis 1,
    K = the run's capacity) applied to every forward of the run.
    """
    if driver not in ("host", "device"):
        raise ValueError(f"unknown driver {driver!r}; allowed: host, device")
    capture = capture or ("full" if on_step is not None else "none")
    if capture not in ("none", "summary", "full"):
        raise ValueError(f"unknown capture mode {capture!r}; allowed: none, summary, full")
    if capture != "none" and driver != "host":
        raise ValueError("capture streams per step, so it needs driver='host'")
    capacity = check_request(mcfg, gcfg, prompt_ids)
    spec = gcfg.static()
    data = {**gcfg.data(mcfg), **(data or {})}
    if data["siblings"].shape not in ((mcfg.num_layers, mcfg.num_heads),):
        raise ValueError(f"siblings table must be [L,H]=({mcfg.num_layers},{mcfg.num_heads}), "
                         f"got {data['siblings'].shape}")
    prompt = pad_prompt(gcfg, prompt_ids)
    plen = jnp.int32(len(prompt_ids))
    t0 = time.perf_counter()
    timings = {}
    if driver == "device":
        st = _device(params, mcfg, spec, data, prompt, plen, capacity)
        jax.block_until_ready(st.step)
        timings["total_s"] = time.perf_counter() - t0
    else:
        st = _init(params, mcfg, spec, data, prompt, plen, capacity)
        jax.block_until_ready(st.dist)
        timings["prompt_s"] = time.perf_counter() - t0
        from tqdm.auto import tqdm

        bar = tqdm(total=gcfg.max_steps, desc="tempo", unit="step", disable=not progress)
        widths = feed_widths(spec)
        next_n = int(st.next_n)
        for s in range(gcfg.max_steps):
            # feed only as many queries as this step has members (smallest compiled width)
            width = next(w for w in widths if w >= next_n)
            st, captured = _step(params, mcfg, spec, data, st, capture, width)
            bar.update(1)
            if on_step is not None:
                on_step(s, st, captured)
            done, next_n = jax.device_get((st.done, st.next_n))
            if done:
                break
        bar.close()
        timings["total_s"] = time.perf_counter() - t0
    return Trace.from_state(st, gcfg, list(map(int, prompt_ids)), model_id, timings)
