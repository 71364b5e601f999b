"""Greedy-exact self-speculative decoding (``method="speculative"``; docs/speculative.md).

The draft model is the first k layers of the model itself, followed by the model's final norm and LM
head (an early exit). A round, from a state whose cache holds the prompt and the n committed tokens
and whose full-model distribution ``d_n`` is known:

1. token n is ``argmax d_n`` (exactly what greedy decoding picks);
2. the draft proposes g tokens ``y_1..y_g`` autoregressively (g forwards of k layers, T = 1);
3. the full model verifies them in ONE forward over ``[token n, y_1..y_g]`` (T = g + 1), giving its
   own argmaxes ``z_1..z_{g+1}``;
4. the longest prefix with ``y_i == z_i`` (a tokens) is accepted; ``token n, y_1..y_a`` are
   committed (a + 1 tokens) and ``d_{n+a+1}`` (whose argmax is the full model's token at the first
   mismatch, or the bonus token after g acceptances) starts the next round.

Every committed token is the full model's argmax given the committed tokens before it, so the output
is greedy decoding's, token for token (in exact arithmetic; the verify forward multiplies g + 1 rows
at once where greedy multiplies one, see docs/speculative.md). The draft's layers are the model's
first k layers on the same tokens, so the draft reads the full cache's first k layers: one cache.

Shapes: K cache slots, L layers, V vocab, S max steps, g draft length, R rounds (<= S).
"""

from __future__ import annotations

import dataclasses
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
from tempo_jax.engine.selection import Greedy
from tempo_jax.engine.request import check_request, pad_prompt
from tempo_jax.engine.schedules import thresholds
from tempo_jax.engine.selection import entropy
from tempo_jax.model import KVCache, forward, is_unstacked
from tempo_jax.slots import PROMPT, UNWRITTEN
from tempo_jax.trace import Trace


@dataclasses.dataclass(frozen=True)
class SpecSpec:
    """Static choices of a speculative run (hashable; static under jit)."""

    steps: int  # S
    draft_len: int  # g
    draft_layers: int  # k


class SpecState(Struct):
    """What a speculative generation carries between rounds (one prompt)."""

    cache: KVCache  # [L,1,K,G,D]; slots < prompt_len + n hold the prompt and committed tokens
    n: jax.Array  # committed tokens (steps)
    done: jax.Array  # bool
    length: jax.Array  # steps in the output (valid once done)
    rounds: jax.Array  # rounds run (= full-model forwards after the prompt)
    dist: jax.Array  # [V] full-model distribution d_n of step n
    next_draft: jax.Array  # draft token proposed for step n (-1: none)
    tokens: jax.Array  # [S+g+1] token of step s
    probs: jax.Array  # [S+g+1] d_s[token]
    entropy: jax.Array  # [S+g+1] entropy of d_s (nats)
    draft: jax.Array  # [S+g+1] draft token proposed for step s (-1: step s had no draft)
    round_start: jax.Array  # [S] step at which round r began (-1: not run)
    round_accepted: jax.Array  # [S] drafts accepted in round r (-1: not run)


@dataclasses.dataclass(frozen=True)
class SpecStats:
    """Efficiency of one speculative run (over the output steps only).

    drafted: steps whose token had a draft proposal; accepted: of those, the steps where the draft
    equalled the full model's argmax; acceptance_rate = accepted / drafted (NaN if none drafted);
    full_forwards: verify forwards (rounds; the prompt forward not counted); draft_forwards:
    rounds x g; tokens_per_full_forward = steps / full_forwards (greedy decoding: 1).
    """

    steps: int
    rounds: int
    drafted: int
    accepted: int
    draft_forwards: int

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def full_forwards(self) -> int:
        return self.rounds

    @property
    def tokens_per_full_forward(self) -> float:
        return self.steps / self.rounds if self.rounds else float("nan")

    @classmethod
    def of(cls, trace: Trace) -> "SpecStats":
        a = trace.arrays
        if "draft_tokens" not in a:
            raise ValueError("not a speculative trace (it has no draft_tokens array)")
        tok, draft = a["tokens"][:, 0], a["draft_tokens"]
        rounds = int((a["spec_round_start"] >= 0).sum())
        return cls(steps=len(tok), rounds=rounds, drafted=int((draft >= 0).sum()),
                   accepted=int((draft == tok).sum()),
                   draft_forwards=rounds * int(trace.config["draft_len"]))


