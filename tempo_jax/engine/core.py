"""The TEMPO step: one jit-compiled function with static shapes, and two drivers over it.

State is a pytree (``TempoState``) so the on-device driver (``lax.while_loop``) can be vmapped over
worlds. Shapes: K cache slots, W max width, S max steps, V vocab, L layers, H heads.
"""

from __future__ import annotations


import flax.struct
import jax
import jax.numpy as jnp

from tempo_jax.config import ModelConfig
from tempo_jax.engine import pruning
from tempo_jax.engine.config import StaticSpec
from tempo_jax.engine.masks import step_mask
from tempo_jax.engine.selection import (combine, entropy, select_greedy, select_sample,
                                        select_threshold)
from tempo_jax.model import KVCache, TapsSpec, causal_mask, forward, init_cache

UNWRITTEN, PROMPT = -2, -1


@flax.struct.dataclass
class TempoState:
    """Everything one generation carries between steps (one world)."""

    cache: KVCache  # [L,1,K,G,D]
    step: jax.Array  # s, int32
    done: jax.Array  # bool
    dist: jax.Array  # d_s [V] float32
    n_written: jax.Array  # next free slot
    next_pos: jax.Array  # logical position of step s's members (before offsets)
    alive: jax.Array  # [K] bool
    slot_step: jax.Array  # [K] int32: -2 unwritten, -1 prompt, else step
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
    positions: jax.Array  # [S,W] logical positions of members
    fed_tokens: jax.Array  # [S,W] what the forward of step s fed
    fed_pos: jax.Array  # [S,W]
    fed_n: jax.Array  # [S]
    cache_len: jax.Array  # [S] slots written before step s's forward
    tau: jax.Array  # [S]
    entropy: jax.Array  # [S] entropy of d_s
    next_n: jax.Array  # members step s will select (lets the host driver feed fewer queries)


def prefill(params, mcfg: ModelConfig, prompt: jax.Array, prompt_len: jax.Array, capacity: int,
            interventions=None):
    """Causal forward of ``prompt[Pb]`` (padded; ``prompt_len`` real tokens) into a fresh cache of
    ``capacity`` slots -> (logits ``[V]`` of the last real token, cache)."""
    pb = prompt.shape[0]
    cache = init_cache(mcfg, 1, capacity, params["embed"].dtype)
    ar = jnp.arange(pb)
    logits, cache, _ = forward(params, mcfg, prompt[None], ar[None].astype(jnp.float32), ar[None],
                               causal_mask(1, pb, capacity), cache, interventions=interventions)
    return jnp.take(logits[0], prompt_len - 1, axis=0), cache


def init_state(params, mcfg: ModelConfig, spec: StaticSpec, data: dict, prompt: jax.Array,
               prompt_len: jax.Array, capacity: int) -> TempoState:
    """Prompt forward (prompt[Pb] padded, prompt_len real tokens) -> state ready for step 0."""
    pb = prompt.shape[0]
    S, W = spec.steps, spec.width
    last, cache = prefill(params, mcfg, prompt, prompt_len, capacity, data.get("interventions"))
    ar = jnp.arange(pb)
    k = jnp.arange(capacity)
    alive = k < prompt_len
    n_written, next_pos = prompt_len, prompt_len.astype(jnp.float32)
    slot_token = jnp.zeros(capacity, jnp.int32).at[:pb].set(jnp.where(ar < prompt_len, prompt, 0))
    if spec.compat == "upstream":  # the last prompt token is fed again at position P
        tok = jnp.take(prompt, prompt_len - 1)
        logits, cache, _ = forward(params, mcfg, tok[None, None], next_pos[None, None],
                                   prompt_len[None, None], (k <= prompt_len)[None, None], cache,
                                   interventions=data.get("interventions"))
        last = logits[0, 0]
        alive = k <= prompt_len
        slot_token = slot_token.at[prompt_len].set(tok)
        n_written, next_pos = prompt_len + 1, next_pos + 1.0
    zi = lambda *shape: jnp.zeros(shape, jnp.int32)
    return TempoState(
        cache=cache, step=jnp.int32(0), done=jnp.bool_(False), dist=jax.nn.softmax(last),
        n_written=jnp.int32(n_written), next_pos=jnp.float32(next_pos), alive=alive,
        slot_step=jnp.where(alive, PROMPT, UNWRITTEN).astype(jnp.int32),
        slot_member=zi(capacity), slot_pos=jnp.where(alive, k, 0).astype(jnp.float32),
        slot_token=slot_token,
        recv_acc=jnp.zeros(capacity), recv_cnt=jnp.zeros(capacity),
        prune_score=jnp.full(capacity, jnp.nan), pruned_at=jnp.full(capacity, -1, jnp.int32),
        set_n=zi(S), tokens=zi(S, W), probs=jnp.zeros((S, W)), valid=jnp.zeros((S, W), bool),
        slots=jnp.full((S, W), -1, jnp.int32), positions=jnp.zeros((S, W)), fed_tokens=zi(S, W),
        fed_pos=jnp.zeros((S, W)), fed_n=zi(S), cache_len=zi(S), tau=jnp.zeros(S),
        entropy=jnp.zeros(S), next_n=_next_n(spec, data, jax.nn.softmax(last), 0))


