"""tempo_jax.quality: hand-made traces with hand-computed answers, self-perplexity against a NumPy
log-softmax of the reference model's logits, and `measure` on real runs of the tiny model."""

import math

import numpy as np
import pytest

from tempo_jax import quality as q
from tempo_jax.trace import Trace

from tinymodel import full_logits, tiny


class WordTok:
    """Word-level stand-in for an HF tokenizer: "w5 w9" <-> [5, 9]."""

    def encode(self, text, add_special_tokens=False):
        return [int(w[1:]) for w in text.split()]

    def decode(self, ids):
        return " ".join(f"w{int(i)}" for i in ids)


def hand_trace(steps, prompt_ids=(1, 4)):
    """A Trace from ``steps``: per step a list of (token, pruned) in member order (most probable
    first). Every member gets a slot after the prompt; a pruned one is pruned at the next step."""
    S, W, P = len(steps), max(len(s) for s in steps), len(prompt_ids)
    K = P + sum(len(s) for s in steps)
    a = {"tokens": np.zeros((S, W), np.int32), "probs": np.zeros((S, W), np.float32),
         "slots": np.full((S, W), -1, np.int32), "positions": np.zeros((S, W), np.float32),
         "valid": np.zeros((S, W), bool), "tau": np.full(S, 0.1, np.float32),
         "entropy": np.ones(S, np.float32), "set_n": np.array([len(s) for s in steps], np.int32),
         "pruned_at": np.full(K, -1, np.int32), "prune_score": np.full(K, np.nan, np.float32),
         "alive": np.zeros(K, bool)}
    slot = P
    a["alive"][:P] = True
    for s, members in enumerate(steps):
        for i, (tok, pruned) in enumerate(members):
            a["tokens"][s, i], a["probs"][s, i] = tok, 1.0 / (i + 2)
            a["slots"][s, i], a["positions"][s, i], a["valid"][s, i] = slot, P + s, True
            a["pruned_at"][slot] = s + 1 if pruned else -1
            a["alive"][slot] = not pruned
            slot += 1
    return Trace("hand", {}, list(prompt_ids), a)


# step 0: {5, ~7~, 9}; step 1: {3}; step 2: {4, 6}; step 3: {~8~, ~10~} (all pruned)
STEPS = [[(5, False), (7, True), (9, False)], [(3, False)], [(4, False), (6, False)],
         [(8, True), (10, True)]]


# --- facts --------------------------------------------------------------------------------------
def test_gold_first_token_and_rank_prob():
    assert q.gold_first_token(WordTok(), "w17 w3") == 17
    with pytest.raises(ValueError):
        q.gold_first_token(WordTok(), "")
    d = np.array([0.1, 0.5, 0.2, 0.2])
    assert q.gold_rank_prob(d, 1) == (0, 0.5)
    assert q.gold_rank_prob(d, 2) == (1, pytest.approx(0.2))  # tie with 3: gold's favour
    assert q.gold_rank_prob(d, 0) == (3, pytest.approx(0.1))


def test_clean_path_correct_normalisation_and_word_boundary():
    assert q.clean_path_correct(" Sao paulo, the largest city", "São Paulo")
    assert q.clean_path_correct(" SÃO   PAULO.", "São Paulo")
    assert not q.clean_path_correct(" São Paulistas", "São Paulo")  # not at a word boundary
    assert not q.clean_path_correct(" the city of Kabul", "Kabul")  # must start with it
    assert not q.clean_path_correct(" Kabulistan", "Kabul")
    assert q.clean_path_correct(" Washington DC is", "Washington, D.C.")
    assert q.clean_path_correct(" washington, d.c.", "Washington DC")
    assert q.clean_path_correct(" Bombay, India", "Mumbai", aliases=("Bombay",))
    assert not q.clean_path_correct(" Delhi", "Mumbai", aliases=("Bombay",))
    assert not q.clean_path_correct(" anything", "...")  # empty after normalising: never matches
    assert q.normalise_text("  Ünïcödé—Test!  Port-au-Prince. ") == "unicodetest portauprince"


