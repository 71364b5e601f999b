"""Beam search in the same engine: all beams live in ONE cache; a tree mask gives each beam's query
its own ancestors only, so the model function, slots and positions are those of TEMPO.

Ranking during search is by summed log-probability; the final choice divides by
``length ** length_penalty`` (generated tokens, EOS included). A beam that emitted EOS is finished:
it stays in the beam set unchanged (one "stay" candidate with +0) and competes at the end.
"""

from __future__ import annotations

import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.pytree import Struct
from tempo_jax.config import ModelConfig
from tempo_jax.engine.config import GenerationConfig
from tempo_jax.engine.core import prefill
from tempo_jax.engine.methods import Method
from tempo_jax.engine.request import check_request, pad_prompt
from tempo_jax.engine.selection import top_k
from tempo_jax.model import KVCache, forward
from tempo_jax.trace import Trace


class BeamState(Struct):
    cache: KVCache
    logp: jax.Array  # [N,V] next-token log-probs per beam
    score: jax.Array  # [N] summed log-prob
    length: jax.Array  # [N] generated tokens
    finished: jax.Array  # [N]
    anc: jax.Array  # [N,K] slots each beam may see
    tokens: jax.Array  # [S,N] token chosen at step s by beam j (-1 = stay)
    parents: jax.Array  # [S,N]
    tok_logp: jax.Array  # [S,N]


