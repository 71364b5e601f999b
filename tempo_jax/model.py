"""Pure-functional Llama-family decoder with explicit positions, slots and masks.

Axis letters: B batch, T query tokens, K cache slots, L layers, H query heads, G key/value heads,
R = H/G heads per group, D head dim, E width, F MLP width, V vocab.

Parameters are a plain pytree in the Hugging Face layout (rotate-half RoPE, q/k not permuted, no
scale folded in); projection matrices are stored input-major and split per head, e.g. ``wq[L,E,H,D]``,
stacked over layers. :func:`unstack_layers` gives the per-layer decode layout that the forward also runs.
Causality is never derived from positions: the caller passes the boolean mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.pytree import Struct
from tempo_jax.config import ModelConfig
from tempo_jax.interventions import Interventions
from tempo_jax.interventions import check as check_interventions

Params = dict[str, Any]


class Positions(Struct):
    """RoPE positions ``base[B,T]`` int32 plus ``offset[B,T]`` float32 (position = base + offset).

    A float32 position cannot carry a small offset far into a context (its spacing at 30,000 is
    about 0.002, so 30,000.001 rounds to 30,000): RoPE rotates by ``base`` exactly as Hugging Face
    does for an integer position, then by ``offset`` separately, so an offset keeps float32's
    relative precision at any base. Every function that takes positions takes a plain array too
    (``of``: integers as bases; floats split at the nearest integer)."""

    base: jax.Array
    offset: jax.Array

    @classmethod
    def of(cls, positions: "Positions | jax.Array") -> "Positions":
        if isinstance(positions, Positions):
            return cls(jnp.asarray(positions.base, jnp.int32), jnp.asarray(positions.offset, jnp.float32))
        p = jnp.asarray(positions)
        if jnp.issubdtype(p.dtype, jnp.integer):
            return cls(p.astype(jnp.int32), jnp.zeros(p.shape, jnp.float32))
        p = p.astype(jnp.float32)
        base = jnp.round(p)
        return cls(base.astype(jnp.int32), p - base)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.base.shape)

    def value(self) -> jax.Array:
        """The positions as one float32 array (rounded far into the context)."""
        return self.base.astype(jnp.float32) + self.offset


class KVCache(Struct):
    """Key/value cache ``k, v: [L,B,K,G,D]``. Capacity K is static (the array shape)."""

    k: jax.Array
    v: jax.Array

    @property
    def capacity(self) -> int:
        return self.k.shape[2]


@dataclasses.dataclass(frozen=True)
class TapsSpec:
    """What a forward returns besides logits (static, hashable): each True field is a key of the
    returned taps dict, stacked over layers, the same on every weight layout.

    Per layer and token: q_pre ``[L,B,T,H,D]`` and k_pre, v ``[L,B,T,G,D]`` (projections with their
    bias, and the per-head norm of a family that has one; before RoPE); q, k (after RoPE at the given
    positions); z ``[L,B,T,H,D]`` (each head's
    attention output, after head interventions, before W_O); attn_out and mlp_out ``[L,B,T,E]``
    (what attention and the MLP add to the residual stream); resid_mid ``[L,B,T,E]`` (residual
    after attention, before the MLP); resid ``[L,B,T,E]`` (residual after the layer, after a patch).
    Attention: attn ``[L,B,H,T,K]`` (probabilities); attn_received ``[L,B,H,K]`` (what each key slot
    receives from this forward's queries, summed over queries: an in-graph reduction).
    """

    q_pre: bool = False
    k_pre: bool = False
    v: bool = False
    q: bool = False
    k: bool = False
    z: bool = False
    attn_out: bool = False
    mlp_out: bool = False
    resid_mid: bool = False
    resid: bool = False
    attn: bool = False
    attn_received: bool = False

    @classmethod
    def of(cls, *names: str) -> "TapsSpec":
        """``TapsSpec.of("q", "attn")``, with a one-line error for an unknown name."""
        known = [f.name for f in dataclasses.fields(cls)]
        bad = [n for n in names if n not in known]
        if bad:
            raise ValueError(f"unknown tap {bad[0]!r}; known: {', '.join(known)}")
        return cls(**{n: True for n in names})

    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self) if getattr(self, f.name))


NO_TAPS = TapsSpec()


def init_cache(cfg: ModelConfig, batch: int, capacity: int, dtype=jnp.float32) -> KVCache:
    """An empty cache for ``batch`` sequences of ``capacity`` slots."""
    shape = (cfg.num_layers, batch, capacity, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def param_shapes(cfg: ModelConfig) -> dict[str, Any]:
    """The parameter pytree's shapes (nested dict of tuples)."""
    L, E, F, H, G, D, V = (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                           cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size)
    layers = {
        "attn_norm": (L, E), "wq": (L, E, H, D), "wk": (L, E, G, D), "wv": (L, E, G, D),
        "wo": (L, H, D, E), "mlp_norm": (L, E), "w_gate": (L, E, F), "w_up": (L, E, F),
        "w_down": (L, F, E),
    }
    if cfg.qkv_bias:
        layers.update(bq=(L, H, D), bk=(L, G, D), bv=(L, G, D))
    if cfg.o_bias:
        layers.update(bo=(L, E))
    if cfg.qk_norm:
        layers.update(q_norm=(L, D), k_norm=(L, D))
    if cfg.sandwich_norms:
        layers.update(post_attn_norm=(L, E), post_mlp_norm=(L, E))
    shapes = {"embed": (V, E), "layers": layers, "final_norm": (E,)}
    if not cfg.tie_embeddings:
        shapes["lm_head"] = (E, V)
    return shapes


def init_params(cfg: ModelConfig, key: jax.Array, dtype=jnp.float32, scale: float = 0.02) -> Params:
    """Random parameters (normal * scale; norms near 1) for tests and benchmarks."""
    shapes = param_shapes(cfg)
    leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    paths = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
    keys = jax.random.split(key, len(leaves))
    out = []
    for path, shape, k in zip(paths, leaves, keys):
        x = jax.random.normal(k, shape, jnp.float32) * scale
        if "norm" in path and not cfg.norm_offset:  # norms near 1 ((offset + w) when offset)
            x = 1.0 + x
        out.append(x.astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def unstack_layers(params: Params) -> Params:
    """The same weights laid out for decoding: ``layers`` becomes a tuple of L per-layer dicts, each
    leaf its own buffer, with the q/k/v and gate/up products fused (``wqkv[E,(H+2G)*D]``,
    ``bqkv[H+2G,D]``, ``w_gate_up[E,2F]``; ``wo``, ``w_down``, norms and ``bo`` as they were).
    Parameters already in this layout are returned as they are.

    :func:`forward` runs both layouts and gives the same result up to float rounding. With the
    stacked ``[L,...]`` layout (what loading gives, what research code indexes as
    ``params["layers"][name][l]``) the layers run as a ``lax.scan``, and XLA:CPU copies each
    layer's weight slice out of the stack before its product; at one query per step that copy costs
    about as much as the product. This layout unrolls the layers into the program instead: no
    copies and fewer, larger products, but compiles take several times longer, so it pays off for
    long decodes (figures in docs/performance.md). Costs one copy of the layer weights, made here,
    outside any jit.
    """
    if is_unstacked(params):
        return params
    layers = params["layers"]
    n = layers["wq"].shape[0]
    out = dict(params)
    out["layers"] = tuple(_unstack_one({k: v[i] for k, v in layers.items()}) for i in range(n))
    return out


def _unstack_one(lp: dict) -> dict:
    """One layer's stacked-layout weights -> the fused per-layer layout of :func:`unstack_layers`."""
    e = lp["wq"].shape[0]
    out = {k: v for k, v in lp.items() if k in ("attn_norm", "mlp_norm", "wo", "w_down", "bo", "q_norm",
                                                 "k_norm", "post_attn_norm", "post_mlp_norm")}
    out["wqkv"] = jnp.concatenate([lp[w].reshape(e, -1) for w in ("wq", "wk", "wv")], axis=1)
    out["w_gate_up"] = jnp.concatenate([lp["w_gate"], lp["w_up"]], axis=1)
    if "bq" in lp:
        out["bqkv"] = jnp.concatenate([lp["bq"], lp["bk"], lp["bv"]], axis=0)
    return out


def is_unstacked(params: Params) -> bool:
    """Whether ``params["layers"]`` is a tuple of per-layer dicts (:func:`unstack_layers`)."""
    return isinstance(params["layers"], (tuple, list))


def layer_params(params: Params, layer) -> dict:
    """One layer's weights in the parameters' own layout: a slice of the stacked arrays (``layer``
    may be traced) or the unstacked tuple's entry (``layer`` a Python int)."""
    if is_unstacked(params):
        return params["layers"][layer]
    return {k: v[layer] for k, v in params["layers"].items()}


class LayerWeights(Struct):
    """Every layer's attention weights in the stacked, unfused layout, whatever layout the
    parameters have: attn_norm ``[L,E]``, wq ``[L,E,H,D]``, wk and wv ``[L,E,G,D]``, wo ``[L,H,D,E]``;
    bq ``[L,H,D]``, bk and bv ``[L,G,D]`` or None. For analyses of the weights themselves."""

    attn_norm: jax.Array
    wq: jax.Array
    wk: jax.Array
    wv: jax.Array
    wo: jax.Array
    bq: jax.Array | None = None
    bk: jax.Array | None = None
    bv: jax.Array | None = None

    def layer(self, l) -> dict:
        """Layer ``l``'s attention weights (``l`` may be traced) as a dict :func:`attention_inputs` takes."""
        return {k: v[l] for k, v in self.fields().items() if v is not None}


def layer_weights(params: Params, cfg: ModelConfig) -> LayerWeights:
    """The attention weights of every layer (:class:`LayerWeights`), from either layout."""
    if not is_unstacked(params):
        lay = params["layers"]
        return LayerWeights(lay["attn_norm"], lay["wq"], lay["wk"], lay["wv"], lay["wo"],
                            lay.get("bq"), lay.get("bk"), lay.get("bv"))
    H, G, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    per = []
    for lp in params["layers"]:
        e = lp["wqkv"].shape[0]
        w = lp["wqkv"].reshape(e, H + 2 * G, D)
        b = lp.get("bqkv")
        per.append((lp["attn_norm"], w[:, :H], w[:, H:H + G], w[:, H + G:], lp["wo"],
                    None if b is None else b[:H], None if b is None else b[H:H + G],
                    None if b is None else b[H + G:]))
    norm, wq, wk, wv, wo, bq, bk, bv = (None if c[0] is None else jnp.stack(c) for c in zip(*per))
    assert norm is not None and wq is not None and wk is not None and wv is not None and wo is not None
    return LayerWeights(norm, wq, wk, wv, wo, bq, bk, bv)


class QKV(Struct):
    """One layer's attention inputs for tokens ``[B,T]``: q_pre ``[B,T,H,D]``, k_pre and v
    ``[B,T,G,D]`` (projections with bias, before RoPE), q and k (after RoPE)."""

    q_pre: jax.Array
    k_pre: jax.Array
    v: jax.Array
    q: jax.Array
    k: jax.Array


def attention_inputs(lp: dict, cfg: ModelConfig, x: jax.Array, positions: Positions | jax.Array,
                     layer) -> QKV:
    """Queries, keys and values of layer ``layer`` (``lp = layer_params(params, layer)``, either
    layout; ``layer`` picks the layer's RoPE base and may be traced) for residual inputs ``x[B,T,E]``
    at RoPE ``positions[B,T]`` (:class:`Positions` or an array); what :func:`forward` computes."""
    b, t = x.shape[:2]
    # projections as 2-D matmuls on free reshapes ([B*T,E] @ [E,N*D]): XLA:CPU runs the
    # equivalent 3-D einsums markedly slower for decode-sized T
    h = rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps, cfg.norm_offset).reshape(b * t, -1)
    nh, ng = cfg.num_heads, cfg.num_kv_heads
    if "wqkv" in lp:  # unstacked layout: one product, split into heads
        qkv = (h @ lp["wqkv"]).reshape(b, t, -1, cfg.head_dim)
        if cfg.qkv_bias:
            qkv = qkv + lp["bqkv"]
        q, k, v = qkv[:, :, :nh], qkv[:, :, nh:nh + ng], qkv[:, :, nh + ng:]
    else:
        proj = lambda w: (h @ w.reshape(w.shape[0], -1)).reshape(b, t, w.shape[1], w.shape[2])
        q, k, v = proj(lp["wq"]), proj(lp["wk"]), proj(lp["wv"])
        if cfg.qkv_bias:
            q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
    if cfg.qk_norm:  # per head, before RoPE (the q_pre / k_pre taps are after it)
        q = rms_norm(q, lp["q_norm"], cfg.rms_norm_eps, cfg.norm_offset)
        k = rms_norm(k, lp["k_norm"], cfg.rms_norm_eps, cfg.norm_offset)
    inv_freq = jnp.asarray(cfg.layer_inv_freq())[layer]
    positions = Positions.of(positions)
    return QKV(q, k, v, rope(q, positions, inv_freq), rope(k, positions, inv_freq))


def mlp(lp: dict, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """What one layer's MLP adds to the residual ``x[B,T,E]`` (pre-norm, gated; with sandwich norms
    the output norm too), either layout."""
    b, t = x.shape[:2]
    h = rms_norm(x, lp["mlp_norm"], cfg.rms_norm_eps, cfg.norm_offset).reshape(b * t, -1)
    act = jax.nn.silu if cfg.mlp_act == "silu" else (lambda z: jax.nn.gelu(z, approximate=True))
    if "w_gate_up" in lp:  # unstacked layout
        gu = h @ lp["w_gate_up"]
        ff = act(gu[:, :cfg.intermediate_size]) * gu[:, cfg.intermediate_size:]
    else:
        ff = act(h @ lp["w_gate"]) * (h @ lp["w_up"])
    out = (ff @ lp["w_down"]).reshape(b, t, -1)
    if cfg.sandwich_norms:
        out = rms_norm(out, lp["post_mlp_norm"], cfg.rms_norm_eps, cfg.norm_offset)
    return out


def rms_norm(x: jax.Array, w: jax.Array, eps: float, offset: float = 0.0) -> jax.Array:
    """RMSNorm over the last axis. ``offset`` 0: HF LlamaRMSNorm (normalise in float32, cast back,
    then scale by w); else HF Gemma3RMSNorm (scale by ``offset + w`` in float32, then cast back)."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    if offset:
        return (x32 * (offset + w.astype(jnp.float32))).astype(x.dtype)
    return w * x32.astype(x.dtype)


def rope(x: jax.Array, positions: Positions | jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate-half RoPE. ``x[B,T,N,D]``, ``positions[B,T]`` (:class:`Positions` or an array),
    ``inv_freq[D/2]``. The angle is ``base * inv_freq`` (float32, as Hugging Face computes it for
    integer positions) composed with ``offset * inv_freq``; offset 0 gives HF's rotation exactly."""
    pos = Positions.of(positions)
    a = pos.base.astype(jnp.float32)[..., None] * inv_freq  # [B,T,D/2]
    b = pos.offset[..., None] * inv_freq
    cos_a, sin_a, cos_b, sin_b = jnp.cos(a), jnp.sin(a), jnp.cos(b), jnp.sin(b)
    cos1, sin1 = cos_a * cos_b - sin_a * sin_b, sin_a * cos_b + cos_a * sin_b  # angle a + b
    cos = jnp.concatenate([cos1, cos1], axis=-1)[:, :, None, :].astype(x.dtype)
    sin = jnp.concatenate([sin1, sin1], axis=-1)[:, :, None, :].astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _mask_5d(mask: jax.Array, batch: int, cfg: ModelConfig, t: int, k: int) -> jax.Array:
    """Normalise a mask to ``[B|1, L|1, H|1, T, K]`` bool, with a clear error on bad shapes."""
    if mask.dtype != jnp.bool_:
        raise TypeError(f"mask must be boolean (True = may attend), got dtype {mask.dtype}")
    if mask.ndim == 3:
        mask = mask[:, None, None]
    elif mask.ndim != 5:
        raise ValueError(f"mask must be [B,T,K] or [B,L,H,T,K] (broadcastable), got shape {mask.shape}")
    want = (batch, cfg.num_layers, cfg.num_heads, t, k)
    for got, full, name in zip(mask.shape, want, "BLHTK"):
        if got not in (1, full) or (name in "TK" and got != full):
            raise ValueError(f"mask shape {mask.shape} does not broadcast to [B,L,H,T,K]={want} "
                             f"(axis {name})")
    return mask


def check_inputs(cfg: ModelConfig, tokens, positions, slots, mask, cache: KVCache) -> None:
    """Raise a clear error for inputs that do not fit together (shapes always, values when concrete)."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B,T], got shape {tokens.shape}")
    b, t = tokens.shape
    for name, arr in (("positions", positions), ("slots", slots)):
        if arr.shape != (b, t):
            raise ValueError(f"{name} must have the shape of tokens {(b, t)}, got {arr.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer) or not jnp.issubdtype(slots.dtype, jnp.integer):
        raise TypeError(f"tokens and slots must be integer arrays, got {tokens.dtype} and {slots.dtype}")
    if cache.k.shape[1] != b:
        raise ValueError(f"cache holds batch {cache.k.shape[1]} but tokens have batch {b}")
    want = (cfg.num_layers, b, cache.capacity, cfg.num_kv_heads, cfg.head_dim)
    if cache.k.shape != want or cache.v.shape != want:
        raise ValueError(f"cache must be [L,B,K,G,D]={want}, got {cache.k.shape}")
    _mask_5d(mask, b, cfg, t, cache.capacity)
    concrete = not any(isinstance(a, jax.core.Tracer) for a in (tokens, slots))
    if concrete:
        tok, sl = np.asarray(tokens), np.asarray(slots)
        if tok.size and (tok.min() < 0 or tok.max() >= cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {cfg.vocab_size}), got range "
                             f"[{tok.min()}, {tok.max()}]")
        if sl.size and (sl.min() < 0 or sl.max() >= cache.capacity):
            raise ValueError(f"slots must lie in [0, {cache.capacity}) (cache capacity K), got range "
                             f"[{sl.min()}, {sl.max()}]")


def _attention(q, k_cache, v_cache, mask, cfg: ModelConfig, bias=None):
    """Grouped-query attention without repeating K/V.

    q[B,T,H,D], k_cache/v_cache[B,K,G,D], mask[B|1,H|1,T,K], optional additive logit bias
    [B|1,H|1,K] -> out[B,T,H,D], probs[B,H,T,K] f32.
    """
    b, t, h, d = q.shape
    g, r = cfg.num_kv_heads, cfg.group_size
    qg = q.reshape(b, t, g, r, d)
    logits = jnp.einsum("btgrd,bkgd->bgrtk", qg, k_cache, preferred_element_type=jnp.float32)
    logits = logits.reshape(b, h, t, -1) * (cfg.query_scale if cfg.query_scale is not None else d ** -0.5)
    if bias is not None:
        logits = logits + bias[:, :, None, :].astype(jnp.float32)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    pg = probs.reshape(b, g, r, t, -1).astype(v_cache.dtype)
    out = jnp.einsum("bgrtk,bkgd->btgrd", pg, v_cache, preferred_element_type=jnp.float32)
    return out.reshape(b, t, h, d).astype(q.dtype), probs


def forward(params: Params, cfg: ModelConfig, tokens: jax.Array, positions: "Positions | jax.Array",
            slots: jax.Array, mask: jax.Array, cache: KVCache, taps: TapsSpec = NO_TAPS,
            interventions: Interventions | None = None, return_hidden: bool = False,
            attend: int | None = None, key_pos: jax.Array | None = None):
    """One forward over T new tokens per sequence, writing their keys/values at ``slots``.

    tokens[B,T] int; positions[B,T] (:class:`Positions`, or an int or float array: any values,
    repeated, fractional, jumped) fed to RoPE;
    slots[B,T] int in [0,K); mask bool [B,T,K] or broadcastable [B,L,H,T,K] (True = may attend),
    applied after this forward's keys are written; cache KVCache [L,B,K,G,D].
    ``interventions`` (arrays, see :class:`tempo_jax.interventions.Interventions`) ablate heads, bias
    attention logits per key slot or patch the residual stream.
    Returns ``(logits[B,T,V] float32, new cache, taps dict)`` with the taps :class:`TapsSpec` names
    (``return_hidden``: the final residual ``[B,T,E]`` before the final norm instead of logits).
    ``attend`` (static) A <= K: attention reads only slots 0..A-1 (the caller guarantees that the
    mask is False beyond them and that ``slots`` < A); attention taps are zero-padded back to K. A
    step then costs what its written prefix needs, not what the cache capacity is.
    ``key_pos[B,K]`` float: the logical position of every cache slot after this forward's writes;
    required when the model has sliding-window layers, where a query at position p sees a key at q
    only if ``p - q < window`` (on top of ``mask``; semantics.md, "Sliding window").
    Attention is materialised as ``[B,H,T,K]`` per layer: for long prompts use :func:`prefill`.
    ``params`` in the stacked layout run the layers as a ``lax.scan``; in the unstacked layout
    (:func:`unstack_layers`) as an unrolled loop over the same layer body.
    """
    positions = Positions.of(positions)
    check_inputs(cfg, tokens, positions, slots, mask, cache)
    b, t = tokens.shape
    mask = _mask_5d(mask, b, cfg, t, cache.capacity)
    iv = interventions if interventions is not None else Interventions()
    check_interventions(iv, cfg, b, t, cache.capacity)
    per_layer_mask = mask.shape[1] != 1
    a = cache.capacity if attend is None else attend
    if not 1 <= a <= cache.capacity:
        raise ValueError(f"attend must lie in [1, {cache.capacity}] (cache capacity), got {attend}")
    dtype = params["embed"].dtype
    batch_idx = jnp.arange(b)[:, None]
    if cfg.has_window:
        if key_pos is None:
            raise ValueError(f"model {cfg.name} has sliding-window layers: forward needs key_pos[B,K], "
                             "the logical position of every cache slot")
        key_pos = jnp.asarray(key_pos, jnp.float32)
        if key_pos.shape != (b, cache.capacity):
            raise ValueError(f"key_pos must be [B,K]={(b, cache.capacity)}, got {key_pos.shape}")
        # [B,T,K] distance from each query back to each key, in positions (integer parts first)
        back = (positions.base.astype(jnp.float32)[:, :, None] - key_pos[:, None, :]) + positions.offset[:, :, None]

    def layer(carry, xs):
        x, ck, cv = carry
        lp, li, lmask, liv, window = xs
        lmask = lmask if per_layer_mask else mask[:, 0]
        if cfg.has_window:  # window 0: a full-attention layer
            lmask = lmask & ((window == 0) | (back < window))[:, None]
        qkv = attention_inputs(lp, cfg, x, positions, li)
        q, k, v = qkv.q, qkv.k, qkv.v
        # Write the new keys/values straight into the full cache (an in-place scatter of T rows),
        # then read this layer's slice: no per-layer extract + write-back of the whole layer.
        ck = ck.at[li, batch_idx, slots].set(k.astype(ck.dtype), mode="drop")
        cv = cv.at[li, batch_idx, slots].set(v.astype(cv.dtype), mode="drop")
        kl = jax.lax.dynamic_index_in_dim(ck, li, 0, keepdims=False)[:, :a]
        vl = jax.lax.dynamic_index_in_dim(cv, li, 0, keepdims=False)[:, :a]
        bias = None if liv.attn_bias is None else liv.attn_bias[..., :a]
        attn, probs = _attention(q, kl.astype(dtype), vl.astype(dtype), lmask[..., :a], cfg, bias)
        if a < cache.capacity and (taps.attn or taps.attn_received):
            probs = jnp.pad(probs, [(0, 0)] * 3 + [(0, cache.capacity - a)])
        if liv.head_scale is not None:
            sc = liv.head_scale.astype(attn.dtype)[:, None]
            attn = attn * sc
            if liv.head_mean is not None:
                attn = attn + (1 - sc) * liv.head_mean.astype(attn.dtype)
        # [B,T,H*D] @ [H*D,E]: a plain matmul on a free reshape of wo (the einsum form made XLA
        # copy a transposed wo every layer).
        o = (attn.reshape(b * t, -1) @ lp["wo"].reshape(-1, lp["wo"].shape[-1])).reshape(b, t, -1)
        if cfg.o_bias:
            o = o + lp["bo"]
        if cfg.sandwich_norms:
            o = rms_norm(o, lp["post_attn_norm"], cfg.rms_norm_eps, cfg.norm_offset)
        x = x + o
        x_mid = x
        m = mlp(lp, cfg, x)
        x = x + m
        if liv.resid_patch is not None:
            x = jnp.where(liv.resid_patch_mask[..., None], liv.resid_patch.astype(x.dtype), x)
        values = {"q_pre": lambda: qkv.q_pre, "k_pre": lambda: qkv.k_pre, "v": lambda: v, "q": lambda: q,
                  "k": lambda: k, "z": lambda: attn, "attn_out": lambda: o, "mlp_out": lambda: m,
                  "resid_mid": lambda: x_mid, "resid": lambda: x, "attn": lambda: probs,
                  "attn_received": lambda: probs.sum(axis=2)}
        return (x, ck, cv), {name: values[name]() for name in taps.names()}

    x = params["embed"][tokens]
    if cfg.embed_scale != 1.0:
        x = x * jnp.asarray(cfg.embed_scale, x.dtype)
    windows = jnp.asarray(cfg.windows, jnp.float32)
    layer_masks = jnp.moveaxis(mask, 1, 0) if per_layer_mask else jnp.zeros((cfg.num_layers,), bool)
    per_layer_iv = iv.replace(attn_bias=None if iv.attn_bias is None else jnp.moveaxis(iv.attn_bias, 1, 0))
    if is_unstacked(params):
        if len(params["layers"]) != cfg.num_layers:
            raise ValueError(f"params hold {len(params['layers'])} unstacked layers, the config "
                             f"{cfg.num_layers}")
        # one layer body per layer, reading each layer's own weight buffers (see unstack_layers)
        carry, outs = (x, cache.k, cache.v), []
        for li, lp in enumerate(params["layers"]):
            lmask, liv = jax.tree_util.tree_map(lambda a, li=li: a[li], (layer_masks, per_layer_iv))
            carry, o = layer(carry, (lp, li, lmask, liv, windows[li]))
            outs.append(o)
        (x, ck, cv) = carry
        tapped = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)
    else:
        xs = (params["layers"], jnp.arange(cfg.num_layers), layer_masks, per_layer_iv, windows)
        (x, ck, cv), tapped = jax.lax.scan(layer, (x, cache.k, cache.v), xs)
    if not return_hidden:
        x = unembed(params, cfg, x)
    return x, KVCache(ck, cv), tapped


def unembed(params: Params, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """Final norm and LM head: residual ``[...,E]`` -> float32 logits ``[...,V]``."""
    x = rms_norm(x, params["final_norm"], cfg.rms_norm_eps, cfg.norm_offset)
    head = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
    # a 2-D matmul: XLA:CPU runs the 3-D einsum form of this largest product ~2x slower. (A tied
    # head is transposed inside the program; a dot_general on embed's E axis avoids that copy but
    # ran slower on XLA:CPU, and a head materialised once per run changes the last bits of the
    # pinned traces: both measured, neither taken.)
    logits = jnp.matmul(x.reshape(-1, x.shape[-1]), head, preferred_element_type=jnp.float32)
    return logits.reshape(*x.shape[:-1], -1)


def logit_lens(params: Params, cfg: ModelConfig, resid: jax.Array) -> jax.Array:
    """Read the residual stream ``[...,E]`` through the final norm and unembedding -> logits ``[...,V]``."""
    return unembed(params, cfg, resid)


def causal_mask(batch: int, t: int, capacity: int, start: int = 0) -> jax.Array:
    """Ordinary causal mask ``[B,T,K]`` for T queries written at slots ``start..start+T-1``."""
    q_slot = start + jnp.arange(t)[:, None]
    return jnp.broadcast_to(jnp.arange(capacity)[None, :] <= q_slot, (batch, t, capacity))


def prefill(params: Params, cfg: ModelConfig, tokens: jax.Array, cache: KVCache, last: jax.Array,
            chunk: int = 256, taps: TapsSpec = NO_TAPS, attn_last: bool = False,
            interventions: Interventions | None = None):
    """Causal forward of a prompt in chunks of ``chunk`` queries, so peak memory grows linearly in T.

    tokens[B,T] at positions and slots 0..T-1 (T <= K); ``last[B]`` int: the query whose logits
    (and attention row, with ``attn_last``) are returned. Each chunk's attention ``[B,H,C,K]`` lives
    only inside its layer; the T x K attention of the whole prompt is never formed. Full chunks run
    in one ``lax.scan``, a shorter remainder in one more forward (no padding queries).
    Returns ``(logits[B,V] float32 at last, new cache, taps dict)``; taps: ``resid`` [L,B,T,E],
    ``attn_received`` [L,B,H,K] (summed over the T queries), ``attn_last`` [L,B,H,K] (attention
    probabilities of query ``last``). ``taps.attn`` (quadratic in T) is refused. With T <= chunk
    this is one :func:`forward`. ``interventions`` may not carry ``resid_patch``.
    """
    if taps.attn:
        raise ValueError("prefill reduces attention in-graph: ask for attn_last or attn_received, "
                         "not the full [L,B,H,T,K] attention (use forward for short prompts)")
    other = [n for n in taps.names() if n not in ("resid", "attn_received")]
    if other:
        raise ValueError(f"prefill returns the taps resid and attn_received (and attn_last), not {other[0]}; "
                         "use forward for per-token taps")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if interventions is not None and interventions.resid_patch is not None:
        raise ValueError("prefill does not take resid_patch (its T axis belongs to one forward); "
                         "patch through model.forward")
    b, t = tokens.shape
    k_cap = cache.capacity
    if t > k_cap:
        raise ValueError(f"prompt of {t} tokens does not fit a cache of {k_cap} slots")
    inner = TapsSpec(attn=attn_last, resid=taps.resid, attn_received=taps.attn_received)
    last = jnp.broadcast_to(jnp.asarray(last, jnp.int32), (b,))
    rows = jnp.arange(b)
    L, H = cfg.num_layers, cfg.num_heads
    slot_pos = jnp.broadcast_to(jnp.arange(k_cap, dtype=jnp.float32), (b, k_cap))  # prompt: position = slot

    def one(cache, start, tok):
        """Queries tok[B,C] at slots start.. -> (cache, hidden at ``last`` or 0, taps of the chunk)."""
        c = tok.shape[1]
        pos = jnp.broadcast_to(start + jnp.arange(c), (b, c))
        x, cache, tp = forward(params, cfg, tok, pos.astype(jnp.float32), pos,
                               causal_mask(b, c, k_cap, start), cache, inner, interventions,
                               return_hidden=True, key_pos=slot_pos)
        here = (last >= start) & (last < start + c)
        idx = jnp.clip(last - start, 0, c - 1)
        out = {"x": jnp.where(here[:, None], x[rows, idx], 0.0)}
        if attn_last:
            row = tp["attn"][:, rows, :, idx]  # [B,L,H,K]: the advanced indices come first
            out["attn_last"] = jnp.moveaxis(jnp.where(here[:, None, None, None], row, 0.0), 0, 1)
        if taps.attn_received:
            out["attn_received"] = tp["attn_received"]
        return cache, out, tp.get("resid")

    n, rem = divmod(t, chunk) if t > chunk else (0, t)
    acc = {"x": jnp.zeros((b, cfg.hidden_size), params["embed"].dtype)}
    if attn_last:
        acc["attn_last"] = jnp.zeros((L, b, H, k_cap), jnp.float32)
    if taps.attn_received:
        acc["attn_received"] = jnp.zeros((L, b, H, k_cap), jnp.float32)
    add = lambda a, o: jax.tree_util.tree_map(jnp.add, a, o)
    resids = []
    if n:
        def body(carry, xs):
            cache, a = carry
            start, tk = xs
            cache, out, resid = one(cache, start, tk)
            return (cache, add(a, out)), resid

        tok = tokens[:, :n * chunk].reshape(b, n, chunk).swapaxes(0, 1)  # [N,B,C]
        (cache, acc), resid = jax.lax.scan(body, (cache, acc), (jnp.arange(n) * chunk, tok))
        if taps.resid:  # [N,L,B,C,E] -> [L,B,N*C,E]
            resids.append(jnp.moveaxis(resid, 0, 2).reshape(L, b, n * chunk, -1))
    if rem:
        cache, out, resid = one(cache, n * chunk, tokens[:, n * chunk:])
        acc = add(acc, out)
        if taps.resid:
            resids.append(resid)
    x_last = acc.pop("x")
    if taps.resid:
        acc["resid"] = jnp.concatenate(resids, axis=2) if len(resids) > 1 else resids[0]
    return unembed(params, cfg, x_last), cache, acc