def test_gold_coverage():
    tr = hand_trace(STEPS)
    assert q.gold_coverage(tr, 7) == {"any_member": True, "alive_member": False}  # pruned
    assert q.gold_coverage(tr, 9) == {"any_member": True, "alive_member": True}
    assert q.gold_coverage(tr, 11) == {"any_member": False, "alive_member": False}
    assert q.gold_coverage(tr, 6, step=2) == {"any_member": True, "alive_member": True}
    assert q.gold_coverage(tr, 8, step=3) == {"any_member": True, "alive_member": False}
    assert q.gold_coverage(tr, 5, step=9) == {"any_member": False, "alive_member": False}


# --- code ---------------------------------------------------------------------------------------
def test_parses():
    assert q.parses("def f(x):\n    return x\n")
    assert not q.parses("def f(x):\n    return (x\n")  # unclosed bracket on a complete line
    assert not q.parses("def f(x):\n  y = 1\n return y\n")  # bad dedent
    assert not q.parses("for i in range(3):\nprint(i)\n")  # body not indented
    # a trailing partial line is dropped before parsing
    assert q.parses("def f(x):\n    return x\n    y = (")
    assert not q.parses("def f(x):\n    return (x\n    y = 2")
    assert q.parses("x = (")  # no complete line: "" parses


def test_parses_trailing_colon_rule():
    opened = "def f(x):\n    if x:\n"
    with pytest.raises(SyntaxError):  # the rule is needed: the bare text does not parse
        compile(opened, "<t>", "exec")
    assert q.parses(opened)  # "        pass" appended at the opener's indent + 4
    assert q.parses("def f(x):\n    \"\"\"Doc.\"\"\"\n")  # docstring prompt parses as is
    assert q.parses("def f(x):\n")  # bare signature: the block is opened
    assert q.parses("def f(x):\n    # todo:\n\n")  # comment-only and blank lines are skipped
    assert q.parses("def f(x):\n    while True:\n        x = g(")  # partial dropped, then rule
    assert not q.parses("def f(x):\n    if x\n")  # no colon: no rule, and it is invalid


def test_adds_complete_line():
    p = "def f(x):\n"
    assert not q.adds_complete_line(p, "    return x")  # line not finished
    assert q.adds_complete_line(p, "    return x\n")
    assert q.adds_complete_line(p, "    return x\n    y")
    assert not q.adds_complete_line(p, "\n  \n")  # only blank lines
    assert q.adds_complete_line("def f(", "x):\n")  # finishing the prompt's partial line


def test_next_line_match():
    r = q.next_line_match("\n    return x + 1\n    more", "    return x + 1\n    z\n")
    assert r == {"exact": True, "similarity": 1.0}
    r = q.next_line_match("    return x\n", "    return xy\n")
    assert not r["exact"] and r["similarity"] == pytest.approx(2 * 8 / (8 + 9))
    r = q.next_line_match("\n\n", "    return x\n")
    assert r == {"exact": False, "similarity": 0.0}


# --- every genre --------------------------------------------------------------------------------
def test_distinct_and_repeated_ngrams():
    s = [1, 2, 1, 2, 1]
    assert q.distinct_n(s, 1) == pytest.approx(2 / 5)
    assert q.distinct_n(s, 2) == pytest.approx(2 / 4)
    assert q.distinct_n(s, 3) == pytest.approx(2 / 3)
    assert q.repeated_ngram_rate(s, 1) == pytest.approx(3 / 5)
    assert q.repeated_ngram_rate(s, 2) == pytest.approx(2 / 4)
    assert q.repeated_ngram_rate(s, 3) == pytest.approx(1 / 3)
    assert q.repeated_ngram_rate([7, 7, 7, 7], 2) == pytest.approx(2 / 3)  # overlap counts
    assert q.distinct_n([1, 2, 3], 2) == 1.0 and q.repeated_ngram_rate([1, 2, 3], 2) == 0.0
    assert math.isnan(q.distinct_n([1, 2], 3)) and math.isnan(q.repeated_ngram_rate([], 1))


def test_clean_continuation_and_paths():
    tr = hand_trace(STEPS)
    assert q.clean_continuation_ids(tr) == [5, 3, 4, 8]  # step 3 all pruned: falls back to all
    assert q.clean_continuation_ids(tr, eos_ids=(4,)) == [5, 3]
    assert q.clean_continuation_ids(tr, eos_ids=(99,)) == [5, 3, 4, 8]
    # alive sizes 2, 1, 2, and 2 (all pruned -> whole set)
    assert q.log10_paths(tr) == pytest.approx(math.log10(8))
    assert q.log10_paths(hand_trace([[(5, False)], [(6, False), (7, True), (8, False)],
                                     [(1, False), (2, False), (3, False)]])) == pytest.approx(
        math.log10(6))


