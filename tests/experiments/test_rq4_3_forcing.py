"""RQ 4.3's forcing (experiments/research/rq4_3_error_correction.py) on the tiny random model: the
forced token is in the set at the forced step (member 0 for TEMPO, together with the model's own
candidates; alone for greedy), earlier steps are unchanged, and a plain run equals engine.generate."""

import numpy as np
import pytest

from experiments.research import rq4_3_error_correction as rq
from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.errors import UsageError

IDS = [5, 9, 17, 3, 22]
G = GenerationConfig(max_steps=5, max_width=8, threshold=0.05)  # one compiled spec for TEMPO


def _members(trace, s):
    return [m["token"] for m in trace.steps()[s]["members"]]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return tiny_model[1], tiny_model[2]


def test_plain_run_equals_generate(tiny):
    cfg, params = tiny
    g = G
    a = rq.generate_forced(params, cfg, IDS, g, None)
    b = generate(params, cfg, IDS, g)
    assert [_members(a, s) for s in range(a.n_steps)] == [_members(b, s) for s in range(b.n_steps)]


def test_tempo_forced_member_added_to_own_candidates(tiny):
    cfg, params = tiny
    g = G
    plain = rq.generate_forced(params, cfg, IDS, g, None)
    own2 = _members(plain, 2)
    # a token outside the model's own set at step 2
    w = next(t for t in range(cfg.vocab_size) if t not in own2)
    forced = rq.generate_forced(params, cfg, IDS, g, (2, w))
    for s in range(2):  # earlier steps unchanged (tokens and probabilities)
        assert _members(forced, s) == _members(plain, s)
        np.testing.assert_allclose([m["prob"] for m in forced.steps()[s]["members"]],
                                   [m["prob"] for m in plain.steps()[s]["members"]], atol=1e-6)
    got = _members(forced, 2)
    assert got[0] == w  # the forced token is the most probable member: the clean path's choice
    assert got[1:] == own2[: g.max_width - 1]  # the model's own candidates stay, in order
    assert forced.clean_ids()[2] == w


def test_greedy_forced_alone(tiny):
    cfg, params = tiny
    g = GenerationConfig(max_steps=5, max_width=8, method="greedy")
    plain = rq.generate_forced(params, cfg, IDS, g, None)
    w = (_members(plain, 0)[0] + 1) % cfg.vocab_size
    forced = rq.generate_forced(params, cfg, IDS, g, (0, w))
    assert _members(forced, 0) == [w]
    assert forced.clean_ids()[0] == w


def test_forced_dist_hand_case():
    import jax.numpy as jnp

    d = jnp.asarray([0.5, 0.3, 0.2])
    out = np.asarray(rq.forced_dist(d, 2))
    np.testing.assert_allclose(out, [0.5, 0.3, 0.5 * 1.001 + 1e-6], rtol=1e-6)


def test_bad_force_refused(tiny):
    cfg, params = tiny
    with pytest.raises(UsageError):
        rq.generate_forced(params, cfg, IDS, GenerationConfig(max_steps=3), (3, 1))


def test_measures_hand_cases():
    assert rq.contains_answer(" Paris, no wait, the capital is Kabul.", "Kabul")
    assert not rq.contains_answer(" Kabuli rice", "Kabul")
    assert rq.contains_answer(" Washington D.C. is it", "Washington, D.C.", ["Washington"])
