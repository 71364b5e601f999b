"""The Gemma 3 family against Hugging Face ``Gemma3ForCausalLM`` (torch, CPU, float32, eager), on a
tiny random model whose sliding window (4 positions) is shorter than the sequences: logits and
per-layer attention of one causal forward, and token-by-token decoding from the cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the HF reference needs torch (pip install -e .[test])")

from tempo_jax.model import TapsSpec, causal_mask, forward, init_cache  # noqa: E402
from tinymodel import tiny_gemma  # noqa: E402

IDS = [2, 5, 9, 13, 17, 21, 8, 3, 40, 11, 7, 30]  # 12 tokens: three windows' worth
_fwd = jax.jit(forward, static_argnames=("cfg", "taps"))


def _hf(hf, ids):
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_attentions=True)
    return out.logits[0].numpy(), [a[0].numpy() for a in out.attentions]


def test_forward_equals_hf_logits_and_attention_beyond_the_window():
    hf, cfg, params = tiny_gemma(0)
    t, k = len(IDS), 16
    pos = jnp.arange(t)[None]
    logits, _, taps = _fwd(params, cfg, jnp.asarray([IDS]), pos.astype(jnp.float32), pos,
                           causal_mask(1, t, k), init_cache(cfg, 1, k), TapsSpec.of("attn"),
                           key_pos=jnp.arange(k, dtype=jnp.float32)[None])
    want, attn = _hf(hf, IDS)
    scale = np.abs(want).max()
    np.testing.assert_allclose(logits[0], want, rtol=1e-5, atol=1e-5 * scale)
    for l, a in enumerate(attn):  # [H,T,T]; the sliding layers see only the last 4 positions
        np.testing.assert_allclose(taps["attn"][l, 0, :, :, :t], a, atol=2e-6)
        if cfg.layer_types[l] == "sliding":
            assert np.all(np.asarray(taps["attn"][l, 0, :, 10, :7]) == 0)  # 10 - 6 = 4: out of window
            assert np.all(np.asarray(taps["attn"][l, 0, :, 10, 7:11]) > 0)
    assert np.all(np.asarray(taps["attn"][2, 0, :, 10, :11]) > 0)  # the full layer sees everything


def test_decoding_from_the_cache_equals_hf():
    hf, cfg, params = tiny_gemma(0)
    k = 16
    cache = init_cache(cfg, 1, k)
    key_pos = jnp.arange(k, dtype=jnp.float32)[None]
    want, _ = _hf(hf, IDS)
    got = []
    for i, tok in enumerate(IDS):  # one token per forward, each at its own slot and position
        logits, cache, _ = _fwd(params, cfg, jnp.asarray([[tok]]), jnp.full((1, 1), float(i)),
                                jnp.full((1, 1), i), causal_mask(1, 1, k, start=i), cache, key_pos=key_pos)
        got.append(np.asarray(logits[0, 0]))
    np.testing.assert_allclose(np.stack(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_greedy_generation_equals_hf_generate():
    from tempo_jax.engine import GenerationConfig, generate

    hf, cfg, params = tiny_gemma(0)
    prompt = IDS[:6]
    tr = generate(params, cfg, prompt, GenerationConfig(method="greedy", max_steps=10, min_steps=10))
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=10, min_new_tokens=10, do_sample=False)
    assert [int(t) for t in tr.arrays["tokens"][:, 0]] == ref[0, len(prompt):].tolist()


def test_forward_refuses_a_windowed_model_without_key_positions():
    _, cfg, params = tiny_gemma(0)
    with pytest.raises(ValueError, match="sliding-window layers: forward needs key_pos"):
        forward(params, cfg, jnp.asarray([IDS[:3]]), jnp.arange(3.0)[None], jnp.arange(3)[None],
                causal_mask(1, 3, 8), init_cache(cfg, 1, 8))


def _hf_masked(hf, tokens, positions, allowed, window):
    """HF logits and attention with our masks: ``allowed[T,T]`` for the full layers, and ANDed with
    the window over logical positions for the sliding ones (HF takes one 4-D mask per layer kind)."""
    pos = np.asarray(positions, np.float64)
    in_window = (pos[:, None] - pos[None, :]) < window
    add = lambda m: torch.from_numpy(np.where(m, 0.0, np.finfo(np.float32).min).astype(np.float32)[None, None])
    masks = {"full_attention": add(allowed), "sliding_attention": add(allowed & in_window)}
    with torch.no_grad():
        out = hf(torch.tensor([list(tokens)]), attention_mask=masks,
                 position_ids=torch.as_tensor(np.asarray(positions)[None], dtype=torch.long),
                 output_attentions=True)
    return out.logits[0].numpy(), [a[0].numpy() for a in out.attentions]


def test_shared_positions_and_a_window_over_positions_equal_hf():
    """Three isolated members share position 6 after a 6-token prompt; a probe at 7 sees them all.
    On the sliding layers (window 4) the members see positions 3..6 and the probe 4..7: the window
    counts logical positions, not slots (semantics.md, "Sliding window")."""
    hf, cfg, params = tiny_gemma(0)
    tokens = [2, 5, 9, 13, 17, 21, 8, 3, 40, 11]
    positions = np.array([0, 1, 2, 3, 4, 5, 6, 6, 6, 7])
    t = len(tokens)
    allowed = np.tril(np.ones((t, t), bool))
    allowed[6:9, 6:9] = np.eye(3, dtype=bool)  # isolated siblings
    want, attn = _hf_masked(hf, tokens, positions, allowed, cfg.sliding_window)
    logits, _, taps = _fwd(params, cfg, jnp.asarray([tokens]), jnp.asarray(positions[None], jnp.float32),
                           jnp.arange(t)[None], jnp.asarray(allowed[None]), init_cache(cfg, 1, t),
                           TapsSpec.of("attn"), key_pos=jnp.asarray(positions[None], jnp.float32))
    np.testing.assert_allclose(logits[0], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    for l, a in enumerate(attn):
        np.testing.assert_allclose(taps["attn"][l, 0], a, atol=2e-6)
    sliding = np.asarray(taps["attn"][0, 0])  # [H,T,K]
    assert np.all(sliding[:, 9, :4] == 0) and np.all(sliding[:, 9, 4:] > 0)  # probe at 7: 4..7
    assert np.all(sliding[:, 7, :3] == 0) and np.all(sliding[:, 7, 3:6] > 0)  # member at 6: 3..5, itself


@pytest.mark.parametrize("siblings, positions", [("isolated", "shared"), ("full", "shared"),
                                                  ("visible", "distinct"), ("reverse", "shared")])
def test_tempo_sets_equal_hf_forward_of_the_same_slots(siblings, positions):
    """A TEMPO run with sets of several members (past the window), for sibling rules and positions
    variants: rebuilt as one HF forward over the slots (tokens, positions and visibility from the
    trace's slot maps and the rule's ``sees``), the mixture of each set's next-token distributions
    gives the next set's probabilities."""
    from tempo_jax.engine import GenerationConfig, generate
    from tempo_jax.engine.siblings import SiblingRule

    hf, cfg, params = tiny_gemma(0)
    prompt = IDS[:6]
    tr = generate(params, cfg, prompt, GenerationConfig(max_steps=6, threshold=0.05, max_width=4,
                                                        siblings=siblings, positions=positions))
    a = tr.arrays
    assert a["set_n"].max() > 1 and len(prompt) + tr.n_steps > cfg.sliding_window + 2
    n = int(a["n_written"])
    step, pos, member = a["slot_step"][:n], a["slot_pos"][:n], a["slot_member"][:n]
    k = np.arange(n)
    # a prompt slot sees the prompt causally; a member sees the prompt, earlier steps, itself and
    # the siblings its rule lets it see
    sib = (step[None, :] == step[:, None]) & np.asarray(SiblingRule.check(siblings).sees(member[:, None],
                                                                                         member[None, :]))
    allowed = np.where(step[:, None] < 0, (step[None, :] < 0) & (k[None, :] <= k[:, None]),
                       (step[None, :] < step[:, None]) | (k[None, :] == k[:, None]) | sib)
    logits, _ = _hf_masked(hf, a["slot_token"][:n], pos.astype(np.int64), allowed, cfg.sliding_window)
    p = torch.softmax(torch.from_numpy(logits).double(), -1).numpy()
    checked = 0
    for s in range(tr.n_steps - 1):
        m = int(a["set_n"][s])
        rows = np.flatnonzero(step == s)
        assert len(rows) == m
        w = a["probs"][s, :m] / a["probs"][s, :m].sum()  # mixture weights: the members' probabilities
        nxt = (w[:, None] * p[rows]).sum(0)
        m2 = int(a["set_n"][s + 1])
        np.testing.assert_allclose(a["probs"][s + 1, :m2], nxt[a["tokens"][s + 1, :m2]], rtol=2e-5, atol=1e-6)
        checked += 1
    assert checked == tr.n_steps - 1