@functools.partial(jax.jit, static_argnames=("mcfg", "width", "steps", "capacity"))
def _beam(params, mcfg: ModelConfig, prompt, prompt_len, width: int, steps: int, capacity: int):
    N, V = width, mcfg.vocab_size
    last, cache = prefill(params, mcfg, prompt, prompt_len, capacity)
    lp0 = jax.nn.log_softmax(last)
    k = jnp.arange(capacity)
    eos_ids = jnp.asarray(mcfg.eos_token_ids or (-1,), jnp.int32)
    # step s writes its N beams at slots prompt_len + s*N .. + N-1, all at position prompt_len + s
    key_pos = (jnp.where(k < prompt_len, k, prompt_len + (k - prompt_len) // N).astype(jnp.float32)[None]
               if mcfg.has_window else None)
    st = BeamState(
        cache=cache, logp=jnp.broadcast_to(lp0, (N, V)),
        score=jnp.where(jnp.arange(N) == 0, 0.0, -jnp.inf), length=jnp.zeros(N, jnp.int32),
        finished=jnp.zeros(N, bool), anc=jnp.broadcast_to(k < prompt_len, (N, capacity)),
        tokens=jnp.full((steps, N), -1, jnp.int32), parents=jnp.zeros((steps, N), jnp.int32),
        tok_logp=jnp.zeros((steps, N)))

    def body(s, st: BeamState):
        grow = jnp.where(st.finished[:, None], -jnp.inf, st.score[:, None] + st.logp)  # [N,V]
        stay = jnp.where(st.finished, st.score, -jnp.inf)  # [N]
        cand = jnp.concatenate([grow.reshape(-1), stay])
        best, idx = top_k(cand, N)
        is_stay = idx >= N * V
        parent = jnp.where(is_stay, idx - N * V, idx // V)
        token = jnp.where(is_stay, 0, idx % V).astype(jnp.int32)
        base = prompt_len + s * N
        slots = base + jnp.arange(N)
        own = (k[None, :] == slots[:, None]) & ~is_stay[:, None]
        anc = st.anc[parent] | own
        mask = anc | (k[None, :] == slots[:, None])  # stay rows see themselves only for finiteness
        pos = jnp.full((1, N), (prompt_len + s).astype(jnp.float32))
        logits, cache, _ = forward(params, mcfg, token[None], pos, slots[None], mask[None], st.cache,
                                   key_pos=key_pos)
        new_lp = jax.nn.log_softmax(logits[0], axis=-1)
        alive_row = jnp.isfinite(best) & ~is_stay
        return st.replace(
            cache=cache, logp=jnp.where(is_stay[:, None], st.logp[parent], new_lp),
            score=best, length=st.length[parent] + alive_row,
            finished=st.finished[parent] | (~is_stay & jnp.isin(token, eos_ids)),
            anc=jnp.where(is_stay[:, None], st.anc[parent], anc),
            tokens=st.tokens.at[s].set(jnp.where(is_stay, -1, token)),
            parents=st.parents.at[s].set(parent),
            tok_logp=st.tok_logp.at[s].set(jnp.where(is_stay, 0.0, st.logp[parent, token])))

    return jax.lax.fori_loop(0, steps, body, st)


def beam_search(params, mcfg: ModelConfig, prompt_ids: Sequence[int], width: int = 4,
                max_steps: int = 32, length_penalty: float = 1.0, model_id: str = "",
                prompt_bucket: int = 32) -> Trace:
    """Best beam (by ``score / length**length_penalty``) as a trace with one member per step.

    The trace's arrays also hold every beam: ``beam_tokens/beam_parents [S,N]``, ``beam_score [N]``.
    """
    if width < 1:
        raise ValueError(f"beam width must be >= 1, got {width}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if not prompt_ids:
        raise ValueError("the prompt is empty: give at least one token")
    p = len(prompt_ids)
    if p + max_steps + 1 > mcfg.max_position_embeddings:
        raise ValueError(f"prompt ({p}) + {max_steps} steps exceeds the model's context "
                         f"({mcfg.max_position_embeddings})")
    prompt = pad_prompt(GenerationConfig(prompt_bucket=prompt_bucket), prompt_ids)
    capacity = prompt.shape[0] + max_steps * width
    t0 = time.perf_counter()
    st = _beam(params, mcfg, prompt, jnp.int32(p), width, max_steps, capacity)
    tokens, parents = np.asarray(st.tokens), np.asarray(st.parents)
    score, length = np.asarray(st.score), np.asarray(st.length)
    final = np.where(np.isfinite(score), score / np.maximum(length, 1) ** length_penalty, -np.inf)
    j = int(np.argmax(final))
    path, logps = [], []
    tok_logp = np.asarray(st.tok_logp)
    for s in range(max_steps - 1, -1, -1):  # walk parents back from the best beam
        if tokens[s, j] >= 0:
            path.append(int(tokens[s, j]))
            logps.append(float(tok_logp[s, j]))
        j = int(parents[s, j])
    path, logps = path[::-1], logps[::-1]
    n = len(path)
    arrays = {
        "tokens": np.asarray(path, np.int32)[:, None], "probs": np.exp(np.asarray(logps))[:, None],
        "slots": np.full((n, 1), -1, np.int32), "positions": (p + np.arange(n, dtype=np.float32))[:, None],
        "valid": np.ones((n, 1), bool), "tau": np.zeros(n, np.float32),
        "entropy": np.full(n, np.nan, np.float32), "set_n": np.ones(n, np.int32),
        "prune_score": np.zeros(0, np.float32), "pruned_at": np.zeros(0, np.int32),
        "beam_tokens": tokens, "beam_parents": parents, "beam_score": score, "beam_length": length,
        "beam_final": final}
    cfg = {"method": "beam", "width": width, "max_steps": max_steps, "length_penalty": length_penalty}
    return Trace(model_id, cfg, list(map(int, prompt_ids)), arrays,
                 {"total_s": time.perf_counter() - t0})


class Beam(Method, name="beam"):
    """Beam search (``beam_width`` beams, ranked by score / length**``length_penalty``), a baseline
    with its own search (:mod:`tempo_jax.engine.beam`); its trace is the best beam."""

    own_driver = True

    def selection(self, width):
        raise ValueError("beam search runs its own search, not the TEMPO step: use generate (host) "
                         "with method 'beam', or method 'greedy' for a step-based baseline")

    def generate(self, params, mcfg, prompt_ids, gcfg, driver, progress, on_step, model_id, inputs, capture):
        check_request(mcfg, gcfg, prompt_ids)
        if driver not in ("host", "device"):
            raise ValueError(f"unknown driver {driver!r}; allowed: host, device")
        if inputs is not None or on_step is not None or capture not in (None, "none"):
            raise ValueError("beam search takes no custom engine inputs and streams no per-step capture; "
                             "use method 'greedy' or 'tempo' for those")
        return beam_search(params, mcfg, prompt_ids, width=gcfg.beam_width, max_steps=gcfg.max_steps,
                           length_penalty=gcfg.length_penalty, model_id=model_id,
                           prompt_bucket=gcfg.prompt_bucket)
