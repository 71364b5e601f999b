"""RQ 4.3: error correction. A wrong token is forced into the step-0 set; does the rest of the
generation recover, under TEMPO (the wrong member forced IN ADDITION to the model's own candidates)
and under greedy (the wrong token forced as the only token)?

Forcing (:func:`generate_forced`): at step ``s`` the step's distribution d_s is edited before
selection so that the forced token w gets ``max(d_s[w], 1.001 max(d_s) + 1e-6)``, every other token
keeping its own probability (no renormalisation). TEMPO's threshold selection then keeps w as member
0 (the clean path's step-s choice, most probable first) together with every token the model itself
put above tau_s (one may drop out when the set was already at the width cap W); greedy's argmax is
w alone. The mixture combine weights w by its edited probability. Steps before s are untouched (the
prefill and the earlier steps run exactly as without forcing; tests/experiments/test_rq4_3_forcing.py).

Facts: w = the most probable step-0 token that reads as a capitalised word (a competing name), is not
the gold's first token and is not a prefix of the gold or an alias (normalised text). Recovery =
the gold or an alias appears as whole words anywhere in the clean continuation (normalised);
coverage afterwards = the gold's first token is a member of some set at steps >= 1.
Code: w = an unmatched closing bracket (")" unless the prompt has an open "(", then "]" or "}")
forced at step 0, where the body's first line starts; recovery = ``quality.parses`` of prompt +
clean continuation.

Conditions: TEMPO (tau 0.1, W 8, no pruning), TEMPO with retroactive pruning (relative, rho 0.8,
window 2: the clean path can leave the forced member once it is pruned) and greedy, each forced and
unforced (the unforced runs give the baseline rates), except TEMPO with pruning, which runs
forced only (compute budget).
"""

from __future__ import annotations

import numpy as np

from tempo_jax.research import Design, Hypothesis, Output
from tempo_jax import quality
from tempo_jax.engine import GenerationConfig

STEPS = {"facts": 10, "code": 10}  # one length: the three compiled specs serve both genres
BASE = dict(max_width=8, threshold=0.1)
CONDS = {
    "tempo": dict(BASE),
    "prune": dict(BASE, prune=True, prune_window=2, prune_rule="relative", prune_rho=0.8),
    "greedy": dict(BASE, method="greedy"),
}
MARGIN = 0.1
BREAKERS = ((")", "("), ("]", "["), ("}", "{"))

DESIGN = Design(
    id="rq4.3",
    questions=("4.3",),
    title="Error correction: a wrong token forced at step 0, recovery under TEMPO vs greedy",
    primary_metric="recovery rate after forcing (facts: gold or alias anywhere in the clean "
                   "continuation; code: prompt + clean continuation parses)",
    contrast="per prompt, recovery under TEMPO (wrong member forced in addition to the model's own "
             "candidates) minus recovery under greedy (wrong token forced alone), paired",
    hypotheses=(
        Hypothesis("F1", "facts: TEMPO recovers the gold more often than greedy after the same "
                         "wrong answer is forced", "d_recover_tempo", ">0"),
        Hypothesis("F2", "facts: TEMPO with pruning recovers more often than greedy",
                   "d_recover_prune", ">0"),
        Hypothesis("C1", "code: TEMPO parses more often than greedy after an unmatched bracket is "
                         "forced", "d_parse_tempo", ">0", bound=1.0),
        Hypothesis("C2", "code: TEMPO with pruning parses more often than greedy",
                   "d_parse_prune", ">0", bound=1.0),
        Hypothesis("A1", "with pruning, the clean path leaves the forced member at step 0 (it is "
                         "pruned) on some prompts", "avoid_prune", ">0", family="mechanism"),
        Hypothesis("V1", "facts: the gold's first token is a member of some later set more often "
                         "under TEMPO than greedy's clean path holds it", "d_cover_after_tempo", ">0",
                   family="mechanism"),
    ),
    margin=MARGIN,
    margin_note="0.1 (10 percentage points of recovery / parse rate)",
    metrics=("d_recover_*", "d_parse_*", "avoid_*", "d_cover_after_*", "recover_*", "parse_*",
             "cover_after_*", "base_*", "cover0_*", "forced_rank", "forced_prob"),
    families={"primary": "holm", "mechanism": "holm"},
    genres=("code", "facts"),
    n_per_genre=15,
    quick_n=2,
    caveats=(
        "The forced member is made the most probable member (rank 0), so under TEMPO without "
        "pruning the clean path always takes it at step 0: recovery can only come from later steps "
        "(the other members' keys and the mixture combine). With pruning it can also be left.",
        "Facts recovery counts the gold anywhere in the continuation (e.g. 'Paris, no, Kabul' "
        "counts); it is not the clean-path accuracy of the unforced runs, which starts at the answer.",
        "Code: a forced unmatched bracket on the clean path makes the parse fail whenever the "
        "generation finishes that line, so code recovery is nearly impossible unless pruning moves "
        "the clean path away; the contrast measures exactly that. A continuation that never ends the "
        "forced line within 10 steps is cut before it by quality.parses and counts as parsing.",
        "The facts wrong token is chosen by a fixed rule (most probable capitalised non-gold word "
        "token), not by hand; on some prompts it is the model's own argmax (the model was wrong "
        "anyway); forced_rank records its unforced rank.",
        "Small n (15 prompts per genre, 10 steps) to fit the 4-minute compute budget: differences "
        "under about 25 points cannot be told apart; equivalence within 10 points needs far more.",
    ),
    config={"steps": STEPS, "conditions": CONDS, "force_step": 0, "breakers": BREAKERS},
)