def draft_params(params, mcfg: ModelConfig, k: int):
    """(params, config) of the draft: layers 0..k-1 of ``params``, the same embedding, final norm
    and LM head. Sliced once per run, outside jit (a slice inside the round would copy the draft's
    weights every round)."""
    if not 1 <= k < mcfg.num_layers:
        raise ValueError(f"draft_layers must be in 1..{mcfg.num_layers - 1}, got {k}")
    dp = dict(params)
    layers = params["layers"]
    dp["layers"] = layers[:k] if is_unstacked(params) else jax.tree_util.tree_map(lambda x: x[:k], layers)
    types = None if mcfg.layer_types is None else mcfg.layer_types[:k]  # the draft's layers keep their kinds
    return dp, dataclasses.replace(mcfg, num_layers=k, layer_types=types, name=f"{mcfg.name}[:{k}]")


def init_state(params, mcfg: ModelConfig, spec: SpecSpec, prompt: jax.Array, prompt_len: jax.Array,
               capacity: int) -> SpecState:
    """Prompt forward (``prompt[Pb]`` padded, ``prompt_len`` real) -> state ready for round 0.

    The same prefill as the TEMPO/greedy engine, so ``d_0`` is greedy's."""
    last, cache = prefill(params, mcfg, prompt, prompt_len, capacity)
    n_out = spec.steps + spec.draft_len + 1
    zi = lambda n, v=0: jnp.full(n, v, jnp.int32)
    return SpecState(cache=cache, n=jnp.int32(0), done=jnp.bool_(False), length=jnp.int32(0),
                     rounds=jnp.int32(0), dist=jax.nn.softmax(last), next_draft=jnp.int32(-1),
                     tokens=zi(n_out), probs=jnp.zeros(n_out), entropy=jnp.zeros(n_out),
                     draft=zi(n_out, -1), round_start=zi(spec.steps, -1),
                     round_accepted=zi(spec.steps, -1))


def spec_round(params, dparams, mcfg: ModelConfig, dcfg: ModelConfig, spec: SpecSpec,
               prompt_len: jax.Array, min_steps: jax.Array, st: SpecState) -> SpecState:
    """One draft-then-verify round (see the module docstring)."""
    g, S = spec.draft_len, spec.steps
    K = st.cache.capacity
    kk = jnp.arange(K)
    # a greedy path is one line: every slot holds the token at the position of its index
    key_pos = kk.astype(jnp.float32)[None] if mcfg.has_window else None
    base = prompt_len + st.n  # slot and position of step n's token
    tok0 = jnp.argmax(st.dist).astype(jnp.int32)  # greedy's token for step n

    def draft_one(i, carry):
        dcache, tok, drafts = carry
        slot = base + i
        logits, dcache, _ = forward(dparams, dcfg, tok[None, None], slot.astype(jnp.float32)[None, None],
                                    slot[None, None], (kk <= slot)[None, None], dcache, key_pos=key_pos)
        y = jnp.argmax(jax.nn.softmax(logits[0, 0])).astype(jnp.int32)
        return dcache, y, drafts.at[i].set(y)

    k = spec.draft_layers
    dcache = KVCache(st.cache.k[:k], st.cache.v[:k])  # the draft's layers of the committed context
    _, _, drafts = jax.lax.fori_loop(0, g, draft_one, (dcache, tok0, jnp.zeros(g, jnp.int32)))

    toks = jnp.concatenate([tok0[None], drafts])  # [g+1] fed at steps n..n+g
    slots = base + jnp.arange(g + 1)
    mask = kk[None, :] <= slots[:, None]  # plain causal: a greedy path is one line of slots
    logits, cache, _ = forward(params, mcfg, toks[None], slots.astype(jnp.float32)[None], slots[None],
                               mask[None], st.cache, key_pos=key_pos)
    dists = jax.nn.softmax(logits[0], axis=-1)  # [g+1,V]: d_{n+1} .. d_{n+g+1}
    z = jnp.argmax(dists, axis=-1).astype(jnp.int32)
    a = jnp.sum(jnp.cumprod(drafts == z[:g]))  # accepted drafts

    step_dist = jnp.concatenate([st.dist[None], dists[:g]])  # d_{n+i} for the token of step n+i
    i = jnp.arange(g + 1)
    probs = step_dist[i, toks]
    proposed = jnp.concatenate([st.next_draft[None], drafts[:g]])
    put = lambda arr, x: jax.lax.dynamic_update_slice(arr, x.astype(arr.dtype), (st.n,))

    m = st.n + i  # step index of each row
    eos_ids = jnp.asarray(mcfg.eos_token_ids or (-1,), jnp.int32)
    stop = jnp.isin(toks, eos_ids) & (m + 1 >= min_steps) & (i <= a)
    new_n = st.n + a + 1
    end = jnp.minimum(jnp.where(stop.any(), st.n + jnp.argmax(stop) + 1, new_n), S)
    return st.replace(
        cache=cache, n=new_n, done=stop.any() | (new_n >= S), length=end, rounds=st.rounds + 1,
        dist=dists[a], next_draft=jnp.where(a < g, drafts[jnp.minimum(a, g - 1)], -1),
        tokens=put(st.tokens, toks), probs=put(st.probs, probs),
        entropy=put(st.entropy, entropy(step_dist)), draft=put(st.draft, proposed),
        round_start=st.round_start.at[st.rounds].set(st.n),
        round_accepted=st.round_accepted.at[st.rounds].set(a))


