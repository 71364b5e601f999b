"""Instruments for comparing TEMPO with other decoders (RQ 4.1, 5.1, 7.1, 7.2).

- :func:`sample_worlds`: B sampling (or any width-1) generations of one prompt in ONE vmapped,
  jitted step per logical step (a world that has finished keeps its state), one Trace per world.
- :func:`path_ppl`: self-perplexity of a width-1 path from the probabilities its trace stored
  (sampling, greedy and beam traces store the model's temperature-1 probability of each chosen
  token, so this equals :func:`tempo_jax.quality.self_perplexity` of the same continuation).
- :func:`beam_paths`: every final beam of a beam-search trace as a token list.
- :func:`alternatives`: per-step statistics of the tokens several paths (or a TEMPO lattice) wrote
  at the same logical step: distinct count, redundancy, embedding spread.
- :func:`replay_attention`: per-layer sink share and attention entropy of a path's generated
  tokens when the path is fed as ONE ordinary causal sequence (what a single-path decoder such as
  beam search computes for that path: a beam's query sees its own ancestors only).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax import metrics
from tempo_jax.engine import core
from tempo_jax.engine.config import GenerationConfig
from tempo_jax.engine.inputs import stack
from tempo_jax.engine.run import check_request, pad_prompt
from tempo_jax.trace import Trace


@functools.partial(jax.jit, static_argnames=("mcfg", "spec", "capacity"))
def _init_worlds(params, mcfg, spec, data, prompt, plen, capacity: int):
    return jax.vmap(lambda d: core.init_state(params, mcfg, spec, d, prompt, plen, capacity))(data)


@functools.partial(jax.jit, static_argnames=("mcfg", "spec"))
def _step_worlds(params, mcfg, spec, data, st):
    new = jax.vmap(lambda d, s: core.step(params, mcfg, spec, d, s)[0])(data, st)
    keep = lambda old, nw: jnp.where(st.done.reshape((-1,) + (1,) * (nw.ndim - 1)), old, nw)
    return jax.tree_util.tree_map(keep, st, new)


def sample_worlds(params, mcfg, prompt_ids: Sequence[int], gcfgs: Sequence[GenerationConfig]) -> list[Trace]:
    """B generations of one prompt, one per config, run together (worlds on a leading B axis).

    Every config must share the static part (method, width, steps, rules); thresholds, temperature,
    top-k/top-p and seed may differ. Returns one :class:`Trace` per config, in order; each equals
    ``generate(..., driver="device")`` of that config alone.
    """
    if not gcfgs:
        raise ValueError("sample_worlds needs at least one config")
    spec = gcfgs[0].static()
    if any(g.static() != spec for g in gcfgs):
        raise ValueError("sample_worlds: every config must share width, steps, method and rules")
    capacity = max(check_request(mcfg, g, prompt_ids) for g in gcfgs)
    data = stack([g.inputs(mcfg) for g in gcfgs])
    prompt = pad_prompt(gcfgs[0], prompt_ids)
    st = _init_worlds(params, mcfg, spec, data, prompt, jnp.int32(len(prompt_ids)), capacity)
    for _ in range(spec.steps):
        st = _step_worlds(params, mcfg, spec, data, st)
        if bool(np.all(np.asarray(st.done))):
            break
    ids = list(map(int, prompt_ids))
    return [Trace.from_state(jax.tree_util.tree_map(lambda x, b=b: x[b], st), g, ids)
            for b, g in enumerate(gcfgs)]


def cut_at_eos(tokens: Sequence[int], probs: Sequence[float] | None = None, eos_ids=()):
    """``tokens`` (and ``probs``) cut before the first EOS id."""
    eos = {int(t) for t in eos_ids}
    n = next((i for i, t in enumerate(tokens) if int(t) in eos), len(tokens))
    toks = [int(t) for t in tokens[:n]]
    return toks if probs is None else (toks, [float(p) for p in probs[:n]])


def path_ppl(trace: Trace, eos_ids=()) -> float:
    """``exp(-mean log p)`` over the path's tokens before the first EOS, from the probabilities a
    width-1 trace stored (NaN for an empty path). Only for traces whose stored probability is the
    model's own temperature-1 probability of the token given the path (greedy, sampling, beam)."""
    a = trace.arrays
    if a["tokens"].ndim != 2 or a["valid"][:, 1:].any():
        raise ValueError("path_ppl needs a width-1 path (one member per step)")
    _, probs = cut_at_eos(a["tokens"][:, 0], a["probs"][:, 0], eos_ids)
    if not probs:
        return float("nan")
    return float(np.exp(-np.mean(np.log(np.maximum(probs, 1e-45)))))


