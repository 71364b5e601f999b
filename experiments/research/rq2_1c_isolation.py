"""RQ 2.1, confirmatory: does blocking attention between parallel tokens change how well TEMPO's
state predicts the human text? Teacher-forced along the reference, so every sibling rule sees the
same sequence.

The exploratory rq2.1 compared free generations by their self-perplexity (the model judging its
own text, and the three generations diverge after their first different set). Here, per prompt and
sibling rule (isolated, visible, full), TEMPO runs along the reference continuation R: at step s the
engine's distribution d_s (computed from the prompt and the sets of steps < s) scores the reference
token, NLL_s = -log d_s(R[s]); then R[s] is forced into the step's set as member 0 (rq4.3's
``forced_dist``: made the most probable; the model's other candidates >= tau join it), so the clean
path stays on the reference and the sets around it are the model's own. d_{s+1} is member 0's own
next-token distribution (``combine="top"``), so the siblings act only through attention: the
sibling rule at step s, and every later query's attention to all earlier members. The outcome is the mean
NLL per reference token: a likelihood of text the model did not write, the same text under every
rule. Also: the NLL of the same tokens with a plain one-token-per-position context (the ordinary
language-model NLL), the cost of having parallel members in the context at all.
"""

from __future__ import annotations

import numpy as np

from experiments.research.rq3_1c_reference import reference_ids
from experiments.research.rq4_3_error_correction import forced_dist
from tempo_jax.research import Design, Hypothesis, Output

RULES = ("isolated", "visible", "full")
HORIZON = 16
GEN = dict(threshold=0.05, max_width=8, prune=False, combine="top")
MARGIN = 0.1  # nats per token (about 10% perplexity, the exploratory rq2.1's margin)

DESIGN = Design(
    id="rq2.1c",
    questions=("2.1",),
    title="Confirmatory: sibling visibility and TEMPO's likelihood of the reference text (teacher-forced)",
    primary_metric="mean NLL (nats per token) of the reference continuation's tokens under TEMPO's "
                   "step distributions, teacher-forced; per-prompt difference full - isolated",
    contrast="siblings see every sibling (full) vs none (isolated), same prompt, same reference path",
    hypotheses=(
        Hypothesis("H1", "letting siblings see each other (full) raises the NLL of the human text "
                         "(by more than 0.1 nats per token)", "dnll_full", ">0"),
        Hypothesis("S1", "visible siblings (members see lower-index siblings) change the NLL by less "
                         "than +-0.1 nats per token", "dnll_visible", "=0", family="secondary"),
        Hypothesis("S2", "parallel members in the context (isolated TEMPO) raise the NLL of the human "
                         "text over a one-token-per-position context", "dnll_isolated_vs_single", ">0",
                   family="secondary"),
        Hypothesis("S3", "mean set size along the reference differs between full and isolated by less "
                         "than 0.2 members", "dsize_full", "=0", family="secondary", margin=0.2),
    ),
    margin=MARGIN,
    margin_note="0.1 nats per reference token (about 10% perplexity); 0.2 members for set size",
    metrics=("dnll_*", "dsize_*", "nll_*", "size_*", "n_tokens"),
    families={"primary": "holm", "secondary": "holm"},
    split="confirm",
    n_per_genre=40,
    quick_n=10,
    # the pilots ask for 371 prompts (Gemma 3's per-prompt SD of dnll_full is 0.6 nats at a smallest
    # effect of 0.1); three teacher-forced TEMPO runs per prompt take 6-10 s on 2 cores, so 120
    # prompts is what the session's compute allows: declared exploratory before it runs
    exploratory=True,
    caveats=(
        "Teacher-forced: the reference token is forced in as member 0 at every step (the clean path), "
        "the model's other candidates >= tau (at most 8) join it, no pruning; a free generation's "
        "sets would follow the model's own text instead.",
        "The next distribution is member 0's own (combine 'top'), not TEMPO's default mixture over "
        "members: the outcome isolates what the siblings do through attention.",
        f"The first {HORIZON} reference tokens (facts: the gold answer, 1-3 tokens).",
        "NLL is the model's probability of text it did not write, identical across rules: a "
        "reference-based likelihood, not self-perplexity of generated text.",
    ),
    config={"generation": GEN, "rules": RULES, "horizon": HORIZON, "forcing": "rq4.3 forced_dist, member 0"},
)


