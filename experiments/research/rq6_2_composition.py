"""RQ 6.2: cross-head communication on parallel tokens.

Three readings on one model (SmolLM2-135M: 30 layers x 9 query heads, 3 KV heads of 3 query heads):

1. Weight composition (Elhage et al. 2021) for every ordered head pair u -> d with layer(u) <
   layer(d): Q-, K- and V-composition ``||W_OV^u M_d|| / (||W_OV^u|| ||M_d||)`` (Frobenius) with
   ``M_d = W_QK^d`` (Q), ``(W_QK^d)^T`` (K) or ``W_OV^d`` (V), row-vector convention (residual x is a
   row, ``q = x W_Q``). GQA mapping: query head h uses KV head ``h // 3`` (the model's grouping), so
   head h's circuits are ``W_OV^h = W_V[h // 3] W_O[h]`` and ``W_QK^h = W_Q[h] W_K[h // 3]^T``: 270
   heads, each with its own OV and QK circuit; the three heads of a group share their W_V / W_K
   factor. The RMSNorm gain of a head's layer is folded into its W_Q, W_K, W_V (the 1/rms scalar
   cancels in the ratio); RoPE is left out (the scores are the position-free bilinear forms).
   Baseline: the same score for random Gaussian factors of the same shapes (E x D, D x E).
2. Path patching on a forced TEMPO state: the prompt's top-3 next tokens form one isolated candidate
   set at the shared position P; a probe (the greedy next token after member 0) at P + 1 reads it
   (as in :mod:`experiments.research.layer_probe`). For a downstream head d the outcome is the
   probe's attention mass on the three members at d. Three interventions per upstream head u:
   - direct Q path (exact path patching, zero ablation): u's output on the probe is removed from
     the residual stream that feeds d's QUERY only; every other input of d (its keys: the prompt,
     members, the probe's own key) and every other path stays clean. Computed in closed form from
     the clean forward's residuals, per-head outputs and cache: ``x' = x_in(layer d) - o_u``,
     ``q' = RoPE(RMSNorm(x') W_Q[d])``, softmax over the clean keys.
   - direct K path: u's output on the three MEMBERS is removed from the residual stream that feeds
     the members' keys at d's layer (KV head of d); the probe's query and all other keys clean.
   - whole-head ablation in the probe's forward (the standard approximation: interventions.
     head_scale = 0 for u in the probe's forward; members and prompt cache clean): u's effect on d's
     member attention through all paths into the probe's query (and the probe's own key / value).
3. Redundancy: pairs of upstream heads ablated jointly in the probe's forward vs singly; outcome the
   probe's next-token KL and the mean member mass over the downstream heads.

Selection on the DEV split (inside ``run``, before the test prompts are read): downstream heads D =
the 8 heads (layer >= 1) with the highest mean member mass; redundancy heads U = the 8 heads whose
single ablation changes the mean member mass over D most (mean |change|); all 28 pairs of U.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.research import wording
from experiments.research.measures import spearman
from tempo_jax.research import Design, Hypothesis, Output
from experiments.research.position_probe import pad, prompt_state
from experiments.research.tables import ci_cells
from tempo_jax import stats as S
from tempo_jax.config import ModelConfig
from tempo_jax.engine.masks import step_mask
from tempo_jax.interventions import Interventions
from tempo_jax.model import KVCache, TapsSpec, attention_inputs, forward, layer_weights
from tempo_jax.slots import PROMPT, UNWRITTEN

N_SET = 3
N_DOWN = 8
N_RED = 8
N_DEV = 2  # dev prompts per genre for the selection
EPS = 1e-6  # nats, added to KLs before logs
N_RANDOM = 300  # random factor draws for the composition baseline
KINDS = ("Q", "K", "V")


# --- 1. weight composition -------------------------------------------------------------------
def head_circuits(params, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Per query head (flat index l * H + h) the factors of its circuits, norm gain folded in:
    ``wq, wk, wv[N,E,D]`` (input side), ``wo[N,D,E]``. GQA: head h reads KV head h // R."""
    w = layer_weights(params, cfg)
    L, H, R = cfg.num_layers, cfg.num_heads, cfg.group_size
    g = np.asarray(w.attn_norm, np.float64)[:, :, None, None]  # [L,E,1,1]
    grp = np.arange(H) // R
    wq = g * np.asarray(w.wq, np.float64)  # [L,E,H,D]
    wk = (g * np.asarray(w.wk, np.float64))[:, :, grp]
    wv = (g * np.asarray(w.wv, np.float64))[:, :, grp]
    flat = lambda a: np.moveaxis(a, 2, 1).reshape(L * H, a.shape[1], a.shape[3])
    return {"wq": flat(wq), "wk": flat(wk), "wv": flat(wv),
            "wo": np.asarray(w.wo, np.float64).reshape(L * H, cfg.head_dim, -1)}


def _row_space(a):
    """R factors of the thin QR of ``a[N,E,D]``: ``||a X|| = ||R X||`` for any X (Frobenius)."""
    return np.linalg.qr(a, mode="r")  # [N,D,D]


