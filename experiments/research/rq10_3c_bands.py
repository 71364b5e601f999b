"""RQ 10.3, confirmatory: where in depth do later queries take up the identity of a parallel set's
members? A causal test of the layer bottleneck, on two model families.

The exploratory rq10.3 (one model, 45 prompts) cut the later queries' attention to the members in
bands of 3 layers; the early bands (layers 0-5, 9-11 of 30) shrank the swap's effect and later bands
showed none. Here the bands are the thirds of the layers (any depth), decided before the run.

Construction (rq10.3's, per prompt): the prompt's top-5 next tokens c0..c4; worlds A = [c0..c3] and
B = [c0, c1, c2, c4] written as ONE isolated set at the shared position P; two later queries (P + 1
carrying the greedy token after c0, P + 2 carrying q1's greedy token in world A) read the set. The
worlds differ in ONE member. J = symmetric KL between the worlds' next-token distributions, summed
over the two queries: the swap's effect on the predictions. Conditions: nothing cut, or every
member -> query attention edge (all heads) removed in the early, middle or late third of the layers.

ONE primary test: log J(late third cut) - log J(early third cut) > 0 (cutting early removes more of
the swap's effect than cutting late), smallest effect of interest log 1.5 (rq10.3's margin).
Secondary (Holm): the same for the middle third vs the late third; cutting the early third lowers J
at all (log J(early cut) / J(uncut) < 0); the present member pulls q1's prediction toward itself
(logit difference in differences > 0, 0.1 logits).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.research import rq10_3_bottleneck as B
from experiments.research import wording
from experiments.research.measures import sym_kl
from experiments.research.rq1_3bc_boost_forced import bands
from tempo_jax.research import Design, Hypothesis, Output

EPS = B.EPS
LOG15 = B.LOG15
THIRDS = ("early", "mid", "late")

DESIGN = Design(
    id="rq10.3c",
    questions=("10.3",),
    title="Confirmatory: in which third of the layers do later queries take up a set member's identity? "
          "(causal band cuts, two families)",
    primary_metric="per prompt, log J with the later queries' member edges cut in the late third of the "
                   "layers minus log J with them cut in the early third (J = symmetric KL between two "
                   "worlds that differ in one member, summed over two later queries)",
    contrast="member -> query attention removed (all heads) in the early vs the late third of the layers, "
             "same prompt, same worlds",
    hypotheses=(
        Hypothesis("P", "cutting the later queries' attention to the members in the early third of the "
                        "layers removes more of a swapped member's effect on their predictions than "
                        "cutting it in the late third", "dlogj_late_early", ">0"),
        Hypothesis("S1", "the middle third likewise removes more than the late third", "dlogj_late_mid",
                   ">0", family="secondary"),
        Hypothesis("S2", "cutting the early third lowers the swap's effect at all (log J ratio to uncut)",
                   "logj_early", "<0", family="secondary"),
        Hypothesis("S3", "the present member pulls the next query's prediction toward itself (uncut; "
                         "logit difference in differences, x vs y, world A vs B)", "did_q1", ">0",
                   family="secondary", margin=0.1),
    ),
    margin=LOG15,
    margin_note="log 1.5 for log J differences and ratios (rq10.3's); 0.1 logits for the DiD",
    metrics=("dlogj_*", "logj_*", "did_q1*", "j_none", "p_x", "p_y"),
    families={"primary": "holm", "secondary": "holm"},
    split="confirm",
    n_per_genre=30,  # the SmolLM2 pilot asks for 80 (primary); about 1-3 s per prompt
    quick_n=5,
    caveats=(
        "A forced isolated set of the prompt's top-4 next tokens at one step; the swapped member is the "
        "rank-4 candidate vs the rank-5 one. Real TEMPO sets are smaller and later steps see several sets.",
        "Two later queries only (the next two steps): where identity is taken up over a longer range is "
        "not tested.",
        "A cut removes the queries' attention to EVERY member in every head of the band (the rest "
        "renormalises), so it removes the set's content as a whole, of which the swapped member is part; "
        "J can also rise under a cut.",
        "Thirds by depth (np.array_split): 10 layers each on SmolLM2-135M (30), 6 on Gemma 3 270M (18); "
        "Gemma 3's sliding-window layers see the whole (short) context here.",
    ),
    config={"W": B.W, "swap": "rank 4 vs rank 5 candidate", "queries": "P+1 (t1), P+2 (t2)",
            "bands": "thirds of the layers (rq1_3bc_boost_forced.bands)", "eps": EPS},
)


def third_masks(L: int, H: int, K: int, P: int) -> np.ndarray:
    """Masks ``[4,L,H,2,K]`` of the two later queries: nothing cut, then every member -> query edge
    removed in the early, middle and late third of the layers."""
    base = B.cut_masks(L, H, K, P, 0)[0]
    members = slice(P, P + B.W)
    out = np.broadcast_to(base, (1 + len(THIRDS),) + base.shape).copy()
    for i, name in enumerate(THIRDS):
        out[1 + i, list(bands(L)[name]), ..., members] = False
    return out


def measure(params, mcfg, ids) -> dict:
    """One prompt -> J uncut and per third cut, q1's logit DiD per condition, p_x, p_y."""
    L, H = mcfg.num_layers, mcfg.num_heads
    prompt, P = B.pad(ids)
    K = len(prompt) + B.W + 2
    dist, cache0, _ = B.prompt_pass(params, mcfg, jnp.asarray(prompt), jnp.int32(P), K)
    x, y, sets = B.swap_sets(np.asarray(dist))
    caches = []
    for s in sets:
        logits, c, _ = B.write_set(params, mcfg, cache0, jnp.int32(P), jnp.asarray(s))
        caches.append(c)
        if len(caches) == 1:
            t1 = int(np.argmax(np.asarray(logits[0])))
    masks = third_masks(L, H, K, P)
    pos = jnp.asarray([P + 1.0, P + 2.0])
    slots = jnp.asarray([P + B.W, P + B.W + 1], jnp.int32)
    lp0, _, _ = B.read_worlds(params, mcfg, caches[0], jnp.asarray([t1, t1], jnp.int32), pos, slots,
                              jnp.asarray(masks[:1]))
    t2 = int(np.argmax(np.asarray(lp0[0, 0])))
    lps = []
    for c in caches:
        big = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (a.shape[0], len(masks)) + a.shape[2:]), c)
        lp, _, _ = B.read_worlds(params, mcfg, big, jnp.asarray([t1, t2], jnp.int32), pos, slots,
                                 jnp.asarray(masks))
        lps.append(np.asarray(lp, np.float64))  # [C,2,V]
    j = sym_kl(lps[0], lps[1]).sum(-1)  # [C]
    did = (lps[0][:, 0, x] - lps[0][:, 0, y]) - (lps[1][:, 0, x] - lps[1][:, 0, y])  # [C] q1
    return {"j": j, "did": did, "p_x": float(dist[x]), "p_y": float(dist[y])}


