"""Self-speculative decoding (tempo_jax/engine/speculative.py): output identical to greedy decoding.

References: the engine's greedy method (itself checked against HF greedy in tests/reference) on tiny
random models; a model whose layers past k are switched off (their output projections zeroed), on
which the draft IS the model, so every draft must be accepted and the round bookkeeping (tokens per
full forward, EOS inside a draft, max_steps inside a draft) is known by hand.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import pytest

from tempo_jax.config import ModelConfig
from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.engine.speculative import SpecStats
from tempo_jax.model import init_params

PROMPT = [5, 9, 11, 7]
STEPS = 23  # one step count everywhere, so compiled programs are shared between tests
SAME = ["tokens", "slots", "positions", "valid", "set_n", "tau", "slot_step", "slot_member",
        "slot_pos", "slot_token", "alive", "pruned_at", "fed_tokens", "fed_pos", "fed_n",
        "cache_len", "n_written"]


@functools.lru_cache(maxsize=None)
def random_model(seed: int, layers: int = 4, eos: tuple[int, ...] = (2,)):
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=layers,
                      num_heads=4, num_kv_heads=2, head_dim=8, eos_token_ids=eos,
                      max_position_embeddings=256, name="rand")  # one name: jit caches are shared
    return cfg, init_params(cfg, jax.random.key(seed), scale=0.3)


def hf_tiny(seed: int):
    from tinymodel import tiny

    _, cfg, params = tiny(seed)
    return cfg, params


def switched_off_after(cfg, params, k: int):
    """The model with layers k.. contributing nothing (wo, w_down zeroed): its output is the
    first-k-layer draft's."""
    layers = dict(params["layers"])
    for name in ("wo", "w_down"):
        layers[name] = layers[name].at[k:].set(0.0)
    return {**params, "layers": layers}


def assert_same_as_greedy(sp, gr):
    for name in SAME:
        np.testing.assert_array_equal(sp.arrays[name], gr.arrays[name], err_msg=name)
    # probabilities come from a (g+1)-row forward instead of a 1-row one: equal up to rounding
    np.testing.assert_allclose(sp.arrays["probs"], gr.arrays["probs"], atol=1e-5)
    np.testing.assert_allclose(sp.arrays["entropy"], gr.arrays["entropy"], atol=1e-4)


def greedy(cfg, params, steps, min_steps=0):
    return generate(params, cfg, PROMPT, GenerationConfig(method="greedy", max_steps=steps,
                                                          min_steps=min_steps))


@pytest.mark.parametrize("seed,k,g", [(0, 1, 1), (0, 3, 5), (1, 2, 3)])
@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_identical_to_greedy_on_random_models(seed, k, g):
    cfg, params = random_model(seed)
    gr = greedy(cfg, params, STEPS)
    gc = GenerationConfig(method="speculative", max_steps=STEPS, draft_layers=k, draft_len=g)
    sp = generate(params, cfg, PROMPT, gc)
    assert_same_as_greedy(sp, gr)
    if seed == 1:  # the on-device driver (one while_loop) once
        dev = generate(params, cfg, PROMPT, gc, driver="device")
        np.testing.assert_array_equal(dev.arrays["tokens"], gr.arrays["tokens"])
    st = SpecStats.of(sp)
    # every step after the first belongs to a round; each round commits >= 1 token
    assert 1 <= st.rounds <= st.steps and st.draft_forwards == st.rounds * g
    assert st.accepted <= st.drafted <= st.steps - 1
    a = sp.arrays
    drafted = a["draft_tokens"] >= 0
    assert not drafted[0]  # the first token comes from the prompt forward, never from a draft
    # per round: a accepted drafts commit a + 1 tokens, so rounds start where the last one ended
    starts, acc = a["spec_round_start"][:st.rounds], a["spec_accepted"][:st.rounds]
    np.testing.assert_array_equal(starts[1:], (starts + acc + 1)[:-1])
    assert (a["spec_round_start"][st.rounds:] == -1).all()


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_identical_to_greedy_on_the_hf_tiny_model():
    """The 2-layer HF-built tiny model of tests/tinymodel.py (draft = layer 0)."""
    cfg, params = hf_tiny(1)
    gr = generate(params, cfg, PROMPT, GenerationConfig(method="greedy", max_steps=STEPS))
    sp = generate(params, cfg, PROMPT, GenerationConfig(method="speculative", max_steps=STEPS,
                                                        draft_layers=1, draft_len=2))
    assert_same_as_greedy(sp, gr)


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_draft_equal_to_model_accepts_everything():
    """Layers 2..3 switched off: each round accepts all g drafts and commits g + 1 tokens."""
    cfg, params = random_model(3, eos=())
    params = switched_off_after(cfg, params, 2)
    g, steps = 4, STEPS  # 23 = 4 rounds of 5 + 3: max_steps falls inside the fifth round's drafts
    gr = greedy(cfg, params, steps)
    sp = generate(params, cfg, PROMPT, GenerationConfig(method="speculative", max_steps=steps,
                                                        draft_layers=2, draft_len=g))
    assert_same_as_greedy(sp, gr)
    assert sp.n_steps == steps
    st = SpecStats.of(sp)
    assert st.rounds == 5 and st.acceptance_rate == 1.0
    np.testing.assert_array_equal(sp.arrays["spec_round_start"][:5], [0, 5, 10, 15, 20])
    # steps 5, 10, ... are bonus tokens (after g acceptances there is no draft for them)
    np.testing.assert_array_equal(np.flatnonzero(sp.arrays["draft_tokens"] < 0), [0, 5, 10, 15, 20])
    assert st.drafted == steps - 5 and st.tokens_per_full_forward == pytest.approx(steps / 5)


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_eos_inside_a_draft_stops_where_greedy_stops():
    cfg, params = random_model(3, eos=())
    params = switched_off_after(cfg, params, 2)
    free = greedy(cfg, params, STEPS).arrays["tokens"][:, 0]
    # an EOS at step 7 = the 2nd draft of round 1 (steps 5..9): a token not generated before step 7
    j = next(s for s in (7, 8, 6, 3, 2) if free[s] not in free[:s])
    eos_cfg = dataclasses.replace(cfg, eos_token_ids=(int(free[j]),))
    gr = greedy(eos_cfg, params, STEPS)
    assert gr.n_steps == j + 1  # greedy ends on the EOS step
    sp = generate(params, eos_cfg, PROMPT, GenerationConfig(method="speculative", max_steps=STEPS,
                                                            draft_layers=2, draft_len=4))
    assert_same_as_greedy(sp, gr)
    assert sp.arrays["draft_tokens"][j] == free[j]  # the EOS was an accepted draft token
    # min_steps past the EOS: both go on to max_steps
    gr = greedy(eos_cfg, params, STEPS, min_steps=STEPS)
    sp = generate(params, eos_cfg, PROMPT, GenerationConfig(method="speculative", max_steps=STEPS,
                                                            min_steps=STEPS, draft_layers=2, draft_len=4))
    assert gr.n_steps == STEPS
    assert_same_as_greedy(sp, gr)


