"""Typed engine inputs: misspelled names and wrong shapes are refused in one line, before compute."""

import jax.numpy as jnp
import numpy as np
import pytest

from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.engine.inputs import stack
from tempo_jax.engine.rules import Capture
from tempo_jax.engine.siblings import SiblingRule
from tempo_jax.interventions import Interventions
from tinymodel import tiny

PROMPT = [5, 9, 13]


def test_misspelled_input_and_intervention_names_refused():
    _, cfg, _ = tiny(0)
    inputs = GenerationConfig(max_steps=2).inputs(cfg)
    with pytest.raises(ValueError, match=r"unknown EngineInputs field 'sibling'; allowed: thresholds"):
        inputs.replace(sibling=np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"unknown Interventions field 'head_scal'"):
        Interventions().replace(head_scal=np.ones((2, 4)))
    # a known name goes through and changes only that field
    new = inputs.replace(min_steps=jnp.int32(2))
    assert int(new.min_steps) == 2 and new.thresholds is inputs.thresholds


def test_wrong_shapes_refused_before_compute():
    _, cfg, params = tiny(0)
    g = GenerationConfig(max_steps=2, max_width=4)
    for name, bad, msg in [
        ("siblings", jnp.zeros((1, 1), jnp.int32), r"siblings must have shape \(2, 4\), got \(1, 1\)"),
        ("thresholds", jnp.zeros(5), r"thresholds must have shape \(2,\), got \(5,\)"),
        ("member_offsets", jnp.zeros(3), r"member_offsets must have shape \(4,\)"),
    ]:
        with pytest.raises(ValueError, match=msg) as e:
            generate(params, cfg, PROMPT, g, inputs=g.inputs(cfg).replace(**{name: bad}))
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="interventions.head_scale must have shape"):
        generate(params, cfg, PROMPT, g,
                 inputs=g.inputs(cfg).replace(interventions=Interventions(head_scale=jnp.ones((3, 3)))))
    with pytest.raises(ValueError, match="inputs must be an EngineInputs"):
        generate(params, cfg, PROMPT, g, inputs={"siblings": jnp.zeros((2, 4))})


def test_choices_are_enums_with_one_line_errors():
    assert SiblingRule.check("visible").code == 1 and SiblingRule.names() == ["isolated", "visible", "full", "reverse"]
    with pytest.raises(ValueError, match=r"unknown capture mode 'all'; allowed: none, summary, full"):
        Capture.check("all", "capture mode")
    with pytest.raises(ValueError, match=r"unknown sibling rule 'open'; allowed: isolated, visible, full"):
        GenerationConfig(siblings="open").validate()
    with pytest.raises(ValueError, match="pruning does not apply in compat mode"):
        GenerationConfig(compat="upstream", prune=True).validate()


def test_stack_adds_a_world_axis():
    _, cfg, _ = tiny(0)
    worlds = [GenerationConfig(max_steps=3, threshold=t).inputs(cfg) for t in (0.1, 0.2)]
    both = stack(worlds)
    assert both.thresholds.shape == (2, 3) and both.siblings.shape == (2, 2, 4)
    np.testing.assert_allclose(both.thresholds[:, 0], [0.1, 0.2], rtol=1e-6)


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_before_step_edits_the_state_a_step_starts_from():
    """engine.generate(before_step=...): the identity hook changes nothing; a hook that puts all
    of d_s's mass on one token makes that token the step's only member, and the steps before it
    are untouched; drivers that cannot call it refuse it in one line."""
    _, cfg, params = tiny(0)
    g = GenerationConfig(max_steps=6, max_width=4, threshold=0.05)
    plain = generate(params, cfg, [5, 9, 11, 7], g)
    same = generate(params, cfg, [5, 9, 11, 7], g, before_step=lambda s, st: st)
    for k, v in plain.arrays.items():
        np.testing.assert_array_equal(np.asarray(same.arrays[k]), np.asarray(v), err_msg=k)
    members = lambda tr, s: [m["token"] for m in tr.steps()[s]["members"]]
    w = next(t for t in range(cfg.vocab_size) if t not in members(plain, 3))

    def one_hot(s, st):
        return st if s != 3 else st.replace(dist=jnp.zeros_like(st.dist).at[w].set(1.0),
                                            next_n=jnp.int32(1))
    forced = generate(params, cfg, [5, 9, 11, 7], g, before_step=one_hot)
    assert [members(forced, s) for s in range(3)] == [members(plain, s) for s in range(3)]
    assert members(forced, 3) == [w]
    with pytest.raises(ValueError, match="needs driver='host'"):
        generate(params, cfg, [5, 9, 11, 7], g, driver="device", before_step=one_hot)
    spec = GenerationConfig(max_steps=6, method="speculative", draft_layers=1)
    with pytest.raises(ValueError, match="before_step needs the step loop; method .speculative. runs its own search"):
        generate(params, cfg, [5, 9, 11, 7], spec, before_step=one_hot)