def run_on_device(params, dparams, mcfg: ModelConfig, dcfg: ModelConfig, spec: SpecSpec, prompt,
                  prompt_len, min_steps, capacity: int) -> SpecState:
    """The whole generation as one ``lax.while_loop`` over rounds."""
    st = init_state(params, mcfg, spec, prompt, prompt_len, capacity)
    body = lambda x: spec_round(params, dparams, mcfg, dcfg, spec, prompt_len, min_steps, x)
    return jax.lax.while_loop(lambda x: ~x.done, body, st)


_init = jax.jit(init_state, static_argnames=("mcfg", "spec", "capacity"))
_round = jax.jit(spec_round, static_argnames=("mcfg", "dcfg", "spec"), donate_argnames=("st",))
_device = jax.jit(run_on_device, static_argnames=("mcfg", "dcfg", "spec", "capacity"))


def generate(params, mcfg: ModelConfig, prompt_ids: Sequence[int], gcfg: GenerationConfig,
             driver: str = "host", progress: bool = False, on_step=None, model_id: str = "",
             inputs=None, capture: str | None = None) -> Trace:
    """Speculative generation from one prompt -> a :class:`Trace` laid out as greedy's (one member
    per step), plus ``draft_tokens [S]`` (the draft proposed for step s, -1 none),
    ``spec_round_start [R]`` and ``spec_accepted [R]`` (-1 past the rounds run). Use
    :meth:`SpecStats.of` on it for the acceptance rate and tokens per full forward.

    driver "host": a Python loop over the jitted round; "device": one ``lax.while_loop``.
    Called by :func:`tempo_jax.engine.run.generate` for ``method="speculative"``.
    """
    if gcfg.method != "speculative":
        raise ValueError(f"speculative generation needs method 'speculative', got {gcfg.method!r}")
    if driver not in ("host", "device"):
        raise ValueError(f"unknown driver {driver!r}; allowed: host, device")
    if on_step is not None or capture not in (None, "none"):
        raise ValueError("speculative decoding streams no per-step capture; use method 'greedy' "
                         "(same tokens) to capture attention")
    if inputs is not None:
        raise ValueError("speculative decoding takes no custom engine inputs (interventions, "
                         "offsets); use method 'greedy' for those")
    capacity = check_request(mcfg, gcfg, prompt_ids)
    k = gcfg.draft_layers_for(mcfg)
    spec = SpecSpec(steps=gcfg.max_steps, draft_len=gcfg.draft_len, draft_layers=k)
    prompt = pad_prompt(gcfg, prompt_ids)
    plen = jnp.int32(len(prompt_ids))
    min_steps = jnp.int32(gcfg.min_steps)
    dparams, dcfg = draft_params(params, mcfg, k)
    t0 = time.perf_counter()
    timings = {}
    if driver == "device":
        st = _device(params, dparams, mcfg, dcfg, spec, prompt, plen, min_steps, capacity)
        jax.block_until_ready(st.n)
    else:
        st = _init(params, mcfg, spec, prompt, plen, capacity)
        jax.block_until_ready(st.dist)
        timings["prompt_s"] = time.perf_counter() - t0
        from tqdm.auto import tqdm

        bar = tqdm(total=gcfg.max_steps, desc="speculative", unit="step", disable=not progress)
        done, n = False, 0
        while not done:
            st = _round(params, dparams, mcfg, dcfg, spec, plen, min_steps, st)
            done, new_n = jax.device_get((st.done, st.n))
            bar.update(min(int(new_n), gcfg.max_steps) - n)
            n = min(int(new_n), gcfg.max_steps)
        bar.close()
    timings["total_s"] = time.perf_counter() - t0
    return _trace(st, gcfg, k, list(map(int, prompt_ids)), capacity, model_id, timings)


