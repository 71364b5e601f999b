"""Per-layer pruning signals of judged TEMPO sets and forced-branch continuations (RQ 3.2).

One TEMPO generation WITHOUT pruning (summary capture) per prompt gives, for every member of every
judged set (a set with more than one member whose look-ahead window closed inside the run), the
pruning score each layer alone would give it: ``recv[N,L]``, the engine's score with all weight on
layer l (attention received from the window's queries, mean over heads, summed over the window's
queries and divided by their number; :mod:`tempo_jax.engine.pruning`). The score of any layer
weighting w (summing to 1) is ``recv @ w``, so every layer subset is judged on the SAME sets.

Each member is then forced after the clean path (the most probable member of every earlier step)
and continued greedily for ``n_cont`` tokens, in one batched, cached decode per prompt
(:func:`branch_continuations`): the continuation's log-likelihood under the model and its text.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from tempo_jax.engine import GenerationConfig, generate


@dataclasses.dataclass
class Branches:
    """Members (N) of one prompt's judged sets with their per-layer scores and continuations."""

    set_id: np.ndarray  # [N] index of the member's judged set within the prompt
    step: np.ndarray  # [N] the set's step
    rank: np.ndarray  # [N] member index in its set (0 = most probable)
    prob: np.ndarray  # [N] selection probability
    token: np.ndarray  # [N] member token id
    recv: np.ndarray  # [N,L] pruning score with all weight on layer l
    member_logp: np.ndarray  # [N] log P(member | prompt + clean path before its step)
    cont_logp: np.ndarray  # [N] sum of the greedy continuation's token log-probs (n_cont tokens)
    cont_ids: np.ndarray  # [N,n_cont] greedy continuation after the member
    prefix_ids: list  # prompt + clean path (every step's top member), the shared prefix
    prompt_len: int


def layer_scores(params, mcfg, ids, gcfg: GenerationConfig):
    """TEMPO on ``ids`` without pruning -> (trace, rows) where rows holds, per judged member,
    ``set_id, step, rank, prob, slot`` and ``recv[N,L]`` over the window ``gcfg.prune_window``."""
    if gcfg.prune:
        raise ValueError("layer_scores scores sets offline; give a config with prune=False")
    recv, nq = [], []

    def on_step(s, st, cap):
        recv.append(np.asarray(cap.received, np.float64).mean(1))  # [L,K] head mean, summed over queries
        nq.append(int(np.asarray(st.fed_n)[s]))

    tr = generate(params, mcfg, ids, gcfg, capture="summary", on_step=on_step)
    a, w = tr.arrays, gcfg.prune_window
    out = {k: [] for k in ("set_id", "step", "rank", "prob", "slot", "recv")}
    n_sets = 0
    for s in range(tr.n_steps - w):
        n = int(a["set_n"][s])
        if n < 2:
            continue
        window = range(s + 1, s + w + 1)
        total = sum(recv[t] for t in window) / max(sum(nq[t] for t in window), 1)  # [L,K]
        for i in range(n):
            slot = int(a["slots"][s, i])
            out["set_id"].append(n_sets)
            out["step"].append(s)
            out["rank"].append(i)
            out["prob"].append(float(a["probs"][s, i]))
            out["slot"].append(slot)
            out["recv"].append(total[:, slot])
        n_sets += 1
    rows = {k: np.asarray(v) for k, v in out.items()}
    if not len(rows["recv"]):
        rows["recv"] = np.zeros((0, mcfg.num_layers))
    return tr, rows


@functools.lru_cache(maxsize=None)
def _decode_fn(n_cont: int):
    import jax
    import jax.numpy as jnp

    from tempo_jax.model import causal_mask, forward, init_cache

    def f(params, cfg, prefix, starts, members):
        """prefix[P] (padded), starts[B] (member position), members[B] -> (cont[B,c], lp[B,c], mlp[B])."""
        p, b = prefix.shape[0], starts.shape[0]
        cap = p + n_cont
        cache = init_cache(cfg, 1, cap, params["embed"].dtype)
        ar = jnp.arange(p)
        logits, cache, _ = forward(params, cfg, prefix[None], ar[None].astype(jnp.float32), ar[None],
                                   causal_mask(1, p, cap), cache)
        lp0 = jax.nn.log_softmax(logits[0], -1)  # [P,V]
        member_lp = lp0[starts - 1, members]
        cache = jax.tree_util.tree_map(lambda x: jnp.repeat(x, b, axis=1), cache)
        k = jnp.arange(cap)

        def body(carry, j):
            cache, tok = carry
            mask = (k[None, :] < starts[:, None]) | ((k[None, :] >= p) & (k[None, :] <= p + j))
            logits, cache, _ = forward(params, cfg, tok[:, None], (starts + j)[:, None].astype(jnp.float32),
                                       jnp.full((b, 1), p + j, jnp.int32), mask[:, None, :], cache)
            lp = jax.nn.log_softmax(logits[:, 0], -1)
            nxt = jnp.argmax(lp, -1).astype(jnp.int32)
            return (cache, nxt), (nxt, jnp.take_along_axis(lp, nxt[:, None], -1)[:, 0])

        _, (toks, lps) = jax.lax.scan(body, (cache, members), jnp.arange(n_cont))
        return toks.T, lps.T, member_lp

    return jax.jit(f, static_argnums=1)


