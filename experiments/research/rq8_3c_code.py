"""RQ 8.3, confirmatory: does MCTS over TEMPO's sets write code that parses more often than TEMPO at
the same forward-token spend? On the confirm split, both families, n from the power analysis.

rq8.3b compared five decoders on 8 code prompts (every test "cannot tell"). This run keeps its
settings (14 generated tokens; TEMPO tau 0.1, max width 4, clean path; MCTS over TEMPO sets with
rollouts of 3, c_uct 1, mean log-probability value, search budget matched so that search plus the
final completion feeds no more tokens than TEMPO did on the same prompt; beam width 4) and its
outcome, ``quality.parses(prompt + continuation)`` (0/1, a Python parser: the text cut to whole
lines, a trailing block opener given a ``pass`` body), which does not come from the model under
test. MCTS at beam's spend (rq8.3b's mcts_b) is left out, so that the powered n fits two cores.

ONE primary test: d_mcts_t_tempo = parse(MCTS at TEMPO's spend) - parse(TEMPO) > 0 per prompt
(smallest effect of interest 10 points). Secondary (Holm): TEMPO parses as often as greedy within
10 points (rq8.3b's C3); beam parses more often than greedy (rq8.3b's C4); the hybrid parses more
often than greedy.
"""

from __future__ import annotations

from experiments.research import rq8_3_hybrids as H
from experiments.research import wording
from experiments.research.rq8_3b_code import STEPS, evaluate_prompt
from tempo_jax.research import Design, Hypothesis, Output

METHODS = ("greedy", "tempo", "beam", "mcts_t")
SESOI = 0.10

DESIGN = Design(
    id="rq8.3c",
    questions=("8.3",),
    title="Confirmatory: MCTS over TEMPO sets vs TEMPO at matched forward-token spend, code parse rate",
    primary_metric="quality.parses(prompt + continuation), 0/1 per prompt (a Python parser, not the model)",
    contrast="per prompt, paired: MCTS over TEMPO sets at TEMPO's own forward-token spend minus TEMPO; "
             "TEMPO, beam (4) and the hybrid each minus greedy",
    hypotheses=(
        Hypothesis("P", "MCTS over TEMPO sets at TEMPO's own spend writes code that parses more often than "
                        "TEMPO", "d_mcts_t_tempo", ">0", sesoi=SESOI, bound=1.0),
        Hypothesis("S1", "TEMPO parses as often as greedy (within 10 points)", "d_tempo_greedy", "=0",
                   family="secondary", bound=1.0),
        Hypothesis("S2", "beam (width 4) parses more often than greedy", "d_beam_greedy", ">0",
                   family="secondary", bound=1.0),
        Hypothesis("S3", "the hybrid parses more often than greedy", "d_mcts_t_greedy", ">0",
                   family="secondary", bound=1.0),
    ),
    margin=SESOI,
    margin_note="10 points of parse rate",
    metrics=("d_*", "parse_*", "cost_*", "over_mcts_t"),
    families={"primary": "holm", "secondary": "holm"},
    split="confirm",
    genres=("code",),
    n_per_genre=200,  # the pilots ask for 199 (SmolLM2 and Gemma 3 dev pilots, 16 code prompts each)
    quick_n=16,
    caveats=(
        "14 generated tokens (rq8.3b's setting): a continuation is cut to whole lines before parsing, so a "
        "short one can parse because little of it is kept; parse rate is a floor on syntax, not a measure "
        "of whether the code is right.",
        "One MCTS configuration (rq8.3b's) and one spend (TEMPO's own on each prompt); MCTS at beam's "
        "spend is not rerun.",
        "The prompts are docstring-led Python stubs of the standard library (the corpus' code genre).",
    ),
    config={"steps": STEPS, "width": H.WIDTH, "tau": H.TAU, "beam_width": H.BEAM_W, "methods": METHODS,
            "mcts": {"rollout_len": H.ROLLOUT, "c_uct": H.C_UCT, "value": "mean log-prob",
                     "budget": "TEMPO's forward tokens on the prompt - (steps - 2)"}},
)


def row_of(r: dict) -> dict:
    """Per-prompt columns from :func:`rq8_3b_code.evaluate_prompt`'s result."""
    c, k = r["parse"], r["cost"]
    row = {f"parse_{n}": c[n] for n in METHODS}
    row.update({f"cost_{n}": k[n] for n in METHODS})
    row.update(d_mcts_t_tempo=c["mcts_t"] - c["tempo"], d_tempo_greedy=c["tempo"] - c["greedy"],
               d_beam_greedy=c["beam"] - c["greedy"], d_mcts_t_greedy=c["mcts_t"] - c["greedy"],
               over_mcts_t=k["mcts_t"] - k["tempo"])
    return row


def run(ctx) -> Output:
    rows, texts = [], []
    for p, r in ctx.map(lambda p: evaluate_prompt(ctx.model, p, METHODS)):
        rows.append({"prompt_id": p.id, "genre": p.genre, **row_of(r)})
        texts.append({"prompt_id": p.id, **r["text"]})
    rate = {n: 100 * sum(r[f"parse_{n}"] for r in rows) / max(len(rows), 1) for n in METHODS}
    cost = {n: sum(r[f"cost_{n}"] for r in rows) / max(len(rows), 1) for n in METHODS}
    over = sum(r["over_mcts_t"] > 0 for r in rows)
    notes = ["Parse rates: " + ", ".join(f"{n} {rate[n]:.1f}%" for n in METHODS) + "; mean forward tokens: "
             + ", ".join(f"{n} {cost[n]:.1f}" for n in METHODS)
             + f"; prompts where MCTS spent more than TEMPO: {over}."]
    return Output(rows=rows, tables={"outputs": texts}, notes=notes)


def answer(tests, design) -> str:
    said = {"P": "Primary test P: MCTS over TEMPO sets at TEMPO's own spend minus TEMPO, code parse rate",
            "S1": "TEMPO minus greedy", "S2": "beam (width 4) minus greedy", "S3": "the hybrid minus greedy"}
    return wording.listed(tests, said, lambda t: wording.ci(t, 1, 100, " points")) + "."