def _trace(st: SpecState, gcfg: GenerationConfig, k_draft: int, prompt_ids: list[int],
           capacity: int, model_id: str, timings: dict) -> Trace:
    """The greedy-layout trace of a finished state (slot maps as the greedy engine leaves them)."""
    n = int(st.length)
    p, pb = len(prompt_ids), gcfg.bucketed(len(prompt_ids))
    tokens = np.asarray(st.tokens[:n], np.int32)
    steps = np.arange(n)
    slot = (p + steps).astype(np.int32)
    k = np.arange(capacity)
    slot_step = np.where(k < p, PROMPT, UNWRITTEN).astype(np.int32)
    slot_step[slot] = steps
    slot_token = np.zeros(capacity, np.int32)
    slot_token[:pb] = np.pad(prompt_ids, (0, pb - p))
    slot_token[slot] = tokens
    slot_pos = np.where(k < p + n, k, 0).astype(np.float32)
    taus = thresholds(gcfg.schedule, gcfg.threshold, gcfg.threshold_final, gcfg.max_steps,
                      k=gcfg.schedule_k, p1=gcfg.bezier_p1, p2=gcfg.bezier_p2, a=gcfg.relu_a)[:n]
    arrays = {
        "tokens": tokens[:, None], "probs": np.asarray(st.probs[:n], np.float32)[:, None],
        "slots": slot[:, None], "positions": slot.astype(np.float32)[:, None],
        "valid": np.ones((n, 1), bool), "tau": taus.astype(np.float32),
        "entropy": np.asarray(st.entropy[:n], np.float32), "set_n": np.ones(n, np.int32),
        "slot_step": slot_step, "slot_member": np.zeros(capacity, np.int32), "slot_pos": slot_pos,
        "slot_token": slot_token, "alive": k < p + n,
        "prune_score": np.full(capacity, np.nan, np.float32),
        "pruned_at": np.full(capacity, -1, np.int32), "fed_tokens": tokens[:, None],
        "fed_pos": slot.astype(np.float32)[:, None], "fed_n": np.ones(n, np.int32),
        "cache_len": slot, "n_written": np.asarray(p + n, np.int32),
        "draft_tokens": np.asarray(st.draft[:n], np.int32),
        "spec_round_start": np.asarray(st.round_start, np.int32),
        "spec_accepted": np.asarray(st.round_accepted, np.int32),
    }
    cfg = dataclasses.asdict(gcfg)
    cfg["draft_layers"] = k_draft  # the default (None) resolved
    return Trace(model_id, cfg, prompt_ids, arrays, timings)


class Speculative(Method, name="speculative"):
    """Greedy's tokens, drafted by the model's first layers and verified by the full model
    (docs/speculative.md). The step-based drivers (on-device loop, sweeps) decode greedily."""

    own_driver = True

    def selection(self, width):
        return Greedy(width)

    def generate(self, params, mcfg, prompt_ids, gcfg, driver, progress, on_step, model_id, inputs, capture):
        return generate(params, mcfg, prompt_ids, gcfg, driver, progress, on_step, model_id, inputs, capture)