def branch_continuations(params, mcfg, prefix_ids, starts, members, n_cont: int,
                         bucket: int = 64, batch_bucket: int = 32):
    """Force ``members[B]`` at positions ``starts[B]`` (member b sees ``prefix_ids[:starts[b]]``)
    and continue each greedily for ``n_cont`` tokens, all branches in one cached batched decode.

    Returns ``cont[B,n_cont]`` (greedy ids), ``cont_lp[B,n_cont]`` (their log-probs) and
    ``member_lp[B]`` (log P(member | prefix_ids[:start])). Every start must lie in
    ``1..len(prefix_ids)``; the prefix is padded to a multiple of ``bucket`` and B to a multiple of
    ``batch_bucket`` so few shapes compile (padding is masked out and sliced off)."""
    import jax.numpy as jnp

    starts, members = np.asarray(starts, np.int32), np.asarray(members, np.int32)
    b = len(starts)
    if b == 0:
        return np.zeros((0, n_cont), np.int32), np.zeros((0, n_cont)), np.zeros(0)
    if starts.min() < 1 or starts.max() > len(prefix_ids):
        raise ValueError(f"starts must lie in 1..{len(prefix_ids)}, got {starts.min()}..{starts.max()}")
    p = -(-len(prefix_ids) // bucket) * bucket
    pre = np.zeros(p, np.int32)
    pre[:len(prefix_ids)] = prefix_ids
    bb = -(-b // batch_bucket) * batch_bucket
    st = np.concatenate([starts, np.full(bb - b, starts[0], np.int32)])
    mb = np.concatenate([members, np.full(bb - b, members[0], np.int32)])
    toks, lps, mlp = _decode_fn(n_cont)(params, mcfg, jnp.asarray(pre), jnp.asarray(st), jnp.asarray(mb))
    return (np.asarray(toks)[:b], np.asarray(lps, np.float64)[:b], np.asarray(mlp, np.float64)[:b])


def judged_branches(params, mcfg, ids, gcfg: GenerationConfig, n_cont: int) -> tuple[Branches, object]:
    """:func:`layer_scores` plus every judged member's forced greedy continuation -> (Branches, trace)."""
    tr, rows = layer_scores(params, mcfg, ids, gcfg)
    a = tr.arrays
    prefix = list(ids) + [int(a["tokens"][s, 0]) for s in range(tr.n_steps)]
    toks = np.asarray([int(a["tokens"][s, r]) for s, r in zip(rows["step"], rows["rank"])], np.int32)
    starts = len(ids) + rows["step"].astype(np.int32)
    cont, lp, mlp = branch_continuations(params, mcfg, prefix, starts, toks, n_cont)
    return Branches(set_id=rows["set_id"], step=rows["step"], rank=rows["rank"], prob=rows["prob"],
                    token=toks, recv=rows["recv"], member_logp=mlp, cont_logp=lp.sum(1), cont_ids=cont,
                    prefix_ids=prefix, prompt_len=len(ids)), tr


def branch_ids(b: Branches, i: int) -> list[int]:
    """Token ids after the prompt of member i's branch: clean path before its step, the member,
    its continuation."""
    s = int(b.step[i])
    return (list(b.prefix_ids[b.prompt_len:b.prompt_len + s]) + [int(b.token[i])]
            + [int(t) for t in b.cont_ids[i]])


def relative_keep(score, set_id, rho: float) -> np.ndarray:
    """The engine's relative rule applied offline to one prompt's judged sets: member i is pruned
    when ``score[i] < rho * mean(score over its set)``, except the best-scoring member of each set
    (:func:`tempo_jax.engine.pruning.decide`, window timing, nothing pruned earlier). -> keep[N] bool."""
    score, set_id = np.asarray(score, np.float64), np.asarray(set_id)
    keep = np.ones(len(score), bool)
    for g in np.unique(set_id):
        i = np.flatnonzero(set_id == g)
        s = score[i]
        keep[i] = ~(s < rho * s.mean()) | (s >= s.max())
    return keep


def pair_concordance(score, good, set_id) -> tuple[float, int]:
    """Within-set concordance: over all pairs (i, j) of the same set with ``good[i] > good[j]``
    (a numeric or boolean label), the fraction with ``score[i] > score[j]`` (ties count 1/2).
    -> (concordance, number of pairs); NaN when no pair differs in ``good``."""
    score, good, set_id = np.asarray(score, np.float64), np.asarray(good, np.float64), np.asarray(set_id)
    num, n = 0.0, 0
    for g in np.unique(set_id):
        i = np.flatnonzero(set_id == g)
        d_good = good[i][:, None] - good[i][None, :]
        d_score = score[i][:, None] - score[i][None, :]
        pairs = d_good > 0
        n += int(pairs.sum())
        num += float(((d_score > 0) + 0.5 * (d_score == 0))[pairs].sum())
    return (num / n if n else float("nan")), n
