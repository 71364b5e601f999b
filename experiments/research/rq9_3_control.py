"""RQ 9.3: can a bias on the attention logits toward (or away from) a span of the prompt steer a
whole TEMPO generation toward (or away from) that span's content, and at what cost in quality?

Per prompt, one span chosen by a fixed rule (no hand-picking; :func:`attn_control.rule_span`):
facts -> the subject ("The capital of <S> is", "<S> is a city in"); code -> the first defined name
(``def`` / ``class``); prose -> the longest word (not the first word). The span's tokens, minus the
attention sink (slot 0), are the target. Control: an equally long contiguous block of other prompt
tokens (not the span, not the sink), chosen at random per prompt.

Worlds (one vmapped program per prompt, :func:`attn_control.bias_worlds`): a bias b in
{-4, -2, 0, +2, +4} added to the attention logits of every generated query, in EVERY layer and
head, on the span's slots; and the same doses on the control block (b = 0 is shared). The prompt is
prefilled without bias, so only the generation is steered.

Outcomes per world (clean continuation, EOS cut): presence = fraction of its tokens whose id is one
of the span's token ids; span mass = mean over steps of the probability the step's above-threshold
members put on span token ids; quality = self-perplexity, repeated 3-gram rate, facts accuracy.
Dose-response per prompt: OLS slope of presence vs b (per unit of bias).
"""

from __future__ import annotations

import functools

import numpy as np

from experiments.research import attn_control as A
from experiments.research import wording
from tempo_jax.research import Design, Hypothesis, Output, quality_of
from tempo_jax import quality as Q
from tempo_jax import stats as S

DOSES = (-4.0, -2.0, 0.0, 2.0, 4.0)
GEN = dict(max_steps=16, threshold=0.1, max_width=8, prune=False)
PPL_MARGIN = float(np.log(1.1))
SLOPE_MARGIN = 0.005  # presence per unit of bias: 4 points of presence over the b range of 8

DESIGN = Design(
    id="rq9.3",
    questions=("9.3",),
    title="Controllable generation: attention bias toward or away from a prompt span (dose-response)",
    primary_metric="presence of the span in the generation: fraction of the clean continuation's "
                   "tokens whose id is a span token id; per-prompt OLS slope vs the bias (per unit)",
    contrast="bias b in {-4,-2,0,+2,+4} on the span's slots (all layers, all heads, generated "
             "queries only) vs the same doses on an equally long random block of other prompt tokens",
    hypotheses=(
        Hypothesis("H1", "presence rises with the bias on the span (slope > 0)", "slope_span", ">0",
                   margin=SLOPE_MARGIN),
        Hypothesis("H2", "the rise is specific to the span: slope of span presence under the span "
                         "bias minus under the control bias > 0", "slope_span_minus_ctrl", ">0",
                   margin=SLOPE_MARGIN),
        Hypothesis("M", "span mass among the above-threshold members rises with the span bias",
                   "slope_mass", ">0", family="secondary", margin=SLOPE_MARGIN),
        Hypothesis("MC", "span mass slope: span bias minus control bias", "slope_mass_minus_ctrl",
                   ">0", family="secondary", margin=SLOPE_MARGIN),
        Hypothesis("Q", "self-perplexity at b = +-4 vs b = 0 (log ratio; within +-log 1.1)",
                   "lppl_*", "=0", family="quality"),
        Hypothesis("R", "repeated 3-gram rate at b = +-4 minus b = 0 (within +-0.05)", "rep3_*",
                   "=0", family="quality", margin=0.05),
        Hypothesis("F", "facts accuracy at b = +-4 minus b = 0 (within +-0.1)", "correct_*", "=0",
                   family="quality", margin=0.10),
    ),
    margin=PPL_MARGIN,
    margin_note="log(1.1) for self-perplexity log ratios; 0.05 for repeat rate; 0.1 for facts "
                "accuracy; 0.005 per unit of bias for presence and mass slopes",
    metrics=("slope_span", "slope_span_minus_ctrl", "slope_mass", "slope_mass_minus_ctrl",
             "lppl_*", "rep3_*", "correct_*", "rho_span", "span_len", "pres_*", "ppl_*"),
    families={"primary": "holm", "secondary": "holm", "quality": "holm"},
    n_per_genre=10,
    quick_n=1,
    caveats=(
        "Spans are chosen by a rule per genre (subject / first defined name / longest word), so "
        "their kind differs by genre; the sink (slot 0) is never biased, so a span starting the "
        "prompt loses its first token.",
        "Presence counts token ids, not meaning: a span id that is a common sub-word (e.g. ' un') "
        "also counts when it appears in another word.",
        "Only the generated tokens' queries are biased (the prompt is prefilled without bias), in "
        "every layer and head with the same b; a layer band was not tried.",
        "Self-perplexity is the model judging its own text; a bias that makes the model copy the "
        "span can lower it while the text gets worse (repetition is reported next to it).",
        "Facts accuracy and its contrasts come from the facts prompts only (n = 10).",
        "n = 10 prompts per genre (30) to fit the compute budget (9 generations of 16 steps each).",
    ),
    config={"doses": DOSES, "generation": GEN, "layers": "all", "heads": "all",
            "control": "random contiguous block of other prompt tokens, same length, no sink",
            "slope": "OLS of outcome on b over the 5 doses"},
)


