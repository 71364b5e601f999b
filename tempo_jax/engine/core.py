"""The TEMPO step (semantics: docs/semantics.md): one jit-compiled function with static shapes.

State is a pytree (:class:`TempoState`) so the on-device driver (``lax.while_loop``) can be vmapped
over worlds. The step is built from small shared pieces (feed the members, write the slot maps,
prune, record the step) that the upstream-compatible step (:mod:`tempo_jax.engine.upstream`) reuses.
Shapes: K cache slots, W max width, F fed width, S max steps, V vocab, L layers, H heads, E width.
"""

from __future__ import annotations

import sys
from types import ModuleType

import jax
import jax.numpy as jnp

from tempo_jax.pytree import Struct
from tempo_jax.config import ModelConfig
from tempo_jax.engine import pruning
from tempo_jax.engine.config import StaticSpec
from tempo_jax.engine.inputs import EngineInputs
from tempo_jax.engine.methods import Compat
from tempo_jax.engine.masks import adaptive_siblings, step_mask
from tempo_jax.engine.outputs import StepCapture, summarize
from tempo_jax.engine.rules import Capture
from tempo_jax.engine.selection import CandidateSet, entropy
from tempo_jax.model import KVCache, Positions, TapsSpec, causal_mask, forward, init_cache
from tempo_jax.model import prefill as model_prefill
from tempo_jax.slots import PROMPT, UNWRITTEN


PREFILL_CHUNK = 512  # prompt queries per prefill forward beyond this length (model.prefill)


class TempoState(Struct):
    """Everything one generation carries between steps (one world)."""

    cache: KVCache  # [L,1,K,G,D]
    step: jax.Array  # s, int32
    done: jax.Array  # bool
    dist: jax.Array  # d_s [V] float32
    n_written: jax.Array  # next free slot
    next_pos: jax.Array  # logical position of step s's members (before offsets)
    alive: jax.Array  # [K] bool
    slot_step: jax.Array  # [K] int32: UNWRITTEN, PROMPT, else step
    slot_member: jax.Array  # [K] int32
    slot_pos: jax.Array  # [K] float32
    slot_token: jax.Array  # [K] int32
    recv_acc: jax.Array  # [K] float32 summed pruning attention
    recv_cnt: jax.Array  # [K] float32 queries summed
    prune_score: jax.Array  # [K] float32 (NaN = never scored)
    pruned_at: jax.Array  # [K] int32 step of pruning (-1 = never)
    set_n: jax.Array  # [S] members per set
    tokens: jax.Array  # [S,W] members
    probs: jax.Array  # [S,W]
    valid: jax.Array  # [S,W]
    slots: jax.Array  # [S,W] fed slots (-1: not in the cache)
    positions: jax.Array  # [S,W] logical positions of members (0 where not a member)
    fed_tokens: jax.Array  # [S,W] what the forward of step s fed
    fed_pos: jax.Array  # [S,W]
    fed_n: jax.Array  # [S]
    cache_len: jax.Array  # [S] slots written before step s's forward
    tau: jax.Array  # [S]
    entropy: jax.Array  # [S] entropy of d_s
    next_n: jax.Array  # members step s will select (lets the host driver feed fewer queries)


class Fed(Struct):
    """What the step's ONE forward of F queries gives: logits ``[F,V]``, the cache with their keys
    and values written, attention ``[L,H,F,K]`` (None unless captured or pruning) and the residual
    ``[L,F,E]`` (None unless a summary capture)."""

    logits: jax.Array
    cache: KVCache
    attn: jax.Array | None
    resid: jax.Array | None


class SlotMaps(Struct):
    """The per-slot maps ``[K]`` after the fed queries are written (see :class:`TempoState`)."""

    alive: jax.Array
    slot_step: jax.Array
    slot_member: jax.Array
    slot_pos: jax.Array
    slot_token: jax.Array


class Pruning(Struct):
    """The pruning fields ``[K]`` of :class:`TempoState` after a step, and ``alive`` with the pruned
    slots masked."""

    recv_acc: jax.Array
    recv_cnt: jax.Array
    prune_score: jax.Array
    pruned_at: jax.Array
    alive: jax.Array


class Written(Struct):
    """What step s recorded about its feed: tokens ``[F]`` at positions ``pos[F]`` (queries i < n
    real), how far the next step's position advances, and the ``[W]`` rows of ``slots`` and
    ``positions`` for the set's members."""

    tokens: jax.Array
    pos: jax.Array
    n: jax.Array
    advance: jax.Array
    slots_row: jax.Array
    positions_row: jax.Array


