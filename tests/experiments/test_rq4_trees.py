"""Helpers of RQ 4.1 (clustering, matched alternatives) and RQ 4.2 (token trees): hand-made cases and
the batched continuations against the HF reference's plain greedy decoding on a tiny random model."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.research import rq4_1_coverage as C
from experiments.research import rq4_2_tree as T


@pytest.mark.parametrize("text,cls", [
    (" the", "function"), (" The", "function"), (" cat", "content"), ("ing", "subword"),
    (",", "punct"), ("):", "punct"), (" 42", "number"), ("3", "number"), ("\n", "space"),
    ("  ", "space"), ("\nThe", "function"), (" Paris", "content"),
])
def test_token_class(text, cls):
    assert T.token_class(text) == cls


def test_meet_and_merge_depth_hand_cases():
    ref = [5, 6, 7, 8]
    assert T.meet_depth([5, 1, 1, 1], ref) == 1  # same next greedy token
    assert T.meet_depth([1, 2, 7, 1], ref) == 3
    assert T.meet_depth([1, 2, 3, 4], ref) == 5  # never: censored at horizon + 1
    assert T.merge_depth([1, 2, 7, 8], ref) == 3  # together from offset 3 to the end
    assert T.merge_depth([5, 6, 7, 1], ref) == 5  # last tokens differ: never merged
    assert T.merge_depth(ref, ref) == 1
    assert T.merge_depth([5, 1, 7, 8], ref) == 3  # a meet at 1 that splits again does not count


def test_branch_after_rates():
    classes = ["punct", "punct", "content", "content", "function", "subword"]
    branched = [1, 1, 0, 1, 0, 0]
    r = T.branch_after(classes, branched)
    assert r["punct"] == pytest.approx(1.0 - 1 / 4)
    assert r["content"] == pytest.approx(0.5 - 2 / 4)
    assert r["function"] == pytest.approx(0.0 - 3 / 5)
    assert np.isnan(r["number"])  # class absent


@pytest.mark.parametrize("which", ["llama", "gemma"])
def test_continuer_equals_plain_greedy(which, tiny_model):
    """Each row's continuation equals greedy decoding of prefix[:start] + [token] as one ordinary
    sequence (the HF reference's argmax, recomputed from scratch at every step); on the tiny Gemma
    the rows run past its sliding window of 4 positions."""
    from tinymodel import full_logits, tiny_gemma

    hf, cfg, params = tiny_model if which == "llama" else tiny_gemma()
    prefix = [1, 7, 9, 11, 13, 5, 21, 8, 30, 12]
    starts, firsts = [4, 4, 7, 10, 1], [40, 13, 50, 6, 22]
    k = 5
    cont = T.Continuer(params, cfg, prefix, k=k, bucket=16)
    got = cont(starts, firsts)
    assert got.shape == (5, k)
    for row, (st, tok) in enumerate(zip(starts, firsts)):
        seq = prefix[:st] + [tok]
        want = []
        for _ in range(k):
            nxt = int(np.argmax(full_logits(hf, seq)[-1]))
            want.append(nxt)
            seq.append(nxt)
        assert got[row].tolist() == want, row
    # the prefix logits are the plain forward's
    np.testing.assert_allclose(cont.logits, full_logits(hf, prefix), atol=2e-4)
    with pytest.raises(ValueError):
        cont([11], [3])


def test_cluster_count_hand_cases():
    # three unit vectors: two nearly equal, one orthogonal
    e = np.array([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0], [-1.0, 0.0]])
    assert C.n_clusters(e, [0, 1, 2], cut=0.1) == 2
    assert C.n_clusters(e, [0, 1, 2], cut=1.5) == 1
    assert C.n_clusters(e, [0, 2, 3], cut=0.1) == 3
    assert C.n_clusters(e, [0], cut=0.1) == 1
    # spread: mean pairwise cosine distance
    assert C.spread(e, [0, 2]) == pytest.approx(1.0)
    assert C.spread(e, [0, 3]) == pytest.approx(2.0)
    assert np.isnan(C.spread(e, [0]))


def test_step_alternatives_summary():
    e = np.eye(4)
    e[1] = [1.0, 0.001, 0, 0]
    # step 0: tokens {0, 1} (near-identical: 1 cluster); step 1: one token; step 2: {0, 2, 2}
    s = C.summarize([[0, 1], [3], [0, 2, 2]], e, cut=0.1)
    assert s.distinct == pytest.approx((2 + 1 + 2) / 3)
    assert s.redundancy == pytest.approx((0 + 0 + 1 / 3) / 3)
    assert s.cluster_ratio == pytest.approx((1 / 2 + 2 / 2) / 2)  # steps with >= 2 distinct
    assert s.spread == pytest.approx((C.spread(e, [0, 1]) + 1.0) / 2)
    assert s.branching == pytest.approx(2 / 3)


def test_count_matched_beam_tokens():
    beam_tokens = np.array([[5, 6, 7, 8], [9, 10, -1, 12]])
    assert C.first_n_per_step(beam_tokens, [2, 3]) == [[5, 6], [9, 10]]
    assert C.first_n_per_step(beam_tokens, [4, 1]) == [[5, 6, 7, 8], [9]]
