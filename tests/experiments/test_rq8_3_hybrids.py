"""RQ 8.3 helpers: matched MCTS budgets, costs, the policy reward, synthetic arithmetic (tiny model)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from experiments.research import rq8_3_hybrids as H
from tempo_jax.engine.config import GenerationConfig
from tempo_jax.engine.run import generate
from tempo_jax.search.mcts import MCTSConfig, search

PROMPT = [1, 5, 9, 13]


def test_budget_hand_cases():
    assert H.mcts_budget(12, 6) == 8 and H.mcts_budget(24, 6) == 20
    assert H.mcts_budget(3, 6) == 1  # never below 1
    assert H.beam_cost(4, 6) == 24


@pytest.mark.parametrize("spend", [7, 8, 11, 14, 32])
def test_matched_budget_never_exceeds_the_comparators_spend(tiny_model, spend):
    _, cfg, params = tiny_model
    steps = 8
    r = search(params, cfg, PROMPT, MCTSConfig(budget=H.mcts_budget(spend, steps), threshold=0.05,
                                                max_width=4, max_steps=steps, rollout_len=3))
    assert r.total_forward_tokens <= spend
    assert len(r.tokens) == steps or r.tokens[-1] in (cfg.eos_token_ids or ())


def test_costs_and_reward_from_a_trace(tiny_model):
    _, cfg, params = tiny_model
    gr = generate(params, cfg, PROMPT, GenerationConfig(method="greedy", max_steps=5))
    assert H.fed_tokens(gr) == len(gr.arrays["fed_n"]) and H.fwd_per_step(gr) == 1.0
    tr = generate(params, cfg, PROMPT, GenerationConfig(max_steps=5, threshold=0.02, max_width=4))
    members = [m["token"] for m in tr.steps()[0]["members"]]
    assert len(members) > 1  # a real set
    fed = int(np.asarray(tr.arrays["fed_n"]).sum())
    per_step = fed / len(tr.arrays["fed_n"])
    assert H.reward(tr, members[-1]) == pytest.approx(1.0 - 0.1 * (per_step - 1))
    outside = next(t for t in range(cfg.vocab_size) if t not in members)
    assert H.step0_coverage(tr, outside) == 0.0
    assert H.reward(tr, outside, lam=0.5) == pytest.approx(-0.5 * (per_step - 1))


def test_arith_problems_are_seeded_sums():
    a = H.arith_problems(15, 0, 3)
    assert a == H.arith_problems(15, 0, 3) and a != H.arith_problems(15, 1, 3)
    for expr, val in a:
        xs = [int(x) for x in expr.split(" + ")]
        assert len(xs) == 3 and all(2 <= x <= 9 for x in xs) and sum(xs) == val
    assert H.arith_prompt("2 + 3", "equation") == "2 + 3 ="
    assert H.arith_prompt("2 + 3", "fewshot").endswith("\n2 + 3 =")
    with pytest.raises(ValueError, match="unknown format"):
        H.arith_prompt("2 + 3", "essay")
    assert H.first_int(" 17.\n\n3") == 17 and H.first_int(" eleven") is None
    # chain of thought: the last integer of the first line (after the intermediate sum)
    assert H.arith_answer(" 9 + 5 = 14 + 3 = 17\n8 + 1", "fewshot_cot") == 17
    assert H.arith_answer("\n 12\n4", "fewshot_cot") == 12
    assert H.arith_answer(" 9 + 5 = 14", "fewshot") == 9  # other formats: the first integer


class _Tok:
    """Decodes ids by a table (enough for quality._continuation_text)."""

    table = {1: "The capital of France is", 2: " Paris", 3: " Lyon", 4: ".", 9: "<eos>"}

    def decode(self, ids):
        return "".join(self.table[int(i)] for i in ids)


def test_correct_and_eos_cut():
    assert H.cut_eos([2, 4, 9, 3], [9]) == [2, 4]
    tok = _Tok()
    assert H.is_correct(tok, [1], [2, 4], "Paris") == 1.0
    assert H.is_correct(tok, [1], [3, 2], "Paris") == 0.0  # the answer must come first
    assert H.is_correct(tok, [1], [3], "Paris", aliases=("Lyon",)) == 1.0


class _CodeTok:
    """Ids 0..9 decode to pieces of Python, the rest to one space (enough for rq8.3b's evaluate_prompt)."""

    pieces = ["x", " = ", "1", "\n", "(", ")", ":", "def f", "    ", "#"]

    def __call__(self, text):
        return types.SimpleNamespace(input_ids=[1, 5, 9, 13])

    def decode(self, ids):
        return "".join(self.pieces[int(i)] if int(i) < 10 else " " for i in ids)


def test_a_subset_of_decoders_runs_and_the_hybrid_stays_within_tempos_spend(tiny_model):
    from experiments.research import rq8_3b_code as B
    from experiments.research import rq8_3c_code as C

    _, cfg, params = tiny_model
    m = types.SimpleNamespace(params=params, cfg=cfg, tokenizer=_CodeTok())
    p = types.SimpleNamespace(prompt="x = 1\n", id="code/x", genre="code")
    r = B.evaluate_prompt(m, p, C.METHODS, steps=6)
    assert set(r["parse"]) == set(C.METHODS) and set(r["cost"]) == set(C.METHODS)
    assert r["cost"]["mcts_t"] <= r["cost"]["tempo"] and r["cost"]["greedy"] == 6
    gr = generate(params, cfg, PROMPT, GenerationConfig(method="greedy", max_steps=6))
    assert r["text"]["greedy"] == m.tokenizer.decode(H.cut_eos(gr.clean_ids(), cfg.eos_token_ids or ()))
    row = C.row_of(r)
    assert row["d_mcts_t_tempo"] == r["parse"]["mcts_t"] - r["parse"]["tempo"]
    assert row["over_mcts_t"] == r["cost"]["mcts_t"] - r["cost"]["tempo"] <= 0
    with pytest.raises(ValueError, match="tempo for mcts_t"):
        B.evaluate_prompt(m, p, ("greedy", "mcts_t"), steps=6)