def prefill(params, mcfg: ModelConfig, prompt: jax.Array, prompt_len: jax.Array, capacity: int,
            interventions=None):
    """Causal forward of ``prompt[Pb]`` (padded; ``prompt_len`` real tokens) into a fresh cache of
    ``capacity`` slots -> (logits ``[V]`` of the last real token, cache)."""
    pb = prompt.shape[0]
    cache = init_cache(mcfg, 1, capacity, params["embed"].dtype)
    if pb > PREFILL_CHUNK:  # long prompts: chunks, so memory grows linearly in the prompt length
        logits, cache, _ = model_prefill(params, mcfg, prompt[None], cache, prompt_len - 1,
                                         chunk=PREFILL_CHUNK, interventions=interventions)
        return logits[0], cache
    ar = jnp.arange(pb)
    logits, cache, _ = forward(params, mcfg, prompt[None], ar[None].astype(jnp.float32), ar[None],
                               causal_mask(1, pb, capacity), cache, interventions=interventions,
                               key_pos=jnp.arange(capacity, dtype=jnp.float32)[None] if mcfg.has_window else None)
    return jnp.take(logits[0], prompt_len - 1, axis=0), cache


def fresh_state(spec: StaticSpec, cache, last_logits, prompt, prompt_len, n_written, next_pos,
                next_n) -> TempoState:
    """State ready for step 0: slots ``< n_written`` hold the prompt (and any re-fed token)."""
    pb, capacity = prompt.shape[0], cache.capacity
    S, W = spec.steps, spec.width
    k = jnp.arange(capacity)
    alive = k < n_written
    slot_token = jnp.zeros(capacity, jnp.int32).at[:pb].set(
        jnp.where(jnp.arange(pb) < prompt_len, prompt, 0))
    zi = lambda *shape: jnp.zeros(shape, jnp.int32)
    return TempoState(
        cache=cache, step=jnp.int32(0), done=jnp.bool_(False), dist=jax.nn.softmax(last_logits),
        n_written=jnp.int32(n_written), next_pos=jnp.float32(next_pos), alive=alive,
        slot_step=jnp.where(alive, PROMPT, UNWRITTEN).astype(jnp.int32),
        slot_member=zi(capacity), slot_pos=jnp.where(alive, k, 0).astype(jnp.float32),
        slot_token=slot_token,
        recv_acc=jnp.zeros(capacity), recv_cnt=jnp.zeros(capacity),
        prune_score=jnp.full(capacity, jnp.nan), pruned_at=jnp.full(capacity, -1, jnp.int32),
        set_n=zi(S), tokens=zi(S, W), probs=jnp.zeros((S, W)), valid=jnp.zeros((S, W), bool),
        slots=jnp.full((S, W), -1, jnp.int32), positions=jnp.zeros((S, W)), fed_tokens=zi(S, W),
        fed_pos=jnp.zeros((S, W)), fed_n=zi(S), cache_len=zi(S), tau=jnp.zeros(S),
        entropy=jnp.zeros(S), next_n=next_n)


def init_state(params, mcfg: ModelConfig, spec: StaticSpec, inputs: EngineInputs,
               prompt: jax.Array, prompt_len: jax.Array, capacity: int) -> TempoState:
    """Prompt forward (prompt[Pb] padded, prompt_len real tokens) -> state ready for step 0."""
    last, cache = prefill(params, mcfg, prompt, prompt_len, capacity, inputs.interventions)
    next_n = spec.selection.count(jax.nn.softmax(last), inputs.thresholds[0])
    return fresh_state(spec, cache, last, prompt, prompt_len, prompt_len,
                       prompt_len.astype(jnp.float32), next_n)


def feed_widths(spec: StaticSpec) -> tuple[int, ...]:
    """The query counts the host driver compiles the step for: powers of two below W, and W."""
    return tuple(sorted({1 << k for k in range(spec.width.bit_length()) if 1 << k < spec.width}
                        | {spec.width}))


VIEW_MIN = 256  # smallest attended prefix the host driver compiles; then doubling up to K


def views(capacity: int) -> tuple[int, ...]:
    """Every attended prefix :func:`view_for` can return for a cache of ``capacity`` slots."""
    out, v = [], VIEW_MIN
    while v < capacity:
        out.append(v)
        v *= 2
    return tuple(out) + (capacity,)


def view_for(needed: int, capacity: int) -> int:
    """The attended prefix for a step that needs ``needed`` slots: the smallest of 256, 512, 1024,
    ... that holds it, or the capacity K (few compiled variants; cost follows the written prefix).
    Results equal full-capacity attention up to float rounding (a shorter softmax reduction)."""
    return next((v for v in views(capacity) if v >= needed), capacity)


