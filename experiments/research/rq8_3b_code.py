"""RQ 8.3b: the code-parse arm of rq8.3 (TEMPO + MCTS at matched forward-token budget).

Same four decoders and budget accounting as rq8.3 (helpers imported from rq8_3_hybrids): greedy,
TEMPO (tau 0.1, W 4, clean path), beam (width 4), MCTS over TEMPO sets at TEMPO's own spend
("mcts_t") and at beam's spend ("mcts_b"), on CODE test prompts, STEPS generated tokens.
Outcome per prompt: ``quality.parses(prompt + continuation)`` (0/1): the text cut to whole
"\\n"-terminated lines, a trailing block opener given a ``pass`` body, then ``ast.parse``.
n = 8 code test prompts (the run takes about 2 minutes on 2 cores).
"""

from __future__ import annotations

from experiments.research import rq8_3_hybrids as H
from tempo_jax.research import Design, Hypothesis, Output
from tempo_jax import quality

STEPS = 14
MARGIN = 0.10
METHODS = ("greedy", "tempo", "beam", "mcts_t", "mcts_b")

DESIGN = Design(
    id="rq8.3b",
    questions=("8.3",),
    title="Hybrids, code arm: MCTS over TEMPO sets vs TEMPO vs beam vs greedy at matched "
          "forward-token budget, code parse rate",
    primary_metric="quality.parses(prompt + continuation), 0/1 per prompt",
    contrast="per prompt, paired: mcts_t - tempo, mcts_b - beam, tempo - greedy, beam - greedy",
    hypotheses=(
        Hypothesis("C1", "MCTS at TEMPO's spend parses more often than TEMPO", "d_mcts_t_tempo", ">0"),
        Hypothesis("C2", "MCTS at beam's spend parses more often than beam (4)", "d_mcts_b_beam", ">0"),
        Hypothesis("C3", "TEMPO parses as often as greedy (within 10 points)", "d_tempo_greedy", "=0"),
        Hypothesis("C4", "beam (4) parses more often than greedy", "d_beam_greedy", ">0"),
    ),
    margin=MARGIN,
    margin_note="0.10 (10 points) of parse rate",
    metrics=("d_*", "parse_*", "cost_*", "over_*"),
    families={"primary": "holm"},
    genres=("code",),
    n_per_genre=8,
    quick_n=1,
    caveats=("n = 8 code prompts: chosen from a one-prompt dev smoke run (about 16 s per prompt for "
             "all five decoders), so the run fits about 2 minutes; with 8 prompts and Holm over 4 "
             "tests only large parse-rate differences can be detected.",
             "14 generated tokens: some continuations stop mid-line; quality.parses cuts to whole "
             "lines, so a short continuation can parse trivially.",),
    config={"steps": STEPS, "width": H.WIDTH, "tau": H.TAU, "beam_width": H.BEAM_W,
            "mcts": {"rollout_len": H.ROLLOUT, "c_uct": H.C_UCT, "value": "mean log-prob"}},
)


def evaluate_prompt(m, p, methods=METHODS, steps: int = STEPS) -> dict:
    """Parse (0/1), forward-token cost and text of each of ``methods`` (a subset of :data:`METHODS`
    holding the decoders an MCTS arm is matched to) on one code prompt, ``steps`` generated tokens."""
    import dataclasses

    from tempo_jax.engine import GenerationConfig, generate
    from tempo_jax.engine.beam import beam_search
    from tempo_jax.search.mcts import MCTSConfig, search

    if not set(methods) <= set(METHODS) or ("mcts_t" in methods) > ("tempo" in methods) \
            or ("mcts_b" in methods) > ("beam" in methods):
        raise ValueError(f"methods {methods}: a subset of {METHODS}, with tempo for mcts_t and beam for mcts_b")
    eos = m.cfg.eos_token_ids or ()
    ids = m.tokenizer(p.prompt).input_ids
    g = GenerationConfig(max_steps=steps, max_width=H.WIDTH, threshold=H.TAU)
    conts, cost = {}, {}
    if "tempo" in methods:
        tr = generate(m.params, m.cfg, ids, g)
        conts["tempo"], cost["tempo"] = tr.clean_ids(), H.fed_tokens(tr)
    if "greedy" in methods:
        gr = generate(m.params, m.cfg, ids, dataclasses.replace(g, method="greedy"))
        conts["greedy"], cost["greedy"] = gr.clean_ids(), H.fed_tokens(gr)
    if "beam" in methods:
        bt = beam_search(m.params, m.cfg, ids, width=H.BEAM_W, max_steps=steps)
        conts["beam"], cost["beam"] = bt.clean_ids(), H.beam_cost(H.BEAM_W, steps)
    for name, comp in (("mcts_t", "tempo"), ("mcts_b", "beam")):
        if name not in methods:
            continue
        mc = MCTSConfig(budget=H.mcts_budget(cost[comp], steps), threshold=H.TAU, max_width=H.WIDTH,
                        max_steps=steps, rollout_len=H.ROLLOUT, c_uct=H.C_UCT)
        r = search(m.params, m.cfg, ids, mc)
        conts[name] = r.tokens
        cost[name] = int(r.total_forward_tokens)
    text = {k: quality._continuation_text(m.tokenizer, ids, H.cut_eos(c, eos)) for k, c in conts.items()}
    return {"parse": {k: float(quality.parses(p.prompt + t)) for k, t in text.items()},
            "cost": cost, "text": text}


def run(ctx) -> Output:
    rows, texts = [], []
    for p, r in ctx.map(lambda p: evaluate_prompt(ctx.model, p)):
        c, k = r["parse"], r["cost"]
        row = {"prompt_id": p.id, "genre": p.genre}
        row.update({f"parse_{n}": c[n] for n in METHODS})
        row.update({f"cost_{n}": k[n] for n in METHODS})
        row.update(d_mcts_t_tempo=c["mcts_t"] - c["tempo"], d_mcts_b_beam=c["mcts_b"] - c["beam"],
                   d_tempo_greedy=c["tempo"] - c["greedy"], d_beam_greedy=c["beam"] - c["greedy"],
                   over_mcts_t=k["mcts_t"] - k["tempo"], over_mcts_b=k["mcts_b"] - k["beam"])
        rows.append(row)
        texts.append({"prompt_id": p.id, **r["text"]})
    return Output(rows=rows, tables={"outputs": texts}, notes=[])


def answer(tests, design: Design) -> str:
    by = {t.column: t for t in tests}
    n = by["d_mcts_t_tempo"].n if "d_mcts_t_tempo" in by else 0
    return (f"Code parse rate at matched forward-token budget (n = {n} code prompts, {STEPS} tokens; "
            "95% BCa CIs unadjusted, verdicts after Holm): " + "; ".join(H.method_contrasts(by)) + ".")