def beam_paths(trace: Trace) -> list[list[int]]:
    """Token list of every final beam of a :func:`~tempo_jax.engine.beam.beam_search` trace (walk
    the parents back from step S-1; "stay" entries of finished beams are skipped)."""
    tokens, parents = trace.arrays["beam_tokens"], trace.arrays["beam_parents"]
    S, N = tokens.shape
    out = []
    for j0 in range(N):
        j, path = j0, []
        for s in range(S - 1, -1, -1):
            if tokens[s, j] >= 0:
                path.append(int(tokens[s, j]))
            j = int(parents[s, j])
        out.append(path[::-1])
    return out


@dataclasses.dataclass(frozen=True)
class Alternatives:
    """Per-step alternatives of a set of paths (or a lattice), averaged over steps.

    distinct: mean distinct tokens per step; redundancy: mean of ``1 - distinct / computed`` (the
    share of the step's computed tokens that repeat another one); spread: mean over steps with >= 2
    distinct tokens of their mean pairwise cosine distance of input embeddings (NaN if none);
    branching: share of steps with >= 2 distinct tokens.
    """

    distinct: float
    redundancy: float
    spread: float
    branching: float


def distinct_per_step(step_tokens: Sequence[Sequence[int]]) -> list[tuple[list[int], int]]:
    """``(sorted distinct tokens, computed count)`` of every step of ``step_tokens`` that has a
    token (steps with none are skipped)."""
    return [(sorted(set(int(t) for t in toks)), len(toks)) for toks in step_tokens if len(toks)]


def alternatives(step_tokens: Sequence[Sequence[int]], embed) -> Alternatives:
    """``step_tokens[s]``: every token computed at logical step s (one per path that reached s, or
    the members of a TEMPO set). Steps with no token are skipped."""
    steps = distinct_per_step(step_tokens)
    dist = [len(u) for u, _ in steps]
    red = [1.0 - len(u) / n for u, n in steps]
    branch = [len(u) >= 2 for u, _ in steps]
    spread = [metrics.semantic_diversity(embed, u) for u, _ in steps if len(u) >= 2]
    if not dist:
        nan = float("nan")
        return Alternatives(nan, nan, nan, nan)
    return Alternatives(float(np.mean(dist)), float(np.mean(red)),
                        float(np.mean(spread)) if spread else float("nan"), float(np.mean(branch)))


def paths_by_step(paths: Sequence[Sequence[int]]) -> list[list[int]]:
    """Transpose paths (lists of tokens, possibly of different lengths) into per-step token lists."""
    n = max((len(p) for p in paths), default=0)
    return [[p[s] for p in paths if len(p) > s] for s in range(n)]


@functools.lru_cache(maxsize=None)
def _replay_fn():
    from tempo_jax.model import TapsSpec, causal_mask, forward, init_cache

    def f(params, cfg, tokens):
        t = tokens.shape[0]
        cache = init_cache(cfg, 1, t, params["embed"].dtype)
        ar = jnp.arange(t)
        key_pos = ar[None].astype(jnp.float32) if cfg.has_window else None  # sliding-window models
        _, _, taps = forward(params, cfg, tokens[None], ar[None].astype(jnp.float32), ar[None],
                             causal_mask(1, t, t), cache, TapsSpec(attn=True), key_pos=key_pos)
        a = taps["attn"][:, 0]  # [L,H,T,K]
        ent = -jnp.sum(jnp.where(a > 0, a * jnp.log(jnp.where(a > 0, a, 1.0)), 0.0), -1)
        return a[..., 0], ent  # sink [L,H,T], entropy [L,H,T]

    return jax.jit(f, static_argnums=1)


def replay_rows(params, cfg, prompt_ids: Sequence[int], path: Sequence[int],
                bucket: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(sink[L,n], entropy[L,n]): per layer and path token (as query), the mean over heads of the
    attention on slot 0 and of the attention entropy (nats), when prompt + path is fed as one causal
    sequence at positions 0..P+n-1 (padding after the real tokens changes nothing)."""
    p, c = [int(t) for t in prompt_ids], [int(t) for t in path]
    if not c or not p:
        raise ValueError("replay_attention needs a non-empty prompt and path")
    seq = p + c
    t = -(-len(seq) // bucket) * bucket
    tokens = np.zeros(t, np.int32)
    tokens[:len(seq)] = seq
    sink, ent = _replay_fn()(params, cfg, jnp.asarray(tokens))
    rows = slice(len(p), len(seq))
    return (np.asarray(sink[:, :, rows], np.float64).mean(1),
            np.asarray(ent[:, :, rows], np.float64).mean(1))


def replay_attention(params, cfg, prompt_ids: Sequence[int], path: Sequence[int],
                     bucket: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(sink[L], entropy[L]): :func:`replay_rows` averaged over the path's tokens."""
    sink, ent = replay_rows(params, cfg, prompt_ids, path, bucket)
    return sink.mean(1), ent.mean(1)