def row_of(r: dict) -> dict:
    """Per-prompt columns from :func:`measure`'s output."""
    logj = np.log(r["j"] + EPS)
    cut = dict(zip(THIRDS, logj[1:]))
    return {"dlogj_late_early": cut["late"] - cut["early"], "dlogj_late_mid": cut["late"] - cut["mid"],
            **{f"logj_{t}": cut[t] - logj[0] for t in THIRDS},
            "did_q1": float(r["did"][0]), **{f"did_q1_{t}": float(r["did"][1 + i]) for i, t in enumerate(THIRDS)},
            "j_none": float(r["j"][0]), "p_x": r["p_x"], "p_y": r["p_y"]}


def run(ctx) -> Output:
    m = ctx.model
    rows = [{"prompt_id": p.id, "genre": p.genre, **row_of(r)}
            for p, r in ctx.map(lambda p: measure(m.params, m.cfg, m.tokenizer(p.prompt).input_ids))]
    mean = lambda k: float(np.mean([r[k] for r in rows]))
    notes = [f"{len(rows)} prompts; thirds of {m.cfg.num_layers} layers: "
             + ", ".join(f"{t} {bands(m.cfg.num_layers)[t].start}-{bands(m.cfg.num_layers)[t].stop - 1}"
                         for t in THIRDS)
             + f"; mean J uncut {mean('j_none'):.3f} nats; mean log J ratio to uncut: "
             + ", ".join(f"{t} {mean(f'logj_{t}'):+.3f}" for t in THIRDS)
             + f"; q1's logit DiD uncut {mean('did_q1'):+.3f}, "
             + ", ".join(f"{t} cut {mean(f'did_q1_{t}'):+.3f}" for t in THIRDS) + "."]
    _figure(ctx, rows)
    return Output(rows=rows, notes=notes)


def _figure(ctx, rows) -> None:
    from experiments.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    vals = [np.asarray([r[f"logj_{t}"] for r in rows]) for t in THIRDS]
    ax.boxplot(vals)
    ax.set_xticks(range(1, len(THIRDS) + 1), [f"{t} third cut" for t in THIRDS])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("log J(cut) / J(uncut)")
    ax.set_title(f"RQ 10.3c ({ctx.model.cfg.name}): a swapped member's effect on the next two queries\n"
                 f"with their attention to the set removed in one third of the layers ({len(rows)} prompts)",
                 fontsize=9)
    fig.tight_layout()
    ctx.figure(fig, "bands")


def answer(tests, design) -> str:
    said = {"P": "Primary test P: log J with the late third cut minus with the early third cut",
            "S1": "late minus middle third", "S2": "log J(early third cut) / J(uncut)",
            "S3": "the present member's pull on the next query's prediction (logit DiD, uncut)"}
    return "A swapped set member's effect J on the next two queries' predictions: " + wording.listed(tests, said) + "."