def test_beam_search_past_the_window_equals_brute_force():
    """Beams write each step's N members at one position; the window (2 positions here) counts
    positions, so every beam's key positions must be right for its scores to equal HF's."""
    import itertools

    from tempo_jax.engine.beam import beam_search

    hf, cfg, params = tiny_gemma(1, window=2, vocab=6)
    eos, S, lp = 1, 3, 0.7
    prompt = [2, 4, 5, 3]
    tr = beam_search(params, cfg, prompt, width=36, max_steps=S, length_penalty=lp)
    best, best_seq = -np.inf, None
    for n in range(1, S + 1):
        for seq in itertools.product(range(6), repeat=n):
            if any(t == eos for t in seq[:-1]) or (n < S and seq[-1] != eos):
                continue  # EOS ends a sequence; shorter ones must end in EOS
            z, _ = _hf(hf, prompt + list(seq))
            logp = sum(float(z[len(prompt) - 1 + i][t] - np.logaddexp.reduce(z[len(prompt) - 1 + i]))
                       for i, t in enumerate(seq))
            if logp / n ** lp > best:
                best, best_seq = logp / n ** lp, list(seq)
    assert tr.clean_ids() == best_seq
    assert np.max(tr.arrays["beam_final"]) == pytest.approx(best, abs=1e-4)


@pytest.mark.parametrize("draft_layers", [1, 2])
def test_speculative_past_the_window_equals_greedy(draft_layers):
    from tempo_jax.engine import GenerationConfig, generate

    _, cfg, params = tiny_gemma(2)
    prompt = IDS[:5]
    greedy = generate(params, cfg, prompt, GenerationConfig(method="greedy", max_steps=14, min_steps=14))
    spec = generate(params, cfg, prompt, GenerationConfig(method="speculative", max_steps=14, min_steps=14,
                                                          draft_len=3, draft_layers=draft_layers))
    assert spec.clean_ids() == greedy.clean_ids()