# --- shared pieces of a step ----------------------------------------------------------------------
def select(spec: StaticSpec, inputs: EngineInputs, st: TempoState):
    """C_s from d_s -> (candidate set, tau_s, the step's PRNG key)."""
    key = jax.random.fold_in(jax.random.wrap_key_data(inputs.key), st.step)
    tau = inputs.thresholds[st.step]
    return spec.selection.select(st.dist, tau, inputs, key), tau, key


def feed(params, mcfg: ModelConfig, spec: StaticSpec, inputs: EngineInputs, st: TempoState,
         tokens, pos, n_feed, capture: Capture, view: int | None = None) -> Fed:
    """ONE forward of the F fed queries (``tokens[F]`` at ``pos[F]``, :class:`Positions` or an
    array; slots ``n_written + i``;
    queries i >= n_feed are padding) -> :class:`Fed`.
    ``view`` (static, >= n_written + F): attention reads only the first ``view`` slots."""
    F = tokens.shape[0]
    pos = Positions.of(pos)
    slots = st.n_written + jnp.arange(F)
    sib = adaptive_siblings(inputs.siblings, entropy(st.dist), n_feed, inputs.isolate_above,
                            inputs.isolate_size_above)
    mask = step_mask(st.alive, st.slot_step, st.step, st.n_written, n_feed, F, sib, spec.sibling_rules)
    need_attn = capture != Capture.NONE or spec.prune is not None
    logits, cache, taps = forward(params, mcfg, tokens[None], Positions(pos.base[None], pos.offset[None]),
                                  slots[None], mask[None],
                                  st.cache, TapsSpec(attn=need_attn, resid=capture == Capture.SUMMARY),
                                  interventions=inputs.interventions, attend=view,
                                  key_pos=st.slot_pos.at[slots].set(pos.value(), mode="drop")[None]
                                  if mcfg.has_window else None)  # only sliding-window models read it
    return Fed(logits[0], cache, taps["attn"][:, 0] if need_attn else None,
               taps["resid"][:, 0] if capture == Capture.SUMMARY else None)


def write_slots(st: TempoState, tokens, pos, n_feed, member_of_fed) -> SlotMaps:
    """Slot maps after writing the fed queries i < n_feed at slots ``n_written + i``."""
    i = jnp.arange(tokens.shape[0])
    slots, ok = st.n_written + i, i < n_feed
    upd = lambda arr, val: arr.at[slots].set(jnp.where(ok, val, arr[slots]))
    return SlotMaps(alive=upd(st.alive, True), slot_step=upd(st.slot_step, st.step),
                    slot_member=upd(st.slot_member, member_of_fed), slot_pos=upd(st.slot_pos, pos),
                    slot_token=upd(st.slot_token, tokens))


def prune(spec: StaticSpec, inputs: EngineInputs, st: TempoState, slot_maps: SlotMaps, set_n, attn,
          n_feed, key) -> Pruning:
    """Retroactive pruning after step s's forward (no-op without a PruneSpec): accumulate the
    window's attention, score due sets, mask the pruned slots."""
    p = spec.prune
    if p is None:
        return Pruning(st.recv_acc, st.recv_cnt, st.prune_score, st.pruned_at, slot_maps.alive)
    s, slot_step = st.step, slot_maps.slot_step
    acc, cnt = pruning.accumulate(st.recv_acc, st.recv_cnt, attn, inputs.prune_layer_w,
                                  inputs.prune_head_w, n_feed, slot_step, s, p.window)
    cur = acc / jnp.maximum(cnt, 1.0)
    pruned, scored = pruning.decide(cur, slot_maps.alive, slot_step, set_n, s, p.window, p.timing,
                                    p.rule, inputs.prune_rho, inputs.prune_theta, inputs.prune_k, key)
    return Pruning(recv_acc=acc, recv_cnt=cnt, prune_score=jnp.where(scored, cur, st.prune_score),
                   pruned_at=jnp.where(pruned, s, st.pruned_at), alive=slot_maps.alive & ~pruned)


