"""TEMPO engine against references: HF greedy, separate forwards, hand-built masks, formulas."""

from __future__ import annotations

import dataclasses
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.engine.inputs import stack
from tempo_jax.engine.siblings import SiblingRule
from tempo_jax.engine.masks import step_mask
from tempo_jax.engine.schedules import thresholds
from tempo_jax.engine.selection import combine
from tinymodel import full_forward_attn, full_logits, tiny

PROMPT = [5, 9, 13, 17, 21]


def run(gcfg, prompt=PROMPT, seed=0, capture=False, **kw):
    hf, cfg, params = tiny(seed)
    steps = []
    on_step = (lambda s, st, cap: steps.append(np.asarray(cap.attn))) if capture else None
    tr = generate(params, cfg, prompt, gcfg, on_step=on_step, **kw)
    return tr, steps


def hf_greedy(hf, prompt, n):
    import torch

    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                          eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("method", ["tempo", "greedy"])
def test_high_threshold_equals_hf_greedy(method):
    hf, _, _ = tiny(0)
    g = GenerationConfig(max_steps=12, threshold=0.51, max_width=4, method=method, eos="top",
                         min_steps=12)
    tr, _ = run(g)
    assert (tr.arrays["set_n"] == 1).all()
    assert tr.clean_ids() == hf_greedy(hf, PROMPT, 12)


def test_isolated_members_equal_separate_forwards_and_zero_leakage():
    hf, cfg, _ = tiny(0)
    g = GenerationConfig(max_steps=1, threshold=0.05, max_width=6, siblings="isolated")
    tr, attn = run(g, capture=True)
    n, P = int(tr.arrays["set_n"][0]), len(PROMPT)
    assert n >= 3
    members = tr.arrays["tokens"][0, :n]
    a = attn[0]  # [L,H,W,K]
    for i, tok in enumerate(members):
        ref_logits, ref_attn = full_forward_attn(hf, PROMPT + [int(tok)])
        # attention of member i over prompt slots and its own slot = plain forward's last row
        mine = np.concatenate([a[:, :, i, :P], a[:, :, i, P + i:P + i + 1]], axis=-1)
        np.testing.assert_allclose(mine, ref_attn[:, :, -1, :], atol=1e-5)
        siblings = [P + j for j in range(n) if j != i]
        assert (a[:, :, i, siblings] == 0).all()  # leakage exactly 0
    # and the next distribution (mixture) equals the mixture of the separate forwards
    hf_d = [np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            for z in (full_logits(hf, PROMPT + [int(t)])[-1] for t in members)]
    w = tr.arrays["probs"][0, :n] / tr.arrays["probs"][0, :n].sum()
    expect = sum(wi * d for wi, d in zip(w, hf_d))
    tr2, _ = run(dataclasses.replace(g, max_steps=2))
    nxt = tr2.arrays["tokens"][1]
    np.testing.assert_allclose(tr2.arrays["probs"][1][tr2.arrays["valid"][1]],
                               expect[nxt][tr2.arrays["valid"][1]], atol=1e-5)


@pytest.mark.parametrize("rule", SiblingRule.names())
def test_step_mask_equals_hand_built(rule):
    K, W = 12, 4
    alive = np.zeros(K, bool)
    alive[:6] = True
    alive[4] = False  # a pruned slot of step 0
    slot_step = np.array([-1, -1, -1, 0, 0, 0, -2, -2, -2, -2, -2, -2])
    base, n, s = 6, 3, 1
    codes = jnp.full((1, 1), SiblingRule.check(rule).code, jnp.int32)
    got = np.asarray(step_mask(jnp.asarray(alive), jnp.asarray(slot_step), s, base, n, W, codes))[0, 0]
    want = np.zeros((W, K), bool)
    for i in range(W):
        want[i, [0, 1, 2, 3, 5]] = True  # prompt + alive earlier step, not the pruned slot 4
        want[i, base + i] = True
        for j in range(n):
            if j != i and (rule == "full" or (rule == "visible" and j < i)
                           or (rule == "reverse" and j > i)):
                want[i, base + j] = True
    np.testing.assert_array_equal(got, want)


