"""RQ 10.3: information bottlenecks. How much of a parallel set member's IDENTITY reaches the residual
stream of later queries, per layer; how compressed are the members' own residual streams; which
heads carry member identity forward?

Instrument (one prompt, P tokens): the prompt's top-5 next tokens c0..c4. Two forced sets of W = 4
members, written as ONE isolated set at the shared position P (the engine's step mask):
world A = [c0, c1, c2, c3] and world B = [c0, c1, c2, c4]. They differ in ONE member, swapped
with the next candidate in probability order (x = c3 in A, y = c4 in B, same slot P + 3).
Two later queries read the set: q1 at P + 1 carries t1 = the greedy next token after c0 alone
(member 0 is isolated, so t1 is the same in both worlds); q2 at P + 2 carries t2 = the greedy next
token of q1 in world A; both see the prompt, every member and the earlier query. Everything except
the one swapped member is identical between the worlds (tokens, slots, positions, queries, masks).

Readings:
1. Probe (decodability): rows = (prompt, world, orientation (a, b) in {(x, y), (y, x)}), label =
   "a is the member present". Features of a query's residual r after layer l: ``r * (u_a - u_b)``
   (u = the unembedding rows), a diagonal bilinear probe, so one linear probe serves every token
   pair. Ridge classifier in prompt-grouped 5-fold CV (penalty chosen on dev). Scored within
   prompt: for each orientation, does the world holding a get the higher out-of-fold score (the
   within-prompt AUROC, per prompt in {0, 0.5, 1} averaged over the two orientations); the pooled
   AUROC with a prompt-cluster bootstrap CI is tabled. Chance is exactly 0.5 by construction:
   with no world difference in r the two labels have identical feature distributions.
2. Logit lens: the same contrast read through the final norm and unembedding (no fitting): per
   prompt the difference in differences ``[l_A(x) - l_A(y)] - [l_B(x) - l_B(y)]`` of lens logits
   (> 0: a present member is favoured, < 0: suppressed) and the change of x's lens log-rank.
3. Effective rank: the participation ratio ``(sum lam)^2 / sum lam^2`` of the eigenvalues of the
   centred Gram matrix of the members' residual streams (world A; each row divided by its RMS, as
   the next norm sees it) per layer, vs the same for the W prompt tokens just before the set.
   Range [1, W - 1].
4. Layer bands (causal): in extra batched worlds the member -> query attention edges (both queries,
   every head) are removed in one band of 3 layers. The swap's effect on the queries' predictions,
   J = symmetric KL between worlds A and B (q1 + q2), is compared with the uncut J (log ratio), and
   the final-layer probe of q1 (fitted out of fold on uncut rows) is scored on the cut residuals
   (forced-choice accuracy drop).
5. Heads (direct effect, no ablation): what head (l, h) writes into q1's residual from the member
   slots (attention x values x its output projection), world A minus world B, projected on the final
   norm and the unembedding difference u_x - u_y: the head's direct contribution to q1's logit DiD
   (> 0 copies the present member forward, < 0 suppresses it). A per-head ablation (270 heads x 2
   worlds per prompt) did not fit the compute budget (measured ~30 s per prompt under load).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.research.measures import sym_kl
from tempo_jax.research import Design, Hypothesis, Output, TestResult
from tempo_jax import stats as S
from tempo_jax.config import ModelConfig
from tempo_jax.engine.masks import step_mask
from tempo_jax.model import KVCache, TapsSpec, causal_mask, forward, init_cache, layer_weights, unembed
from tempo_jax.slots import PROMPT, UNWRITTEN

W = 4  # members per forced set; the last one is swapped
BAND = 3  # layers per band of the band ablation
BUCKET = 32
CHUNK = 48  # batched worlds per forward (memory)
EPS = 1e-6  # nats, added to J before logs
N_BOOT = 1000
AUC_MARGIN = 0.05
LENS_MARGIN = 0.1
PR_MARGIN = 0.1
HEAD_MARGIN = 0.05
LOG15 = float(np.log(1.5))


def pad(ids) -> tuple[np.ndarray, int]:
    """Prompt ids -> (ids padded to a multiple of BUCKET, P)."""
    p = len(ids)
    pb = -(-p // BUCKET) * BUCKET
    return np.pad(np.asarray(ids, np.int32), (0, pb - p)), p


def key_positions(mcfg: ModelConfig, batch: int, capacity: int, plen):
    """``[B,K]`` logical position of every slot of this construction (prompt slot k -> k, the members
    -> P, q1 -> P + 1, q2 -> P + 2) for sliding-window models, else None (forward ignores it)."""
    if not mcfg.has_window:
        return None
    k = jnp.arange(capacity)
    kp = jnp.where(k < plen, k, jnp.where(k < plen + W, plen, k - W + 1)).astype(jnp.float32)
    return jnp.broadcast_to(kp, (batch, capacity))


@functools.partial(jax.jit, static_argnames=("mcfg", "capacity"))
def prompt_pass(params, mcfg: ModelConfig, prompt, plen, capacity: int):
    """Causal forward of ``prompt[Pb]`` -> (next-token probs [V], cache (B = 1), resid [L,Pb,E])."""
    pb = prompt.shape[0]
    ar = jnp.arange(pb)
    cache = init_cache(mcfg, 1, capacity, params["embed"].dtype)
    logits, cache, taps = forward(params, mcfg, prompt[None], ar[None].astype(jnp.float32), ar[None],
                                  causal_mask(1, pb, capacity), cache, TapsSpec(resid=True),
                                  key_pos=key_positions(mcfg, 1, capacity, plen))
    return jax.nn.softmax(jnp.take(logits[0], plen - 1, axis=0)), cache, taps["resid"][:, 0]


@functools.partial(jax.jit, static_argnames=("mcfg",))
def write_set(params, mcfg: ModelConfig, cache: KVCache, plen, members):
    """``members[n]`` as one isolated set at position P, slots P..P+n-1 ->
    (next-token logits [n,V], cache, resid [L,n,E])."""
    n = members.shape[0]
    k = jnp.arange(cache.capacity)
    alive = k < plen
    slot_step = jnp.where(alive, PROMPT, UNWRITTEN)
    mask = step_mask(alive, slot_step, 0, plen, n, n, jnp.zeros((1, 1), jnp.int32))[0, 0]  # [n,K]
    pos = jnp.full((1, n), plen, jnp.float32)
    slots = (plen + jnp.arange(n))[None]
    logits, cache, taps = forward(params, mcfg, members[None], pos, slots, mask[None], cache,
                                  TapsSpec(resid=True), key_pos=key_positions(mcfg, 1, cache.capacity, plen))
    return logits[0], cache, taps["resid"][:, 0]


@functools.partial(jax.jit, static_argnames=("mcfg",))
def read_worlds(params, mcfg: ModelConfig, cache: KVCache, tokens, pos, slots, mask):
    """Later queries ``tokens[T]`` at ``pos[T]`` / ``slots[T]`` in B worlds (``cache`` [L,B,K,G,D],
    ``mask`` [B,L,H,T,K]) -> (log-probs [B,T,V], resid [L,B,T,E], attn of world 0 [L,H,T,K])."""
    b, t = mask.shape[0], tokens.shape[0]
    logits, _, taps = forward(params, mcfg, jnp.broadcast_to(tokens, (b, t)),
                              jnp.broadcast_to(pos, (b, t)), jnp.broadcast_to(slots, (b, t)), mask,
                              cache, TapsSpec(attn=True, resid=True),
                              key_pos=key_positions(mcfg, b, cache.capacity, slots[0] - W))  # q1 sits at P + W
    return jax.nn.log_softmax(logits, -1), taps["resid"], taps["attn"][:, 0]


def member_reads(attn, v, wo, members) -> np.ndarray:
    """What each head writes into the residual from the member slots: ``attn[L,H,T,K]`` (one world),
    values ``v[L,K,G,D]``, ``wo[L,H,D,E]``, ``members[K]`` bool -> ``[L,H,T,E]``
    (sum over member slots k of attn * v_k, through the head's slice of the output projection)."""
    L, H = attn.shape[:2]
    g = v.shape[2]
    grp = np.arange(H) // (H // g)  # query head -> its key/value group
    a = np.asarray(attn, np.float64)[..., members]  # [L,H,T,M]
    vm = np.asarray(v, np.float64)[:, members][:, :, grp]  # [L,M,H,D]
    o = np.einsum("lhtm,lmhd->lhtd", a, vm)
    return np.einsum("lhtd,lhde->lhte", o, np.asarray(wo, np.float64))


def unembedding_diff(params, mcfg: ModelConfig, a: int, b: int) -> np.ndarray:
    """``u_a - u_b`` [E] of the unembedding (the tied embedding rows or the LM head's columns)."""
    if mcfg.tie_embeddings:
        e = np.asarray(params["embed"][jnp.asarray([a, b])], np.float64)
    else:
        e = np.asarray(params["lm_head"][:, jnp.asarray([a, b])], np.float64).T
    return e[0] - e[1]


def participation_ratio(x) -> float:
    """Participation ratio of rows ``x[n,E]`` (each divided by its RMS, then centred over rows):
    ``(sum lam)^2 / sum lam^2`` of the Gram matrix eigenvalues; in [1, n - 1]; NaN if all rows equal."""
    x = np.asarray(x, np.float64)
    x = x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + 1e-12)
    x = x - x.mean(0, keepdims=True)
    lam = np.clip(np.linalg.eigvalsh(x @ x.T), 0, None)
    return float(lam.sum() ** 2 / (lam ** 2).sum()) if (lam ** 2).sum() > 1e-18 else float("nan")


