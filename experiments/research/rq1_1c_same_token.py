"""RQ 1.1 / 1.2, confirmatory: what happens to ONE token's attention when other tokens share its RoPE
position, with the token, the probe and the positions held fixed.

The exploratory rq1.1 averaged attention over the top-n members, so adding lower-ranked members
lowered the mean whether or not anything competed, and it had no same-token control. Here the
measured token is always member 0 (the prompt's top-1 next token), written at position P; a probe
query with a fixed token (the greedy next token after member 0) at a fixed position (P + 20) reads
it. Per prompt, five one-step sets, each isolated (members see the prompt and themselves):

- ``alone``: member 0 only;
- ``top``: member 0 with the next four top-ranked tokens, all at P (shared position);
- ``random``: member 0 with four random vocabulary tokens at P (identity of the others varied);
- ``copies``: member 0 with four copies of itself at P (others that pull exactly as it does);
- ``spread``: the ``top`` set at P-2, P-1, P, P+1, P+2 with member 0 at P: the same tokens at
  distinct positions whose mean distance to the probe equals the shared set's (recency matched).

Statistics are per-prompt log ratios of member 0's attention (mean over layers and heads). 1.1's
primary test: member 0 inside the top set vs alone. 1.2's primary test: the same set at distinct,
recency-matched positions vs shared. Secondary: the other members' identity (random, copies), and
whether the set shares a fixed budget (its summed attention equal to member 0's alone) or each
added member brings its own pull (the sum grows). Per-member attention of every set is saved
(``table_members.csv``).
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np

from experiments.research.position_probe import BUCKET, probe_forwards, prompt_states
from tempo_jax.research import Design, Hypothesis, Output

N = 5
PROBE_GAP = 20
SPREAD = (0.0, -1.0, 1.0, -2.0, 2.0)  # member i's offset from P in the spread world
MARGIN = float(np.log(1.1))
CONDITIONS = ("alone", "top", "random", "copies", "spread")

DESIGN = Design(
    id="rq1.1c",
    questions=("1.1", "1.2"),
    title="Confirmatory: one token's attention inside a shared-position set (same-token control)",
    primary_metric="a later probe's attention on member 0 (the top-1 token, fixed), mean over all "
                   "layers and heads, as a per-prompt log ratio between conditions",
    contrast="1.1: member 0 inside a set of 5 top-ranked tokens at one position vs member 0 alone; "
             "1.2: the same set at distinct recency-matched positions (P-2..P+2, member 0 at P) vs shared",
    hypotheses=(
        Hypothesis("H1", "1.1: a token receives less attention when four top-ranked candidates share "
                         "its position than alone (by more than 10%)", "m0_top", "<0",
                   sesoi=-MARGIN),
        Hypothesis("H2", "1.2: giving the same set distinct, recency-matched positions changes member "
                         "0's attention by less than +-10%", "m0_spread", "=0"),
        Hypothesis("C1", "member 0 also loses attention when the others are random vocabulary tokens",
                   "m0_random", "<0", family="controls"),
        Hypothesis("C2", "member 0 loses attention to four copies of itself", "m0_copies", "<0",
                   family="controls"),
        Hypothesis("C3", "top-ranked others take more of member 0's attention than random others",
                   "m0_top_vs_random", "<0", family="controls"),
        Hypothesis("B1", "no fixed budget: the top set's summed attention exceeds member 0's alone",
                   "sum_top", ">0", family="budget"),
        Hypothesis("B2", "no fixed budget with copies either: five copies receive more than one",
                   "sum_copies", ">0", family="budget"),
        Hypothesis("L1", "per layer: member 0 inside the top set vs alone", "L*_m0_top", "<0",
                   family="layers"),
        Hypothesis("L2", "per layer: spread vs shared positions", "L*_m0_spread", "=0",
                   family="layers_spread"),
    ),
    margin=MARGIN,
    margin_note="log(1.1): a 10% relative change in attention",
    metrics=("m0_*", "sum_*", "L*_m0_top", "L*_m0_spread"),
    families={"primary": "holm", "controls": "holm", "budget": "holm", "layers": "fdr_bh",
              "layers_spread": "fdr_bh"},
    split="confirm",
    n_per_genre=100,  # 300 prompts: the pilots' largest powered n for a primary test is 61
    quick_n=10,
    caveats=(
        "Forced one-step sets of isolated siblings with a probe 20 positions later: a controlled "
        "probe of the mechanism, not a TEMPO generation.",
        "The random members are drawn per prompt from the whole vocabulary (not the prompt's top 50, "
        "no control tokens), seeded by the prompt id.",
        "In the spread world the members sit at P-2..P+2: positions the prompt's last tokens also "
        "hold (RoPE positions need not be unique; slots are).",
    ),
    config={"n": N, "probe_gap": PROBE_GAP, "spread": SPREAD, "siblings": "isolated",
            "member0": "top-1 next token", "probe": "greedy next token after member 0",
            "random_members": "uniform over the vocabulary minus the top 50 and control tokens"},
)


def random_members(prompt_id: str, seed: int, vocab: int, exclude, k: int = N - 1) -> np.ndarray:
    """``k`` distinct token ids drawn uniformly from ``range(vocab)`` minus ``exclude``, seeded by the
    prompt id (the same draw on every run and model of the same vocabulary size)."""
    rng = np.random.default_rng([seed, zlib.crc32(prompt_id.encode())])
    banned = set(int(x) for x in exclude)
    out: list[int] = []
    while len(out) < k:
        t = int(rng.integers(0, vocab))
        if t not in banned and t not in out:
            out.append(t)
    return np.asarray(out, np.int32)


def measure_batch(m, prompts, seed: int) -> list[dict]:
    """Every condition of several prompts as one compiled program per condition: per prompt the
    per-member attention ``{condition: [L,n]}`` (mean over heads), ``probe_token`` and the set tokens."""
    ids_list = [m.tokenizer(p.prompt).input_ids for p in prompts]
    lens = [len(ids) for ids in ids_list]
    pb = -(-max(lens) // BUCKET) * BUCKET
    toks = np.zeros((len(prompts), pb), np.int32)
    for b, ids in enumerate(ids_list):
        toks[b, :len(ids)] = ids
    plens = jnp.asarray(lens, jnp.int32)
    dist, caches = prompt_states(m.params, m.cfg, jnp.asarray(toks), plens, pb + N + 2)
    order = np.argsort(-np.asarray(dist), axis=-1, kind="stable")
    top = order[:, :N].astype(np.int32)  # [B,N]
    P = np.asarray(lens, np.float32)
    probe_pos = P[:, None] + PROBE_GAP  # [B,1]: one world per call
    first = probe_forwards(m.params, m.cfg, caches, plens, jnp.asarray(top[:, :1]), jnp.asarray(top[:, 0]),
                           jnp.asarray(P[:, None, None]), jnp.asarray(P[:, None] + 1.0), n=1)
    probe = np.asarray(first["member_top"][:, 0]).astype(np.int32)
    control = set(m.cfg.eos_token_ids or ()) | {t for t in (m.cfg.bos_token_id,) if t is not None}
    vocab = int(m.cfg.vocab_size)
    rand = np.stack([random_members(p.id, seed, vocab, set(order[b, :50].tolist()) | control)
                     for b, p in enumerate(prompts)])
    m0 = top[:, :1]
    sets = {"alone": m0, "top": top, "random": np.concatenate([m0, rand], 1),
            "copies": np.repeat(m0, N, 1), "spread": top}
    out: list[dict] = [{"probe_token": int(probe[b]), "tokens": {}} for b in range(len(prompts))]
    for cond, members in sets.items():
        n = members.shape[1]
        offs = np.asarray(SPREAD if cond == "spread" else [0.0] * n, np.float32)
        member_pos = (P[:, None] + offs[None])[:, None, :]  # [B,1,n]
        r = jax.device_get(probe_forwards(m.params, m.cfg, caches, plens, jnp.asarray(members),
                                          jnp.asarray(probe), jnp.asarray(member_pos),
                                          jnp.asarray(probe_pos), n=n))
        att = np.asarray(r["member_attn"], np.float64)  # [B,L,D=1,H,n]
        for b in range(len(prompts)):
            out[b][cond] = att[b, :, 0].mean(1)  # [L,n]
            out[b]["tokens"][cond] = members[b].tolist()
    return out


def _lr(a, b) -> float:
    return float(np.log(a) - np.log(b))


def run(ctx) -> Output:
    m = ctx.model
    L = m.cfg.num_layers
    rows, members = [], []
    for p, r in ctx.map_batched(lambda ps: measure_batch(m, ps, ctx.seed), batch=8):
        a0 = {c: r[c][:, 0].mean() for c in CONDITIONS}  # member 0, mean over layers (heads done)
        row = {"prompt_id": p.id, "genre": p.genre, "probe_token": r["probe_token"],
               **{f"att_m0_{c}": a0[c] for c in CONDITIONS},
               "m0_top": _lr(a0["top"], a0["alone"]),
               "m0_spread": _lr(a0["spread"], a0["top"]),
               "m0_random": _lr(a0["random"], a0["alone"]),
               "m0_copies": _lr(a0["copies"], a0["alone"]),
               "m0_top_vs_random": _lr(a0["top"], a0["random"]),
               "sum_top": _lr(r["top"].sum(1).mean(), a0["alone"]),
               "sum_copies": _lr(r["copies"].sum(1).mean(), a0["alone"])}
        for layer in range(L):
            row[f"L{layer:02d}_m0_top"] = _lr(r["top"][layer, 0], r["alone"][layer, 0])
            row[f"L{layer:02d}_m0_spread"] = _lr(r["spread"][layer, 0], r["top"][layer, 0])
        rows.append(row)
        for c in CONDITIONS:
            for i, tok in enumerate(r["tokens"][c]):
                members.append({"prompt_id": p.id, "genre": p.genre, "condition": c, "member": i,
                                "token": tok, "attention": float(r[c][:, i].mean())})
    _figure(ctx, rows, L)
    return Output(rows=rows, tables={"members": members})


def _figure(ctx, rows, L):
    from experiments.plotting import ci_bars, pyplot
    from tempo_jax import stats as S

    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    cols = ["m0_top", "m0_random", "m0_copies", "m0_spread", "sum_top", "sum_copies"]
    mean, err = ci_bars([S.bootstrap_ci([r[c] for r in rows], n_boot=1999) for c in cols])
    ax[0].bar(range(len(cols)), mean, yerr=err, capsize=3)
    ax[0].axhspan(-MARGIN, MARGIN, color="grey", alpha=0.2, label="+-10%")
    ax[0].set_xticks(range(len(cols)), cols, rotation=30)
    ax[0].set_ylabel("log ratio (mean over prompts, 95% BCa)")
    ax[0].set_title(f"RQ 1.1c: member 0's attention, {len(rows)} prompts")
    ax[0].legend()
    for c, lab in (("m0_top", "top set vs alone"), ("m0_spread", "spread vs shared")):
        v = np.asarray([[r[f"L{layer:02d}_{c}"] for layer in range(L)] for r in rows])
        ax[1].plot(range(L), v.mean(0), marker=".", label=lab)
    ax[1].axhspan(-MARGIN, MARGIN, color="grey", alpha=0.2)
    ax[1].set_xlabel("layer")
    ax[1].set_ylabel("log ratio, mean over prompts")
    ax[1].set_title("per layer")
    ax[1].legend()
    ctx.figure(fig, "member0")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    pct = lambda t: (f"{100 * (np.exp(t.estimate) - 1):+.0f}% [{100 * (np.exp(t.lo) - 1):+.0f}, "  # noqa: E731
                     f"{100 * (np.exp(t.hi) - 1):+.0f}]")
    parts = [f"1.1: member 0 inside a set of 5 top-ranked tokens at its position vs alone: {pct(by['m0_top'])} "
             f"({by['m0_top'].verdict})",
             f"1.2: the same set at distinct recency-matched positions vs shared: {pct(by['m0_spread'])} "
             f"({by['m0_spread'].verdict})",
             f"with random others {pct(by['m0_random'])} ({by['m0_random'].verdict}), with copies "
             f"{pct(by['m0_copies'])} ({by['m0_copies'].verdict}); top vs random others "
             f"{pct(by['m0_top_vs_random'])} ({by['m0_top_vs_random'].verdict})",
             f"summed attention of the top set vs member 0 alone {pct(by['sum_top'])} ({by['sum_top'].verdict}), "
             f"of five copies {pct(by['sum_copies'])} ({by['sum_copies'].verdict})"]
    return "; ".join(parts) + "."
