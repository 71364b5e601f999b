"""Instrument for RQ 9.3 and RQ 1.3b: whole TEMPO generations of one prompt in B "worlds" that differ
only in an attention-logit bias on chosen key slots (``Interventions.attn_bias``), run together.

- :func:`bias_worlds`: the prompt is prefilled ONCE without any bias (every world starts from the
  same cache and the same step-0 distribution); then every logical step runs the B worlds through
  one vmapped, jitted :func:`tempo_jax.engine.core.step`, with the bias of each world recomputed on
  the host before the step by ``bias_for(step, state) -> [B,L,K]`` (so a bias can follow slots the
  generation writes, e.g. earlier parallel members). The bias is data: changing it never
  recompiles. A world that has finished keeps its state. Only the generated tokens' queries are
  biased; the prompt's own representations are those of the unbiased prompt.
- :func:`span_bias` / :func:`parallel_slots` / :func:`control_slots`: the slot masks used.
- :func:`word_span` / :func:`rule_span`: a span of the prompt chosen by a rule (no hand-picking):
  token index ranges of a character range of the prompt text.

Shapes: B worlds, L layers, K cache slots (prompt slots first), S steps, W max width.
"""

from __future__ import annotations

import functools
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.engine import core
from tempo_jax.engine.config import GenerationConfig
from tempo_jax.engine.inputs import stack
from tempo_jax.engine.run import check_request, pad_prompt
from tempo_jax.interventions import Interventions
from tempo_jax.slots import PROMPT, SINK
from tempo_jax.trace import Trace


@functools.partial(jax.jit, static_argnames=("mcfg", "spec", "capacity"))
def _init(params, mcfg, spec, inputs, prompt, plen, capacity: int):
    return core.init_state(params, mcfg, spec, inputs, prompt, plen, capacity)


@functools.partial(jax.jit, static_argnames=("mcfg", "spec", "feed_width"))
def _step_worlds(params, mcfg, spec, data, st, feed_width: int):
    new = jax.vmap(lambda d, s: core.step(params, mcfg, spec, d, s, feed_width=feed_width)[0])(data, st)
    keep = lambda old, nw: jnp.where(st.done.reshape((-1,) + (1,) * (nw.ndim - 1)), old, nw)
    return jax.tree_util.tree_map(keep, st, new)


def bias_worlds(params, mcfg, prompt_ids: Sequence[int], gcfg: GenerationConfig, n_worlds: int,
                bias_for: Callable[[int, dict], np.ndarray],
                before_step: Callable[[int, core.TempoState], core.TempoState] | None = None,
                inputs: Sequence | None = None) -> list[Trace]:
    """``n_worlds`` TEMPO generations of one prompt; world b's queries at step s get the attention
    bias ``bias_for(s, host_state)[b]`` (``[L,K]``, added to the logits of every head). ``host_state``
    holds NumPy copies of the worlds' ``slot_step``, ``alive``, ``set_n`` (each with a leading B
    axis) and ``step``. ``before_step(s, state)`` may edit the worlds' batched state before step s
    selects (e.g. force a token into every world's set, as ``generate``'s hook of the same name).
    ``inputs``: one :class:`EngineInputs` per world (e.g. its own sibling table or head ablation;
    default ``gcfg.inputs`` in every world); the bias replaces their ``attn_bias`` only (every world
    then carries the same intervention fields). The prompt is prefilled without them.
    Returns one :class:`Trace` per world."""
    if n_worlds < 1:
        raise ValueError("bias_worlds needs at least one world")
    if inputs is not None and len(inputs) != n_worlds:
        raise ValueError(f"bias_worlds got {len(inputs)} EngineInputs for {n_worlds} worlds")
    K = check_request(mcfg, gcfg, prompt_ids)
    spec = gcfg.static()
    base = gcfg.inputs(mcfg)
    prompt = pad_prompt(gcfg, prompt_ids)
    st0 = _init(params, mcfg, spec, base, prompt, jnp.int32(len(prompt_ids)), K)  # no bias
    st = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n_worlds,) + x.shape), st0)
    L = mcfg.num_layers
    zero = Interventions(attn_bias=jnp.zeros((1, L, 1, K), jnp.float32))
    data = stack([w.replace(interventions=(w.interventions or Interventions()).replace(attn_bias=zero.attn_bias))
                  for w in (inputs if inputs is not None else [base] * n_worlds)])
    widths = core.feed_widths(spec)
    for s in range(spec.steps):
        if before_step is not None:
            st = before_step(s, st)
        host = {k: np.asarray(v) for k, v in jax.device_get(
            {"slot_step": st.slot_step, "alive": st.alive, "set_n": st.set_n,
             "next_n": st.next_n, "done": st.done}).items()}
        if host["done"].all():
            break
        host["step"] = s
        b = np.asarray(bias_for(s, host), np.float32)
        if b.shape != (n_worlds, L, K):
            raise ValueError(f"bias_for must return [B,L,K] = {(n_worlds, L, K)}, got {b.shape}")
        data = data.replace(interventions=data.interventions.replace(attn_bias=jnp.asarray(b[:, None, :, None, :])))
        need = int(host["next_n"][~host["done"]].max())
        st = _step_worlds(params, mcfg, spec, data, st, next(w for w in widths if w >= need))
    ids = list(map(int, prompt_ids))
    return [Trace.from_state(jax.tree_util.tree_map(lambda x, b=b: x[b], st), gcfg, ids)
            for b in range(n_worlds)]


