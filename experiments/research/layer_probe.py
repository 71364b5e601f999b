"""Layer-by-layer instrument for RQ 1.3: where does a parallel set reach a later query, and which
layer's attention to it matters?

For one prompt (P tokens) the prompt's top-n next tokens are written as ONE isolated candidate set at
the shared position P (slots P..P+n-1, the engine's step mask). A probe query (the greedy next token
after the top-1 member, at the natural next position P + 1) then reads the cache in several "worlds"
of one batched forward; only the probe's mask or its attention-logit bias differs between worlds:

- edge worlds ``c = 0..L``: the probe sees the members in layers ``< c`` only (c = 0: ablated set,
  c = L: the set fully present). ``KL(present || world c)`` of the final next-token distribution
  tells how much of the set's effect layers ``< c`` deliver (a causal, cumulative curve);
- logit lens: the probe's residual after each layer, read through the final norm and unembedding,
  present vs ablated (KL per layer);
- boost worlds ``l = 0..L-1``: an attention-logit bias ``b_l`` on the member slots at layer ``l``
  only. ``b_l`` is fitted in closed form so that the probe's per-member attention at layer l (mean
  over heads) equals the attention a single token (a set of one, the top-1 token at P) receives there:
  a bias at layer l leaves every input of layer l unchanged, so its attention there is
  ``e^b M / (1 - M + e^b M)`` for member mass M per head, and a bisection on b is exact. The bias
  is bounded to [-5, 5] (a factor e^5 ~ 150 on the members' attention weights): where a single
  token draws more than 1/n of the attention, the single-token level cannot be reached per member;
- control worlds: a bias at the same layer on n random prompt slots (never the sink, slot 0), fitted
  to move the same attention mass (mean over heads) as the member boost: what matters is WHICH
  tokens get the extra attention.

Everything the worlds share (tokens, slots, positions, probe) is identical.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.research.position_probe import pad, prompt_state
from experiments.research.measures import kl
from tempo_jax.config import ModelConfig
from tempo_jax.engine.masks import step_mask
from tempo_jax.interventions import Interventions
from tempo_jax.model import KVCache, TapsSpec, forward, unembed
from tempo_jax.slots import PROMPT, UNWRITTEN


@functools.partial(jax.jit, static_argnames=("mcfg", "n"))
def write_set(params, mcfg: ModelConfig, cache: KVCache, plen, members, n: int):
    """Write ``members[n]`` as one isolated set at position P, slots P..P+n-1.
    Returns (member-0 next-token logits [V], cache)."""
    K = cache.capacity
    k = jnp.arange(K)
    alive = k < plen
    slot_step = jnp.where(alive, PROMPT, UNWRITTEN)
    mask = step_mask(alive, slot_step, 0, plen, n, n, jnp.zeros((1, 1), jnp.int32))[0, 0]  # [n,K]
    pos = jnp.full((1, n), plen, jnp.float32)
    slots = (plen + jnp.arange(n))[None]
    logits, cache, _ = forward(params, mcfg, members[None], pos, slots, mask[None], cache,
                               key_pos=_key_pos(mcfg, K, plen, plen + n, plen))
    return logits[0, 0], cache


def _key_pos(mcfg: ModelConfig, K: int, plen, end, pos_after):
    """Sliding-window models only: every slot's position ``[1,K]`` (prompt slot i at i, the set's
    slots ``plen..end-1`` at ``plen``, slot ``end`` at ``pos_after``); None for other models."""
    if not mcfg.has_window:
        return None
    k = jnp.arange(K)
    kp = jnp.where(k < plen, k, jnp.where(k < end, plen, jnp.where(k == end, pos_after, 0)))
    return kp.astype(jnp.float32)[None]


@functools.partial(jax.jit, static_argnames=("mcfg", "lens"))
def probe_worlds(params, mcfg: ModelConfig, cache: KVCache, token, pos, slot, mask, bias, lens: bool):
    """The probe token at ``pos`` / ``slot`` in B worlds (the set at position ``pos - 1`` in the slots
    from the prompt's end to ``slot - 1``): ``mask[B,L,1,1,K]``, ``bias[B,L,1,K]``.
    Returns ``logp[B,V]`` (final log-probs), ``attn[L,B,H,K]`` and, if ``lens``, the logit-lens
    log-probs of worlds 0 and B-1 per layer ``lens[L,2,V]``."""
    b = max(mask.shape[0], bias.shape[0])
    mask = jnp.broadcast_to(mask, (b,) + mask.shape[1:])
    big = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (x.shape[0], b) + x.shape[2:]), cache)
    kp = _key_pos(mcfg, cache.capacity, pos - 1, slot, pos)  # members at P = pos - 1 in slots P..slot-1
    logits, _, taps = forward(params, mcfg, jnp.full((b, 1), token, jnp.int32),
                              jnp.full((b, 1), pos, jnp.float32), jnp.full((b, 1), slot, jnp.int32),
                              mask, big, TapsSpec(attn=True, resid=lens),
                              interventions=Interventions(attn_bias=bias),
                              key_pos=None if kp is None else jnp.broadcast_to(kp, (b, kp.shape[1])))
    out = {"logp": jax.nn.log_softmax(logits[:, 0]), "attn": taps["attn"][:, :, :, 0, :]}
    if lens:
        r = taps["resid"][:, jnp.array([0, b - 1]), 0]  # [L,2,E]
        out["lens"] = jax.nn.log_softmax(unembed(params, mcfg, r), -1)
    return out


def fit_bias(mass, target_mass, lo: float = -5.0, hi: float = 5.0, iters: int = 60) -> float:
    """The logit bias b on a slot group whose attention mass per head is ``mass[H]`` such that the
    head-mean mass after the bias, ``mean_h e^b M_h / (1 - M_h + e^b M_h)``, equals
    ``target_mass`` (bisection; clipped to [lo, hi] when the target is out of reach)."""
    m = np.clip(np.asarray(mass, np.float64), 1e-12, 1 - 1e-12)

    def after(b):
        e = np.exp(b) * m
        return float(np.mean(e / (1 - m + e)))

    if after(hi) <= target_mass:
        return hi
    if after(lo) >= target_mass:
        return lo
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if after(mid) < target_mass else (lo, mid)
    return 0.5 * (lo + hi)


def biased_mass(mass, b) -> np.ndarray:
    """Mass per head after adding logit bias b to the group: ``e^b M / (1 - M + e^b M)``."""
    m = np.asarray(mass, np.float64)
    e = np.exp(b) * m
    return e / (1 - m + e)


@dataclasses.dataclass
class LayerProbe:
    """One prompt's measurements. L layers, H heads; n members."""

    probe_token: int
    kl_full: float  # KL(present || ablated), final distribution
    kl_edges: np.ndarray  # [L+1] KL(present || members visible in layers < c)
    lens_kl: np.ndarray  # [L] logit lens KL(present || ablated) after each layer
    att_set: np.ndarray  # [L,H] probe attention on the whole set (present world)
    att_single: np.ndarray  # [L,H] probe attention on a single token at P (set of one)
    bias: np.ndarray  # [L] fitted member bias per layer
    ctrl_bias: np.ndarray  # [L] fitted control bias per layer
    kl_boost: np.ndarray  # [L] KL(boost at layer l || present)
    kl_ctrl: np.ndarray  # [L] KL(control at layer l || present)
    att_tok_after: np.ndarray  # [L] per-member attention (head mean) at layer l in boost world l
    moved: np.ndarray  # [L] head-mean mass moved onto members by the boost at layer l
    ctrl_moved: np.ndarray  # [L] head-mean mass moved onto the control slots


def measure(params, mcfg: ModelConfig, ids, n: int, rng: np.random.Generator) -> LayerProbe:
    """All worlds for one prompt (see the module docstring)."""
    L = mcfg.num_layers
    prompt, P = pad(ids)
    cap = len(prompt) + n + 1
    dist, cache0 = prompt_state(params, mcfg, jnp.asarray(prompt), jnp.int32(P), cap)
    top = np.argsort(-np.asarray(dist), kind="stable")[:n].astype(np.int32)
    logits0, cache1 = write_set(params, mcfg, cache0, jnp.int32(P), jnp.asarray(top[:1]), n=1)
    _, cache = write_set(params, mcfg, cache0, jnp.int32(P), jnp.asarray(top), n=n)
    probe_tok = int(np.argmax(np.asarray(logits0)))
    k = np.arange(cap)
    members = (k >= P) & (k < P + n)
    zero_bias = np.zeros((1, L, 1, cap), np.float32)

    # a single token at P: the reference per-token attention
    m1 = ((k < P) | (k == P) | (k == P + 1))[None, None, None, None]
    single = jax.device_get(probe_worlds(params, mcfg, cache1, probe_tok, P + 1.0, P + 1, jnp.asarray(m1),
                                         jnp.asarray(zero_bias), lens=False))
    att_single = np.asarray(single["attn"][:, 0, :, P], np.float64)  # [L,H]

    # edge worlds c = 0..L: members visible in layers < c
    slot = P + n
    base = (k < P) | (k == slot)
    c = np.arange(L + 1)[:, None]
    vis = (np.arange(L)[None, :] < c)  # [L+1, L]
    mask = base[None, None, :] | (vis[:, :, None] & members[None, None, :])  # [L+1,L,K]
    edges = jax.device_get(probe_worlds(params, mcfg, cache, probe_tok, P + 1.0, slot,
                                        jnp.asarray(mask[:, :, None, None, :]),
                                        jnp.asarray(zero_bias), lens=True))
    logp = np.asarray(edges["logp"], np.float64)
    present = logp[L]
    kl_edges = kl(present[None], logp)
    lens = np.asarray(edges["lens"], np.float64)  # [L,2,V]: world 0 ablated, world L present
    lens_kl = kl(lens[:, 1], lens[:, 0])
    att = np.asarray(edges["attn"][:, L], np.float64)  # [L,H,K] present world
    att_set = att[:, :, members].sum(-1)

    # fitted boosts and mass-matched controls, one layer at a time
    ctrl_pool = np.arange(1, P)
    ctrl = rng.choice(ctrl_pool, size=min(n, len(ctrl_pool)), replace=False) if len(ctrl_pool) else []
    ctrl_slots = np.zeros(cap, bool)
    ctrl_slots[ctrl] = True
    bias, cbias, moved, cmoved = (np.zeros(L) for _ in range(4))
    for layer in range(L):
        bias[layer] = fit_bias(att_set[layer], n * att_single[layer].mean())
        moved[layer] = biased_mass(att_set[layer], bias[layer]).mean() - att_set[layer].mean()
        cm = att[layer][:, ctrl_slots].sum(-1)
        if ctrl_slots.any():
            cbias[layer] = fit_bias(cm, cm.mean() + moved[layer])
            cmoved[layer] = biased_mass(cm, cbias[layer]).mean() - cm.mean()
    bw = np.zeros((2 * L, L, 1, cap), np.float32)
    for layer in range(L):
        bw[layer, layer, 0] = np.where(members, bias[layer], 0.0)
        bw[L + layer, layer, 0] = np.where(ctrl_slots, cbias[layer], 0.0)
    full = (base | members)[None, None, None, None]
    boost = jax.device_get(probe_worlds(params, mcfg, cache, probe_tok, P + 1.0, slot, jnp.asarray(full),
                                        jnp.asarray(bw), lens=False))
    blp = np.asarray(boost["logp"], np.float64)
    battn = np.asarray(boost["attn"], np.float64)  # [L,2L,H,K]
    att_tok_after = np.asarray([battn[l, l][:, members].sum(-1).mean() / n for l in range(L)])
    return LayerProbe(probe_token=probe_tok, kl_full=float(kl_edges[0]), kl_edges=kl_edges,
                      lens_kl=lens_kl, att_set=att_set, att_single=att_single, bias=bias,
                      ctrl_bias=cbias, kl_boost=kl(blp[:L], present[None]),
                      kl_ctrl=kl(blp[L:], present[None]), att_tok_after=att_tok_after, moved=moved,
                      ctrl_moved=cmoved)