def finish(spec: StaticSpec, st: TempoState, cand: CandidateSet, tau, w: Written, cache: KVCache, nxt,
           done, next_n, slot_maps: SlotMaps, pruned: Pruning | None) -> TempoState:
    """The state after step s: record the set and what was fed (``w``), the slot maps and pruning
    fields (None: unchanged, slot maps' ``alive``), and advance the counters."""
    s, W = st.step, spec.width
    F = w.tokens.shape[0]
    ok = jnp.arange(F) < w.n
    pad = lambda x: jnp.pad(x, [(0, W - F)])
    slots = slot_maps.fields()
    if pruned is not None:
        slots.update(pruned.fields())  # its alive has the pruned slots masked
    return st.replace(
        cache=cache, step=s + 1, done=done, dist=nxt, n_written=st.n_written + w.n,
        next_pos=st.next_pos + w.advance, set_n=st.set_n.at[s].set(cand.n),
        tokens=st.tokens.at[s].set(cand.tokens), probs=st.probs.at[s].set(cand.probs),
        valid=st.valid.at[s].set(cand.valid), slots=st.slots.at[s].set(w.slots_row),
        positions=st.positions.at[s].set(w.positions_row),
        fed_tokens=st.fed_tokens.at[s].set(pad(jnp.where(ok, w.tokens, 0))),
        fed_pos=st.fed_pos.at[s].set(pad(jnp.where(ok, w.pos, 0.0))),
        fed_n=st.fed_n.at[s].set(w.n), cache_len=st.cache_len.at[s].set(st.n_written),
        tau=st.tau.at[s].set(tau), entropy=st.entropy.at[s].set(entropy(st.dist)), next_n=next_n,
        **slots)


def captured(capture: Capture, attn, resid, base, n_feed, width: int) -> StepCapture:
    """The step's :class:`StepCapture`, query axis padded from F to W."""
    if capture == Capture.NONE:
        return StepCapture()
    F = attn.shape[2]
    padq = lambda x: jnp.pad(x, [(0, 0)] * 2 + [(0, width - F)] + [(0, 0)] * (x.ndim - 3))
    if capture == Capture.FULL:
        return StepCapture(attn=padq(attn))
    summ = summarize(attn, base, n_feed)
    return StepCapture(received=summ["received"], entropy=padq(summ["entropy"]),
                       sink=padq(summ["sink"]), leakage=padq(summ["leakage"]),
                       resid=jnp.pad(resid, [(0, 0), (0, width - F), (0, 0)]))


# --- the step -------------------------------------------------------------------------------------
def step(params, mcfg: ModelConfig, spec: StaticSpec, inputs: EngineInputs, st: TempoState,
         capture: Capture = Capture.NONE, feed_width: int | None = None, view: int | None = None):
    """One logical step s: select C_s from d_s, feed it in ONE forward, prune, combine -> d_{s+1}.

    ``feed_width`` F <= W queries are fed (default W); it must be >= ``st.next_n`` (the host
    driver picks the smallest of :func:`feed_widths`), so no member is ever left out; results do
    not depend on F. ``view`` (static; None = K) must be >= ``st.n_written + F``: attention reads
    only that many leading slots (the host driver picks it with :func:`view_for`), so a step's cost
    follows the written prefix, not the capacity; results do not depend on it.
    Returns ``(new state, StepCapture)`` (fields per ``capture``).
    """
    W = spec.width
    F = W if feed_width is None else feed_width
    s = st.step
    cand, tau, key = select(spec, inputs, st)
    i = jnp.arange(F)
    # positions variant as data: member i at next_pos + i * stride (+ a per-member RoPE offset);
    # the next step starts 1 later (shared, offset) or n later (distinct)
    # (an integer base and a float offset, so that offsets stay exact far into the context)
    at = Positions(jnp.broadcast_to(st.next_pos.astype(jnp.int32), (F,)),
                   i * inputs.member_stride + inputs.member_offsets[:F])
    pos = at.value()
    tokens = cand.tokens[:F]
    fed = feed(params, mcfg, spec, inputs, st, tokens, at, cand.n, capture, view)
    slot_maps = write_slots(st, tokens, pos, cand.n, i)
    set_n = st.set_n.at[s].set(cand.n)
    pruned = prune(spec, inputs, st, slot_maps, set_n, fed.attn, cand.n, key)
    nxt = spec.combine.combine(fed.logits, cand.probs[:F], cand.valid[:F])
    hit = spec.eos.hit(cand, jnp.asarray(mcfg.eos_token_ids or (-1,), jnp.int32))
    done = (s + 1 >= spec.steps) | (hit & (s + 1 >= inputs.min_steps))
    iw = jnp.arange(W)
    w = Written(tokens=tokens, pos=pos, n=cand.n,
                advance=jnp.where(inputs.advance_by_members, cand.n, 1).astype(jnp.float32),
                slots_row=jnp.where(cand.valid, st.n_written + iw, -1),
                positions_row=jnp.where(cand.valid, jnp.pad(pos, [(0, W - F)]), 0.0))
    new = finish(spec, st, cand, tau, w, fed.cache, nxt, done,
                 spec.selection.count(nxt, inputs.thresholds[jnp.minimum(s + 1, spec.steps - 1)]),
                 slot_maps, pruned)
    return new, captured(capture, fed.attn, fed.resid, st.n_written, cand.n, W)


class NoCompat(Compat, name="none"):
    """TEMPO's own step: this module."""

    def mechanics(self) -> ModuleType:
        return sys.modules[__name__]