# --- forcing ------------------------------------------------------------------------------------
def forced_dist(dist, token: int):
    """d[V] -> d with ``d[token] = max(d[token], 1.001 max(d) + 1e-6)``, others unchanged."""
    import jax.numpy as jnp

    return dist.at[token].set(jnp.maximum(dist[token], 1.001 * dist.max() + 1e-6))


def generate_forced(params, mcfg, ids, gcfg: GenerationConfig, force: tuple[int, int] | None):
    """Host-driver ``engine.generate`` with token ``force[1]`` forced into the set of step
    ``force[0]`` by :func:`forced_dist` (a ``before_step`` edit of d_s and its member count);
    ``force=None`` is a plain run. Returns the Trace."""
    from tempo_jax.engine import generate
    from tempo_jax.errors import UsageError

    if force is not None and not (0 <= force[0] < gcfg.max_steps and 0 <= force[1] < mcfg.vocab_size):
        raise UsageError(f"force (step, token) {force} outside steps [0, {gcfg.max_steps}) or the vocabulary")
    if gcfg.compat != "none":
        raise UsageError("forcing supports the default (compat none) engine only")
    spec, inputs = gcfg.static(), gcfg.inputs(mcfg)

    def force_token(s, st):
        if s != force[0]:
            return st
        d = forced_dist(st.dist, force[1])
        return st.replace(dist=d, next_n=spec.selection.count(d, inputs.thresholds[s]))

    return generate(params, mcfg, ids, gcfg, inputs=inputs,
                    before_step=None if force is None else force_token)


# --- choosing the wrong token -------------------------------------------------------------------
def wrong_fact_token(dist, tokenizer, gold: str, aliases) -> int:
    """Most probable token that reads as a capitalised word (" Xyz"), is not the gold's first
    token and whose normalised text is not a prefix of the normalised gold or any alias."""
    gold_tok = quality.gold_first_token(tokenizer, gold)
    names = [quality.normalise_text(g) for g in (gold, *aliases) if quality.normalise_text(g)]
    for t in np.argsort(-np.asarray(dist))[:2000]:
        t = int(t)
        text = tokenizer.decode([t])
        word = text.strip()
        if t == gold_tok or not word[:1].isupper() or not word.isalpha():
            continue
        n = quality.normalise_text(text)
        if n and not any(g.startswith(n) for g in names):
            return t
    raise ValueError("no wrong capitalised token among the 2000 most probable")


def breaker_token(tokenizer, prompt: str) -> int:
    """An unmatched closing bracket for ``prompt``: the first of ) ] } whose opener is absent."""
    for close, opener in BREAKERS:
        if opener not in prompt and close not in prompt:
            ids = tokenizer.encode(close, add_special_tokens=False)
            if len(ids) == 1:
                return int(ids[0])
    ids = tokenizer.encode(")", add_special_tokens=False)
    return int(ids[0])


# --- measures -----------------------------------------------------------------------------------
def contains_answer(text: str, gold: str, aliases=()) -> bool:
    """The normalised gold or an alias occurs as whole words in the normalised text."""
    c = f" {quality.normalise_text(text)} "
    return any(quality.normalise_text(g) and f" {quality.normalise_text(g)} " in c
               for g in (gold, *aliases))


def _text(m, trace) -> str:
    cont = quality.clean_continuation_ids(trace, m.cfg.eos_token_ids or ())
    return quality._continuation_text(m.tokenizer, trace.prompt_ids, cont)


def covered_after(trace, token: int) -> bool:
    """``token`` is a member of some set at steps >= 1."""
    return any(mm["token"] == token for st in trace.steps()[1:] for mm in st["members"])


def step0_member0_alive(trace) -> bool:
    """Member 0 of step 0 (the forced one) was never pruned, i.e. it is the clean path's choice."""
    st = trace.steps()[0]["members"]
    return not st[0]["pruned"]