def test_set_embedding_diversity():
    embed = np.zeros((12, 2))
    embed[5], embed[9], embed[7] = (1, 0), (0, 1), (-1, 0)
    embed[4], embed[6], embed[8], embed[10] = (1, 0), (1, 1), (1, 0), (0, 1)
    tr = hand_trace(STEPS)
    # step 0 alive {5, 9}: distance 1 (pruned 7 left out); step 2 {4, 6}: 1 - cos 45 deg;
    # step 3: no alive member -> skipped
    want = (1.0 + (1 - 1 / math.sqrt(2))) / 2
    assert q.set_embedding_diversity(tr, embed) == pytest.approx(want)
    assert math.isnan(q.set_embedding_diversity(hand_trace([[(5, False)], [(6, False)]]), embed))


def test_self_perplexity_matches_numpy_log_softmax():
    hf, cfg, params = tiny(0)
    for prompt, cont in (([5, 9, 13], [17, 21, 4, 8]), ([5] * 20, list(range(4, 40)))):
        lg = full_logits(hf, prompt + cont).astype(np.float64)  # [T,V]
        m = lg.max(-1, keepdims=True)
        lsm = lg - m - np.log(np.exp(lg - m).sum(-1, keepdims=True))
        seq = prompt + cont
        nll = [-lsm[i - 1, seq[i]] for i in range(len(prompt), len(seq))]
        want = math.exp(np.mean(nll))
        got = q.self_perplexity(params, cfg, prompt, cont)
        assert got == pytest.approx(want, rel=1e-4)
    # conditioning matters (the prompt is not scored but is seen)
    a = q.self_perplexity(params, cfg, [5, 9, 13], [17, 21])
    b = q.self_perplexity(params, cfg, [30, 31, 32], [17, 21])
    assert abs(a - b) > 1e-3
    assert math.isnan(q.self_perplexity(params, cfg, [5], []))
    with pytest.raises(ValueError):
        q.self_perplexity(params, cfg, [], [5])


# --- measure on real runs -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_tiny():
    import jax
    import jax.numpy as jnp

    from tempo_jax.engine import GenerationConfig, generate
    from tempo_jax.engine.core import prefill

    _, cfg, params = tiny(0)
    prompt = [5, 9, 13, 17, 21]
    tr = generate(params, cfg, prompt, GenerationConfig(max_steps=6, threshold=0.05, max_width=5))
    p = jnp.zeros(32, jnp.int32).at[:len(prompt)].set(jnp.asarray(prompt))
    logits, _ = prefill(params, cfg, p, jnp.int32(len(prompt)), 64)
    dist0 = np.asarray(jax.nn.softmax(logits))
    return cfg, params, tr, dist0


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_measure_every_genre_on_a_tempo_run(run_tiny):
    cfg, params, tr, dist0 = run_tiny
    assert (tr.arrays["set_n"] > 1).any(), "the run needs a parallel set"
    tok, embed = WordTok(), np.asarray(params["embed"])
    top = int(np.argmax(dist0))
    assert tr.steps()[0]["members"][0]["token"] == top
    common = dict(tokenizer=tok, params=params, cfg=cfg, embed=embed, eos_ids=cfg.eos_token_ids)
    every = {"distinct_2", "repeat_3", "log10_paths", "diversity", "self_ppl"}

    f = q.measure(tr, genre="facts", reference=f"w{top}", prompt_text="w5 w9 w13 w17 w21",
                  dist0=dist0, **common)
    assert set(f) == every | {"gold_rank", "gold_prob", "coverage_any", "coverage_alive", "correct"}
    assert f["gold_rank"] == 0.0 and f["gold_prob"] == pytest.approx(dist0[top], rel=1e-6)
    assert f["coverage_any"] == f["coverage_alive"] == f["correct"] == 1.0
    last = int(np.argmin(dist0))  # the least probable token: not in the set, not said
    g = q.measure(tr, genre="facts", reference=f"w{last}", prompt_text="", **common)
    assert "gold_rank" not in g and g["coverage_any"] == g["correct"] == 0.0

    c = q.measure(tr, genre="code", reference="    return x\n", prompt_text="def f(x):\n", **common)
    assert set(c) == every | {"parses", "adds_line", "next_line_exact", "next_line_sim", "ref_lines"}
    # word-level text has no newline: prompt alone parses (colon rule), no line added
    assert c["parses"] == 1.0 and c["adds_line"] == 0.0 and c["next_line_exact"] == 0.0
    assert 0.0 <= c["next_line_sim"] < 1.0

    for genre in ("prose", "custom"):
        m = q.measure(tr, genre=genre, reference="w4", prompt_text="w5", **common)
        assert set(m) == every | ({"chrf"} if genre == "prose" else set())
    cont = q.clean_continuation_ids(tr, cfg.eos_token_ids)
    assert m["self_ppl"] == pytest.approx(q.self_perplexity(params, cfg, tr.prompt_ids, cont))
    assert m["log10_paths"] == pytest.approx(np.log10(tr.arrays["set_n"]).sum())  # no pruning
    assert m["log10_paths"] > 0
    for k in ("log10_paths", "diversity", "self_ppl", "distinct_2", "repeat_3"):
        assert np.isfinite(m[k]), k
    assert all(isinstance(v, float) for v in m.values())
    bare = q.measure(tr, genre="prose", reference="", tokenizer=tok, prompt_text="")
    assert set(bare) == {"distinct_2", "repeat_3", "log10_paths", "chrf"} and math.isnan(bare["chrf"])