def test_visible_siblings_with_distinct_positions_equal_sequential_forward():
    """Member j sees members < j at consecutive positions: exactly an ordinary causal forward."""
    hf, _, _ = tiny(0)
    g = GenerationConfig(max_steps=1, threshold=0.05, max_width=6, siblings="visible",
                         positions="distinct")
    tr, attn = run(g, capture=True)
    n, P = int(tr.arrays["set_n"][0]), len(PROMPT)
    members = [int(t) for t in tr.arrays["tokens"][0, :n]]
    np.testing.assert_array_equal(tr.arrays["positions"][0, :n], P + np.arange(n))
    _, ref_attn = full_forward_attn(hf, PROMPT + members)
    np.testing.assert_allclose(attn[0][:, :, :n, :P + n], ref_attn[:, :, P:, :], atol=1e-5)


def test_offset_zero_equals_shared_and_offsets_are_applied():
    base = GenerationConfig(max_steps=4, threshold=0.05, max_width=5)
    shared, a1 = run(base, capture=True)
    off0, a2 = run(dataclasses.replace(base, positions="offset", offset_delta=0.0), capture=True)
    for k in ("tokens", "probs", "slots", "positions"):
        np.testing.assert_array_equal(shared.arrays[k], off0.arrays[k])
    chex.assert_trees_all_close(a1, a2, atol=0)
    off, _ = run(dataclasses.replace(base, positions="offset", offset_delta=0.25))
    P = len(PROMPT)
    for s in range(off.n_steps):
        n = off.arrays["set_n"][s]
        np.testing.assert_allclose(off.arrays["positions"][s, :n], P + s + 0.25 * np.arange(n))


def test_distinct_positions_shift_later_steps():
    tr, _ = run(GenerationConfig(max_steps=4, threshold=0.05, max_width=5, positions="distinct"))
    nxt = len(PROMPT)
    for s in range(tr.n_steps):
        n = tr.arrays["set_n"][s]
        np.testing.assert_array_equal(tr.arrays["positions"][s, :n], nxt + np.arange(n))
        nxt += n