def _next_n(spec: StaticSpec, data: dict, dist: jax.Array, s) -> jax.Array:
    """How many members step ``s`` will feed (same comparison as :func:`select_threshold`)."""
    if spec.method != "tempo" or spec.compat == "upstream":
        return jnp.int32(1)
    tau = data["thresholds"][jnp.minimum(s, spec.steps - 1)]
    return jnp.clip(jnp.sum(dist >= tau), 1, spec.width).astype(jnp.int32)


def feed_widths(spec: StaticSpec) -> tuple[int, ...]:
    """The query counts the host driver compiles the step for: powers of two below W, and W."""
    if spec.compat == "upstream":
        return (1,)
    return tuple(sorted({1 << k for k in range(spec.width.bit_length()) if 1 << k < spec.width}
                        | {spec.width}))


def step(params, mcfg: ModelConfig, spec: StaticSpec, data: dict, st: TempoState,
         capture: str = "none", feed_width: int | None = None):
    """One logical step s: select C_s from d_s, feed it in ONE forward, prune, combine -> d_{s+1}.

    ``capture``: "none" -> None; "full" -> this step's attention probabilities ``attn[L,H,W,K]``;
    "summary" -> small in-graph reductions (see :func:`attention_summary`) plus the members'
    residual streams after each layer ``resid[L,W,E]``.
    ``feed_width`` F <= W queries are fed (default W); it must be >= ``st.next_n`` (the host
    driver picks the smallest of :func:`feed_widths`), so no member is ever left out; results do
    not depend on F.
    Returns ``(new state, captured)``.
    """
    S, W = spec.steps, spec.width
    F = W if feed_width is None else feed_width
    s = st.step
    key = jax.random.fold_in(jax.random.wrap_key_data(data["key"]), s)
    tau = data["thresholds"][s]
    if spec.method == "tempo":
        toks, probs, valid, n = select_threshold(st.dist, tau, W)
    elif spec.method == "greedy":
        toks, probs, valid, n = select_greedy(st.dist, W)
    else:
        toks, probs, valid, n = select_sample(jnp.log(st.dist), key, data["temperature"],
                                              data["top_k"], data["top_p"], W)
    i = jnp.arange(F)
    base = st.n_written
    if spec.compat == "upstream":  # feed only the last (least probable) member, at the cache length
        feed = jnp.zeros(F, jnp.int32).at[0].set(toks[n - 1])
        n_feed = jnp.int32(1)
        pos = st.next_pos + i.astype(jnp.float32)
        advance = 1.0
        member_of_fed = jnp.where(i == 0, n - 1, -1)
    else:
        feed, n_feed, member_of_fed = toks[:F], n, i
        # positions variant as data: member i at next_pos + i * stride (+ a per-member RoPE
        # offset, an intervention); the next step starts
        # 1 later (shared, offset) or n later (distinct)
        pos = st.next_pos + i * data["member_stride"] + data["member_offsets"][:F]
        advance = jnp.where(data["advance_by_members"], n, 1).astype(jnp.float32)
    fed_ok = i < n_feed
    slots = base + i
    siblings = data["siblings"]
    mask = step_mask(st.alive, st.slot_step, s, base, n_feed, F, siblings)
    need_attn = capture != "none" or spec.prune
    logits, cache, taps = forward(params, mcfg, feed[None], pos[None], slots[None], mask[None],
                                  st.cache, TapsSpec(attn=need_attn, resid=capture == "summary"),
                                  interventions=data.get("interventions"))
    logits = logits[0]
    # slot maps for the written members
    upd = lambda arr, val: arr.at[slots].set(jnp.where(fed_ok, val, arr[slots]))
    alive = upd(st.alive, True)
    slot_step = upd(st.slot_step, s)
    slot_member = upd(st.slot_member, member_of_fed)
    slot_pos = upd(st.slot_pos, pos)
    slot_token = upd(st.slot_token, feed)
    set_n = st.set_n.at[s].set(n)
    acc, cnt, score, pruned_at = st.recv_acc, st.recv_cnt, st.prune_score, st.pruned_at
    attn = taps["attn"][:, 0] if need_attn else None  # [L,H,W,K]
    if spec.prune:
        acc, cnt = pruning.accumulate(acc, cnt, attn, data["prune_layer_w"], data["prune_head_w"],
                                      n_feed, slot_step, s, spec.prune_window)
        cur = acc / jnp.maximum(cnt, 1.0)
        prune, scored = pruning.decide(cur, alive, slot_step, set_n, s, spec.prune_window,
                                       spec.prune_timing, spec.prune_rule, data["prune_rho"],
                                       data["prune_theta"], data["prune_k"], key)
        score = jnp.where(scored, cur, score)
        pruned_at = jnp.where(prune, s, pruned_at)
        alive = alive & ~prune
    # next distribution
    if spec.compat == "upstream":
        nxt = jax.nn.softmax(logits[0])
    else:
        nxt = combine(spec.combine, logits, probs[:F], valid[:F])
    eos = jnp.isin(toks, jnp.asarray(mcfg.eos_token_ids or (-1,), jnp.int32))
    if spec.compat == "upstream" or spec.eos == "any":
        hit = (eos & valid).any()
    elif spec.eos == "top":
        hit = eos[0]
    else:
        hit = (eos | ~valid).all()
    done = (s + 1 >= S) | (hit & (s + 1 >= data["min_steps"]))
    pad = lambda x, fill=0: jnp.pad(x, [(0, W - F)] + [(0, 0)] * (x.ndim - 1), constant_values=fill)
    iw = jnp.arange(W)
    new = st.replace(
        cache=cache, step=s + 1, done=done, dist=nxt, n_written=base + n_feed,
        next_pos=st.next_pos + advance, alive=alive, slot_step=slot_step, slot_member=slot_member,
        slot_pos=slot_pos, slot_token=slot_token, recv_acc=acc, recv_cnt=cnt, prune_score=score,
        pruned_at=pruned_at, set_n=set_n,
        tokens=st.tokens.at[s].set(toks), probs=st.probs.at[s].set(probs),
        valid=st.valid.at[s].set(valid),
        slots=st.slots.at[s].set(jnp.where(spec.compat == "upstream",
                                           jnp.where(iw == n - 1, base, -1),
                                           jnp.where(valid, base + iw, -1))),
        positions=st.positions.at[s].set(jnp.where(spec.compat == "upstream", st.next_pos,
                                                   pad(pos, 0.0))),
        fed_tokens=st.fed_tokens.at[s].set(pad(jnp.where(fed_ok, feed, 0))),
        fed_pos=st.fed_pos.at[s].set(pad(jnp.where(fed_ok, pos, 0.0))),
        fed_n=st.fed_n.at[s].set(n_feed),
        cache_len=st.cache_len.at[s].set(base), tau=st.tau.at[s].set(tau),
        entropy=st.entropy.at[s].set(entropy(st.dist)), next_n=_next_n(spec, data, nxt, s + 1))
    padq = lambda x: jnp.pad(x, [(0, 0)] * 2 + [(0, W - F)] + [(0, 0)] * (x.ndim - 3))  # query axis 2
    if capture == "summary":
        summ = {k: padq(v) if k != "received" else v for k, v in attention_summary(attn, base, n_feed).items()}
        resid = taps["resid"][:, 0]  # [L,F,E]
        return new, {**summ, "resid": jnp.pad(resid, [(0, 0), (0, W - F), (0, 0)])}
    return new, padq(attn) if capture == "full" else None


