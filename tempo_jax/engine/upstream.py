"""The upstream-compatible step (``compat="upstream"``): the original PyTorch implementation's feed
sequence, for replication (docs/replication.md). Built from the same pieces as the TEMPO step.

What differs from :func:`tempo_jax.engine.core.step`: the last prompt token is fed a second time
before step 0; each step feeds only the LAST (least probable) member of its set, alone, at the next
cache index; the other members never enter the cache; the next distribution is that one query's;
the run stops when any member is EOS; no pruning.
"""

from __future__ import annotations

import sys
from types import ModuleType

import jax
import jax.numpy as jnp

from tempo_jax.config import ModelConfig
from tempo_jax.engine.config import StaticSpec
from tempo_jax.engine.core import (TempoState, Written, captured, feed, finish, fresh_state, prefill,
                                   select, write_slots)
from tempo_jax.engine.inputs import EngineInputs
from tempo_jax.engine.methods import Compat
from tempo_jax.engine.rules import Capture
from tempo_jax.engine.selection import EosRule
from tempo_jax.model import forward


def init_state(params, mcfg: ModelConfig, spec: StaticSpec, inputs: EngineInputs,
               prompt: jax.Array, prompt_len: jax.Array, capacity: int) -> TempoState:
    """Prompt forward, then the last prompt token again at position P (slot P)."""
    _, cache = prefill(params, mcfg, prompt, prompt_len, capacity, inputs.interventions)
    tok = jnp.take(prompt, prompt_len - 1)
    pos = prompt_len.astype(jnp.float32)
    mask = (jnp.arange(capacity) <= prompt_len)[None, None]
    logits, cache, _ = forward(params, mcfg, tok[None, None], pos[None, None],
                               prompt_len[None, None], mask, cache,
                               interventions=inputs.interventions,
                               key_pos=jnp.arange(capacity, dtype=jnp.float32)[None])  # slot = position
    st = fresh_state(spec, cache, logits[0, 0], prompt, prompt_len, prompt_len + 1, pos + 1.0,
                     jnp.int32(1))
    return st.replace(slot_token=st.slot_token.at[prompt_len].set(tok))


def feed_widths(spec: StaticSpec) -> tuple[int, ...]:
    return (1,)


def step(params, mcfg: ModelConfig, spec: StaticSpec, inputs: EngineInputs, st: TempoState,
         capture: Capture = Capture.NONE, feed_width: int | None = None):
    """One step of the original loop; same signature and outputs as the TEMPO step."""
    W = spec.width
    F = W if feed_width is None else feed_width
    s = st.step
    cand, tau, _ = select(spec, inputs, st)
    i = jnp.arange(F)
    last = cand.n - 1
    tokens = jnp.zeros(F, jnp.int32).at[0].set(cand.tokens[last])
    pos = st.next_pos + i.astype(jnp.float32)
    n_feed = jnp.int32(1)
    fed = feed(params, mcfg, spec, inputs, st, tokens, pos, n_feed, capture)
    slot_maps = write_slots(st, tokens, pos, n_feed, jnp.where(i == 0, last, -1))
    hit = EosRule.check("any").hit(cand, jnp.asarray(mcfg.eos_token_ids or (-1,), jnp.int32))
    done = (s + 1 >= spec.steps) | (hit & (s + 1 >= inputs.min_steps))
    iw = jnp.arange(W)
    w = Written(tokens=tokens, pos=pos, n=n_feed, advance=jnp.float32(1.0),
                slots_row=jnp.where(iw == last, st.n_written, -1),
                positions_row=jnp.broadcast_to(st.next_pos, (W,)))
    new = finish(spec, st, cand, tau, w, fed.cache, jax.nn.softmax(fed.logits[0]), done, jnp.int32(1),
                 slot_maps, None)
    return new, captured(capture, fed.attn, fed.resid, st.n_written, n_feed, W)


class Upstream(Compat, name="upstream"):
    """The original implementation's feed sequence (docs/replication.md): this module."""

    def mechanics(self) -> ModuleType:
        return sys.modules[__name__]
