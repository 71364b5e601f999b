"""Generation-quality measures on traces (NumPy; a model only in :func:`self_perplexity` and
:func:`cross_perplexity`).

Measures that do not come from the model under test (gold answers, the human reference text,
parsing, another model family) are the quality outcomes; :func:`self_perplexity` (the model under
test scoring its own text, which favours its own greedy choices by construction) is named as such
and is never a primary quality measure.

Groups, chosen by the corpus genre (``experiments/corpus``):
  - facts (cloze prompt, gold answer + aliases): rank/probability of the gold answer's first token
    in the step-0 distribution, whether it is in the step-0 set, whether the clean path says it;
  - code (signature + docstring prompt, true next lines as reference): does the text still parse,
    did the generation add a complete line, does its first line match the reference's, how many
    of the reference's lines it reproduces in order (:func:`reference_lines_matched`);
  - prose (a fortune's opening, the rest of the fortune as reference): chrF of the continuation
    against the human continuation (:func:`chrf`, sacrebleu);
  - cross-model: the continuation's negative log-likelihood per UTF-8 byte under a model of
    ANOTHER family (:func:`cross_perplexity`; Gemma 3 scores SmolLM2's text and the reverse);
  - every genre: distinct-n, repeated n-grams, self-perplexity, number of paths through the
    lattice, embedding diversity of the parallel sets.

"Alive" members are those never pruned (``pruned`` False in :meth:`Trace.steps`). The clean path is
:meth:`Trace.clean_ids` (most probable alive member per step). Missing values are NaN.
"""

from __future__ import annotations

import ast
import difflib
import functools
import math
import unicodedata

import numpy as np

from tempo_jax import metrics

GENRES = ("prose", "code", "facts", "custom")


# --- facts ------------------------------------------------------------------------------------
def gold_first_token(tokenizer, answer: str) -> int:
    """First id of ``tokenizer.encode(" " + answer, add_special_tokens=False)`` (the answer as it
    follows a cloze prompt, with its leading space)."""
    ids = tokenizer.encode(" " + answer.strip(), add_special_tokens=False)
    if not len(ids):
        raise ValueError(f"answer {answer!r} tokenizes to no ids")
    return int(ids[0])


def gold_rank_prob(dist, gold_token: int) -> tuple[int, float]:
    """``rank = #{v : dist[v] > dist[gold]}`` (0 = top; ties rank in the gold's favour) and
    ``prob = dist[gold]``."""
    d = np.asarray(dist, np.float64).ravel()
    p = d[int(gold_token)]
    return int(np.sum(d > p)), float(p)


def normalise_text(text: str) -> str:
    """NFKD, combining marks dropped (accents stripped), casefolded, every punctuation character
    (Unicode category P*) deleted ("D.C." -> "dc", "Port-au-Prince" -> "portauprince"), whitespace
    runs collapsed to one space, stripped."""
    t = unicodedata.normalize("NFKD", text)
    t = "".join(c for c in t if not unicodedata.combining(c)).casefold()
    t = "".join(c for c in t if not unicodedata.category(c).startswith("P"))
    return " ".join(t.split())


def clean_path_correct(continuation_text: str, gold: str, aliases=()) -> bool:
    """True when ``n(continuation)`` starts with ``n(g)`` for the gold or an alias g, at a word
    boundary: ``n(c) == n(g)`` or ``n(c).startswith(n(g) + " ")``, with ``n`` =
    :func:`normalise_text`. Answers that normalise to "" never match."""
    c = normalise_text(continuation_text)
    for g in (gold, *aliases):
        ng = normalise_text(g)
        if ng and (c == ng or c.startswith(ng + " ")):
            return True
    return False


def gold_coverage(trace, gold_token: int, step: int = 0) -> dict[str, bool]:
    """``any_member``: gold token among the members of the set at ``step``; ``alive_member``: among
    its members never pruned. Both False when the trace has no such step."""
    steps = trace.steps()
    if not 0 <= step < len(steps):
        return {"any_member": False, "alive_member": False}
    members = steps[step]["members"]
    g = int(gold_token)
    return {"any_member": any(m["token"] == g for m in members),
            "alive_member": any(m["token"] == g and not m["pruned"] for m in members)}