def test_pruning_zero_attention_after_and_numpy_recomputation():
    g = GenerationConfig(max_steps=8, threshold=0.04, max_width=6, prune=True, prune_window=2,
                         prune_rule="relative", prune_rho=0.9, prune_layers=(1,), prune_heads=(0, 2))
    tr, attn = run(g, capture=True)
    a = tr.arrays
    pruned = np.flatnonzero(a["pruned_at"] >= 0)
    assert pruned.size > 0, "the test setting should prune something"
    for slot in pruned:
        for s in range(a["pruned_at"][slot] + 1, tr.n_steps):
            assert (attn[s][..., slot] == 0).all()
    # recompute: score(j) = mean over layer 1, heads {0,2}, queries of steps t+1..t+2 of attn on j
    for t in range(tr.n_steps - 2):
        n = a["set_n"][t]
        if n < 2:
            continue
        slots = a["slots"][t, :n]
        scores = []
        for j in slots:
            vals = [attn[s][1, [0, 2], :a["set_n"][s], j].mean(0) for s in (t + 1, t + 2)]
            scores.append(np.concatenate(vals).mean())
        scores = np.asarray(scores)
        alive_before = [a["pruned_at"][j] < 0 or a["pruned_at"][j] >= t + 2 for j in slots]
        assert all(alive_before)
        expect = (scores < 0.9 * scores.mean()) & (scores < scores.max())
        np.testing.assert_allclose(a["prune_score"][slots], scores, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(a["pruned_at"][slots] == t + 2, expect)
    steps = tr.steps()
    marked = [m for st in steps for m in st["members"] if m["pruned"]]
    assert all(m["prune_score"] is not None and m["pruned_at"] is not None for m in marked)


def test_best_member_always_survives_and_absolute_rule():
    g = GenerationConfig(max_steps=6, threshold=0.04, max_width=6, prune=True, prune_window=1,
                         prune_rule="absolute", prune_theta=1.0)  # everything is below theta
    tr, _ = run(g)
    a = tr.arrays
    assert (a["set_n"][:-1] > 1).any(), "the setting must produce parallel sets"
    for t in range(tr.n_steps - 1):
        n = a["set_n"][t]
        if n > 1:
            slots = a["slots"][t, :n]
            assert (a["pruned_at"][slots] < 0).sum() >= 1
            assert (a["pruned_at"][slots] == t + 1).sum() == n - np.isclose(
                a["prune_score"][slots], a["prune_score"][slots].max()).sum()


def test_sigmoid_rule_reproducible_from_key():
    g = GenerationConfig(max_steps=6, threshold=0.04, max_width=6, prune=True, prune_window=1,
                         prune_rule="sigmoid", prune_theta=0.05, prune_k=50.0, seed=3)
    t1, _ = run(g)
    t2, _ = run(g)
    np.testing.assert_array_equal(t1.arrays["pruned_at"], t2.arrays["pruned_at"])
    assert (t1.arrays["pruned_at"] >= 0).any(), "the setting must prune something"


def test_combining_rules_hand_computed():
    logits = jnp.array([[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    probs = jnp.array([0.6, 0.2, 0.1])
    valid = jnp.array([True, True, False])
    sm = lambda z: np.exp(z) / np.exp(z).sum()
    z = np.asarray(logits)
    np.testing.assert_allclose(combine("mixture", logits, probs, valid),
                               0.75 * sm(z[0]) + 0.25 * sm(z[1]), atol=1e-6)
    np.testing.assert_allclose(combine("uniform", logits, probs, valid),
                               0.5 * sm(z[0]) + 0.5 * sm(z[1]), atol=1e-6)
    np.testing.assert_allclose(combine("mean_logits", logits, probs, valid),
                               sm(np.array([1.0, 0.5, 1.0])), atol=1e-6)
    np.testing.assert_allclose(combine("top", logits, probs, valid), sm(z[0]), atol=1e-6)


@pytest.mark.parametrize("kind", ["constant", "linear", "exponential", "bezier", "relu"])
def test_schedules_match_formulas(kind):
    S, t0, t1 = 11, 0.1, 0.6
    got = thresholds(kind, t0, t1, S, k=2.0, p1=0.3, p2=0.9, a=0.4)
    for s in (0, 3, 5, 10):
        t = s / (S - 1)
        m = {"constant": 0.0, "linear": t, "exponential": (np.exp(2 * t) - 1) / (np.exp(2) - 1),
             "bezier": 3 * (1 - t) ** 2 * t * 0.3 + 3 * (1 - t) * t ** 2 * 0.9 + t ** 3,
             "relu": max(0.0, t - 0.4) / 0.6}[kind]
        assert got[s] == pytest.approx(t0 + (t1 - t0) * m, abs=1e-6)
    assert thresholds(kind, 0.2, 0.5, 1)[0] == pytest.approx(0.2)  # t = 0 when max_steps = 1


def test_schedule_is_used_by_the_engine():
    g = GenerationConfig(max_steps=6, threshold=0.05, threshold_final=1.0, schedule="linear")
    tr, _ = run(g)
    np.testing.assert_allclose(tr.arrays["tau"], thresholds("linear", 0.05, 1.0, 6), atol=1e-7)
    assert tr.arrays["set_n"][-1] == 1  # tau 1.0: argmax fallback


def test_selection_inclusive_sorted_capped():
    from tempo_jax.engine.selection import select_threshold

    d = jnp.array([0.1, 0.3, 0.2, 0.25, 0.15])
    toks, probs, valid, n = select_threshold(d, 0.2, 3)
    assert list(np.asarray(toks)[: int(n)]) == [1, 3, 2] and int(n) == 3  # 0.2 included, capped at 3
    toks, probs, valid, n = select_threshold(d, 0.9, 3)
    assert int(n) == 1 and int(toks[0]) == 1  # argmax fallback


def test_beam_search_equals_brute_force():
    from tempo_jax.engine.beam import beam_search

    hf, cfg, params = tiny(1, vocab=6)
    S, lp = 3, 0.7
    prompt = [3, 4, 5]
    tr = beam_search(params, cfg, prompt, width=36, max_steps=S, length_penalty=lp)
    best, best_seq = -np.inf, None
    for n in range(1, S + 1):
        for seq in itertools.product(range(6), repeat=n):
            if any(t == 2 for t in seq[:-1]) or (n < S and seq[-1] != 2):
                continue  # EOS ends a sequence; shorter ones must end in EOS
            z = full_logits(hf, prompt + list(seq))
            logp = sum(float(z[len(prompt) - 1 + i][t] - np.logaddexp.reduce(z[len(prompt) - 1 + i]))
                       for i, t in enumerate(seq))
            score = logp / n ** lp
            if score > best:
                best, best_seq = score, list(seq)
    assert tr.clean_ids() == best_seq
    assert np.max(tr.arrays["beam_final"]) == pytest.approx(best, abs=1e-4)


def test_sampling_reproducible_and_seed_dependent():
    g = GenerationConfig(max_steps=10, method="sample", temperature=1.5, top_k=20, top_p=0.95, seed=7)
    t1, _ = run(g)
    t2, _ = run(g)
    t3, _ = run(dataclasses.replace(g, seed=8))
    assert t1.clean_ids() == t2.clean_ids()
    assert t1.clean_ids() != t3.clean_ids()


def test_top_k_one_sampling_is_greedy():
    hf, _, _ = tiny(0)
    tr, _ = run(GenerationConfig(max_steps=8, method="sample", top_k=1, eos="top", min_steps=8))
    assert tr.clean_ids() == hf_greedy(hf, PROMPT, 8)


def test_compat_feed_sequence_matches_hand_trace():
    """reference-implementation-notes.md: priming; t_{P-1} again at P; then last member of C_{k-1}."""
    g = GenerationConfig(max_steps=5, threshold=0.05, max_width=16, compat="upstream")
    tr, _ = run(g)
    a, P = tr.arrays, len(PROMPT)
    for s in range(tr.n_steps):
        n = a["set_n"][s]
        last_member = a["tokens"][s, n - 1]
        assert a["fed_n"][s] == 1
        # forward k = s + 1 of the table: last member of C_s at position P+1+s, cache length P+1+s
        assert (a["fed_tokens"][s, 0], a["fed_pos"][s, 0], a["cache_len"][s]) == (
            last_member, P + 1 + s, P + 1 + s)
    # the refed prompt token sits at slot P, position P; members never enter the cache except the fed one
    assert a["slot_token"][P] == PROMPT[-1] and a["slot_pos"][P] == P
    # candidate sets equal a plain causal HF replay of that feed sequence
    hf, _, _ = tiny(0)
    fed = PROMPT + [PROMPT[-1]]
    for s in range(tr.n_steps):
        z = full_logits(hf, fed)[-1]
        d = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        want = [int(v) for v in np.argsort(-d) if d[v] >= 0.05] or [int(np.argmax(d))]
        assert list(a["tokens"][s, : a["set_n"][s]]) == want
        fed.append(want[-1])


def test_device_driver_equals_host_and_vmap_equals_one_by_one():
    from tempo_jax.engine.run import run_on_device
    from tempo_jax.engine.run import pad_prompt

    _, cfg, params = tiny(0)
    g = GenerationConfig(max_steps=6, threshold=0.05, max_width=5, prune=True, prune_window=1)
    host, _ = run(g)
    dev, _ = run(g, driver="device")
    for k in ("tokens", "pruned_at", "slots"):  # discrete: exactly equal
        np.testing.assert_array_equal(host.arrays[k], dev.arrays[k], err_msg=k)
    # probabilities: float32 reduction order differs (the host driver feeds 1-4 query rows per step,
    # the device driver W = 5; below, vmapped vs one world): on jax 0.10.2 one probability moved by
    # 1.1e-6 (1.9e-6 relative), so 1e-5 relative: reduction-order noise, far below any real change
    np.testing.assert_allclose(host.arrays["probs"], dev.arrays["probs"], rtol=1e-5, atol=1e-6)
    taus = [0.05, 0.1, 0.3]
    prompts = [PROMPT, [7, 8, 9], [30, 31, 32, 33, 34, 35]]
    singles = [run(dataclasses.replace(g, threshold=t), prompt=p, driver="device")[0]
               for t, p in zip(taus, prompts)]
    datas = [dataclasses.replace(g, threshold=t).inputs(cfg) for t in taus]
    batch_data = stack(datas)
    batch_prompt = jnp.stack([pad_prompt(g, p) for p in prompts])
    plen = jnp.asarray([len(p) for p in prompts], jnp.int32)
    K = g.capacity_for(6)
    fn = jax.jit(jax.vmap(lambda d, p, n: run_on_device(params, cfg, g.static(), d, p, n, K)))
    out = fn(batch_data, batch_prompt, plen)
    for b, single in enumerate(singles):
        n = single.n_steps
        np.testing.assert_array_equal(np.asarray(out.tokens[b])[:n], single.arrays["tokens"])
        # a vmapped program batches its products (another float32 reduction order): same tolerance
        np.testing.assert_allclose(np.asarray(out.probs[b])[:n], single.arrays["probs"], rtol=1e-5, atol=1e-6)


def test_eos_rules():
    _, cfg, params = tiny(0)
    free = GenerationConfig(max_steps=12, threshold=0.05, max_width=6)
    tr = generate(params, cfg, PROMPT, free)
    a = tr.arrays
    top_tok = int(a["tokens"][3, 0])
    first_top = min(s for s in range(tr.n_steps) if a["tokens"][s, 0] == top_tok)
    as_eos = lambda tok: dataclasses.replace(cfg, eos_token_ids=(tok,))
    t = generate(params, as_eos(top_tok), PROMPT, dataclasses.replace(free, eos="top"))
    assert t.n_steps == first_top + 1
    t = generate(params, as_eos(top_tok), PROMPT, dataclasses.replace(free, eos="top", min_steps=12))
    assert t.n_steps == 12
    # a token that is a non-top member somewhere: "any" stops there, "top" does not stop there
    s_any, i_any = next((s, i) for s in range(tr.n_steps) for i in range(1, a["set_n"][s]))
    tok = int(a["tokens"][s_any, i_any])
    first_any = min(s for s in range(tr.n_steps) if tok in a["tokens"][s, : a["set_n"][s]])
    t_any = generate(params, as_eos(tok), PROMPT, dataclasses.replace(free, eos="any"))
    assert t_any.n_steps == first_any + 1
    first_as_top = [s for s in range(tr.n_steps) if a["tokens"][s, 0] == tok]
    t_top = generate(params, as_eos(tok), PROMPT, dataclasses.replace(free, eos="top"))
    assert t_top.n_steps == (first_as_top[0] + 1 if first_as_top else 12)
    # "all": every member must be EOS; a parallel set never is
    first_all = [s for s in range(tr.n_steps) if a["set_n"][s] == 1 and a["tokens"][s, 0] == top_tok]
    t_all = generate(params, as_eos(top_tok), PROMPT, dataclasses.replace(free, eos="all"))
    assert t_all.n_steps == (first_all[0] + 1 if first_all else 12)


@pytest.mark.parametrize("bad, match", [
    (dict(threshold=0.0), "threshold must be in"),
    (dict(threshold=1.5), "threshold must be in"),
    (dict(max_width=0), "max_width must be >= 1"),
    (dict(siblings="sideways"), "unknown sibling rule"),
    (dict(combine="vote"), "unknown combining rule"),
    (dict(positions="random"), "unknown positions variant"),
    (dict(schedule="cosine"), "unknown threshold schedule"),
    (dict(prune_rule="magic"), "unknown prune rule"),
    (dict(capacity=16, max_steps=8, max_width=4), "capacity 16 is too small"),
    (dict(prune_layers=(7,)), "prune_layers must be"),
])
def test_bad_settings_fail_before_compute(bad, match):
    _, cfg, params = tiny(0)
    import tempo_jax.engine.run as r

    g = GenerationConfig(**{**dict(max_steps=4), **bad})
    with pytest.raises(ValueError, match=match):
        r.check_request(cfg, g, PROMPT)


def test_bad_prompts():
    _, cfg, params = tiny(0)
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(params, cfg, [], GenerationConfig())
    with pytest.raises(ValueError, match="exceeds the model's context"):
        generate(params, cfg, list(range(5, 60)) * 5, GenerationConfig())
    with pytest.raises(ValueError, match="token ids must lie"):
        generate(params, cfg, [1, 2, 999], GenerationConfig())
