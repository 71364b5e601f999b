"""Adding a rule touches only the rule (docs/extending.md): a test-only subclass of
SiblingRule becomes a config value, a CLI choice, a table code and a mask, and runs end to end on a
tiny model, with no engine file edited."""

from __future__ import annotations

import numpy as np
import pytest

from tempo_jax.capture import CaptureWriter, load_capture
from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.engine.config import sibling_codes
from tempo_jax.engine.siblings import SiblingRule
from tinymodel import tiny

PROMPT = [5, 9, 13, 17, 21]


@pytest.fixture
def adjacent():
    """A rule the engine has never seen: each member sees the members next to it in rank."""

    class Adjacent(SiblingRule, name="adjacent"):
        def sees(self, i, j):
            return abs(i - j) == 1

    yield SiblingRule.check("adjacent")
    SiblingRule.unregister("adjacent")


def test_added_rule_is_a_choice_a_code_and_a_cli_option(adjacent):
    from tempo_jax.cli import build_parser

    assert SiblingRule.names()[-1] == "adjacent" and adjacent.code == len(SiblingRule.names()) - 1
    assert sibling_codes([["isolated", "adjacent"]]).tolist() == [[0, adjacent.code]]
    GenerationConfig(siblings="adjacent").validate()
    args = build_parser().parse_args(["generate", "--prompt", "x", "--siblings", "adjacent"])
    assert args.siblings == "adjacent"
    assert adjacent.visible_pairs(4) == 6  # (0,1) (1,0) (1,2) (2,1) (2,3) (3,2)
    with pytest.raises(ValueError, match="already taken"):
        type("Again", (SiblingRule,), {}, name="adjacent")


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_added_rule_runs_end_to_end(adjacent, tmp_path):
    _, cfg, params = tiny(0)
    g = GenerationConfig(max_steps=6, threshold=0.05, max_width=5, siblings="adjacent")
    tr = generate(params, cfg, PROMPT, g, on_step=CaptureWriter(tmp_path), capture="full")
    attn = np.asarray(load_capture(tmp_path)["attn"][0])
    a, checked = tr.arrays, 0
    for s in range(tr.n_steps):
        n, base = a["set_n"][s], a["cache_len"][s]
        if n < 3:  # with 3 members, 0 and 2 are siblings that are not adjacent
            continue
        checked += 1
        x = attn[s][:, :, :n, base:base + n]  # [L,H,i,j]
        i, j = np.arange(n)[:, None], np.arange(n)[None, :]
        assert np.all(x[:, :, np.abs(i - j) == 1] > 0)
        assert np.all(x[:, :, (np.abs(i - j) > 1)] == 0)
    assert checked > 0  # the run had sets of 3 or more
    # the rule matters: the same run under full siblings gives other probabilities
    full = generate(params, cfg, PROMPT, GenerationConfig(max_steps=6, threshold=0.05, max_width=5,
                                                          siblings="full"))
    assert not np.allclose(full.arrays["probs"], a["probs"])


def test_after_the_rule_is_gone_its_code_is_refused(adjacent):
    code = adjacent.code
    SiblingRule.unregister("adjacent")
    _, cfg, params = tiny(0)
    g = GenerationConfig(max_steps=2)
    table = np.full((cfg.num_layers, cfg.num_heads), code, np.int32)
    with pytest.raises(ValueError, match=r"siblings must hold sibling-rule codes .*got values in"):
        generate(params, cfg, PROMPT, g, inputs=g.inputs(cfg).replace(siblings=table))
    with pytest.raises(ValueError, match="unknown sibling rule 'adjacent'"):
        GenerationConfig(siblings="adjacent").validate()
    with pytest.raises(ValueError, match="built-in"):
        SiblingRule.unregister("full")


def test_every_rule_family_takes_a_member_without_engine_edits():
    """The same mechanism for the other families: a combining rule and a schedule defined here
    become config values and run (combining with member 0 only equals the built-in 'top')."""
    import jax

    from tempo_jax.engine.schedules import Schedule
    from tempo_jax.engine.selection import CombineRule

    class FirstMember(CombineRule, name="first_member"):
        def combine(self, logits, probs, valid):
            return jax.nn.softmax(logits[0])

    class Halfway(Schedule, name="halfway"):
        def shape(self, t, k, p1, p2, a):
            return np.full_like(t, 0.5)

    try:
        _, cfg, params = tiny(0)
        base = dict(max_steps=5, threshold=0.05, max_width=4)
        mine = generate(params, cfg, PROMPT, GenerationConfig(**base, combine="first_member"))
        top = generate(params, cfg, PROMPT, GenerationConfig(**base, combine="top"))
        np.testing.assert_array_equal(mine.arrays["tokens"], top.arrays["tokens"])
        np.testing.assert_allclose(mine.arrays["probs"], top.arrays["probs"], rtol=1e-6)
        g = GenerationConfig(**base, schedule="halfway", threshold_final=0.25)
        np.testing.assert_allclose(g.inputs(cfg).thresholds, 0.15)
        with pytest.raises(ValueError, match="unknown combining rule 'nope'; allowed: mixture, uniform, "
                                             "mean_logits, top, first_member"):
            GenerationConfig(combine="nope").validate()
        with pytest.raises(ValueError, match="built-in"):
            CombineRule.unregister("top")
    finally:
        CombineRule.unregister("first_member")
        Schedule.unregister("halfway")