def forced_run(m, prompt_ids, ref_ids, rule: str, **overrides) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TEMPO along ``ref_ids`` under sibling ``rule`` (``overrides``: other GenerationConfig fields than
    GEN's) -> per step: NLL of the reference token, set size, and whether the reference token was in
    the model's own set before it was forced (probability >= the step's threshold, within the top W)."""
    from tempo_jax.engine import GenerationConfig, generate

    steps = len(ref_ids)
    g = GenerationConfig(**(GEN | overrides), max_steps=steps, min_steps=steps, siblings=rule)
    spec, inputs = g.static(), g.inputs(m.cfg)
    nll = np.full(steps, np.nan)
    covered = np.zeros(steps, bool)

    def force(s, st):
        d = np.asarray(st.dist, np.float64)
        r = int(ref_ids[s])
        nll[s] = -np.log(max(d[r], 1e-30))
        covered[s] = d[r] >= float(inputs.thresholds[s]) and int((d > d[r]).sum()) < g.max_width
        fd = forced_dist(st.dist, r)
        return st.replace(dist=fd, next_n=spec.selection.count(fd, inputs.thresholds[s]))

    tr = generate(m.params, m.cfg, list(prompt_ids), g, inputs=inputs, before_step=force)
    tokens = np.asarray(tr.arrays["tokens"])[:steps, 0]
    if not np.array_equal(tokens, np.asarray(ref_ids)):
        raise RuntimeError(f"the clean path left the reference ({tokens.tolist()} vs {list(ref_ids)})")
    return nll, np.asarray(tr.arrays["set_n"])[:steps].astype(np.float64), covered


def single_nll(m, prompt_ids, ref_ids) -> np.ndarray:
    """NLL of each reference token with the ordinary one-token-per-position context."""
    import jax
    import jax.numpy as jnp

    from experiments.research.reference_sets import BUCKET, all_logits

    ids = np.asarray(list(prompt_ids) + list(ref_ids), np.int32)
    tb = -(-len(ids) // BUCKET) * BUCKET
    logits, _ = all_logits(m.params, m.cfg, jnp.asarray(np.pad(ids, (0, tb - len(ids)))), tb)
    P = len(prompt_ids)
    lp = np.asarray(jax.nn.log_softmax(logits[P - 1:len(ids) - 1], -1), np.float64)
    return -lp[np.arange(len(ref_ids)), np.asarray(ref_ids)]


def run(ctx) -> Output:
    m = ctx.model

    def one(p):
        pi, ri = reference_ids(m.tokenizer, p.prompt, p.reference, p.genre)
        ri = ri[:HORIZON]
        out = {"single": single_nll(m, pi, ri)}
        for rule in RULES:
            out[rule] = forced_run(m, pi, ri, rule)
        return out

    rows = []
    for p, r in ctx.map(one):
        nll = {k: float(np.mean(r[k][0])) for k in RULES}
        size = {k: float(np.mean(r[k][1])) for k in RULES}
        single = float(np.mean(r["single"]))
        rows.append({"prompt_id": p.id, "genre": p.genre, "n_tokens": len(r["single"]),
                     **{f"nll_{k}": v for k, v in nll.items()}, "nll_single": single,
                     **{f"size_{k}": v for k, v in size.items()},
                     "dnll_full": nll["full"] - nll["isolated"], "dnll_visible": nll["visible"] - nll["isolated"],
                     "dnll_isolated_vs_single": nll["isolated"] - single,
                     "dsize_full": size["full"] - size["isolated"]})
    return Output(rows=rows)


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    f = lambda t: f"{t.estimate:+.3f} [{t.lo:+.3f}, {t.hi:+.3f}] nats/token ({t.verdict})"  # noqa: E731
    return (f"Teacher-forced along the human text, full sibling visibility vs isolation changes TEMPO's "
            f"NLL of the reference tokens by {f(by['dnll_full'])}; visible vs isolated {f(by['dnll_visible'])}; "
            f"isolated TEMPO vs a one-token context {f(by['dnll_isolated_vs_single'])}; set size full - "
            f"isolated {by['dsize_full'].estimate:+.2f} members ({by['dsize_full'].verdict}).")