def _slope(x, y) -> float:
    y = np.asarray(y, np.float64)
    if not np.isfinite(y).all():
        return float("nan")
    return float(np.polyfit(np.asarray(x, np.float64), y, 1)[0])


def _presence(trace, span_ids: set, eos) -> tuple[float, float]:
    """(fraction of clean-continuation tokens in span_ids, mean per-step member mass on them)."""
    cont = Q.clean_continuation_ids(trace, eos)
    pres = float(np.mean([t in span_ids for t in cont])) if cont else float("nan")
    a = trace.arrays
    n = len(a["set_n"])
    if n == 0:
        return pres, float("nan")
    hit = np.isin(a["tokens"], list(span_ids)) & a["valid"].astype(bool)
    return pres, float(np.sum(a["probs"] * hit) / n)


def measure_prompt(m, p, seed: int) -> dict | None:
    """All worlds of one prompt -> per-world outcomes, or None when no span is found."""
    from tempo_jax.engine import GenerationConfig

    enc = m.tokenizer(p.prompt, return_offsets_mapping=True)
    ids = list(enc.input_ids)
    sp = A.rule_span(p.prompt, p.genre)
    if sp is None:
        return None
    span = A.token_span(enc.offset_mapping, *sp)
    span = span[span != 0]
    if not len(span):
        return None
    rng = np.random.default_rng(seed)
    block = A.random_block(len(ids), span, rng)
    g = GenerationConfig(**GEN)
    K = A.check_request(m.cfg, g, ids)
    L = m.cfg.num_layers
    on_span = np.zeros(K, bool)
    on_span[span] = True
    on_ctrl = np.zeros(K, bool)
    if block is not None:
        on_ctrl[block] = True
    nz = [d for d in DOSES if d != 0]
    slots = np.stack([on_span] * len(DOSES) + [on_ctrl] * len(nz))
    values = list(DOSES) + nz
    bias = A.span_bias(L, K, slots, values)
    traces = A.bias_worlds(m.params, m.cfg, ids, g, len(values), lambda s, h: bias)
    span_ids = {int(ids[i]) for i in span}
    eos = m.cfg.eos_token_ids or ()
    worlds = []
    for b, (v, tr) in enumerate(zip(values, traces)):
        cond = "span" if b < len(DOSES) else "ctrl"
        if cond == "ctrl" and block is None:
            worlds.append({"cond": cond, "b": v, "pres": np.nan, "mass": np.nan, "self_ppl": np.nan,
                           "repeat_3": np.nan, "correct": np.nan, "text": ""})
            continue
        pres, mass = _presence(tr, span_ids, eos)
        q = quality_of(m, p, tr)
        worlds.append({"cond": cond, "b": v, "pres": pres, "mass": mass, "self_ppl": q["self_ppl"],
                       "repeat_3": q["repeat_3"], "correct": q.get("correct", np.nan),
                       "text": m.tokenizer.decode(Q.clean_continuation_ids(tr, eos))})
    return {"span_text": p.prompt[sp[0]:sp[1]], "span": span.tolist(),
            "block": None if block is None else block.tolist(), "worlds": worlds}