@pytest.mark.slow  # several seconds: not in the fast unit suite
def test_eos_and_rejections_on_a_random_model():
    """Ordinary (rejecting) drafts with an EOS the greedy path reaches."""
    cfg, params = random_model(0, eos=())
    free = greedy(cfg, params, STEPS).arrays["tokens"][:, 0]
    j = next(s for s in range(5, STEPS) if free[s] not in free[:s])
    eos_cfg = dataclasses.replace(cfg, eos_token_ids=(int(free[j]),))
    gr = greedy(eos_cfg, params, STEPS)
    sp = generate(params, eos_cfg, PROMPT, GenerationConfig(method="speculative", max_steps=STEPS,
                                                            draft_layers=3, draft_len=2))
    assert_same_as_greedy(sp, gr)
    assert sp.n_steps == j + 1


@pytest.mark.parametrize("kw,msg", [
    (dict(draft_layers=0), "draft_layers must be >= 1"),
    (dict(draft_layers=4), "draft_layers must be in 1..3"),
    (dict(draft_layers=9), "draft_layers must be in 1..3"),
    (dict(draft_len=0), r"draft_len must be in \[1, 64\]"),
    (dict(draft_len=65), r"draft_len must be in \[1, 64\]"),
    (dict(prune=True), "neither pruning"),
    (dict(compat="upstream"), "neither pruning"),
])
def test_bad_settings_are_refused_before_compute(kw, msg):
    cfg, params = random_model(0)
    with pytest.raises(ValueError, match=msg):
        generate(params, cfg, PROMPT, GenerationConfig(method="speculative", max_steps=4, **kw))


def test_capture_and_custom_inputs_are_refused():
    cfg, params = random_model(0)
    gc = GenerationConfig(method="speculative", max_steps=4, draft_layers=1)
    with pytest.raises(ValueError, match="no per-step capture"):
        generate(params, cfg, PROMPT, gc, on_step=lambda *a: None)
    with pytest.raises(ValueError, match="no custom engine inputs"):
        generate(params, cfg, PROMPT, gc, inputs=gc.inputs(cfg))
    with pytest.raises(ValueError, match="not a speculative trace"):
        SpecStats.of(greedy(cfg, params, 4))


def test_cli_refuses_bad_draft_settings_in_one_line(capsys):
    from tempo_jax.cli import main

    assert main(["generate", "--prompt", "hi", "--method", "speculative", "--draft-len", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tempo-jax: error: --draft-len must be in [1, 64], got 0"]
    assert main(["generate", "--prompt", "hi", "--method", "speculative", "--html"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use --method greedy" in err[0]
