"""RQ 8.1's instrument on the tiny random model: RoPE is differentiable in the positions, the set
world reduces to the single-member reference, the offset designs are what they claim, and the
fitting gradient agrees with finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.research import rq8_1_positions as R
from tempo_jax.errors import UsageError
from tempo_jax.model import causal_mask, forward, init_cache

IDS = [1, 17, 33, 5, 48, 9, 22]


def test_forward_is_differentiable_in_positions(tiny_model):
    """jax.grad through model.forward w.r.t. float positions matches central finite differences."""
    _, cfg, params = tiny_model
    t = len(IDS)
    tokens = jnp.asarray([IDS])
    slots = jnp.arange(t)[None]
    mask = causal_mask(1, t, 16)
    w = jax.random.normal(jax.random.PRNGKey(0), (cfg.vocab_size,))

    def f(pos):
        logits, _, _ = forward(params, cfg, tokens, pos, slots, mask, init_cache(cfg, 1, 16))
        return jnp.sum(jax.nn.log_softmax(logits[0, -1]) * w)

    pos = jnp.asarray([[0.0, 1.0, 2.0, 2.0, 2.3, 4.0, 5.5]])
    g = np.asarray(jax.grad(f)(pos))[0]
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 1e-4  # positions do move the output
    eps = 1e-2
    for i in (1, 3, 6):
        e = jnp.zeros_like(pos).at[0, i].set(eps)
        fd = (float(f(pos + e)) - float(f(pos - e))) / (2 * eps)
        assert g[i] == pytest.approx(fd, rel=5e-2, abs=2e-3)


def test_offset_designs():
    np.testing.assert_allclose(R.hier_offsets(4), [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(R.cond_offsets(2.0, 1.0, 4), R.hier_offsets(4))  # capped at full spread
    np.testing.assert_allclose(R.cond_offsets(0.5, 1.0, 4), 0.5 * R.hier_offsets(4))
    np.testing.assert_allclose(R.cond_offsets(0.0, 1.0, 4), np.zeros(4))
    with pytest.raises(ValueError):
        R.cond_offsets(1.0, 0.0)


def test_prepare_references_are_distributions(tiny_model):
    _, cfg, params = tiny_model
    p = R.prepare(params, cfg, IDS, w=3)
    assert p["plen"] == len(IDS) and p["members"].shape == (3,)
    assert p["weights"].sum() == pytest.approx(1.0) and np.all(np.diff(p["weights"]) <= 0)
    for k in ("logp_mix", "logp_top"):
        assert float(jax.scipy.special.logsumexp(p[k])) == pytest.approx(0.0, abs=1e-4)
    # with one member the mixture IS the top-1 path
    p1 = R.prepare(params, cfg, IDS, w=1)
    np.testing.assert_allclose(p1["logp_mix"], p1["logp_top"], atol=1e-5)


def _set(params, cfg, p, offsets):
    d = offsets.shape[0]
    w = p["members"].shape[0]
    return R.set_readout(params, cfg, R._broadcast(p["cache"], d), jnp.full((d,), p["plen"], jnp.int32),
                         jnp.broadcast_to(jnp.asarray(p["members"]), (d, w)),
                         jnp.full((d,), p["probe"], jnp.int32), jnp.asarray(offsets, jnp.float32))


def test_single_member_set_equals_reference(tiny_model):
    """A one-member set at offset 0 is exactly the reference world (member at P, probe at P + 1);
    a different offset changes the readout."""
    _, cfg, params = tiny_model
    p = R.prepare(params, cfg, IDS, w=1)
    logq, att = _set(params, cfg, p, np.asarray([[0.0], [0.5]]))
    np.testing.assert_allclose(np.asarray(logq[0]), p["logp_top"], atol=1e-5)
    assert float(R.kl(jnp.asarray(p["logp_top"]), logq[1])) > 1e-6
    assert att.shape == (cfg.num_layers, 2, cfg.num_heads, 1)
    assert np.all(np.asarray(att) > 0) and np.all(np.asarray(att) < 1)


def test_set_readout_member_attention_and_permutation(tiny_model):
    """Member attention is the probe's attention on the member slots (sums below 1 with the prompt);
    with equal offsets the members' order does not matter (isolated siblings, same position)."""
    _, cfg, params = tiny_model
    p = R.prepare(params, cfg, IDS, w=3)
    logq, att = _set(params, cfg, p, np.zeros((1, 3)))
    assert np.all(np.asarray(att).sum(-1) < 1)
    q = dict(p, members=p["members"][::-1].copy())
    logq2, att2 = _set(params, cfg, q, np.zeros((1, 3)))
    np.testing.assert_allclose(np.asarray(logq2), np.asarray(logq), atol=1e-5)
    np.testing.assert_allclose(np.asarray(att2)[..., ::-1], np.asarray(att), atol=1e-6)
    # distinct offsets break that symmetry
    logq3, _ = _set(params, cfg, p, np.asarray([[0.0, 0.3, 0.6]]))
    assert np.abs(np.asarray(logq3) - np.asarray(logq)).max() > 1e-5


def test_fit_gradient_matches_finite_differences(tiny_model):
    _, cfg, params = tiny_model
    p = R.prepare(params, cfg, IDS, w=3)
    lm = jnp.asarray(p["logp_mix"])[None]
    args = (params, cfg, p["cache"], jnp.asarray([p["plen"]]), jnp.asarray(p["members"])[None],
            jnp.asarray([p["probe"]]))
    obj = lambda o: jnp.log(R.kl(lm, R._set_forward(*args, o[None], attn=False)[0]))[0]
    o = jnp.asarray([0.1, 0.4, -0.2])
    g = np.asarray(jax.grad(obj)(o))
    eps = 1e-2
    for i in range(3):
        e = jnp.zeros(3).at[i].set(eps)
        fd = (float(obj(o + e)) - float(obj(o - e))) / (2 * eps)
        assert g[i] == pytest.approx(fd, rel=5e-2, abs=2e-3)


def test_learned_file_is_required(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "LEARNED_PATH", tmp_path / "missing.json")
    with pytest.raises(UsageError, match="fit"):
        R.load_learned()
    (tmp_path / "bad.json").write_text('{"offsets": [0, 0]}')
    monkeypatch.setattr(R, "LEARNED_PATH", tmp_path / "bad.json")
    with pytest.raises(UsageError, match="offsets"):
        R.load_learned()


def test_sliding_window_model_equals_hugging_face():
    """On a tiny Gemma 3 with a 4-position window (key_pos matters): the reference world (member at P,
    probe at P + 1) is Hugging Face's causal run of prompt + member + probe, and so is a one-member set
    at offset 0."""
    import torch
    from tinymodel import tiny_gemma

    hf, cfg, params = tiny_gemma(0, window=4)
    p = R.prepare(params, cfg, IDS, w=1)
    with torch.no_grad():
        want = torch.log_softmax(hf(torch.tensor([IDS + [int(p["members"][0]), p["probe"]]])).logits[0, -1], -1)
    np.testing.assert_allclose(p["logp_top"], want.numpy(), atol=2e-5)
    logq, _ = _set(params, cfg, p, np.asarray([[0.0], [0.5]]))
    np.testing.assert_allclose(np.asarray(logq[0]), want.numpy(), atol=2e-5)
    assert float(R.kl(jnp.asarray(p["logp_top"]), logq[1])) > 1e-6