def run(ctx) -> Output:
    m = ctx.model
    rows, dose_rows, texts = [], [], []

    def one(p):
        seed = int.from_bytes(p.id.encode()[-8:].rjust(8, b"\0"), "little") ^ ctx.seed
        return measure_prompt(m, p, seed % (2 ** 63))

    skipped = []
    for p, r in ctx.map(one):
        if r is None:
            skipped.append(p.id)
            continue
        w = r["worlds"]
        span_w = {x["b"]: x for x in w if x["cond"] == "span"}
        ctrl_w = {**{x["b"]: x for x in w if x["cond"] == "ctrl"}, 0.0: span_w[0.0]}
        get = lambda ws, k: [ws[d][k] for d in DOSES]
        row = {"prompt_id": p.id, "genre": p.genre, "span_len": len(r["span"])}
        row["slope_span"] = _slope(DOSES, get(span_w, "pres"))
        sc = _slope(DOSES, get(ctrl_w, "pres"))
        row["slope_span_minus_ctrl"] = row["slope_span"] - sc
        row["slope_mass"] = _slope(DOSES, get(span_w, "mass"))
        row["slope_mass_minus_ctrl"] = row["slope_mass"] - _slope(DOSES, get(ctrl_w, "mass"))
        pres = np.asarray(get(span_w, "pres"))
        row["rho_span"] = _spearman(DOSES, pres)
        for d in DOSES:
            tag = f"{'m' if d < 0 else 'p'}{abs(int(d))}"
            row[f"pres_span_{tag}"] = span_w[d]["pres"]
            row[f"pres_ctrl_{tag}"] = ctrl_w[d]["pres"]
            row[f"ppl_span_{tag}"] = span_w[d]["self_ppl"]
        base = span_w[0.0]
        for d, tag in ((4.0, "p4"), (-4.0, "m4")):
            x = span_w[d]
            row[f"lppl_{tag}"] = float(np.log(x["self_ppl"] / base["self_ppl"]))
            row[f"rep3_{tag}"] = x["repeat_3"] - base["repeat_3"]
            if p.genre == "facts":
                row[f"correct_{tag}"] = x["correct"] - base["correct"]
        rows.append(row)
        for x in w:
            dose_rows.append({"prompt_id": p.id, "genre": p.genre, "span": r["span_text"],
                              "cond": x["cond"], "b": x["b"], "presence": x["pres"], "mass": x["mass"],
                              "self_ppl": x["self_ppl"], "repeat_3": x["repeat_3"],
                              "correct": x["correct"]})
        for x in w:
            if x["cond"] == "span" and x["b"] in (-4.0, 0.0, 4.0):
                texts.append({"prompt_id": p.id, "span": r["span_text"], "b": x["b"],
                              "continuation": x["text"][:200]})
    notes = []
    if skipped:
        notes.append(f"No span found by the rule (or only the sink) for {len(skipped)} prompts, left "
                     f"out: {', '.join(skipped)}.")
    notes.append(_dose_note(dose_rows))
    _figure(ctx, dose_rows)
    return Output(rows=rows, tables={"doses": dose_rows, "examples": texts}, notes=notes)


def _spearman(x, y) -> float:
    from scipy.stats import spearmanr

    y = np.asarray(y, np.float64)
    if not np.isfinite(y).all() or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _dose_means(dose_rows, cond, key):
    out = []
    for d in DOSES:
        v = [r[key] for r in dose_rows if (r["cond"] == cond or (d == 0 and r["cond"] == "span"))
             and r["b"] == d and np.isfinite(r[key])]
        out.append(S.bootstrap_ci(v, n_boot=1999) if len(v) > 1 else
                   {"mean": float("nan"), "lo": float("nan"), "hi": float("nan")})
    return out