def span_bias(L: int, K: int, slots: np.ndarray, values: Sequence[float],
              layers: Sequence[int] | None = None) -> np.ndarray:
    """``[B,L,K]``: world b adds ``values[b]`` on the slots where ``slots[b]`` (``[B,K]`` or ``[K]``
    bool) is true, at ``layers`` (default every layer), 0 elsewhere."""
    v = np.asarray(values, np.float32)
    sl = np.broadcast_to(np.asarray(slots, bool), (len(v), K))
    lay = np.zeros(L, bool)
    lay[list(range(L)) if layers is None else list(layers)] = True
    return (v[:, None, None] * lay[None, :, None] * sl[:, None, :]).astype(np.float32)


def parallel_slots(slot_step: np.ndarray, alive: np.ndarray, set_n: np.ndarray, s: int) -> np.ndarray:
    """``[...,K]`` bool: alive slots written by an earlier step (< s) whose set had > 1 member."""
    slot_step, set_n = np.asarray(slot_step), np.asarray(set_n)
    idx = np.clip(slot_step, 0, set_n.shape[-1] - 1)
    n_of = np.take_along_axis(set_n, idx, -1) if set_n.ndim > 1 else set_n[idx]
    return np.asarray(alive, bool) & (slot_step >= 0) & (slot_step < s) & (n_of > 1)


def control_slots(parallel: np.ndarray, slot_step: np.ndarray, alive: np.ndarray, s: int,
                  priority: np.ndarray) -> np.ndarray:
    """``[K]`` bool: as many slots as ``parallel`` has, among the visible context slots that are
    not parallel and not the sink (prompt tokens and single-member steps), those of highest
    ``priority[K]`` (a fixed random order per world, so the control set is stable across steps);
    fewer if there are not enough."""
    k = np.arange(len(parallel))
    elig = (np.asarray(alive, bool) & (k != SINK) & ~parallel
            & ((slot_step == PROMPT) | ((slot_step >= 0) & (slot_step < s))))
    n = int(parallel.sum())
    out = np.zeros(len(parallel), bool)
    if n and elig.any():
        cand = np.flatnonzero(elig)
        out[cand[np.argsort(-priority[cand], kind="stable")[:n]]] = True
    return out


# --- spans chosen by a rule ---------------------------------------------------------------------
_FACT = re.compile(r"^(?:The [a-z ]+? of )?(?P<s>.+?) (?:is|was|are)\b")
_DEF = re.compile(r"\b(?:def|class)\s+(?P<s>[A-Za-z_]\w*)")
_WORD = re.compile(r"[A-Za-z]+")


def rule_span(text: str, genre: str) -> tuple[int, int] | None:
    """Character range ``(start, end)`` of the prompt's span by a fixed rule per genre, or None:
    facts: the subject (``The <relation> of <S> is`` -> S, ``<S> is ...`` -> S); code: the first
    defined name (``def`` / ``class``); prose: the longest alphabetic word (first on ties), not the
    prompt's first word."""
    if genre == "facts":
        m = _FACT.match(text)
        return (m.start("s"), m.end("s")) if m else None
    if genre == "code":
        m = _DEF.search(text)
        return (m.start("s"), m.end("s")) if m else None
    words = [m for m in _WORD.finditer(text) if m.start() > 0]
    if not words:
        return None
    best = max(words, key=lambda m: (len(m.group()), -m.start()))
    return best.start(), best.end()


def token_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> np.ndarray:
    """Token indices whose character range ``offsets[i]`` overlaps ``[start, end)``."""
    return np.asarray([i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a], int)


def random_block(n_prompt: int, span: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A contiguous block of ``len(span)`` prompt token indices that avoids the span and the sink
    (index 0), chosen uniformly among those that fit; None if none fits."""
    n, bad = len(span), set(int(i) for i in span) | {SINK}
    starts = [a for a in range(1, n_prompt - n + 1) if not bad & set(range(a, a + n))]
    if not starts or n == 0:
        return None
    a = int(rng.choice(starts))
    return np.arange(a, a + n)