def attention_summary(attn: jax.Array, base, n) -> dict:
    """In-graph reductions of one step's attention ``attn[L,H,W,K]`` (queries i < n are real):

    received[L,H,K] = sum over real queries of attention on each key slot;
    entropy[L,H,W] = -sum_k a log a per query (nats); sink[L,H,W] = attention on slot 0;
    leakage[L,H,W] = attention a query puts on its siblings (same-step slots base..base+n-1, not itself).
    Rows of padding queries (i >= n) are 0.
    """
    width, k = attn.shape[2], attn.shape[3]
    real = (jnp.arange(width) < n)[None, None, :]
    j = jnp.arange(k)[None, :] - base
    sib = (j >= 0) & (j < n) & (j != jnp.arange(width)[:, None])  # [W,K]
    ent = entropy(attn)
    return {
        "received": jnp.sum(jnp.where(real[..., None], attn, 0.0), axis=2),
        "entropy": jnp.where(real, ent, 0.0),
        "sink": jnp.where(real, attn[..., 0], 0.0),
        "leakage": jnp.where(real, jnp.sum(jnp.where(sib, attn, 0.0), -1), 0.0),
    }


RECORD_NAMES = ("sink", "attn_entropy", "leakage", "par_per_token", "nonpar_per_token")


def step_records(before: TempoState, summ: dict, s, n, spec: StaticSpec) -> dict:
    """Per-step ``[L,H]`` reductions of a step's summary (means over its n real queries):

    sink = attention on slot 0; attn_entropy (nats); leakage = attention on siblings;
    par_per_token / nonpar_per_token = attention received per context slot, averaged over the
    slots of each group: parallel = alive slots of earlier steps whose set had > 1 member;
    non-parallel = alive prompt slots except the sink (slot 0) and earlier single-member steps.
    A group with no slot gives NaN.
    """
    w = spec.width
    real = jnp.arange(w) < n
    qmean = lambda x: jnp.sum(jnp.where(real, x, 0.0), -1) / n  # [L,H,W] -> [L,H]
    k = jnp.arange(before.alive.shape[0])
    step_of = before.slot_step
    set_size = before.set_n[jnp.clip(step_of, 0, spec.steps - 1)]
    earlier = before.alive & (step_of >= 0) & (step_of < s)
    par = earlier & (set_size > 1)
    nonpar = before.alive & (k > 0) & ((step_of == -1) | (earlier & (set_size == 1)))
    per_tok = lambda g: jnp.where(g.any(), (summ["received"] * g).sum(-1) / (n * g.sum()), jnp.nan)
    return {"sink": qmean(summ["sink"]), "attn_entropy": qmean(summ["entropy"]),
            "leakage": qmean(summ["leakage"]), "par_per_token": per_tok(par),
            "nonpar_per_token": per_tok(nonpar)}


def run_on_device(params, mcfg: ModelConfig, spec: StaticSpec, data: dict, prompt, prompt_len,
                  capacity: int, record: bool = False):
    """Whole generation inside ``lax.while_loop`` (jit/vmap friendly; no host round trips).

    Returns the final :class:`TempoState`; with ``record`` also a dict of per-step ``[S,L,H]``
    arrays (see :func:`step_records`; NaN for steps not run).
    """
    st = init_state(params, mcfg, spec, data, prompt, prompt_len, capacity)
    if not record:
        body = lambda x: step(params, mcfg, spec, data, x)[0]
        return jax.lax.while_loop(lambda x: ~x.done, body, st)
    shape = (spec.steps, mcfg.num_layers, mcfg.num_heads)
    rec0 = {name: jnp.full(shape, jnp.nan) for name in RECORD_NAMES}

    def body(carry):
        before, rec = carry
        s = before.step
        new, summ = step(params, mcfg, spec, data, before, capture="summary")
        vals = step_records(before, summ, s, new.fed_n[s], spec)
        return new, {k: rec[k].at[s].set(vals[k]) for k in rec}

    return jax.lax.while_loop(lambda c: ~c[0].done, body, (st, rec0))