def composition_scores(circ: dict[str, np.ndarray], layer_of: np.ndarray) -> np.ndarray:
    """``[3,N,N]`` Q/K/V composition of upstream head u (row) into downstream head d (column);
    NaN unless layer_of[u] < layer_of[d]. Uses ``||A B C E^T|| = ||R_A B C R_E^T||`` (thin QR of the
    outer factors) so each pair costs a D x E x D product instead of E x E ones."""
    ra = _row_space(circ["wv"])  # upstream W_OV = wv @ wo: left factor
    up = np.einsum("nij,nje->nie", ra, circ["wo"])  # [N,D,E]: ||W_OV^u X|| = ||up_u X||
    rk, rq = _row_space(circ["wk"]), _row_space(circ["wq"])
    ro = _row_space(np.swapaxes(circ["wo"], 1, 2))  # wo^T = Q R -> wo = R^T Q^T
    down = {"Q": np.einsum("ned,nkd->nek", circ["wq"], rk),  # W_QK = wq wk^T -> wq rk^T
            "K": np.einsum("ned,nkd->nek", circ["wk"], rq),  # W_QK^T = wk wq^T -> wk rq^T
            "V": np.einsum("ned,nkd->nek", circ["wv"], ro)}  # W_OV = wv wo -> wv ro^T
    n, d, e = up.shape
    up_norm = np.sqrt((up ** 2).sum((1, 2)))
    out = np.full((3, n, n), np.nan)
    for i, kind in enumerate(KINDS):
        dn = down[kind].astype(np.float32)
        dn_norm = np.sqrt((down[kind] ** 2).sum((1, 2)))
        flat = np.moveaxis(dn, 0, 1).reshape(e, -1)  # [E, N*D]
        for lu in np.unique(layer_of):
            us = np.flatnonzero(layer_of == lu)
            ds = np.flatnonzero(layer_of > lu)
            if not len(ds):
                continue
            cols = (ds[:, None] * d + np.arange(d)[None]).ravel()
            prod = up[us].astype(np.float32).reshape(-1, e) @ flat[:, cols]  # [U*D, Nd*D]
            num = np.sqrt((prod.reshape(len(us), d, len(ds), d).astype(np.float64) ** 2).sum((1, 3)))
            out[i][np.ix_(us, ds)] = num / (up_norm[us, None] * dn_norm[None, ds])
    return out


def random_baseline(e: int, d: int, n: int, seed: int) -> np.ndarray:
    """``[3,n*n]`` composition scores of random Gaussian factors of the model's shapes: n random
    upstream heads (wv[E,D], wo[D,E]) into n random downstream heads (wq, wk, wv[E,D], wo[D,E])."""
    rng = np.random.default_rng(seed)
    circ = {k: rng.standard_normal((2 * n, e, d)) for k in ("wq", "wk", "wv")}
    circ["wo"] = rng.standard_normal((2 * n, d, e))
    s = composition_scores(circ, np.repeat([0, 1], n))
    return s[:, :n, n:].reshape(3, -1)


def composition_table(params, cfg: ModelConfig, cache_dir=None) -> np.ndarray:
    """:func:`composition_scores` of the model's heads ``[3,N,N]``, cached on disk in ``cache_dir``
    (keyed by the parameters' hash): the table depends on the weights only."""
    from pathlib import Path

    from tempo_jax.research.provenance import params_hash

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"rq6.2-composition-{params_hash(params)[:16]}.npy"
        if path.exists():
            return np.load(path)
    out = composition_scores(head_circuits(params, cfg), np.repeat(np.arange(cfg.num_layers), cfg.num_heads))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.replace(path)
    return out


# --- 2./3. the forced state and its interventions ---------------------------------------------
@functools.partial(jax.jit, static_argnames=("mcfg", "n"))
def write_members(params, mcfg: ModelConfig, cache: KVCache, plen, members, n: int):
    """The set ``members[n]`` as one isolated set at position P (slots P..P+n-1), with taps.
    Returns (member-0 logits [V], cache, attn [L,H,n,K], resid after each layer [L,n,E])."""
    K = cache.capacity
    k = jnp.arange(K)
    alive = k < plen
    slot_step = jnp.where(alive, PROMPT, UNWRITTEN)
    mask = step_mask(alive, slot_step, 0, plen, n, n, jnp.zeros((1, 1), jnp.int32))[0, 0]  # [n,K]
    logits, cache, taps = forward(params, mcfg, members[None], jnp.full((1, n), plen, jnp.float32),
                                  (plen + jnp.arange(n))[None], mask[None], cache,
                                  TapsSpec(attn=True, resid=True))
    return logits[0, 0], cache, taps["attn"][:, 0], taps["resid"][:, 0]


@functools.partial(jax.jit, static_argnames=("mcfg",))
def probe_clean(params, mcfg: ModelConfig, cache: KVCache, token, pos, slot, mask):
    """The probe (one token) with ``mask[K]``: (log-probs [V], cache, attn [L,H,K], resid [L,E])."""
    logits, cache, taps = forward(params, mcfg, jnp.full((1, 1), token, jnp.int32),
                                  jnp.full((1, 1), pos, jnp.float32), jnp.full((1, 1), slot, jnp.int32),
                                  mask[None, None], cache, TapsSpec(attn=True, resid=True))
    return (jax.nn.log_softmax(logits[0, 0]), cache, taps["attn"][:, 0, :, 0], taps["resid"][:, 0, 0])