def test_measure_unknown_genre(run_tiny):
    _, _, tr, _ = run_tiny
    with pytest.raises(ValueError, match="allowed: prose, code, facts, custom"):
        q.measure(tr, genre="poetry", reference="", tokenizer=WordTok(), prompt_text="")


def test_reference_lines_matched():
    ref = "    y = x + 1\n\n    return y\n"
    assert q.reference_lines_matched("    y = x + 1\n    return y\n    pass\n", ref) == 1.0
    assert q.reference_lines_matched("\n  y = x + 1\n    return 0\n", ref) == 0.5  # stripped, in order
    assert q.reference_lines_matched("    return y\n    y = x + 1\n", ref) == 0.0  # order matters
    assert q.reference_lines_matched("", ref) == 0.0
    assert math.isnan(q.reference_lines_matched("x", "  \n"))


def test_chrf_hand_computed():
    """sacrebleu's chrF (character 1..6-grams, beta 2, averaged over the orders both sides have):
    hyp "ab" vs ref "abc": unigrams P 2/2, R 2/3; bigrams P 1/1, R 1/2; no hyp 3-grams. Mean P 1,
    mean R 7/12, F2 = 5 P R / (4 P + R) = 7/11."""
    assert q.chrf("ab", "abc") == pytest.approx(700 / 11)
    assert q.chrf("a b", "abc") == pytest.approx(700 / 11)  # whitespace is not a character n-gram
    assert q.chrf(" the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)
    assert q.chrf("xyz", "the cat") == 0.0
    assert math.isnan(q.chrf("anything", " "))


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_cross_perplexity_equals_the_scorers_own_logits(tmp_path):
    """Scored by a model loaded with its own tokenizer ("w5 w9" -> [5, 9]): the NLL of the
    re-tokenised continuation from the HF reference's log-softmax, per UTF-8 byte and per token."""
    from tempo_jax.loading import load_model
    from tinymodel import save_tiny_with_tokenizer

    scorer = load_model(str(save_tiny_with_tokenizer(tmp_path / "m", seed=1)), verbose=False)
    hf, _, _ = tiny(1)
    z = full_logits(hf, [5, 9, 12, 7]).astype(np.float64)
    lp = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
    nll = -(lp[1, 12] + lp[2, 7])
    got = q.cross_perplexity(scorer, "w5 w9", " w12 w7")
    assert got["n_tokens"] == 2.0
    assert got["nll_bytes"] == pytest.approx(nll / len(" w12 w7"), rel=1e-5)
    assert got["ppl_tokens"] == pytest.approx(math.exp(nll / 2), rel=1e-5)
    assert math.isnan(q.cross_perplexity(scorer, "w5", "")["nll_bytes"])