def cut_masks(L: int, H: int, K: int, P: int, bands: int) -> np.ndarray:
    """Masks ``[1 + bands,L,H,2,K]`` of the two later queries (slots P+W, P+W+1): condition 0 cuts
    nothing, condition 1 + b removes every member -> query edge in the layers of band b (all heads)."""
    k = np.arange(K)
    members = (k >= P) & (k < P + W)
    base = np.stack([(k < P + W + 1), (k < P + W + 2)])  # q1 sees up to itself, q2 also q1
    m = np.broadcast_to(base, (1 + bands, L, H, 2, K)).copy()
    for b in range(bands):
        m[1 + b, b * BAND:(b + 1) * BAND, :, :, members] = False
    return m


@dataclasses.dataclass
class Bottleneck:
    """One prompt. L layers, H heads, E width; worlds A (x present) and B (y present)."""

    x: int
    y: int
    p_x: float
    p_y: float
    t1: int
    t2: int
    resid: np.ndarray  # [2 worlds, L, 2 queries, E] uncut
    lens_did: np.ndarray  # [L, 2 queries] lens logit DiD
    lens_rank: np.ndarray  # [L, 2 queries] log rank of x in B minus in A (> 0: x ranks higher when present)
    pr_members: np.ndarray  # [L]
    pr_context: np.ndarray  # [L] (NaN when P <= W)
    j_none: float  # symmetric KL A vs B, q1 + q2
    j_band: np.ndarray  # [bands]
    band_resid: np.ndarray  # [2 worlds, bands, 2 queries, E] final-layer residual with the band cut
    head_dla: np.ndarray  # [L,H,2 queries] direct logit DiD of each head's member reads
    head_read: np.ndarray  # [L,H,2 queries] norm of the A - B difference of each head's member reads
    u_diff: np.ndarray  # [E] u_x - u_y