@functools.partial(jax.jit, static_argnames=("mcfg",))
def probe_ablated(params, mcfg: ModelConfig, cache: KVCache, token, pos, slot, mask, scales):
    """The probe in W worlds, world w with ``head_scale = scales[w]`` ([W,L,H]; 0 = zero ablation)
    in the probe's forward only (the cache of prompt and members is the clean one).
    Returns log-probs [W,V] and the probe's attention [W,L,H,K]."""

    def one(sc):
        logits, _, taps = forward(params, mcfg, jnp.full((1, 1), token, jnp.int32),
                                  jnp.full((1, 1), pos, jnp.float32), jnp.full((1, 1), slot, jnp.int32),
                                  mask[None, None], cache, TapsSpec(attn=True),
                                  interventions=Interventions(head_scale=sc))
        return jax.nn.log_softmax(logits[0, 0]), taps["attn"][:, 0, :, 0]

    return jax.vmap(one)(scales)


def head_outputs(params, mcfg: ModelConfig, attn, v_cache):
    """Each head's write into the residual stream: ``attn[L,H,T,K]`` (probabilities), ``v_cache[L,K,G,D]``
    -> ``o[L,H,T,E] = (attn_h @ V_{h // R}) @ W_O[h]``."""
    H, R = mcfg.num_heads, mcfg.group_size
    v = v_cache[:, :, jnp.arange(H) // R]  # [L,K,H,D]
    z = jnp.einsum("lhtk,lkhd->lhtd", attn, v)
    return jnp.einsum("lhtd,lhde->lhte", z, layer_weights(params, mcfg).wo)


@functools.partial(jax.jit, static_argnames=("mcfg",))
def direct_paths(params, mcfg: ModelConfig, k_cache, x_probe, o_probe, x_mem, o_mem, mask, members,
                 probe_pos, member_pos, remove, layers):
    """Exact direct-path patching of every upstream head into every downstream head's member mass.

    ``k_cache[L,K,G,D]`` (clean, after the probe's forward); ``x_probe[L,E]`` / ``x_mem[L,n,E]``: the
    probe's / members' residual at each layer's INPUT; ``o_probe[N,E]`` / ``o_mem[N,n,E]``: each head's
    (flat index N = L*H) output on them; ``mask[K]`` the probe's; ``members[K]`` bool; ``remove``:
    the factor of o removed (1: zero ablation of the path; 0: the clean forward, for checks).
    ``layers[Ld]``: the downstream layers computed.
    Returns ``q_mass[Ld,N,H]`` (u's output removed from the probe's query input at layer l, all heads
    h of layer l) and ``k_mass[Ld,N,H]`` (removed from the members' key input at layer l)."""
    H, G, R, D = mcfg.num_heads, mcfg.num_kv_heads, mcfg.group_size, mcfg.head_dim
    w = layer_weights(params, mcfg)
    neg = jnp.finfo(jnp.float32).min

    def mass(logits):  # [...,H,K] -> member mass [...,H]
        p = jax.nn.softmax(jnp.where(mask, logits, neg), -1)
        return jnp.sum(jnp.where(members, p, 0.0), -1)

    def layer(l):
        lp = w.layer(l)
        kc = k_cache[l]  # [K,G,D]
        # Q path: x' = x_probe[l] - o_u for every u
        xq = x_probe[l][None] - remove * o_probe  # [N,E]
        q = attention_inputs(lp, mcfg, xq[:, None], jnp.full((xq.shape[0], 1), probe_pos), l).q[:, 0]  # [N,H,D]
        lq = jnp.einsum("ngrd,kgd->ngrk", q.reshape(-1, G, R, D), kc).reshape(q.shape[0], H, -1) * D ** -0.5
        # K path: members' keys from x_mem[l] - o_u(members); the clean query
        q0 = attention_inputs(lp, mcfg, x_probe[l][None, None], jnp.full((1, 1), probe_pos), l).q[0, 0]  # [H,D]
        xk = x_mem[l][None] - remove * o_mem  # [N,n,E]
        nn_, t = xk.shape[:2]
        km = attention_inputs(lp, mcfg, xk, jnp.broadcast_to(member_pos, (nn_, t)), l).k  # [N,n,G,D]
        base = jnp.einsum("grd,kgd->grk", q0.reshape(G, R, D), kc).reshape(H, -1) * D ** -0.5  # [H,K]
        mem_l = jnp.einsum("grd,ntgd->ngrt", q0.reshape(G, R, D), km).reshape(nn_, H, t) * D ** -0.5
        idx = jnp.argmax(members)  # members occupy slots idx..idx+n-1
        lk = jax.lax.dynamic_update_slice_in_dim(jnp.broadcast_to(base, (nn_,) + base.shape), mem_l, idx, axis=2)
        return mass(lq), mass(lk)

    return jax.lax.map(layer, layers)


@dataclasses.dataclass
class PromptProbe:
    """One prompt's measurements; N = L*H heads (flat index l * H + h); Ld downstream layers."""

    probe_token: int
    mass: np.ndarray  # [N] clean member mass of every head (probe row)
    layers: tuple  # the Ld layers whose heads are downstream in the direct-path readings
    q_direct: np.ndarray  # [N,Ld*H] change of d's member mass (column) when u's direct path into d's query is cut
    k_direct: np.ndarray  # [N,Ld*H] same, u's direct path into the members' keys at d's layer
    abl_mass: np.ndarray  # [W,N] change of every head's member mass, world w's heads ablated in the probe's forward
    abl_kl: np.ndarray  # [W] KL(clean || world w) of the probe's next-token distribution


def state(params, mcfg: ModelConfig, ids, n: int = N_SET):
    """The forced state: prefill, the top-n set at P, the clean probe at P + 1 (see module docstring)."""
    prompt, P = pad(ids)
    cap = len(prompt) + n + 1
    dist, cache0 = prompt_state(params, mcfg, jnp.asarray(prompt), jnp.int32(P), cap)
    top = np.argsort(-np.asarray(dist), kind="stable")[:n].astype(np.int32)
    logits0, cache, mattn, mresid = write_members(params, mcfg, cache0, jnp.int32(P), jnp.asarray(top), n=n)
    probe_tok = int(np.argmax(np.asarray(logits0)))
    k = np.arange(cap)
    members = (k >= P) & (k < P + n)
    slot = P + n
    mask = (k < P) | members | (k == slot)
    lp0, cache1, pattn, presid = probe_clean(params, mcfg, cache, probe_tok, P + 1.0, slot, jnp.asarray(mask))
    return dict(P=P, n=n, top=top, probe_tok=probe_tok, members=members, slot=slot, mask=mask,
                cache=cache, mattn=mattn, mresid=mresid, lp0=lp0, cache1=cache1, pattn=pattn, presid=presid)


def member_mass(params, mcfg: ModelConfig, ids, n: int = N_SET) -> np.ndarray:
    """[N] the clean probe's attention mass on the members, every head."""
    st = state(params, mcfg, ids, n)
    return np.asarray(st["pattn"], np.float64)[:, :, st["members"]].sum(-1).reshape(-1)


def measure(params, mcfg: ModelConfig, ids, layers, ablate=(), n: int = N_SET) -> PromptProbe:
    """All readings for one prompt: direct paths into the heads of ``layers`` (from every upstream
    head; entries with layer(u) >= layer(d) are NaN) and one world per entry of ``ablate`` (a tuple
    of flat head indices zero-ablated together in the probe's forward)."""
    L, H = mcfg.num_layers, mcfg.num_heads
    N = L * H
    st = state(params, mcfg, ids, n)
    P, members, mask, cache, cache1 = st["P"], st["members"], st["mask"], st["cache"], st["cache1"]
    emb = params["embed"]
    x_probe = jnp.concatenate([emb[st["probe_tok"]][None], st["presid"][:-1]])  # [L,E] input of each layer
    x_mem = jnp.concatenate([emb[jnp.asarray(st["top"])][None], st["mresid"][:-1]])  # [L,n,E]
    o_probe = head_outputs(params, mcfg, st["pattn"][:, :, None], cache1.v[:, 0])[:, :, 0].reshape(N, -1)
    o_mem = head_outputs(params, mcfg, st["mattn"], cache.v[:, 0]).reshape(N, n, -1)
    qm, km = direct_paths(params, mcfg, cache1.k[:, 0], x_probe, o_probe, x_mem, o_mem, jnp.asarray(mask),
                          jnp.asarray(members), P + 1.0, jnp.full((n,), float(P)), 1.0,
                          jnp.asarray(layers, jnp.int32))
    mass = np.asarray(st["pattn"], np.float64)[:, :, members].sum(-1).reshape(N)
    cols = (np.asarray(layers)[:, None] * H + np.arange(H)[None]).ravel()
    valid = (np.arange(N)[:, None] // H) < (cols[None] // H)
    fix = lambda x: np.where(valid, np.moveaxis(np.asarray(x, np.float64), 0, 1).reshape(N, -1) - mass[None, cols], np.nan)
    scales = np.ones((max(len(ablate), 1), L, H), np.float32)
    for w, heads in enumerate(ablate):
        for u in heads:
            scales[w, u // H, u % H] = 0.0
    lp, at = jax.device_get(probe_ablated(params, mcfg, cache, st["probe_tok"], P + 1.0, st["slot"],
                                          jnp.asarray(mask), jnp.asarray(scales)))
    lp0 = np.asarray(st["lp0"], np.float64)
    kl = np.sum(np.exp(lp0) * (lp0[None] - np.asarray(lp, np.float64)), -1)
    m_all = np.asarray(at, np.float64)[..., members].sum(-1).reshape(len(scales), N)
    w = len(ablate)
    return PromptProbe(probe_token=st["probe_tok"], mass=mass, layers=tuple(int(x) for x in layers),
                       q_direct=fix(qm), k_direct=fix(km), abl_mass=(m_all - mass[None])[:w], abl_kl=kl[:w])


# --- the experiment ---------------------------------------------------------------------------
LOG15 = float(np.log(1.5))

DESIGN = Design(
    id="rq6.2",
    questions=("6.2",),
    title="Cross-head communication on parallel tokens: weight composition, path patching, redundancy",
    primary_metric="a downstream head's attention mass on the three members of a forced set "
                   "(probe at P + 1); the probe's next-token KL for redundancy",
    contrast="per prompt, over head pairs u -> d (d among 8 dev-selected heads, layer(u) < layer(d)): "
             "Spearman rho of weight composition with |change of d's member mass| when u's direct path "
             "into d's query (Q) or the members' keys (K) is cut; joint vs single zero ablation of 28 "
             "pairs of 8 dev-selected upstream heads in the probe's forward",
    hypotheses=(
        Hypothesis("H1", "Q-composition predicts the direct Q-path effect (per-prompt Spearman rho "
                         "over pairs)", "rho_q", ">0"),
        Hypothesis("H2", "K-composition predicts the direct K-path effect (per-prompt Spearman rho "
                         "over pairs)", "rho_k", ">0"),
        Hypothesis("H3", "ablating a pair jointly changes the prediction more than the larger single "
                         "ablation (mean over pairs of log KL_joint / max KL_single)", "red_kl", ">0"),
        Hypothesis("H4", "ablating a pair jointly changes the downstream heads' mean member mass more "
                         "than the larger single ablation (mean over pairs of |d_joint| - max |d_single|)",
                   "red_att", ">0"),
        Hypothesis("S1", "Q-composition predicts the Q-path effect better than V-composition does "
                         "(rho_q - rho of V-composition with the same effect)", "spec_q", ">0",
                   family="specificity"),
        Hypothesis("S2", "K-composition predicts the K-path effect better than V-composition does",
                   "spec_k", ">0", family="specificity"),
        Hypothesis("W1", "within each downstream head, Q-composition predicts the direct Q-path effect "
                         "(mean over the 8 heads of the Spearman rho over its upstream heads)", "rho_q_within",
                   ">0", family="within"),
        Hypothesis("W2", "within each downstream head, K-composition predicts the direct K-path effect",
                   "rho_k_within", ">0", family="within"),
        Hypothesis("A1", "pair ablations are additive in KL (mean log KL_joint / (KL_1 + KL_2))",
                   "add_kl", "=0", family="additivity", margin=LOG15),
        Hypothesis("A2", "pair ablations are additive in the downstream mean member mass (mean signed "
                         "interaction d_joint - d_1 - d_2)", "int_att", "=0", family="additivity",
                   margin=0.01),
    ),
    margin=0.01,
    margin_note="log 1.5 for the KL additivity ratio; 0.01 attention mass (mean over the 8 downstream "
                "heads) for the signed interaction",
    metrics=("rho_q", "rho_k", "rho_q_within", "rho_k_within", "rho_vq", "rho_vk", "spec_q", "spec_k", "red_kl", "red_att", "add_kl",
             "int_att", "frac_redundant_kl", "frac_redundant_att", "mass_down", "q_top", "k_top"),
    families={"primary": "holm", "specificity": "holm", "within": "holm", "additivity": "holm"},
    n_per_genre=8,
    caveats=(
        "One forced state per prompt: the prompt's top-3 next tokens as one isolated set at P, a probe "
        "(greedy next token after member 0) at P + 1; real TEMPO runs see several sets.",
        "Zero ablation throughout (a path's or a head's output set to 0), not mean ablation.",
        "The direct-path patches are exact for the path they name: u's write into the residual stream "
        "that feeds d's query (Q) or the members' keys at d's layer (K), through d's RMSNorm; paths "
        "through intermediate heads/MLPs, the prompt's keys and the values (V-composition) are not "
        "patched. The pair ablations (redundancy) ablate whole heads in the probe's forward only "
        "(members and prompt cache clean): all paths into the probe, none into the members.",
        "Composition scores ignore RoPE (the position-free bilinear forms W_Q W_K^T) and fold the "
        "layer's RMSNorm gain into W_Q, W_K, W_V; the three query heads of a KV group share W_K / W_V.",
        "Downstream heads D (8 with the largest member mass, layer >= 1) and the 8 redundancy heads "
        "(largest mean direct-path effect on D) are chosen on dev prompts (2 per genre) inside the run.",
        "n = 8 test prompts per genre (24) to fit the compute budget (the machine was shared by 8 runs).",
        "The composition table depends only on the weights; it is computed once per parameter hash and "
        "cached in runs/research/cache/.",
    ),
    config={"n_set": N_SET, "n_down": N_DOWN, "n_red": N_RED, "n_dev_per_genre": N_DEV, "eps_kl": EPS,
            "ablation": "zero", "n_random": "24 x 24 random head pairs", "probe": "P + 1, greedy after member 0"},
)


def select_heads(m, dev, quick: bool):
    """(D, U, pairs, dev readings) from the dev prompts: D = N_DOWN heads of layer >= 1 with the
    largest mean member mass; U = N_RED heads with the largest mean direct-path effect on D."""
    H = m.cfg.num_heads
    ids = [m.tokenizer(p.prompt).input_ids for p in dev]
    mass = np.mean([member_mass(m.params, m.cfg, i) for i in ids], 0)
    mass[:H] = -np.inf  # layer 0 has no upstream head
    down = np.sort(np.argsort(-mass, kind="stable")[:N_DOWN])
    layers = np.unique(down // H)
    recs = [measure(m.params, m.cfg, i, layers) for i in ids]
    cols = _cols(down, layers, H)
    eff = np.mean([np.nansum(np.abs(r.q_direct[:, cols]) + np.abs(r.k_direct[:, cols]), 1) for r in recs], 0)
    up = np.sort(np.argsort(-eff, kind="stable")[:N_RED])
    return down, up, list(itertools.combinations(up.tolist(), 2)), mass


def _cols(down, layers, H):
    """Columns of the direct-path matrices ([N, len(layers)*H]) that hold the heads ``down``."""
    pos = {int(l): i for i, l in enumerate(layers)}
    return np.asarray([pos[int(d // H)] * H + int(d % H) for d in down])


def run(ctx) -> Output:
    from experiments import corpus
    from experiments.research import PROJECT

    m = ctx.model
    L, H = m.cfg.num_layers, m.cfg.num_heads
    N = L * H
    comp = composition_table(m.params, m.cfg, PROJECT.root / "runs" / "research" / "cache")
    base = random_baseline(m.cfg.hidden_size, m.cfg.head_dim, 24, ctx.seed)
    dev = corpus.load(split="dev", genres=list(ctx.design.genres), limit_per_genre=1 if ctx.quick else N_DEV)
    down, up, pairs, dev_mass = select_heads(m, dev, ctx.quick)
    layers = np.unique(down // H)
    cols = _cols(down, layers, H)
    ablate = tuple((int(u),) for u in up) + tuple(pairs)
    single = {int(u): i for i, u in enumerate(up)}

    def one(p):
        return measure(m.params, m.cfg, m.tokenizer(p.prompt).input_ids, layers, ablate)

    cq, ck, cv = comp[0][:, down], comp[1][:, down], comp[2][:, down]  # [N, |D|]
    rows, recs = [], []
    for p, r in ctx.map(one):
        q, k = np.abs(r.q_direct[:, cols]), np.abs(r.k_direct[:, cols])
        row = {"prompt_id": p.id, "genre": p.genre, "probe_token": r.probe_token,
               "rho_q": spearman(cq.ravel(), q.ravel()), "rho_k": spearman(ck.ravel(), k.ravel()),
               "rho_vq": spearman(cv.ravel(), q.ravel()), "rho_vk": spearman(cv.ravel(), k.ravel()),
               "mass_down": float(r.mass[down].mean()), "q_top": float(np.nanmax(q)), "k_top": float(np.nanmax(k))}
        row["spec_q"], row["spec_k"] = row["rho_q"] - row["rho_vq"], row["rho_k"] - row["rho_vk"]
        # the pooled rho mixes downstream heads; within one downstream head only its upstream heads vary
        row["rho_q_within"] = float(np.nanmean([spearman(cq[:, j], q[:, j]) for j in range(len(down))]))
        row["rho_k_within"] = float(np.nanmean([spearman(ck[:, j], k[:, j]) for j in range(len(down))]))
        att = r.abl_mass[:, down].mean(1)  # [W] change of the mean member mass over D
        red_kl, red_att, add_kl, int_att = [], [], [], []
        for j, (a, b) in enumerate(pairs):
            w = len(up) + j
            k1, k2, k12 = r.abl_kl[single[a]], r.abl_kl[single[b]], r.abl_kl[w]
            a1, a2, a12 = att[single[a]], att[single[b]], att[w]
            red_kl.append(np.log((k12 + EPS) / (max(k1, k2) + EPS)))
            add_kl.append(np.log((k12 + EPS) / (k1 + k2 + EPS)))
            red_att.append(abs(a12) - max(abs(a1), abs(a2)))
            int_att.append(a12 - a1 - a2)
        row.update(red_kl=float(np.mean(red_kl)), red_att=float(np.mean(red_att)),
                   add_kl=float(np.mean(add_kl)), int_att=float(np.mean(int_att)),
                   frac_redundant_kl=float(np.mean(np.asarray(red_kl) <= 0)),
                   frac_redundant_att=float(np.mean(np.asarray(red_att) <= 0)))
        for j in range(len(pairs)):
            row[f"pair{j:02d}_red_kl"], row[f"pair{j:02d}_red_att"] = red_kl[j], red_att[j]
        rows.append(row)
        recs.append(r)
    name = lambda u: f"L{u // H}H{u % H}"
    notes = _composition_notes(comp, base, down, name)
    q_all = np.stack([np.abs(r.q_direct[:, cols]) for r in recs])  # [P,N,|D|]
    k_all = np.stack([np.abs(r.k_direct[:, cols]) for r in recs])
    groups = np.repeat(np.arange(len(recs)), cq.size)
    pooled = {}
    for lab, c, e in (("Q", cq, q_all), ("K", ck, k_all)):
        pooled[lab] = S.cluster_corr(np.tile(c.ravel(), len(recs)), e.reshape(-1), groups, n_boot=500, seed=ctx.seed)
        notes.append(f"Pooled over prompts and pairs: Spearman rho of {lab}-composition with the |direct "
                     f"{lab}-path effect| {pooled[lab]['value']:+.3f} [{pooled[lab]['lo']:+.3f}, "
                     f"{pooled[lab]['hi']:+.3f}] (95% percentile prompt-cluster bootstrap, "
                     f"{pooled[lab]['n']} pair x prompt rows, {pooled[lab]['n_groups']} prompts).")
    notes.append("Downstream heads D (dev): " + ", ".join(f"{name(d)} (dev member mass {dev_mass[d]:.2f})" for d in down)
                 + "; redundancy heads U (dev): " + ", ".join(name(u) for u in up) + ".")
    # direct Q path vs whole-head ablation in the probe's forward, for U -> D
    abl = np.stack([r.abl_mass[:len(up)][:, down] for r in recs])  # [P,|U|,|D|]
    dq = np.stack([r.q_direct[up][:, cols] for r in recs])
    ok = np.isfinite(dq)
    notes.append(f"For the {len(up)} x {len(down)} pairs U -> D, the direct Q-path effect and the whole-head "
                 f"ablation effect (probe's forward, all paths) agree in sign on {100 * np.mean(np.sign(dq[ok]) == np.sign(abl[ok])):.0f}% "
                 f"of pair x prompt cases; Pearson r {np.corrcoef(dq[ok], abl[ok])[0, 1]:+.2f}.")
    sa = np.abs(np.stack([r.abl_mass[:len(up)][:, down].mean(1) for r in recs]))
    ja = np.abs(np.stack([r.abl_mass[len(up):][:, down].mean(1) for r in recs]))
    sk = np.stack([r.abl_kl[:len(up)] for r in recs])
    jk = np.stack([r.abl_kl[len(up):] for r in recs])
    notes.append(f"Scale of the redundancy outcomes: single ablations of U change the mean member mass over D "
                 f"by {sa.mean():.4f} on average (|change|; max {sa.max():.3f}), joint ablations by {ja.mean():.4f} "
                 f"(max {ja.max():.3f}); next-token KL single median {np.median(sk):.3g} nats, joint median "
                 f"{np.median(jk):.3g} nats. The 0.01 equivalence margin of A2 / the red_att test is to be read "
                 f"against these sizes.")
    tables = {"pairs": _pair_table(comp, q_all, k_all, down, name, H),
              "redundancy": _red_table(rows, pairs, name, ctx.seed),
              "heads": [{"head": name(u), "layer": u // H, "dev_member_mass": float(dev_mass[u]) if np.isfinite(dev_mass[u]) else float("nan"),
                         "test_member_mass": float(np.mean([r.mass[u] for r in recs])),
                         "downstream": bool(u in down), "redundancy": bool(u in up)} for u in range(N)]}
    np.save(ctx.out_dir / "composition.npy", comp.astype(np.float32))
    _figures(ctx, comp, base, q_all, k_all, cq, ck, down, rows, pairs, name, L, H)
    return Output(rows=rows, tables=tables, notes=notes)


def _composition_notes(comp, base, down, name):
    notes = []
    for i, kind in enumerate(KINDS):
        v = comp[i][np.isfinite(comp[i])]
        b99, b01 = np.quantile(base[i], [0.99, 0.01])
        notes.append(f"{kind}-composition over the {v.size} pairs with layer(u) < layer(d): mean {v.mean():.4f}, "
                     f"median {np.median(v):.4f}, 99th percentile {np.quantile(v, 0.99):.4f}, max {v.max():.4f}; "
                     f"random factors of the same shapes ({base.shape[1]} pairs): mean {base[i].mean():.4f}, "
                     f"99th percentile {b99:.4f}, max {base[i].max():.4f}; {100 * np.mean(v > b99):.1f}% of the "
                     f"model's pairs lie above the random 99th percentile and {100 * np.mean(v > base[i].max()):.1f}% "
                     f"above the random maximum, {100 * np.mean(v < b01):.1f}% below the random 1st percentile "
                     f"(descriptive: the pairs share factors and are not independent).")
        flat = np.where(np.isfinite(comp[i]), comp[i], -1)
        top = np.argsort(-flat.ravel())[:5]
        n = comp.shape[1]
        notes.append(f"Top {kind}-composition pairs: " + ", ".join(
            f"{name(t // n)}->{name(t % n)} {flat.ravel()[t]:.3f}" for t in top) + ".")
    return notes


def _pair_table(comp, q_all, k_all, down, name, H):
    out = []
    for j, d in enumerate(down):
        for u in range(comp.shape[1]):
            if u // H >= d // H:
                continue
            out.append({"up": name(u), "down": name(d), "comp_q": comp[0, u, d], "comp_k": comp[1, u, d],
                        "comp_v": comp[2, u, d], "q_path_abs_mean": float(q_all[:, u, j].mean()),
                        "k_path_abs_mean": float(k_all[:, u, j].mean())})
    return out


def _red_table(rows, pairs, name, seed):
    out = []
    for j, (a, b) in enumerate(pairs):
        rec = {"pair": f"{name(a)}+{name(b)}"}
        for key in ("red_kl", "red_att"):
            rec.update(ci_cells(key, [r[f"pair{j:02d}_{key}"] for r in rows], n_boot=999, seed=seed))
        rec["frac_prompts_redundant_kl"] = float(np.mean([r[f"pair{j:02d}_red_kl"] <= 0 for r in rows]))
        out.append(rec)
    return out


def _figures(ctx, comp, base, q_all, k_all, cq, ck, down, rows, pairs, name, L, H):
    from experiments.plotting import ci_bars, pyplot

    plt = pyplot()
    n = comp.shape[1]
    fig, ax = plt.subplots(2, 3, figsize=(16, 10))
    ticks = np.arange(0, n, 5 * H)
    for i, kind in enumerate(KINDS):
        a = ax[0, i]
        im = a.imshow(comp[i], cmap="viridis", vmin=np.nanquantile(comp[i], 0.01), vmax=np.nanquantile(comp[i], 0.999),
                      interpolation="nearest")
        a.set_xticks(ticks, [str(t // H) for t in ticks])
        a.set_yticks(ticks, [str(t // H) for t in ticks])
        a.set_xlabel("downstream head (layer ticks)")
        a.set_ylabel("upstream head (layer ticks)")
        a.set_title(f"{kind}-composition per head pair\n(random baseline mean {base[i].mean():.3f})")
        fig.colorbar(im, ax=a, shrink=0.7)
        lp = np.full((L, L), np.nan)
        for lu in range(L):
            for ld in range(lu + 1, L):
                lp[lu, ld] = np.nanmax(comp[i][lu * H:(lu + 1) * H, ld * H:(ld + 1) * H])
        b = ax[1, i]
        im = b.imshow(lp / base[i].mean(), cmap="magma", interpolation="nearest")
        b.set_xlabel("downstream layer")
        b.set_ylabel("upstream layer")
        b.set_title(f"{kind}: max over the 9x9 head pairs of a layer pair,\nin units of the random mean")
        fig.colorbar(im, ax=b, shrink=0.7)
    fig.suptitle("RQ 6.2: weight composition (Elhage et al. 2021), SmolLM2-135M, GQA heads mapped to their KV head")
    fig.tight_layout()
    ctx.figure(fig, "composition")

    fig, ax = plt.subplots(1, 3, figsize=(17, 4.8))
    for a, lab, c, e in ((ax[0], "Q", cq, q_all), (ax[1], "K", ck, k_all)):
        y = e.mean(0)
        ok = np.isfinite(c) & np.isfinite(y)
        a.scatter(c[ok], np.maximum(y[ok], 1e-7), s=5, alpha=0.4)
        a.set_yscale("log")
        a.set_xlabel(f"{lab}-composition score (weights)")
        a.set_ylabel(f"|change of member mass|, direct {lab} path\n(mean over {e.shape[0]} test prompts)")
        a.set_title(f"{lab} path: upstream head -> 8 downstream heads")
        a.axvline(np.quantile(cq if lab == 'Q' else ck, 0.5), color="grey", ls=":", lw=0.8)
    grid = np.nanmean(q_all + k_all, 0)  # [N,|D|]
    per_layer = np.stack([np.nansum(grid[l * H:(l + 1) * H], 0) for l in range(L)])  # [L,|D|]
    im = ax[2].imshow(per_layer.T, aspect="auto", cmap="viridis", interpolation="nearest")
    ax[2].set_yticks(range(len(down)), [name(d) for d in down])
    ax[2].set_xlabel("upstream layer")
    ax[2].set_title("|Q path| + |K path| effect summed over an upstream layer's heads")
    fig.colorbar(im, ax=ax[2], shrink=0.8, label="member-mass change")
    fig.tight_layout()
    ctx.figure(fig, "patching")

    fig, ax = plt.subplots(1, 2, figsize=(14, 5))
    xs = np.arange(len(pairs))
    for a, key, lab in ((ax[0], "red_kl", "log KL_joint / max KL_single"),
                        (ax[1], "red_att", "|d_joint| - max |d_single| (member mass)")):
        st = [S.bootstrap_ci([r[f"pair{j:02d}_{key}"] for r in rows], n_boot=999, seed=ctx.seed) for j in xs]
        mean, err = ci_bars(st)
        a.errorbar(xs, mean, yerr=err, fmt="o", capsize=2)
        a.axhline(0, color="grey", lw=0.8)
        a.set_xticks(xs, [f"{name(p)}+{name(q)}" for p, q in pairs], rotation=90, fontsize=7)
        a.set_ylabel(lab)
        a.set_title(f"Joint vs larger single ablation ({key}); < 0: redundant")
    fig.tight_layout()
    ctx.figure(fig, "redundancy")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    ci = lambda t: f"{t.estimate:+.3f} [{t.lo:+.3f}, {t.hi:+.3f}]"

    said = functools.partial(wording.said, same="no difference (equivalence)")

    q, k, rk, ra = by["rho_q"], by["rho_k"], by["red_kl"], by["red_att"]
    sq, sk, ak, ia = by["spec_q"], by["spec_k"], by["add_kl"], by["int_att"]
    return (f"Across head pairs into 8 dev-selected heads that attend to a parallel set, weight "
            f"Q-composition {said(q, 'predicts', 'anti-predicts', 'does not detectably predict')} the effect "
            f"of cutting the upstream head's direct path into the downstream query (per-prompt Spearman "
            f"rho {ci(q)}, {q.verdict}) and K-composition {said(k, 'predicts', 'anti-predicts', 'does not detectably predict')} "
            f"the direct path into the members' keys (rho {ci(k)}, {k.verdict}); against V-composition as a "
            f"control the matching score is {said(sq, 'better', 'worse', 'not detectably better')} for Q "
            f"({ci(sq)}) and {said(sk, 'better', 'worse', 'not detectably better')} for K ({ci(sk)}); within "
            f"one downstream head (mean of per-head rho) Q {by['rho_q_within'].verdict} "
            f"({ci(by['rho_q_within'])}), K {by['rho_k_within'].verdict} ({ci(by['rho_k_within'])}). "
            f"Ablating two of 8 dev-selected upstream heads together changes the next-token prediction "
            f"{said(rk, 'more', 'less', 'not detectably more')} than the larger single ablation (mean log "
            f"ratio {ci(rk)}, {rk.verdict}) and the downstream member attention "
            f"{said(ra, 'more', 'less', 'not detectably more')} ({ci(ra)}, {ra.verdict}); additivity: KL "
            f"{ak.verdict} (log KL_joint/(KL_1+KL_2) {ci(ak)}), member mass interaction {ia.verdict} ({ci(ia)}).")
