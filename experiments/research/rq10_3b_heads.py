"""RQ 10.3b: which heads carry member information forward? Single-head ABLATION of the heads that
rq10.3 found reading the members (direct effects only there).

Instrument: rq10.3's two-world construction (imported helpers): one prompt, its top-5 next tokens
c0..c4; world A writes the isolated set [c0, c1, c2, c3] at the shared position P, world B
[c0, c1, c2, c4] (x = c3, y = c4, same slot P + 3); the next query q1 at P + 1 carries t1 = the
greedy token after c0 alone (identical in both worlds) and sees the prompt, every member and itself.
rq10.3's second query q2 is left out: q1 never sees it, so it cannot change q1's reading.

Effect: q1's last-layer logit-lens difference in differences (= its prediction's),
``DiD = [l_A(x) - l_A(y)] - [l_B(x) - l_B(y)]`` of log-probs (> 0: the present member is favoured).

Cut: in condition c the attention edges from q1 to the W member slots are removed in ONE head
(layer l, head h) only (mask ``m[c, l, h, :, members] = False``); the head's attention renormalises
over the prompt and q1 itself; every other head and layer is untouched. Per prompt and head:
``delta = DiD(cut) - DiD(uncut)`` (< 0: the head carries the present member's advantage forward).
Every condition of both worlds runs in ONE batched forward: uncut, each selected head, the copiers
together, the suppressors together, and every head of every layer (the no-member world, where the
DiD is 0 by construction: the worlds then differ in nothing q1 can reach).

Heads (fixed rule, from rq10.3's table_heads.csv): the 6 with the largest mean direct effect
(copiers) and the 4 with the most negative (suppressors), plus 2 control heads drawn at random
(seeded) from the other heads. Prompts: test prompts disjoint from rq10.3's (its rows.csv ids).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.research import PROJECT
from tempo_jax.research import Design, Hypothesis, Output
from experiments.research.rq10_3_bottleneck import (W, pad, prompt_pass, read_worlds, swap_sets,
                                                    write_set)
from tempo_jax import stats as S
from tempo_jax.config import ModelConfig
from tempo_jax.errors import UsageError

N_COPIERS = 6
N_SUPPRESSORS = 4
N_CONTROLS = 2
MARGIN = 0.1  # logits
N_NEW = 20  # prompts per genre, disjoint from rq10.3's 15 per genre
RQ103 = PROJECT.results / "rq10.3"


@dataclasses.dataclass(frozen=True)
class HeadSet:
    """The heads cut one at a time, as ``(layer, head)`` pairs, by role."""

    copiers: tuple[tuple[int, int], ...]
    suppressors: tuple[tuple[int, int], ...]
    controls: tuple[tuple[int, int], ...]

    @property
    def all(self) -> tuple[tuple[int, int], ...]:
        return self.copiers + self.suppressors + self.controls

    def role(self, lh) -> str:
        return "copier" if lh in self.copiers else "suppressor" if lh in self.suppressors else "control"


def head_name(lh) -> str:
    return f"L{lh[0]:02d}H{lh[1]}"


def select_heads(table_csv: Path, L: int, H: int, seed: int) -> HeadSet:
    """The fixed rule: top ``N_COPIERS`` heads by mean direct effect (``mean_dla_q1``, largest first),
    top ``N_SUPPRESSORS`` by most negative, and ``N_CONTROLS`` drawn uniformly (seeded) from the rest."""
    if not Path(table_csv).exists():
        raise UsageError(f"rq10.3b needs rq10.3's head table {table_csv}; run `tempo-jax research run rq10.3` first")
    with open(table_csv) as f:
        recs = [(int(r["layer"]), int(r["head"]), float(r["mean_dla_q1"])) for r in csv.DictReader(f)]
    if len(recs) != L * H or any(not (0 <= l < L and 0 <= h < H) for l, h, _ in recs):
        raise UsageError(f"{table_csv} has {len(recs)} heads; the model has {L} x {H}")
    order = sorted(recs, key=lambda r: (-r[2], r[0], r[1]))
    cop = tuple((l, h) for l, h, _ in order[:N_COPIERS])
    sup = tuple((l, h) for l, h, _ in order[::-1][:N_SUPPRESSORS])
    rest = [(l, h) for l, h, _ in recs if (l, h) not in cop + sup]
    pick = np.random.default_rng([seed, 1031]).choice(len(rest), N_CONTROLS, replace=False)
    return HeadSet(cop, sup, tuple(rest[i] for i in sorted(pick)))


def excluded_prompt_ids(rows_csv: Path) -> set[str]:
    """The prompt ids rq10.3 measured (its rows.csv)."""
    if not Path(rows_csv).exists():
        raise UsageError(f"rq10.3b needs rq10.3's rows {rows_csv}; run `tempo-jax research run rq10.3` first")
    with open(rows_csv) as f:
        return {r["prompt_id"] for r in csv.DictReader(f)}


def head_cut_masks(L: int, H: int, K: int, P: int, cuts) -> np.ndarray:
    """Masks ``[C,L,H,1,K]`` of q1 (slot P + W): condition c removes the member -> q1 edges of every
    ``(layer, head)`` in ``cuts[c]`` (an empty list cuts nothing); q1 sees slots < P + W + 1."""
    k = np.arange(K)
    m = np.broadcast_to(k < P + W + 1, (len(cuts), L, H, 1, K)).copy()
    for c, heads in enumerate(cuts):
        for l, h in heads:
            m[c, l, h, :, P:P + W] = False
    return m


@dataclasses.dataclass
class HeadCuts:
    """One prompt; C conditions as given to :func:`measure`."""

    x: int
    y: int
    p_x: float
    p_y: float
    t1: int
    did: np.ndarray  # [C] q1's logit DiD per condition
    lp: np.ndarray  # [2 worlds, C, V] q1's log-probs
    member_attn: np.ndarray  # [L,H] q1's attention mass on the members, world A uncut


def measure(params, mcfg: ModelConfig, ids, cuts) -> HeadCuts:
    """q1's DiD under every cut condition (``cuts[c]``: list of (layer, head)), both worlds and every
    condition in one batched forward of 2C rows."""
    L, H = mcfg.num_layers, mcfg.num_heads
    prompt, P = pad(ids)
    K = len(prompt) + W + 1
    dist, cache0, _ = prompt_pass(params, mcfg, jnp.asarray(prompt), jnp.int32(P), K)
    x, y, sets = swap_sets(np.asarray(dist))
    caches = []
    for s in sets:
        logits, c, _ = write_set(params, mcfg, cache0, jnp.int32(P), jnp.asarray(s))
        caches.append(c)
        if len(caches) == 1:
            t1 = int(np.argmax(np.asarray(logits[0])))
    masks = head_cut_masks(L, H, K, P, cuts)
    C = len(masks)
    big = jax.tree_util.tree_map(
        lambda a, b: jnp.concatenate([jnp.broadcast_to(a, (a.shape[0], C) + a.shape[2:]),
                                      jnp.broadcast_to(b, (b.shape[0], C) + b.shape[2:])], 1),
        caches[0], caches[1])
    lp, _, attn = read_worlds(params, mcfg, big, jnp.asarray([t1], jnp.int32), jnp.asarray([P + 1.0]),
                              jnp.asarray([P + W], jnp.int32), jnp.asarray(np.concatenate([masks, masks])))
    lp = np.asarray(lp[:, 0], np.float64).reshape(2, C, -1)
    did = (lp[0, :, x] - lp[0, :, y]) - (lp[1, :, x] - lp[1, :, y])
    return HeadCuts(x=x, y=y, p_x=float(dist[x]), p_y=float(dist[y]), t1=t1, did=did,
                    lp=lp.astype(np.float32), member_attn=np.asarray(attn)[:, :, 0, P:P + W].sum(-1))


def conditions(hs: HeadSet, L: int, H: int) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """Condition names and cuts: uncut, each head alone, copiers together, suppressors together, all."""
    names = ["uncut"] + [head_name(lh) for lh in hs.all] + ["copiers_all", "suppressors_all", "every_head"]
    cuts = ([[]] + [[lh] for lh in hs.all] + [list(hs.copiers), list(hs.suppressors)]
            + [[(l, h) for l in range(L) for h in range(H)]])
    return names, cuts


CAVEATS = (
    "Heads were chosen from rq10.3's DIRECT effects (45 other test prompts); a head whose member "
    "reads matter only through later layers is not among them. The controls are 2 random heads "
    "of any layer, not layer-matched to the late-layer copiers, so 'vs controls' compares with "
    "typical heads, not with late ones.",
    "A cut removes one head's q1 -> member edges (all 4 members, not only the swapped one) and lets "
    "that head's attention renormalise over the prompt and q1; it is not a mean or resample "
    "ablation of the head's output.",
    "Single-head cuts can underestimate a head's role when other heads compensate; the joint cuts "
    "(all copiers, all suppressors) are reported as a secondary family.",
    "The effect is the next query's DiD of the present member's logit over the swapped-out "
    "candidate's (rank 4 vs rank 5 of a forced set of 4), one later query only (P + 1).",
    "One model (SmolLM2-135M-Instruct, 30 layers x 9 heads). Per-head CIs are BCa over prompts; "
    "the head family is BH-corrected, the two primary contrasts Holm.",
)

DESIGN = Design(
    id="rq10.3b",
    questions=("10.3",),
    title="Which heads carry member identity forward: single-head cuts of member -> query edges",
    primary_metric="change of the next query's logit DiD (present member x vs swapped-out candidate "
                   "y, worlds A / B; logits) when one head's attention edges to the members are "
                   "removed, cut minus uncut, per prompt",
    contrast="one head's member edges cut vs uncut; per prompt, mean change over the 6 copier heads "
             "(or 4 suppressor heads) minus mean change over 2 random control heads",
    hypotheses=(
        Hypothesis("H1", "cutting a copier head lowers the present member's advantage more than "
                         "cutting a control head (mean over copiers minus mean over controls)",
                   "copiers_vs_controls", "<0"),
        Hypothesis("H2", "cutting a suppressor head RAISES the advantage relative to cutting a "
                         "control head (mean over suppressors minus mean over controls)",
                   "suppressors_vs_controls", ">0"),
        Hypothesis("HC", "cutting this copier head lowers the DiD (cut - uncut)", "copier_L*", "<0",
                   family="heads"),
        Hypothesis("HS", "cutting this suppressor head raises the DiD (cut - uncut)", "suppressor_L*",
                   ">0", family="heads"),
        Hypothesis("HK", "cutting this control head leaves the DiD unchanged within 0.1 logits",
                   "control_L*", "=0", family="heads"),
        Hypothesis("J1", "cutting all 6 copiers together lowers the DiD", "joint_copiers", "<0",
                   family="joint"),
        Hypothesis("J2", "cutting all 4 suppressors together raises the DiD", "joint_suppressors", ">0",
                   family="joint"),
    ),
    margin=MARGIN,
    margin_note="0.1 logits (DiD change) for every test",
    metrics=("copiers_vs_controls", "suppressors_vs_controls", "copier_L*", "suppressor_L*",
             "control_L*", "joint_copiers", "joint_suppressors", "did_uncut", "did_every_head", "p_x",
             "p_y"),
    families={"primary": "holm", "heads": "fdr_bh", "joint": "holm"},
    n_per_genre=15 + N_NEW,  # the first 15 per genre are rq10.3's and are dropped in run()
    quick_n=1,
    caveats=CAVEATS,
    config={"W": W, "swap": "rank 4 vs rank 5 candidate", "query": "P+1 (t1)",
            "head_rule": f"top {N_COPIERS} by mean_dla_q1 (copiers), bottom {N_SUPPRESSORS} "
                         f"(suppressors) of experiments/results/rq10.3/table_heads.csv; "
                         f"{N_CONTROLS} controls uniform from the other heads, rng([seed, 1031])",
            "prompts": f"test prompts of the first 15 + {N_NEW} per genre (harness order) minus "
                       "rq10.3's rows.csv ids",
            "cut": "q1 -> member edges of the head(s) removed, attention renormalised"},
)


def run(ctx) -> Output:
    m = ctx.model
    L, H = m.cfg.num_layers, m.cfg.num_heads
    hs = select_heads(RQ103 / "table_heads.csv", L, H, ctx.seed)
    if not ctx.quick:  # disjoint from rq10.3's prompts; the recorded prompt ids are the ones used
        drop = excluded_prompt_ids(RQ103 / "rows.csv")
        ctx.prompts[:] = [p for p in ctx.prompts if p.id not in drop]
    names, cuts = conditions(hs, L, H)
    ix = {n: i for i, n in enumerate(names)}
    rows, recs = [], []
    for p, r in ctx.map(lambda p: measure(m.params, m.cfg, m.tokenizer(p.prompt).input_ids, cuts)):
        d = r.did - r.did[0]
        row = {"prompt_id": p.id, "genre": p.genre, "p_x": r.p_x, "p_y": r.p_y, "did_uncut": float(r.did[0])}
        for lh in hs.all:
            row[f"{hs.role(lh)}_{head_name(lh)}"] = float(d[ix[head_name(lh)]])
        mean_of = lambda heads: float(np.mean([d[ix[head_name(lh)]] for lh in heads]))
        row["copiers_vs_controls"] = mean_of(hs.copiers) - mean_of(hs.controls)
        row["suppressors_vs_controls"] = mean_of(hs.suppressors) - mean_of(hs.controls)
        row["joint_copiers"] = float(d[ix["copiers_all"]])
        row["joint_suppressors"] = float(d[ix["suppressors_all"]])
        row["did_every_head"] = float(r.did[ix["every_head"]])
        rows.append(row)
        recs.append(r)
    did0 = np.asarray([r.did[0] for r in recs])
    att = np.asarray([r.member_attn for r in recs])  # [N,L,H]
    table = []
    for lh in hs.all:
        v = np.asarray([row[f"{hs.role(lh)}_{head_name(lh)}"] for row in rows])
        table.append({"head": head_name(lh), "layer": lh[0], "index": lh[1], "role": hs.role(lh),
                      "mean_change": float(v.mean()), "mean_did_uncut": float(did0.mean()),
                      "share_of_uncut": float(v.mean() / did0.mean()) if did0.mean() else float("nan"),
                      "mean_member_attn_q1": float(att[:, lh[0], lh[1]].mean())})
    notes = [
        "Heads (rule on rq10.3's table_heads.csv): copiers " + ", ".join(map(head_name, hs.copiers))
        + "; suppressors " + ", ".join(map(head_name, hs.suppressors)) + "; controls (random) "
        + ", ".join(map(head_name, hs.controls)) + ".",
        f"Uncut DiD of q1: mean {did0.mean():+.3f} logits (median {np.median(did0):+.3f}); with every "
        f"head's member edges cut it is {max(abs(r['did_every_head']) for r in rows):.1e} at most "
        "(the worlds differ in nothing q1 can reach).",
        f"Prompts used: {len(rows)}, none of rq10.3's; their ids are the prompt_id column of rows.csv.",
    ]
    _figure(ctx, rows, hs, did0)
    return Output(rows=rows, tables={"heads": table}, notes=notes)


def _figure(ctx, rows, hs: HeadSet, did0):
    from experiments.plotting import ci_bars, pyplot

    plt = pyplot()
    colour = {"copier": "C3", "suppressor": "C0", "control": "0.5"}
    cols = [f"{hs.role(lh)}_{head_name(lh)}" for lh in hs.all] + ["joint_copiers", "joint_suppressors"]
    labels = [head_name(lh) for lh in hs.all] + ["6 copiers\ntogether", "4 suppressors\ntogether"]
    roles = [hs.role(lh) for lh in hs.all] + ["copier", "suppressor"]
    st = [S.bootstrap_ci([row[c] for row in rows], n_boot=1999) for c in cols]
    mean, err = ci_bars(st)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    xs = np.arange(len(cols)) + np.r_[np.zeros(len(hs.all)), np.ones(2)]
    for i in range(len(cols)):
        ax.errorbar(xs[i], mean[i], yerr=[[err[0][i]], [err[1][i]]], capsize=3,
                    marker="o" if i < len(hs.all) else "s",
                    color=colour[roles[i]], ls="none")
    for role, c in colour.items():
        ax.plot([], [], "o", color=c, label=role + ("s" if role != "control" else " (random)"))
    ax.axhline(0, color="grey", ls=":")
    for s in (-MARGIN, MARGIN):
        ax.axhline(s, color="grey", ls="--", lw=0.6)
    ax.set_xticks(xs, labels, rotation=45, fontsize=8)
    ax.set_ylabel("q1 logit DiD change, cut - uncut (logits)")
    ax.set_title(f"RQ 10.3b: cutting one head's q1 -> member edges ({len(rows)} prompts; uncut DiD "
                 f"mean {did0.mean():+.2f}); 95% BCa CI, dashed: +-{MARGIN}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.figure(fig, "head_cuts")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    ci = lambda t: f"{t.estimate:+.3f} [{t.lo:+.3f}, {t.hi:+.3f}]"
    h1, h2 = by["copiers_vs_controls"], by["suppressors_vs_controls"]
    heads = [t for t in tests if t.family == "heads"]
    name = lambda t: t.column.split("_", 1)[1]
    lower = [name(t) for t in heads if t.verdict.startswith("differs (-)")]
    higher = [name(t) for t in heads if t.verdict.startswith("differs (+)")]
    none = [name(t) for t in heads if t.verdict.startswith("no effect")]
    j1, j2 = by["joint_copiers"], by["joint_suppressors"]
    return (f"The change of the next query's logit DiD when one head's edges to the members are cut, "
            f"mean over the 6 copier heads minus mean over 2 random control heads, is {ci(h1)} logits "
            f"({h1.verdict}, Holm); suppressor heads minus controls {ci(h2)} ({h2.verdict}); per head (BH over "
            f"{len(heads)}), the cut lowers the DiD for {', '.join(lower) or 'none'}, raises it for "
            f"{', '.join(higher) or 'none'}, and leaves it unchanged within +-{design.margin} logits for "
            f"{', '.join(none) or 'none'}; cutting the 6 copiers together changes it by {ci(j1)} "
            f"({j1.verdict}) and the 4 suppressors together by {ci(j2)} ({j2.verdict}).")