def _dose_note(dose_rows) -> str:
    sp = _dose_means(dose_rows, "span", "presence")
    ct = _dose_means(dose_rows, "ctrl", "presence")
    f = lambda s: f"{s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]"
    return ("Mean presence (fraction of continuation tokens that are span token ids, BCa 95% CI over "
            "prompts) by bias: span bias " + "; ".join(f"b={d:+g}: {f(s)}" for d, s in zip(DOSES, sp))
            + ". Control bias: " + "; ".join(f"b={d:+g}: {f(s)}" for d, s in zip(DOSES, ct)) + ".")


def _figure(ctx, dose_rows):
    from experiments.plotting import ci_bars, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = (("presence", "presence of span tokens\n(fraction of continuation)", False),
              ("mass", "span mass among members\n(per step)", False),
              ("self_ppl", "self-perplexity", True), ("repeat_3", "repeated 3-gram rate", False))
    x = np.asarray(DOSES)
    for a, (key, label, log) in zip(ax, panels):
        for cond, off, lab in (("span", -0.08, "bias on the span"), ("ctrl", 0.08, "bias on a random block")):
            st = _dose_means(dose_rows, cond, key)
            mean, err = ci_bars(st)
            a.errorbar(x + off, mean, yerr=err, marker="o", capsize=3, label=lab)
        a.set_xlabel("attention-logit bias b (all layers)")
        a.set_title(label, fontsize=10)
        a.set_xticks(x)
        if log:
            a.set_yscale("log")
    ax[0].legend(fontsize=8)
    n = len({r["prompt_id"] for r in dose_rows})
    fig.suptitle(f"RQ 9.3 dose-response: {n} prompts, mean with 95% BCa CI over prompts", y=1.02)
    fig.tight_layout()
    ctx.figure(fig, "dose_response")


_NAMES = {"lppl_p4": "self-perplexity at +4", "lppl_m4": "self-perplexity at -4",
          "rep3_p4": "repetition at +4", "rep3_m4": "repetition at -4",
          "correct_p4": "facts accuracy at +4", "correct_m4": "facts accuracy at -4"}


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    ci = lambda t: f"{t.estimate:+.3g} [{t.lo:+.3g}, {t.hi:+.3g}]"
    h1, h2 = by["slope_span"], by["slope_span_minus_ctrl"]

    said = functools.partial(wording.said, same="does not detectably change (within +-0.005 per unit of bias)")

    q = [t for t in tests if t.family == "quality"]
    part = lambda ts: ", ".join(f"{_NAMES.get(t.column, t.column)} {ci(t)}" for t in ts)
    diff = [t for t in q if t.verdict.startswith("differs")]
    same = [t for t in q if t.verdict.startswith("no effect")]
    open_ = [t for t in q if t not in diff and t not in same]
    qs = []
    if diff:
        qs.append("differs for " + part(diff))
    if same:
        qs.append("is unchanged within the margin for " + part(same))
    if open_:
        qs.append("cannot tell at this n for " + part(open_))
    return (f"A bias on the attention logits of a prompt span (all layers, b from -4 to +4, "
            f"generated queries only) {said(h1, 'raises', 'lowers', 'has no detectable effect on')} "
            f"the share of generated tokens that are span tokens (per-prompt OLS slope per unit of "
            f"bias {ci(h1)}, {h1.verdict}); compared with the same bias on a random block of other "
            f"prompt tokens, span presence "
            f"{said(h2, 'rises more', 'rises less', 'cannot be told apart')} (slope difference "
            f"{ci(h2)}, {h2.verdict}). Quality at b = +-4 vs 0 (log self-perplexity ratio, "
            f"difference in repeated 3-gram rate and facts accuracy; Holm) " + "; ".join(qs) + ".")