def swap_sets(dist: np.ndarray):
    """The two worlds' member sets from the prompt's next-token distribution ``dist[V]``: A = the
    top W tokens, B = the same with the W-th (x) swapped for the (W+1)-th (y) -> (x, y, [A, B])."""
    top = np.argsort(-dist, kind="stable")[:W + 1].astype(np.int32)
    return int(top[W - 1]), int(top[W]), [top[:W], np.concatenate([top[:W - 1], top[W:W + 1]])]


def measure(params, mcfg: ModelConfig, ids) -> Bottleneck:
    """All readings for one prompt (see the module docstring)."""
    L, H = mcfg.num_layers, mcfg.num_heads
    bands = -(-L // BAND)
    prompt, P = pad(ids)
    K = len(prompt) + W + 2
    dist, cache0, presid = prompt_pass(params, mcfg, jnp.asarray(prompt), jnp.int32(P), K)
    x, y, sets = swap_sets(np.asarray(dist))
    caches, mres = [], []
    for s in sets:
        logits, c, r = write_set(params, mcfg, cache0, jnp.int32(P), jnp.asarray(s))
        caches.append(c)
        mres.append(np.asarray(r))
        if len(caches) == 1:
            t1 = int(np.argmax(np.asarray(logits[0])))
    masks = cut_masks(L, H, K, P, bands)
    pos = jnp.asarray([P + 1.0, P + 2.0])
    slots = jnp.asarray([P + W, P + W + 1], jnp.int32)
    # t2: q1's greedy token in world A (uncut); q2's slot is masked out of q1, so any token will do
    lp0, _, _ = read_worlds(params, mcfg, caches[0], jnp.asarray([t1, t1], jnp.int32), pos, slots,
                            jnp.asarray(masks[:1]))
    t2 = int(np.argmax(np.asarray(lp0[0, 0])))
    toks = jnp.asarray([t1, t2], jnp.int32)
    lps, res, attn = [], [], []
    for w in range(2):
        big = jax.tree_util.tree_map(
            lambda a: jnp.broadcast_to(a, (a.shape[0], len(masks)) + a.shape[2:]), caches[w])
        lp, r, at = read_worlds(params, mcfg, big, toks, pos, slots, jnp.asarray(masks))
        lps.append(np.asarray(lp, np.float64))  # [C,2,V]
        res.append(np.asarray(r))  # [L,C,2,E]
        attn.append(np.asarray(at))  # [L,H,2,K]
    j_all = sym_kl(lps[0], lps[1]).sum(-1)  # [C]
    # logit lens of the uncut queries (log-probs: the per-row constant cancels in the DiD)
    la, lb = (np.asarray(jax.nn.log_softmax(unembed(params, mcfg, jnp.asarray(r[:, 0])), -1)) for r in res)
    did = (la[..., x] - la[..., y]) - (lb[..., x] - lb[..., y])  # [L,2]
    rank = lambda lv, tok: np.log1p((lv > lv[..., tok:tok + 1]).sum(-1))
    lens_rank = rank(lb, x) - rank(la, x)
    # heads: member reads of world A minus world B, direct effect on the final x - y logit
    k = np.arange(K)
    members = (k >= P) & (k < P + W)
    wo = np.asarray(layer_weights(params, mcfg).wo)
    reads = [member_reads(attn[w], np.asarray(caches[w].v[:, 0]), wo, members) for w in range(2)]
    dread = reads[0] - reads[1]  # [L,H,2,E]
    u = unembedding_diff(params, mcfg, x, y)
    fin = 0.5 * (res[0][-1, 0] + res[1][-1, 0])  # [2,E] final residual of the queries
    rms = np.sqrt(np.mean(fin.astype(np.float64) ** 2, -1) + mcfg.rms_norm_eps)  # [2]
    direction = np.asarray(params["final_norm"], np.float64) * u  # [E]
    head_dla = (dread @ direction) / rms  # [L,H,2]
    pr_m = np.asarray([participation_ratio(mres[0][l]) for l in range(L)])
    presid = np.asarray(presid)
    pr_c = (np.asarray([participation_ratio(presid[l, P - W:P]) for l in range(L)])
            if P > W else np.full(L, np.nan))
    return Bottleneck(
        x=x, y=y, p_x=float(dist[x]), p_y=float(dist[y]), t1=t1, t2=t2,
        resid=np.stack([r[:, 0] for r in res]).astype(np.float32), lens_did=did, lens_rank=lens_rank,
        pr_members=pr_m, pr_context=pr_c, j_none=float(j_all[0]), j_band=j_all[1:],
        band_resid=np.stack([r[-1, 1:] for r in res]).astype(np.float32),
        head_dla=head_dla, head_read=np.linalg.norm(dread, axis=-1), u_diff=u.astype(np.float32))


# --- probes ---------------------------------------------------------------------------------------
def probe_rows(recs, feats_of) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (prompt, world, orientation) of one query and layer: ``feats_of(rec, world)`` -> r [E];
    features ``r * (u_a - u_b)``, label "a present". -> (features [4N,E], labels [4N], groups [4N])."""
    X, y, g = [], [], []
    for i, rec in enumerate(recs):
        for w in range(2):
            r = feats_of(rec, w)
            for sign in (1.0, -1.0):  # orientation (a, b) = (x, y) or (y, x)
                X.append(r * sign * rec.u_diff)
                y.append((w == 0) == (sign > 0))  # world A holds x
                g.append(i)
    return np.asarray(X, np.float64), np.asarray(y, bool), np.asarray(g)


def fit_ridge(X, y, lam: float):
    """Ridge classifier (targets +-1, intercept unpenalised) on standardised features, solved in the
    dual (rows << features) -> scorer ``f(X[n,E]) -> scores [n]``."""
    X = np.asarray(X, np.float64)
    mu, sd = X.mean(0), X.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    Z = (X - mu) / sd
    t = np.where(np.asarray(y, bool), 1.0, -1.0)
    b = t.mean()
    alpha = np.linalg.solve(Z @ Z.T + lam * len(t) * np.eye(len(t)), t - b)
    w = Z.T @ alpha
    return lambda Xn: ((np.asarray(Xn, np.float64) - mu) / sd) @ w + b


def oof_probe(X, y, g, seed: int, lam: float, X_extra=None):
    """Out-of-fold ridge-probe scores (prompt-grouped 5-fold CV). ``X_extra`` [M,R,E] rows laid out
    like X (R = rows of X, grouped the same) are scored by the fold's probe too -> (oof [R], extra [M,R])."""
    out = np.zeros(len(y))
    extra = None if X_extra is None else np.zeros(X_extra.shape[:2])
    for tr, te in S.grouped_cv_splits(g, 5, seed):
        f = fit_ridge(X[tr], y[tr], lam)
        out[te] = f(X[te])
        if X_extra is not None:
            for m in range(len(X_extra)):
                extra[m, te] = f(X_extra[m, te])
    return out, extra


def two_afc(scores) -> np.ndarray:
    """Within-prompt forced choice from probe scores laid out as :func:`probe_rows` makes them
    (per prompt: (A, x-y), (A, y-x), (B, x-y), (B, y-x)): for each orientation, does the world
    holding a score higher than the world without it (ties 1/2)? -> per prompt mean [N], in [0, 1];
    0.5 is chance. The within-prompt AUROC."""
    s = np.asarray(scores, np.float64).reshape(-1, 4)
    win = lambda hi, lo: (hi > lo) + 0.5 * (hi == lo)
    return 0.5 * (win(s[:, 0], s[:, 2]) + win(s[:, 3], s[:, 1]))


def column_tests(name: str, family: str, expect: str, columns, values, margin: float,
                 seed: int) -> list[TestResult]:
    """Cheap per-column paired tests for large families: ``values[N,C]`` per prompt -> one
    TestResult per column with the mean, Student t 95% CI, d_z, sign-flip p (4,999 random sign
    vectors) and TOST p (two one-sided t tests) against ``margin``."""
    out = []
    for c, col in enumerate(columns):
        d = np.asarray(values[:, c], np.float64)
        d = d[np.isfinite(d)]
        lo, hi = S.t_ci(d)
        out.append(TestResult(name, col, family, expect, len(d), float(d.mean()) if len(d) else float("nan"),
                              lo, hi, S.sign_flip_test(d, n_perm=4999, seed=seed)["p"],
                              S.tost(d, margin)["p"], d_z=S.d_z(d), margin=margin,
                              note="Student t 95% CI; sign-flip p (4,999 sign vectors); TOST p (t)"))
    return out


CAVEATS = (
    "A forced isolated set of the prompt's top-4 next tokens at one step; the swapped member is "
    "the rank-4 candidate vs the rank-5 one (lower probability than typical TEMPO members). Real "
    "sets are smaller and later steps see several sets.",
    "Two later queries only (P + 1 carrying the greedy token after member 0 alone, P + 2 carrying "
    "q1's greedy token in world A): 'later' means the next two steps, not long range.",
    "The probe is a diagonal bilinear probe (features r * (u_a - u_b)): it can only read identity "
    "along the token's own unembedding coordinates, reweighted per dimension; a full bilinear "
    "probe would need far more rows than n prompts x 4. Its AUROC is a lower bound on "
    "decodability.",
    "Band cuts remove attention from the later queries to every member (not only the swapped "
    "one) in every head of 3 layers; the rest of each head's attention renormalises. J (symmetric KL of "
    "the two worlds' predictions) measures the swap's total effect on the predictions, so a cut "
    "that lowers J removes identity information the prediction uses; it may also rise.",
    "Participation ratio of 4 rows (range 1-3), rows RMS-normalised and centred; the control is "
    "the 4 prompt tokens right before the set (different positions and tokens), so a lower ratio "
    "for members mixes 'same position and context' with compression.",
    "Per-head effects are DIRECT effects (the head's member reads projected on the final norm and "
    "unembedding with the final residual's RMS held fixed), not ablations: a head whose output "
    "is used by later layers shows no direct effect. Causal claims rest on the band cuts.",
    "One model (SmolLM2-135M-Instruct, 30 layers x 9 heads). The probe's ridge penalty was chosen "
    "on dev prompts (DESIGN.config), never on test.",
    "Per-layer and per-head families use Student t CIs with sign-flip p values (cheap for 360 "
    "columns); the primary and band tests use the harness's BCa CIs or cluster bootstraps.",
)

# ridge penalty per row on standardised features, chosen on 30 dev prompts (10 per genre) from
# {0.1, 1, 10, 100, 1000}: mean within-prompt accuracy over layers (q1, q2) 0.62/0.63 at 0.1,
# 0.63/0.66 at 1, 0.61/0.65 at 10, 0.62/0.65 at 100, 0.61/0.66 at 1000
LAM = 1.0

DESIGN = Design(
    id="rq10.3",
    questions=("10.3",),
    title="Information bottlenecks: member identity in later queries per layer, members' effective "
          "rank, heads that carry it",
    primary_metric="within-prompt forced-choice accuracy (the within-prompt AUROC) of an out-of-fold "
                   "linear probe (diagonal bilinear, ridge; prompt-grouped 5-fold CV) telling which of "
                   "two worlds holds candidate a rather than b, from a later query's residual stream; "
                   "per prompt, minus chance 0.5",
    contrast="worlds A / B differing in one swapped member (rank 4 vs rank 5 candidate), everything "
             "else identical; member -> query edges of one band of 3 layers removed vs not; members' "
             "participation ratio vs the W prompt tokens before the set",
    hypotheses=(
        Hypothesis("H1", "member identity is decodable from the next query's residual after the last "
                         "layer (forced-choice accuracy above 0.5)", "afc_q1_L29", ">0"),
        Hypothesis("H2", "logit lens of q1 after the last layer (its prediction): the present member's "
                         "logit differs from the swapped-out candidate's (DiD, logits)",
                   "lens_q1_L29", "=0", margin=LENS_MARGIN),
        Hypothesis("H3", "members' residual streams are more compressed (lower participation ratio) "
                         "than the W prompt tokens before them, mean over layers", "pr_diff_mean", "<0",
                   margin=PR_MARGIN),
        Hypothesis("H4", "removing every member -> query edge of all heads in one band lowers the "
                         "swap's effect on the queries' predictions (log J ratio), per band",
                   "band*_logj", "<0", family="bands", margin=LOG15),
        Hypothesis("BP", "removing one band's member edges lowers the last-layer probe's forced-choice "
                         "accuracy on q1 (same out-of-fold probes, cut residuals)", "band*_afc_drop", "<0",
                   family="bands_probe", bound=1.0),
    ),
    # Precomputed in run, per-column paired tests with Student t CIs (cheap for large families):
    # probe_q1 / probe_q2 = forced-choice accuracy - 0.5 per layer (> 0, margin 0.05, BH); table
    # "probe" adds the pooled AUROC per layer with a prompt-cluster bootstrap CI; lens_q1 / lens_q2 = lens DiD per
    # layer (=0 within 0.1 logits, BH), rank = members' minus context participation ratio per layer
    # (< 0, BH), heads = per-head direct logit DiD of q1 (> 0: copies the present member, BH over
    # 270 heads, margin 0.05 logits).
    margin=AUC_MARGIN,
    margin_note="0.05 AUROC; 0.1 logits for lens DiDs; 0.05 logits for per-head direct effects; 0.1 "
                "participation ratio; log(1.5) for log J ratios",
    metrics=("afc_q1_L*", "afc_q2_L*", "band*_afc_drop", "lens_q1_L*", "lens_q2_L*", "rank_q1_L*", "pr_diff_mean", "pr_diff_L*", "pr_members_L*",
             "band*_logj", "head_L*", "j_none", "p_x", "p_y"),
    families={"primary": "holm", "probe_q1": "fdr_bh", "probe_q2": "fdr_bh", "lens_q1": "fdr_bh",
              "lens_q2": "fdr_bh", "rank": "fdr_bh", "bands": "holm", "bands_probe": "fdr_bh",
              "heads": "fdr_bh"},
    n_per_genre=15,
    quick_n=2,
    caveats=CAVEATS,
    config={"W": W, "swap": "rank 4 vs rank 5 candidate", "queries": "P+1 (t1), P+2 (t2)",
            "band": BAND, "probe": f"ridge (dual), lambda {LAM} per row (chosen on 30 dev prompts), "
                                   "standardised features r*(u_a-u_b), 5-fold prompt-grouped CV",
            "n_boot": N_BOOT, "eps": EPS},
)


def run(ctx) -> Output:
    m = ctx.model
    L, H = m.cfg.num_layers, m.cfg.num_heads
    rows, recs = [], []
    for p, r in ctx.map(lambda p: measure(m.params, m.cfg, m.tokenizer(p.prompt).input_ids)):
        row = {"prompt_id": p.id, "genre": p.genre, "p_x": r.p_x, "p_y": r.p_y, "j_none": r.j_none}
        for l in range(L):
            row[f"lens_q1_L{l:02d}"] = float(r.lens_did[l, 0])
            row[f"lens_q2_L{l:02d}"] = float(r.lens_did[l, 1])
            row[f"rank_q1_L{l:02d}"] = float(r.lens_rank[l, 0])
            row[f"pr_members_L{l:02d}"] = float(r.pr_members[l])
            row[f"pr_diff_L{l:02d}"] = float(r.pr_members[l] - r.pr_context[l])
        row["pr_diff_mean"] = float(np.mean(r.pr_members - r.pr_context))
        for b, j in enumerate(r.j_band):
            row[f"band{b}_logj"] = float(np.log((j + EPS) / (r.j_none + EPS)))
        for l in range(L):
            for h in range(H):
                row[f"head_L{l:02d}H{h}"] = float(r.head_dla[l, h, 0])
        rows.append(row)
        recs.append(r)
    cols, probe_table = _probe_tests(recs, L, ctx.seed)
    for i, row in enumerate(rows):
        row.update({c: float(v[i]) for c, v in cols.items()})
    tests, tables, notes = [], {"probe": probe_table}, []
    lcols = lambda pre: [f"{pre}_L{l:02d}" for l in range(L)]
    val = lambda cols: np.asarray([[row[c] for c in cols] for row in rows], np.float64)
    for fam, pre, expect, margin in (("probe_q1", "afc_q1", ">0", AUC_MARGIN),
                                     ("probe_q2", "afc_q2", ">0", AUC_MARGIN),
                                     ("lens_q1", "lens_q1", "=0", LENS_MARGIN),
                                     ("lens_q2", "lens_q2", "=0", LENS_MARGIN),
                                     ("rank", "pr_diff", "<0", PR_MARGIN)):
        tests += column_tests(fam.upper(), fam, expect, lcols(pre), val(lcols(pre)), margin, ctx.seed)
    hcols = [f"head_L{l:02d}H{h}" for l in range(L) for h in range(H)]
    heads = val(hcols)
    tests += column_tests("HD", "heads", ">0", hcols, heads, HEAD_MARGIN, ctx.seed)
    reads = np.asarray([r.head_read[..., 0] for r in recs])  # [N,L,H]
    tables["heads"] = [{"layer": l, "head": h, "mean_dla_q1": float(heads[:, l * H + h].mean()),
                        "mean_abs_dla_q1": float(np.abs(heads[:, l * H + h]).mean()),
                        "mean_read_diff_norm_q1": float(reads[:, l, h].mean())}
                       for l in range(L) for h in range(H)]
    pr = np.asarray([[r.pr_members, r.pr_context] for r in recs])  # [N,2,L]
    tables["rank"] = [{"layer": l, "pr_members": float(np.nanmean(pr[:, 0, l])),
                       "pr_context": float(np.nanmean(pr[:, 1, l]))} for l in range(L)]
    notes.append(f"Swapped pair probabilities: median p(x) {np.median([r.p_x for r in recs]):.3g}, "
                 f"median p(y) {np.median([r.p_y for r in recs]):.3g}; median J (symmetric KL of the "
                 f"two worlds' predictions, q1 + q2) {np.median([r.j_none for r in recs]):.3g} nats.")
    top = np.argsort(-np.abs(heads.mean(0)))[:5]
    notes.append("Largest mean per-head direct effects on q1's DiD (logits): " + ", ".join(
        f"L{t // H}H{t % H} {heads[:, t].mean():+.3f}" for t in top) + ".")
    _figures(ctx, recs, rows, tables, L, H)
    return Output(rows=rows, tests=tests, tables=tables, notes=notes)


def _probe_tests(recs, L, seed):
    """Per layer and query: the out-of-fold ridge probe's within-prompt forced-choice accuracy
    (per-prompt columns ``afc_q*_L*``, minus 0.5) and its pooled AUROC with a prompt-cluster bootstrap
    CI (table); for q1's last layer also the band-cut residuals scored by the same out-of-fold probes
    (``band*_afc_drop`` = cut minus uncut accuracy per prompt). -> (per-prompt columns, table)."""
    cols, table = {}, []
    nb = recs[0].band_resid.shape[1]
    for q in (0, 1):
        for l in range(L):
            X, y, g = probe_rows(recs, lambda rec, w: rec.resid[w, l, q])
            extra = None
            if l == L - 1 and q == 0:
                extra = np.stack([probe_rows(recs, lambda rec, w: rec.band_resid[w, b, q])[0]
                                  for b in range(nb)])
            oof, ext = oof_probe(X, y, g, seed, LAM, extra)
            afc = two_afc(oof)
            cols[f"afc_q{q + 1}_L{l:02d}"] = afc - 0.5
            ci = S.auroc_ci(y, oof, g, n_boot=N_BOOT, seed=seed)
            table.append({"query": q + 1, "layer": l, "afc": float(afc.mean()), "auroc": ci["value"],
                          "auroc_lo": ci["lo"], "auroc_hi": ci["hi"],
                          "afc_dot": float(two_afc(X.sum(1)).mean()),
                          "afc_lens": float(np.mean([(r.lens_did[l, q] > 0) + 0.5 * (r.lens_did[l, q] == 0)
                                                     for r in recs]))})
            if ext is not None:
                for b in range(nb):
                    cols[f"band{b}_afc_drop"] = two_afc(ext[b]) - afc
                    table.append({"query": 1, "layer": l, "band_cut": b, "afc": float(two_afc(ext[b]).mean()),
                                  "auroc": S.auroc(y, ext[b])})
    return cols, table


def _figures(ctx, recs, rows, tables, L, H):
    from experiments.plotting import ci_bars, pyplot

    plt = pyplot()
    layers = np.arange(L)
    fig, ax = plt.subplots(2, 3, figsize=(18, 8))
    pt = tables["probe"]
    for q, off, col in ((1, -0.15, "C0"), (2, 0.15, "C1")):
        r = [t for t in pt if t["query"] == q and "band_cut" not in t]
        a = np.asarray([t["auroc"] for t in r])
        err = np.abs(np.asarray([[t["auroc_lo"] for t in r], [t["auroc_hi"] for t in r]]) - a)
        ax[0, 0].errorbar(layers + off, a, yerr=err, marker=".", capsize=2, ls="-", color=col,
                          label=f"q{q} (P + {q}) pooled AUROC, cluster-bootstrap CI")
        st = [S.bootstrap_ci([row[f"afc_q{q}_L{l:02d}"] + 0.5 for row in rows], n_boot=999) for l in layers]
        mean, _ = ci_bars(st)
        ax[0, 0].plot(layers + off, mean, ls=":", marker="x", color=col, alpha=0.7,
                      label=f"q{q} within-prompt accuracy (mean)")
    ax[0, 0].axhline(0.5, color="grey", ls=":")
    ax[0, 0].set_xlabel("layer (residual after it)")
    ax[0, 0].set_ylabel("out-of-fold AUROC / accuracy")
    ax[0, 0].set_title("Probe: which of two candidates is the member")
    ax[0, 0].legend(fontsize=7, loc="lower right")

    for q, off in ((1, -0.15), (2, 0.15)):
        st = [S.bootstrap_ci([row[f"lens_q{q}_L{l:02d}"] for row in rows], n_boot=999) for l in layers]
        mean, err = ci_bars(st)
        ax[0, 1].errorbar(layers + off, mean, yerr=err, marker=".", capsize=2, label=f"q{q}")
    ax[0, 1].axhline(0, color="grey", ls=":")
    ax[0, 1].set_xlabel("layer (residual after it)")
    ax[0, 1].set_ylabel("lens logit DiD (present - absent)")
    ax[0, 1].set_title("Logit lens: present member favoured (> 0) or suppressed (< 0)")
    ax[0, 1].legend(fontsize=8)

    pr_m = np.asarray([r.pr_members for r in recs])
    pr_c = np.asarray([r.pr_context for r in recs])
    for x, lab in ((pr_m, f"{W} members (shared position)"), (pr_c, f"{W} prompt tokens before the set")):
        ok = np.isfinite(x).all(1)
        mean, err = ci_bars([S.bootstrap_ci(x[ok, l], n_boot=999) for l in layers])
        ax[1, 0].errorbar(layers, mean, yerr=err, marker=".", capsize=2, label=lab)
    ax[1, 0].set_xlabel("layer (residual after it)")
    ax[1, 0].set_ylabel(f"participation ratio (1..{W - 1})")
    ax[1, 0].set_title("Effective rank of residual streams")
    ax[1, 0].legend(fontsize=8)

    hm = np.asarray([t["mean_dla_q1"] for t in tables["heads"]]).reshape(L, H)
    lim = max(float(np.abs(hm).max()), 1e-3)
    im = ax[1, 1].imshow(hm.T, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
    ax[1, 1].set_xlabel("layer")
    ax[1, 1].set_ylabel("head")
    ax[1, 1].set_title("Per head: direct logit effect of its member reads on q1's x - y DiD")
    fig.colorbar(im, ax=ax[1, 1], fraction=0.04, label="logits")
    nb = len([c for c in rows[0] if c.endswith("_logj")])
    bl = [f"{b * BAND}-{min((b + 1) * BAND, L) - 1}" for b in range(nb)]
    for a_, pre, lab in ((ax[0, 2], "_logj", "log J ratio (cut / uncut)"),
                         (ax[1, 2], "_afc_drop", "last-layer probe accuracy (q1), cut - uncut")):
        st = [S.bootstrap_ci([row[f"band{b}{pre}"] for row in rows], n_boot=999) for b in range(nb)]
        mean, err = ci_bars(st)
        a_.errorbar(np.arange(nb), mean, yerr=err, marker="o", capsize=3, ls="none")
        a_.axhline(0, color="grey", ls=":")
        a_.set_xticks(np.arange(nb), bl, rotation=45, fontsize=8)
        a_.set_xlabel("layers whose member -> query edges are removed")
        a_.set_ylabel(lab)
    ax[0, 2].set_title("Band cut: swap's effect on the predictions (95% BCa CI)")
    ax[1, 2].set_title("Band cut: member identity at q1's last layer (95% BCa CI)")
    fig.suptitle(f"RQ 10.3: {len(recs)} prompts, set of {W} at P, swap rank 4 <-> 5, queries at P + 1, P + 2")
    fig.tight_layout()
    ctx.figure(fig, "bottleneck")


def answer(tests, design) -> str:
    by = {(t.family, t.column): t for t in tests}
    h1 = by[("primary", "afc_q1_L29")]
    sig = lambda fam, sign: [t for t in tests if t.family == fam and t.verdict.startswith(f"differs ({sign})")]
    n_fam = lambda fam: sum(t.family == fam for t in tests)
    layer = lambda t: str(int(t.column.split("_L")[-1][:2]))
    lay = lambda ts: ", ".join(layer(t) for t in ts) or "none"
    h2 = by.get(("primary", "lens_q1_L29"))
    h3 = by[("primary", "pr_diff_mean")]
    ci = lambda t, f="+.2f": f"{t.estimate:{f}} [{t.lo:{f}}, {t.hi:{f}}]"
    p1, p2 = sig("probe_q1", "+"), sig("probe_q2", "+")
    parts = [
        f"An out-of-fold linear probe on the next query's last-layer residual tells which of two "
        f"probability-adjacent candidates is the member present with within-prompt accuracy "
        f"{h1.estimate + 0.5:.2f} [{h1.lo + 0.5:.2f}, {h1.hi + 0.5:.2f}] ({h1.verdict} from chance 0.5)",
        f"the probe is above chance at {len(p1)} of {n_fam('probe_q1')} layers for the next query "
        f"(BH; layers {lay(p1)}) and {len(p2)} of {n_fam('probe_q2')} for the one after (layers {lay(p2)})",
    ]
    if h2 is not None:
        parts.append(f"the next query's prediction (lens after the last layer) shifts toward the present "
                     f"member by {ci(h2)} logits (difference in differences; {h2.verdict})")
    lq1p, lq1m = sig("lens_q1", "+"), sig("lens_q1", "-")
    parts.append(f"the lens DiD is positive at {len(lq1p)} and negative at {len(lq1m)} of "
                 f"{n_fam('lens_q1')} layers (BH)")
    parts.append(f"the members' participation ratio minus the preceding context tokens' is {ci(h3)} "
                 f"on average over layers ({h3.verdict}; lower at {len(sig('rank', '-'))} of "
                 f"{n_fam('rank')} layers, BH)")
    bands_neg, bp = sig("bands", "-"), sig("bands_probe", "-")
    bname = lambda t: (lambda b: f"{b * BAND}-{b * BAND + BAND - 1}")(int(t.column.split("_")[0][4:]))
    parts.append(f"cutting the member edges of one 3-layer band lowers the swap's effect on the "
                 f"predictions in {len(bands_neg)} of {n_fam('bands')} bands (Holm; layers "
                 + (", ".join(bname(t) for t in bands_neg) or "none")
                 + f") and the last-layer probe's accuracy in {len(bp)} of {n_fam('bands_probe')} bands (BH)")
    big = lambda ts: sorted([t for t in ts if "within" not in t.verdict], key=lambda t: -abs(t.estimate))
    hp, hm = sig("heads", "+"), sig("heads", "-")
    bp_, bm_ = big(hp), big(hm)
    hn = lambda ts: ", ".join(f"{t.column.replace('head_', '')} {t.estimate:+.2f}" for t in ts[:5]) or "none"
    parts.append(f"per head, the direct effect of its member reads on the next query's x - y logit is "
                 f"positive (copies the present member) for {len(hp)} and negative (suppresses it) for "
                 f"{len(hm)} of {n_fam('heads')} heads (BH), but the CIs of only {len(bp_)} and {len(bm_)} "
                 f"of them reach past +-{HEAD_MARGIN} logits (largest copiers {hn(bp_)}; suppressors {hn(bm_)})")
    return "; ".join(parts) + "."