# --- code -------------------------------------------------------------------------------------
def _is_code_line(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#")


def parses(text: str) -> bool:
    """Does the text parse as Python once cut to whole lines?

    1. Cut: keep ``text[: text.rfind("\\n") + 1]`` (drops a trailing line with no newline; a text
       with no newline becomes "").
    2. Block rule: let ``last`` be the last line that is not blank and not comment-only; if
       ``last.rstrip()`` ends with ":" (it opens a block whose body is not written yet), append
       ``indent(last) + 4 spaces + "pass\\n"``.
    3. ``ast.parse`` of the result succeeds (SyntaxError, ValueError -> False).
    """
    cut = text[: text.rfind("\n") + 1]
    lines = cut.split("\n")
    code = [ln for ln in lines if _is_code_line(ln)]
    if code and code[-1].rstrip().endswith(":"):
        last = code[-1]
        indent = last[: len(last) - len(last.lstrip())]
        cut = cut + indent + "    pass\n"
    try:
        ast.parse(cut)
    except (SyntaxError, ValueError):
        return False
    return True


def _complete_nonblank_lines(text: str) -> int:
    """Lines terminated by "\\n" with a non-whitespace character."""
    return sum(1 for ln in text.split("\n")[:-1] if ln.strip())


def adds_complete_line(prompt: str, generated: str) -> bool:
    """``L(prompt + generated) > L(prompt)``, L = number of complete ("\\n"-terminated) non-blank
    lines: the generation finished at least one non-blank line (finishing the prompt's own partial
    last line counts)."""
    return _complete_nonblank_lines(prompt + generated) > _complete_nonblank_lines(prompt)


def _first_nonblank(text: str) -> str:
    return next((ln.strip() for ln in text.split("\n") if ln.strip()), "")


def next_line_match(generated_text: str, reference_text: str) -> dict[str, float | bool]:
    """a, b = first non-blank line of each, stripped ("" if none). ``exact = a != "" and a == b``;
    ``similarity = difflib.SequenceMatcher(None, a, b).ratio()`` = 2M / (|a| + |b|) (M matched
    characters; 1.0 when both are empty)."""
    a, b = _first_nonblank(generated_text), _first_nonblank(reference_text)
    return {"exact": bool(a) and a == b,
            "similarity": float(difflib.SequenceMatcher(None, a, b, autojunk=False).ratio())}


def reference_lines_matched(generated_text: str, reference_text: str) -> float:
    """Share of the reference's non-blank lines that the generation reproduces exactly (stripped),
    in order from its first non-blank line; 1.0: every reference line, NaN: an empty reference."""
    ref = [ln.strip() for ln in reference_text.split("\n") if ln.strip()]
    gen = [ln.strip() for ln in generated_text.split("\n") if ln.strip()]
    if not ref:
        return float("nan")
    k = 0
    while k < min(len(ref), len(gen)) and ref[k] == gen[k]:
        k += 1
    return k / len(ref)


# --- prose ------------------------------------------------------------------------------------
def chrf(generated_text: str, reference_text: str) -> float:
    """Sentence chrF (sacrebleu's ``CHRF``: character 1- to 6-grams, beta 2, whitespace ignored) of
    the continuation against the human continuation, 0-100; NaN for an empty reference."""
    from sacrebleu.metrics import CHRF

    if not reference_text.strip():
        return float("nan")
    return float(CHRF().sentence_score(generated_text.strip(), [reference_text.strip()]).score)


# --- another model ----------------------------------------------------------------------------
def cross_perplexity(scorer, prompt_text: str, continuation_text: str, bucket: int = 32) -> dict[str, float]:
    """The continuation's likelihood under ``scorer`` (a loaded model of ANOTHER family than the one
    that wrote it: cfg, params, tokenizer), given the prompt, after re-tokenising both texts with the
    scorer's own tokenizer: ``nll_bytes`` = total negative log-likelihood (nats) / UTF-8 bytes of
    the continuation (comparable across tokenizers), ``ppl_tokens`` = exp(mean NLL per scorer
    token), ``n_tokens``. NaN for an empty continuation."""

    tok = scorer.tokenizer
    p = list(tok(prompt_text).input_ids)
    c = list(tok(continuation_text, add_special_tokens=False).input_ids)
    nan = float("nan")
    if not c or not continuation_text:
        return {"nll_bytes": nan, "ppl_tokens": nan, "n_tokens": 0.0}
    if not p:
        raise ValueError("cross_perplexity needs a prompt that tokenizes to at least one id")
    nll = _continuation_nll(scorer.params, scorer.cfg, p, c, bucket)
    return {"nll_bytes": float(nll.sum() / len(continuation_text.encode("utf-8"))),
            "ppl_tokens": float(math.exp(nll.mean())), "n_tokens": float(len(c))}


# --- every genre ------------------------------------------------------------------------------
def _ngrams(token_ids, n: int) -> list[tuple]:
    ids = [int(t) for t in token_ids]
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def distinct_n(token_ids, n: int) -> float:
    """``#unique n-grams / #n-grams`` (overlapping n-grams; NaN when the sequence is shorter
    than n)."""
    g = _ngrams(token_ids, n)
    return len(set(g)) / len(g) if g else float("nan")


def repeated_ngram_rate(token_ids, n: int) -> float:
    """Fraction of the n-grams (at positions i) equal to an n-gram at an earlier position j < i
    (overlap allowed); NaN when there is no n-gram."""
    g = _ngrams(token_ids, n)
    if not g:
        return float("nan")
    seen, rep = set(), 0
    for x in g:
        rep += x in seen
        seen.add(x)
    return rep / len(g)


@functools.lru_cache(maxsize=None)
def _logprob_fn():
    import jax
    import jax.numpy as jnp

    from tempo_jax.model import causal_mask, forward, init_cache

    def f(params, cfg, tokens, targets):
        t = tokens.shape[0]
        cache = init_cache(cfg, 1, t, params["embed"].dtype)
        ar = jnp.arange(t)
        logits, _, _ = forward(params, cfg, tokens[None], ar[None].astype(jnp.float32), ar[None],
                               causal_mask(1, t, t), cache, key_pos=ar[None].astype(jnp.float32))
        lp = jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(lp, targets[:, None], axis=-1)[:, 0]

    return jax.jit(f, static_argnums=1)


def _continuation_nll(params, cfg, p: list[int], c: list[int], bucket: int) -> np.ndarray:
    """-log P(c_i | p, c_<i) for each continuation token ``[len(c)]`` (float64), from one causal
    forward over p + c padded with id 0 to a multiple of ``bucket`` (padding after the real tokens
    under a causal mask changes nothing; few lengths compile)."""
    import jax.numpy as jnp

    seq = p + c
    t = -(-len(seq) // bucket) * bucket
    tokens = np.zeros(t, np.int32)
    tokens[:len(seq)] = seq
    targets = np.zeros(t, np.int32)
    targets[:len(seq) - 1] = seq[1:]  # logits at i predict token i+1
    lp = np.asarray(_logprob_fn()(params, cfg, jnp.asarray(tokens), jnp.asarray(targets)), np.float64)
    return -lp[len(p) - 1: len(seq) - 1]


def self_perplexity(params, cfg, prompt_ids, continuation_ids, bucket: int = 32) -> float:
    """Self-perplexity: perplexity of the continuation c under the SAME model given the prompt p,
    ``exp(-1/|c| sum_i log P(c_i | p, c_<i))``, from one causal forward over p + c (padded with id
    0 to a multiple of ``bucket`` so few lengths compile; padding comes after the real tokens and
    the mask is causal, so it changes nothing). NaN for an empty continuation; the prompt needs at
    least one token."""

    p, c = [int(t) for t in prompt_ids], [int(t) for t in continuation_ids]
    if not c:
        return float("nan")
    if not p:
        raise ValueError("self_perplexity needs at least one prompt token to condition on")
    return float(math.exp(_continuation_nll(params, cfg, p, c, bucket).mean()))


def _alive_members(step: dict) -> list[dict]:
    return [m for m in step["members"] if not m["pruned"]]


def log10_paths(trace) -> float:
    """log10 of the number of distinct token paths through the alive lattice:
    ``sum_s log10(n_alive(s))``, n_alive(s) = members of step s never pruned (a step whose members
    were all pruned counts all its members, as :meth:`Trace.clean_ids` falls back to them).
    0 for a trace with no steps."""
    total = 0.0
    for st in trace.steps():
        n = len(_alive_members(st)) or len(st["members"])
        if n:
            total += math.log10(n)
    return total


def set_embedding_diversity(trace, embed) -> float:
    """Mean over parallel sets (steps with ``set_n > 1``) of :func:`metrics.semantic_diversity` of
    the set's alive members (mean pairwise cosine distance of their input embeddings). A set left
    with fewer than 2 alive members has no diversity value and is skipped; NaN if no set remains."""
    vals = []
    for st in trace.steps():
        if len(st["members"]) < 2:
            continue
        alive = [m["token"] for m in _alive_members(st)]
        if len(alive) >= 2:
            vals.append(metrics.semantic_diversity(embed, alive))
    return float(np.mean(vals)) if vals else float("nan")


def clean_continuation_ids(trace, eos_ids=()) -> list[int]:
    """``trace.clean_ids()`` cut before the first id in ``eos_ids`` (if any)."""
    ids = trace.clean_ids()
    eos = {int(t) for t in eos_ids}
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i]
    return ids


def _continuation_text(tokenizer, prompt_ids, cont_ids) -> str:
    """decode(prompt + cont) minus decode(prompt) (keeps the leading space that some tokenizers drop
    when a continuation is decoded alone); decode(cont) when the prefix does not match."""
    full = tokenizer.decode(list(prompt_ids) + list(cont_ids))
    head = tokenizer.decode(list(prompt_ids))
    return full[len(head):] if full.startswith(head) else tokenizer.decode(list(cont_ids))


def measure(trace, *, genre: str, reference: str, aliases=(), tokenizer, prompt_text: str,
            params=None, cfg=None, embed=None, eos_ids=(), dist0=None, scorer=None) -> dict[str, float]:
    """The measures that apply to ``genre``, as a flat dict of floats (bools as 0.0/1.0).

    The continuation is :func:`clean_continuation_ids` (``eos_ids``), its text decoded after the
    prompt ids. Keys:
      facts: ``gold_rank``, ``gold_prob`` (only with ``dist0``, the step-0 distribution [V]),
      ``coverage_any``, ``coverage_alive`` (step 0), ``correct`` (gold = ``reference``);
      code: ``parses`` (prompt_text + continuation), ``adds_line``, ``next_line_exact``,
      ``next_line_sim``, ``ref_lines`` (against ``reference``);
      prose: ``chrf`` (against ``reference``, the human continuation);
      every genre: ``distinct_2``, ``repeat_3``, ``log10_paths``, ``diversity`` (with ``embed``),
      ``self_ppl`` (with ``params`` and ``cfg``: self-perplexity, never a primary quality measure),
      ``cross_nll_bytes`` and ``cross_ppl`` (with ``scorer``, a model of another family).
    """
    if genre not in GENRES:
        raise ValueError(f"unknown genre {genre!r}; allowed: {', '.join(GENRES)}")
    cont = clean_continuation_ids(trace, eos_ids)
    text = _continuation_text(tokenizer, trace.prompt_ids, cont)
    out: dict[str, float] = {}
    if genre == "facts":
        gold = gold_first_token(tokenizer, reference)
        if dist0 is not None:
            rank, prob = gold_rank_prob(dist0, gold)
            out["gold_rank"], out["gold_prob"] = float(rank), prob
        cov = gold_coverage(trace, gold, 0)
        out["coverage_any"] = float(cov["any_member"])
        out["coverage_alive"] = float(cov["alive_member"])
        out["correct"] = float(clean_path_correct(text, reference, aliases))
    elif genre == "code":
        out["parses"] = float(parses(prompt_text + text))
        out["adds_line"] = float(adds_complete_line(prompt_text, text))
        nl = next_line_match(text, reference)
        out["next_line_exact"] = float(nl["exact"])
        out["next_line_sim"] = float(nl["similarity"])
        out["ref_lines"] = reference_lines_matched(text, reference)
    elif genre == "prose":
        out["chrf"] = chrf(text, reference)
    out["distinct_2"] = distinct_n(cont, 2)
    out["repeat_3"] = repeated_ngram_rate(cont, 3)
    out["log10_paths"] = log10_paths(trace)
    if embed is not None:
        out["diversity"] = set_embedding_diversity(trace, embed)
    if params is not None and cfg is not None:
        out["self_ppl"] = self_perplexity(params, cfg, trace.prompt_ids, cont)
    if scorer is not None:
        cross = cross_perplexity(scorer, prompt_text, text)
        out["cross_nll_bytes"], out["cross_ppl"] = cross["nll_bytes"], cross["ppl_tokens"]
    return out
