"""RQ 8.1: modified RoPE positions as a technique. Hierarchical, conditional and LEARNED positions
for the members of a parallel set, against TEMPO's shared position, on the same forced sets.

Instrument (one forward per prompt for all designs, as batched worlds): the prompt's top-W next
tokens (W = 5) are written as ONE isolated candidate set (each member sees the prompt and itself)
at positions ``P + o_i`` (member rank i); a probe query, the greedy next token after the top-1
member, sits at ``P + 1`` (where TEMPO's next step sits) and sees the prompt and every member.
Only the offsets ``o[W]`` differ between worlds: same tokens, slots, mask, probe token, probe
position.

Designs (offsets per member rank i = 0..W-1):
  shared        o_i = 0 (TEMPO);
  hierarchical  o_i = i / W (fractional sub-positions inside the step, in rank order);
  conditional   o_i = (i / W) * min(1, H / c): spread in proportion to the entropy H (nats) of the
                step's next-token distribution, c = the median H of the dev fitting prompts;
  learned       o = tanh(theta), theta[W] fitted with optax adam on dev prompts (starting at
                theta = 0, i.e. at shared) to minimise the primary metric (below); stored in
                ``experiments/research/rq8_1_learned.json`` (``python -m
                experiments.research.rq8_1_positions fit``), which the test run reads.

Primary metric (readout fidelity): KL(p_mix || q) in nats, where q is the probe's next-token
distribution reading the set, and p_mix = sum_i w_i p_i is the mixture, weighted by the members'
renormalised probabilities w_i, of the probe's distribution after member i ALONE at the ordinary
position P (probe at P + 1). It asks how close a set read at one step is to the superposition of
its paths that TEMPO stands for. Per prompt: log(KL_design / KL_shared).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.research.measures import kl_traced as kl
from tempo_jax.research import Design, Hypothesis, Output
from experiments.research.position_probe import pad, prompt_state
from tempo_jax.config import ModelConfig
from tempo_jax.errors import UsageError
from tempo_jax.model import KVCache, TapsSpec, forward, unembed

W = 5
DESIGNS = ("shared", "hier", "cond", "learned")
MARGIN = float(np.log(1.1))
LEARNED_PATH = Path(__file__).with_name("rq8_1_learned.json")
FIT = {"n_dev_per_genre": 6, "steps": 40, "lr": 0.1, "seed": 0}

DESIGN = Design(
    id="rq8.1",
    questions=("8.1",),
    title="Modified RoPE for parallel sets: hierarchical, conditional and learned member positions",
    primary_metric="readout fidelity: KL(p_mix || q) (nats) between the probability-weighted mixture "
                   "of the probe's next-token distributions after each member alone and the probe's "
                   "distribution reading the whole set; per prompt log(KL_design / KL_shared)",
    contrast="each position design vs shared positions (offset 0) on the same forced set of the "
             "top-5 tokens, same probe; learned vs each hand-designed one",
    hypotheses=(
        Hypothesis("H1", "hierarchical sub-positions (i/W) bring the set's readout closer to the "
                         "mixture of its paths than the shared position", "fid_hier", "<0"),
        Hypothesis("H2", "entropy-conditional spread does so", "fid_cond", "<0"),
        Hypothesis("H3", "dev-learned offsets do so on test prompts", "fid_learned", "<0"),
        Hypothesis("H4", "dev-learned offsets beat hierarchical ones on test", "fid_learned_vs_hier",
                   "<0"),
        Hypothesis("H5", "dev-learned offsets beat conditional ones on test", "fid_learned_vs_cond",
                   "<0"),
        Hypothesis("I", "what the set does to the top-1 path (KL from the probe after the top-1 "
                        "member alone) changes by less than +-10%", "top_*", "=0",
                   family="interference"),
        Hypothesis("A", "per-member probe attention (mean over layers, heads, members) vs shared",
                   "att_*", ">0", family="attention"),
        Hypothesis("LA", "per-layer per-member attention, learned / hierarchical vs shared",
                   "L*_att_*", ">0", family="layers"),
    ),
    margin=MARGIN,
    margin_note="log(1.1): a 10% relative change in KL or attention",
    metrics=("fid_*", "top_*", "att_*", "L*_att_*"),
    families={"primary": "holm", "interference": "holm", "attention": "holm", "layers": "fdr_bh"},
    n_per_genre=40,
    caveats=(
        "Forced sets of the top-5 tokens at one step with isolated siblings, read by one probe at "
        "P + 1 (the greedy continuation of the top-1 member): real TEMPO sets are smaller and later "
        "steps read several sets. Low-ranked members of a forced top-5 set can have tiny "
        "probabilities; they weigh little in p_mix but still draw attention.",
        "The reference p_mix puts each member alone at the ordinary position P; the probe token "
        "continues the top-1 member, so for the other members the reference reads an unusual pair.",
        "Offsets are bounded to (-1, 1) (learned: tanh), so members stay between the last prompt "
        "token and the probe in position; nested sets (a step following one member of the previous "
        "step) are not tested.",
        "The learned offsets are fitted on 18 dev prompts (6 per genre) for this one metric: a "
        "gain on test shows the fit generalises across prompts, not that it is a better decoder.",
        "One model (SmolLM2-135M-Instruct, Q4_1 GGUF dequantised to float32).",
    ),
    config={"width": W, "designs": DESIGNS, "probe": "P + 1, greedy token after member 0",
            "siblings": "isolated", "fit": FIT, "learned_file": LEARNED_PATH.name},
)


# --- instrument -----------------------------------------------------------------------------------
def hier_offsets(w: int = W) -> np.ndarray:
    """Hierarchical sub-positions ``[w]``: member rank i at i / w."""
    return np.arange(w, dtype=np.float32) / w


def cond_offsets(entropy: float, c: float, w: int = W) -> np.ndarray:
    """Conditional offsets ``[w]``: ``(i / w) * min(1, entropy / c)`` (entropy, c in nats)."""
    if not c > 0:
        raise ValueError(f"the entropy scale c must be > 0, got {c}")
    return hier_offsets(w) * np.float32(min(1.0, max(0.0, entropy) / c))


def _broadcast(cache: KVCache, b: int) -> KVCache:
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (x.shape[0], b) + x.shape[2:]), cache)


@functools.partial(jax.jit, static_argnames=("mcfg",))
def ref_readout(params, mcfg: ModelConfig, cache: KVCache, plen, members, probe):
    """W single-member worlds (cache with B = 1): member i alone at position/slot ``plen``, the
    probe at ``plen + 1`` seeing the prompt, member i and itself.
    Returns log-probs ``[W,2,V]`` (row 0: after the member; row 1: after the probe)."""
    w = members.shape[0]
    K = cache.capacity
    k = jnp.arange(K)
    mask = jnp.stack([(k < plen) | (k == plen), k <= plen + 1])  # [2,K]
    tokens = jnp.stack([members, jnp.broadcast_to(probe, (w,))], 1)
    pos = jnp.broadcast_to(jnp.stack([plen, plen + 1]).astype(jnp.float32), (w, 2))
    slots = jnp.broadcast_to(jnp.stack([plen, plen + 1]), (w, 2))
    key_pos = jnp.broadcast_to(k.astype(jnp.float32), (w, K)) if mcfg.has_window else None  # slot = position
    logits, _, _ = forward(params, mcfg, tokens, pos, slots, jnp.broadcast_to(mask, (w, 2, K)),
                           _broadcast(cache, w), key_pos=key_pos)
    return jax.nn.log_softmax(logits, -1)


def _set_forward(params, mcfg: ModelConfig, cache: KVCache, plen, members, probe, offsets, attn: bool):
    b, w = members.shape
    K = cache.capacity
    t = w + 1
    rel = jnp.arange(K)[None, None, :] - plen[:, None, None]  # [B,1,K]
    own = rel == jnp.arange(t)[None, :, None]
    mask = (rel < 0) | own  # members: prompt + self (isolated siblings)
    mask = mask.at[:, w].set(mask[:, w] | ((rel[:, 0] >= 0) & (rel[:, 0] < w)))  # probe: + set
    tokens = jnp.concatenate([members, probe[:, None]], 1)
    pf = plen.astype(jnp.float32)[:, None]
    pos = jnp.concatenate([pf + offsets, pf + 1.0], 1)
    slots = plen[:, None] + jnp.arange(t)[None]
    key_pos = None
    if mcfg.has_window:  # slot k: prompt k -> k, member i -> plen + offsets[i], the probe -> plen + 1
        r = rel[:, 0]  # [B,K]
        member_pos = pf + jnp.take_along_axis(offsets, jnp.clip(r, 0, w - 1), 1)
        key_pos = jnp.where(r < 0, jnp.arange(K)[None].astype(jnp.float32),
                            jnp.where(r < w, member_pos, pf + 1.0))
    x, _, taps = forward(params, mcfg, tokens, pos, slots, mask, cache, TapsSpec(attn=attn),
                         return_hidden=True, key_pos=key_pos)
    logp = jax.nn.log_softmax(unembed(params, mcfg, x[:, w]), -1)
    if not attn:
        return logp, None
    a = taps["attn"][:, :, :, w, :]  # probe row [L,B,H,K]
    idx = (plen[:, None] + jnp.arange(w)[None])[None, :, None, :]
    return logp, jnp.take_along_axis(a, jnp.broadcast_to(idx, a.shape[:3] + (w,)), axis=-1)


@functools.partial(jax.jit, static_argnames=("mcfg",))
def set_readout(params, mcfg: ModelConfig, cache: KVCache, plen, members, probe, offsets):
    """B worlds (cache [L,B,K,G,D]): members[B,W] at positions ``plen + offsets[B,W]`` in slots
    ``plen..plen+W-1`` (each sees the prompt and itself), the probe[B] at position ``plen + 1``
    (slot ``plen + W``) seeing the prompt and all members. Returns (probe log-probs ``[B,V]``,
    probe attention on each member ``[L,B,H,W]``)."""
    return _set_forward(params, mcfg, cache, plen, members, probe, offsets, attn=True)


def prepare(params, mcfg: ModelConfig, ids, w: int = W, capacity: int | None = None) -> dict:
    """One prompt's forced set and references: ``cache`` (B = 1), ``plen``, ``members[w]`` (top-w),
    ``weights[w]`` (renormalised probabilities), ``entropy`` (nats, full next-token distribution),
    ``probe`` (greedy token after member 0), ``logp_mix[V]`` and ``logp_top[V]`` (the probe after
    the members alone: their probability-weighted mixture, and member 0's)."""
    prompt, P = pad(ids)
    cap = len(prompt) + w + 1 if capacity is None else capacity
    if cap < len(prompt) + w + 1:
        raise ValueError(f"capacity {cap} < padded prompt {len(prompt)} + {w + 1}")
    dist, cache = prompt_state(params, mcfg, jnp.asarray(prompt), jnp.int32(P), cap)
    dist = np.asarray(dist, np.float64)
    members = np.argsort(-dist, kind="stable")[:w].astype(np.int32)
    weights = dist[members] / dist[members].sum()
    entropy = float(-np.sum(dist * np.log(np.clip(dist, 1e-30, None))))
    first = ref_readout(params, mcfg, cache, jnp.int32(P), jnp.asarray(members), jnp.int32(members[0]))
    probe = int(np.argmax(np.asarray(first[0, 0])))
    ref = np.asarray(ref_readout(params, mcfg, cache, jnp.int32(P), jnp.asarray(members),
                                 jnp.int32(probe))[:, 1], np.float64)  # [w,V]
    logp_mix = np.logaddexp.reduce(ref + np.log(weights)[:, None], axis=0)
    return {"cache": cache, "plen": P, "members": members, "weights": weights, "entropy": entropy,
            "probe": probe, "logp_mix": logp_mix.astype(np.float32), "logp_top": ref[0].astype(np.float32)}


# --- fitting (dev) --------------------------------------------------------------------------------
def fit(m, n_per_genre: int = FIT["n_dev_per_genre"], steps: int = FIT["steps"], lr: float = FIT["lr"],
        seed: int = FIT["seed"], genres=DESIGN.genres, progress=lambda it: it) -> dict:
    """Fit the learned offsets ``tanh(theta[W])`` with adam on dev prompts: minimise the mean over
    prompts of log KL(p_mix || q(offsets)), starting at theta = 0 (shared). Also sets the
    conditional design's entropy scale c (median dev entropy). Returns the record written to
    ``rq8_1_learned.json``."""
    import optax

    from experiments import corpus

    dev = corpus.load(split="dev", genres=list(genres), limit_per_genre=n_per_genre)
    toks = [m.tokenizer(p.prompt).input_ids for p in dev]
    cap = max(len(pad(t)[0]) for t in toks) + W + 1
    preps = [prepare(m.params, m.cfg, t, capacity=cap) for t in progress(toks)]
    cache = KVCache(jnp.concatenate([p["cache"].k for p in preps], 1),
                    jnp.concatenate([p["cache"].v for p in preps], 1))
    plen = jnp.asarray([p["plen"] for p in preps], jnp.int32)
    members = jnp.asarray(np.stack([p["members"] for p in preps]))
    probe = jnp.asarray([p["probe"] for p in preps], jnp.int32)
    logp_mix = jnp.asarray(np.stack([p["logp_mix"] for p in preps]))
    b = len(preps)
    params, mcfg = m.params, m.cfg

    def objective(offsets):  # offsets [W] shared by every prompt
        logq, _ = _set_forward(params, mcfg, cache, plen, members, probe,
                               jnp.broadcast_to(offsets, (b, W)), attn=False)
        return jnp.mean(jnp.log(kl(logp_mix, logq)))

    loss_fn = lambda theta: objective(jnp.tanh(theta))
    opt = optax.adam(lr)
    theta = jnp.zeros(W, jnp.float32)
    state = opt.init(theta)

    @jax.jit
    def step(theta, state):
        loss, g = jax.value_and_grad(loss_fn)(theta)
        upd, state = opt.update(g, state, theta)
        return optax.apply_updates(theta, upd), state, loss, g

    log = []
    for i in progress(range(steps)):
        theta, state, loss, g = step(theta, state)
        if i % 10 == 0 or i == steps - 1:
            log.append({"step": i, "dev_objective": float(loss), "offsets": np.tanh(np.asarray(theta)).tolist(),
                        "grad_norm": float(jnp.linalg.norm(g))})
    final = float(loss_fn(theta))
    c = float(np.median([p["entropy"] for p in preps]))
    ref = {"shared": float(objective(jnp.zeros(W))), "hier": float(objective(jnp.asarray(hier_offsets()))),
           "learned": final}
    ref["cond"] = float(np.mean([
        np.log(float(kl(logp_mix[j], _set_forward(params, mcfg, KVCache(cache.k[:, j:j + 1], cache.v[:, j:j + 1]),
                                                  plen[j:j + 1], members[j:j + 1], probe[j:j + 1],
                                                  jnp.asarray(cond_offsets(p["entropy"], c))[None],
                                                  attn=False)[0][0])))
        for j, p in enumerate(preps)]))
    return {"offsets": np.tanh(np.asarray(theta)).astype(float).tolist(),
            "theta": np.asarray(theta).astype(float).tolist(), "entropy_scale_c": c,
            "objective": "mean over dev prompts of log KL(p_mix || q(offsets)), offsets = tanh(theta)",
            "dev_objective_by_design": ref, "width": W, "steps": steps, "lr": lr, "seed": seed,
            "optimizer": "optax.adam", "init": "theta = 0 (shared)",
            "dev_prompt_ids": [p.id for p in dev], "log": log}


def load_learned() -> dict:
    if not LEARNED_PATH.exists():
        raise UsageError(f"rq8.1 needs the dev-learned offsets {LEARNED_PATH.name}; run "
                         "`python -m experiments.research.rq8_1_positions fit` first")
    d = json.loads(LEARNED_PATH.read_text())
    if len(d.get("offsets", ())) != W:
        raise UsageError(f"{LEARNED_PATH.name} holds {len(d.get('offsets', ()))} offsets; rq8.1 needs {W}")
    return d


# --- experiment -----------------------------------------------------------------------------------
def measure(m, ids, learned: np.ndarray, c: float) -> dict:
    """Every design on one prompt: ``kl_mix[D]``, ``kl_top[D]``, ``attn[D,L,H,W]``, ``offsets[D,W]``."""
    p = prepare(m.params, m.cfg, ids)
    offs = np.stack([np.zeros(W, np.float32), hier_offsets(), cond_offsets(p["entropy"], c),
                     np.asarray(learned, np.float32)])
    d = len(DESIGNS)
    logq, att = set_readout(m.params, m.cfg, _broadcast(p["cache"], d), jnp.full((d,), p["plen"], jnp.int32),
                            jnp.broadcast_to(jnp.asarray(p["members"]), (d, W)),
                            jnp.full((d,), p["probe"], jnp.int32), jnp.asarray(offs))
    logq = np.asarray(logq, np.float64)
    kl_np = lambda lp: np.sum(np.exp(lp) * (lp - logq), -1)
    return {"kl_mix": kl_np(np.asarray(p["logp_mix"], np.float64)),
            "kl_top": kl_np(np.asarray(p["logp_top"], np.float64)),
            "attn": np.moveaxis(np.asarray(att, np.float64), 1, 0),  # [D,L,H,W]
            "offsets": offs, "entropy": p["entropy"], "weights": p["weights"]}


def run(ctx) -> Output:
    learned_rec = load_learned()
    learned = np.asarray(learned_rec["offsets"], np.float32)
    c = float(learned_rec["entropy_scale_c"])
    m = ctx.model
    L = m.cfg.num_layers
    rows, extra = [], []
    lr_ = lambda a, b: float(np.log(a) - np.log(b))
    for p, r in ctx.map(lambda p: measure(m, m.tokenizer(p.prompt).input_ids, learned, c)):
        km, kt, att = r["kl_mix"], r["kl_top"], r["attn"]
        tok = att.mean((1, 2, 3))  # [D]
        layer_tok = att.mean((2, 3))  # [D,L]
        row = {"prompt_id": p.id, "genre": p.genre, "entropy": r["entropy"],
               "cond_spread": float(r["offsets"][2, -1] * W / (W - 1))}
        for j, name in enumerate(DESIGNS):
            row[f"kl_mix_{name}"] = km[j]
            row[f"kl_top_{name}"] = kt[j]
            row[f"attn_{name}"] = tok[j]
        for j, name in enumerate(DESIGNS[1:], 1):
            row[f"fid_{name}"] = lr_(km[j], km[0])
            row[f"top_{name}"] = lr_(kt[j], kt[0])
            row[f"att_{name}"] = lr_(tok[j], tok[0])
        row["fid_learned_vs_hier"] = lr_(km[3], km[1])
        row["fid_learned_vs_cond"] = lr_(km[3], km[2])
        for layer in range(L):
            for j, name in ((3, "learned"), (1, "hier")):
                row[f"L{layer:02d}_att_{name}"] = lr_(layer_tok[j, layer], layer_tok[0, layer])
        # per-member-rank attention (mean over L, H), for the equality-of-attention reading
        extra.append(att.mean((1, 2)))  # [D,W]
        rows.append(row)
    rank_att = np.stack(extra)  # [N,D,W]
    table = [{"design": name, "rank": i, "mean_attention": float(rank_att[:, j, i].mean())}
             for j, name in enumerate(DESIGNS) for i in range(W)]
    offsets_table = [{"rank": i, "learned": float(learned[i]), "hier": float(hier_offsets()[i]),
                      "cond_mean_over_test": float(np.mean([rr["cond_spread"] for rr in rows]) * hier_offsets()[i])}
                     for i in range(W)]
    _figures(ctx, rows, learned_rec, rank_att, L)
    notes = [
        "Learned offsets (dev fit, adam, "
        f"{learned_rec['steps']} steps, lr {learned_rec['lr']}, {len(learned_rec['dev_prompt_ids'])} dev "
        "prompts; member rank 0..4): " + ", ".join(f"{o:+.3f}" for o in learned)
        + f"; dev objective (mean log KL) shared {learned_rec['dev_objective_by_design']['shared']:.3f}, "
        f"hierarchical {learned_rec['dev_objective_by_design']['hier']:.3f}, conditional "
        f"{learned_rec['dev_objective_by_design']['cond']:.3f}, learned "
        f"{learned_rec['dev_objective_by_design']['learned']:.3f}. Conditional entropy scale c = "
        f"{c:.3f} nats (median dev entropy); mean spread on test {np.mean([r['cond_spread'] for r in rows]):.2f}.",
        "Median KL(p_mix || q) on test by design: " + ", ".join(
            f"{n} {np.median([r[f'kl_mix_{n}'] for r in rows]):.3f}" for n in DESIGNS) + " nats.",
    ]
    learned_table = [{"rank": i, "offset": float(learned[i]), "theta": float(learned_rec["theta"][i])}
                     for i in range(W)]
    return Output(rows=rows, tables={"learned_offsets": learned_table,
        "fit_log": [{"step": e["step"], "dev_objective": e["dev_objective"],
                     **{f"offset_{i}": e["offsets"][i] for i in range(W)}} for e in learned_rec["log"]],
        "offsets": offsets_table, "rank_attention": table}, notes=notes)


def _figures(ctx, rows, rec, rank_att, L):
    from experiments.plotting import ci_bars, pyplot
    from tempo_jax import stats as S

    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    x = np.arange(W)
    spread = np.mean([r["cond_spread"] for r in rows])
    ax[0].bar(x - 0.27, hier_offsets(), 0.27, label="hierarchical i/W")
    ax[0].bar(x, hier_offsets() * spread, 0.27, label=f"conditional (test mean, spread {spread:.2f})")
    ax[0].bar(x + 0.27, rec["offsets"], 0.27, label="learned (dev)")
    ax[0].axhline(0, color="k", lw=0.8)
    ax[0].axhline(1, color="grey", ls=":", lw=0.8)
    ax[0].set_xticks(x, [f"rank {i}" for i in x])
    ax[0].set_ylabel("offset o_i (member at P + o_i; probe at P + 1)")
    ax[0].set_title("RQ 8.1: member offsets by design")
    ax[0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    steps = [e["step"] for e in rec["log"]]
    offs = np.asarray([e["offsets"] for e in rec["log"]])
    for i in range(W):
        ax[1].plot(steps, offs[:, i], label=f"rank {i}")
    ax[1].set_xlabel("adam step (dev fit)")
    ax[1].set_ylabel("offset")
    a2 = ax[1].twinx()
    a2.plot(steps, [e["dev_objective"] for e in rec["log"]], "k--", label="dev objective")
    a2.set_ylabel("mean log KL(p_mix || q) (dashed)")
    ax[1].legend(fontsize=8, loc="center right")
    ax[1].set_title("Fit of the learned offsets")
    ctx.figure(fig, "learned_offsets")

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    cols = [("fid_hier", "hier"), ("fid_cond", "cond"), ("fid_learned", "learned"),
            ("fid_learned_vs_hier", "learned/hier"), ("fid_learned_vs_cond", "learned/cond")]
    mean, err = ci_bars([S.bootstrap_ci([r[c] for r in rows], n_boot=1999) for c, _ in cols])
    ax[0].bar(range(len(cols)), mean, yerr=err, capsize=3)
    ax[0].axhspan(-MARGIN, MARGIN, color="grey", alpha=0.2, label="+-10%")
    ax[0].set_xticks(range(len(cols)), [n for _, n in cols], rotation=20)
    ax[0].set_ylabel("log KL ratio (vs shared unless named)")
    ax[0].set_title("Readout fidelity (<0: closer to p_mix)")
    ax[0].legend(fontsize=8)
    names = ("shared", "hier", "cond", "learned")
    ax[1].boxplot([[r[f"kl_mix_{n}"] for r in rows] for n in names], tick_labels=list(names),
                  showfliers=False)
    ax[1].set_yscale("log")
    ax[1].set_title("KL(p_mix || q) per prompt (nats)")
    for j, n in enumerate(names):
        ax[2].plot(range(W), rank_att[:, j].mean(0), marker="o", label=n)
    ax[2].set_xticks(range(W), [f"rank {i}" for i in range(W)])
    ax[2].set_ylabel("probe attention per member (mean L, H)")
    ax[2].set_title("Attention by member rank")
    ax[2].legend(fontsize=8)
    fig.suptitle(f"RQ 8.1: {len(rows)} test prompts, 95% BCa CIs", y=1.04)
    ctx.figure(fig, "fidelity")

    fig, ax = plt.subplots(figsize=(10, 3.4))
    for k, (name, off) in enumerate((("learned", -0.2), ("hier", 0.2))):
        vals = np.asarray([[r[f"L{l:02d}_att_{name}"] for l in range(L)] for r in rows])
        mean, err = ci_bars([S.bootstrap_ci(vals[:, l], n_boot=999) for l in range(L)])
        ax.errorbar(np.arange(L) + off, mean, yerr=err, fmt="o", ms=3, capsize=2, label=name)
    ax.axhspan(-MARGIN, MARGIN, color="grey", alpha=0.2, label="+-10%")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel("log(per-member attention / shared)")
    ax.set_title("RQ 8.1: per-layer probe attention on members vs shared positions")
    ax.legend(fontsize=8)
    ctx.figure(fig, "layers_attention")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    pct = lambda t: (f"{100 * (np.exp(t.estimate) - 1):+.0f}% [{100 * (np.exp(t.lo) - 1):+.0f}, "
                     f"{100 * (np.exp(t.hi) - 1):+.0f}]")
    words = {"hier": "hierarchical sub-positions", "cond": "entropy-conditional spread",
             "learned": "dev-learned offsets"}
    parts = ["readout KL to the probability-weighted mixture of the members' paths, vs shared positions: "
             + ", ".join(f"{words[n]} {pct(by[f'fid_{n}'])} ({by[f'fid_{n}'].verdict})"
                         for n in ("hier", "cond", "learned"))]
    parts.append(f"learned vs hierarchical {pct(by['fid_learned_vs_hier'])} "
                 f"({by['fid_learned_vs_hier'].verdict}), learned vs conditional "
                 f"{pct(by['fid_learned_vs_cond'])} ({by['fid_learned_vs_cond'].verdict})")
    parts.append("effect on the top-1 path's KL: " + ", ".join(
        f"{n} {pct(by[f'top_{n}'])} ({by[f'top_{n}'].verdict})" for n in ("hier", "cond", "learned")))
    parts.append("per-member attention: " + ", ".join(
        f"{n} {pct(by[f'att_{n}'])} ({by[f'att_{n}'].verdict})" for n in ("hier", "cond", "learned")))
    s = "On test prompts, " + "; ".join(parts) + "."
    return s[0].upper() + s[1:]


def _main(argv) -> None:
    if argv[:1] != ["fit"]:
        raise SystemExit("usage: python -m experiments.research.rq8_1_positions fit [STEPS]")
    from tqdm.auto import tqdm

    from tempo_jax.loading import load_model

    steps = int(argv[1]) if len(argv) > 1 else FIT["steps"]
    res = fit(load_model(verbose=False), steps=steps, progress=lambda it: tqdm(it, desc="rq8.1 fit"))
    LEARNED_PATH.write_text(json.dumps(res, indent=1) + "\n")
    print({k: res[k] for k in ("offsets", "entropy_scale_c", "dev_objective_by_design")})


if __name__ == "__main__":
    _main(sys.argv[1:])