def one_prompt(m, p, seed: int) -> dict:
    """All six runs of one prompt -> its row."""
    import jax

    ids = m.tokenizer(p.prompt).input_ids
    steps = STEPS[p.genre]
    row: dict = {}
    g0 = GenerationConfig(**CONDS["greedy"], max_steps=steps, seed=seed)
    if p.genre == "facts":
        from tempo_jax.engine import core
        from tempo_jax.engine.run import _init, check_request, pad_prompt

        cap = check_request(m.cfg, g0, ids)
        st = _init[core](
            m.params, m.cfg, g0.static(), g0.inputs(m.cfg), pad_prompt(g0, ids),
            jax.numpy.int32(len(ids)), cap)
        dist = np.asarray(st.dist)
        w = wrong_fact_token(dist, m.tokenizer, p.reference, p.aliases)
        row["forced_rank"] = float((dist > dist[w]).sum())
        row["forced_prob"] = float(dist[w])
        gold_tok = quality.gold_first_token(m.tokenizer, p.reference)
    else:
        w = breaker_token(m.tokenizer, p.prompt)
    row["forced_text"] = m.tokenizer.decode([w])
    for name, kw in CONDS.items():
        g = GenerationConfig(**kw, max_steps=steps, seed=seed)
        for forced in ((True,) if name == "prune" else (False, True)):
            tr = generate_forced(m.params, m.cfg, ids, g, (0, w) if forced else None)
            text = _text(m, tr)
            if p.genre == "facts":
                ok = contains_answer(text, p.reference, p.aliases)
                cov = (covered_after(tr, gold_tok) if name != "greedy"
                       else gold_tok in tr.clean_ids()[1:])
                if forced:
                    row[f"recover_{name}"], row[f"cover_after_{name}"] = float(ok), float(cov)
                    row[f"cover0_{name}"] = float(any(mm["token"] == gold_tok
                                                      for mm in tr.steps()[0]["members"]))
                else:
                    row[f"base_{name}"] = float(ok)
            else:
                ok = quality.parses(p.prompt + text)
                row[f"parse_{name}" if forced else f"base_{name}"] = float(ok)
            if forced and name == "prune":
                row["avoid_prune"] = float(not step0_member0_alive(tr))
            if forced:
                row[f"text_{name}"] = text
    key = "recover" if p.genre == "facts" else "parse"
    for name in ("tempo", "prune"):
        row[f"d_{key}_{name}"] = row[f"{key}_{name}"] - row[f"{key}_greedy"]
        if p.genre == "facts":
            row[f"d_cover_after_{name}"] = row[f"cover_after_{name}"] - row["cover_after_greedy"]
    return row


def run(ctx) -> Output:
    m = ctx.model
    rows = []
    for p, r in ctx.map(lambda p: one_prompt(m, p, ctx.seed)):
        rows.append({"prompt_id": p.id, "genre": p.genre, **r})
    table = []
    for genre in ("facts", "code"):
        gr = [r for r in rows if r["genre"] == genre]
        if not gr:
            continue
        key = "recover" if genre == "facts" else "parse"
        for name in CONDS:
            table.append({"genre": genre, "condition": name, "n": len(gr),
                          "unforced_rate": float(np.mean([r.get(f"base_{name}", np.nan) for r in gr])),
                          "forced_rate": float(np.mean([r[f"{key}_{name}"] for r in gr]))})
    notes = [f"{t['genre']} {t['condition']}: {'gold in continuation' if t['genre'] == 'facts' else 'parses'} "
             f"{_pct(t['unforced_rate'])} unforced, "
             f"{100 * t['forced_rate']:.0f}% forced "
             f"(n = {t['n']})" for t in table]
    _figure(ctx, table)
    return Output(rows=rows, tables={"rates": table}, notes=notes)


def _pct(x: float) -> str:
    return "not run" if np.isnan(x) else f"{100 * x:.0f}%"


def _figure(ctx, table) -> None:
    from experiments.plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, genre in zip(axes, ("facts", "code")):
        t = [x for x in table if x["genre"] == genre]
        if not t:
            ax.set_visible(False)
            continue
        x = np.arange(len(t))
        ax.bar(x - 0.2, [r["unforced_rate"] for r in t], 0.4, label="unforced")
        ax.bar(x + 0.2, [r["forced_rate"] for r in t], 0.4, label="wrong token forced at step 0")
        ax.set_xticks(x, [r["condition"] for r in t])
        ax.set_ylim(0, 1)
        ax.set_ylabel("gold in continuation" if genre == "facts" else "prompt + continuation parses")
        ax.set_title(f"{genre} (n = {t[0]['n']} prompts)")
    axes[0].legend(fontsize=8, loc="upper right")
    ctx.figure(fig, "recovery")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    pts = lambda t: f"{100 * t.estimate:+.0f} points [{100 * t.lo:+.0f}, {100 * t.hi:+.0f}] ({t.verdict})"
    parts = []
    if "d_recover_tempo" in by:
        parts.append(f"facts recovery TEMPO - greedy {pts(by['d_recover_tempo'])}, "
                     f"with pruning - greedy {pts(by['d_recover_prune'])}")
    if "d_parse_tempo" in by:
        parts.append(f"code parse rate TEMPO - greedy {pts(by['d_parse_tempo'])}, "
                     f"with pruning - greedy {pts(by['d_parse_prune'])}")
    if "avoid_prune" in by:
        t = by["avoid_prune"]
        parts.append(f"pruning removed the forced member from the clean path on "
                     f"{100 * t.estimate:.0f}% [{100 * t.lo:.0f}, {100 * t.hi:.0f}] of prompts")
    return "After a wrong token is forced at step 0: " + "; ".join(parts) + "."
