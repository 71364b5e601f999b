"""``tempo-jax explain`` (tempo_jax.explain) on runs of the tiny random model saved with a word-level
tokenizer ("w5" is token 5): printed numbers equal the trace's, attention from a replay equals the
captured attention, the counterfactual really forces the member, and bad inputs are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tempo_jax import explain as X
from tempo_jax.trace import Trace

PROMPT = "w5 w9 w12 w7"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from tinymodel import save_tiny_with_tokenizer

    return save_tiny_with_tokenizer(tmp_path_factory.mktemp("tiny") / "model")


def _generate(folder, out, *extra):
    from tempo_jax.cli import main

    assert main(["generate", "--model", str(folder), "--prompt", PROMPT, "--max-steps", "8",
                 "--threshold", "0.08", "--out", str(out), "--no-colour", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tiny_folder, tmp_path_factory):
    """A pruned run with a full capture (--html) and the same run without one."""
    base = tmp_path_factory.mktemp("runs")
    args = ("--prune", "--prune-rho", "0.9", "--prune-window", "1")
    return {"captured": _generate(tiny_folder, base / "cap", "--html", *args),
            "plain": _generate(tiny_folder, base / "plain", *args)}


@pytest.fixture(scope="module")
def loaded(tiny_folder):
    from tempo_jax.loading import load_model

    return load_model(str(tiny_folder), verbose=False)


def _parallel_step(trace: Trace) -> int:
    return next(s for s, st in enumerate(trace.steps()) if len(st["members"]) > 1)


def _explain(run, *args, capsys) -> tuple[int, str, str]:
    from tempo_jax.cli import main

    rc = main(["explain", str(run), *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_printed_and_json_numbers_equal_the_trace(runs, tmp_path, capsys):
    trace = Trace.load(runs["captured"], "trace_000")
    s = _parallel_step(trace)
    js = tmp_path / "e.json"
    rc, out, err = _explain(runs["captured"], "--step", str(s), "--json", str(js), capsys=capsys)
    assert rc == 0, err
    members = trace.steps()[s]["members"]
    got = json.loads(js.read_text())["explanation"]["members"]
    assert [m["token"] for m in got] == [m["token"] for m in members]
    assert [m["prob"] for m in got] == [m["prob"] for m in members]  # exactly the trace's floats
    assert [m["prune_score"] for m in got] == [m["prune_score"] for m in members]
    for m in members:  # the printed table rounds the same numbers to 4 decimals
        assert f"{m['prob']:7.4f}" in out
    # a member is printed PRUNED exactly when the trace says it was pruned
    pruned_lines = [ln for ln in out.splitlines() if "PRUNED at step" in ln]
    assert len(pruned_lines) == sum(m["pruned"] for m in members)


def test_near_misses_are_the_next_tokens_of_the_step_distribution(runs, loaded):
    trace = Trace.load(runs["plain"], "trace_000")
    s = _parallel_step(trace)
    r = X.replay(loaded.params, loaded.cfg, trace, capture_step=s)
    e = X.explain_step(trace, s, dist=r.dist, near=3)
    members = trace.steps()[s]["members"]
    np.testing.assert_allclose(r.dist[[m["token"] for m in members]], [m["prob"] for m in members],
                               rtol=1e-5)
    order = [int(t) for t in np.argsort(-r.dist) if int(t) not in {m["token"] for m in members}][:3]
    assert [t for t, _, _ in e.near_misses] == order
    assert max(p for _, _, p in e.near_misses) < min(m["prob"] for m in members)


def test_replayed_attention_equals_the_captured_attention(runs, loaded):
    trace = Trace.load(runs["captured"], "trace_000")
    for s in sorted({_parallel_step(trace), trace.n_steps - 1}):
        cap = X.capture_attention(runs["captured"], "trace_000", trace, s)
        rep = X.replay(loaded.params, loaded.cfg, trace, capture_step=s).attn
        assert cap.shape == rep.shape
        np.testing.assert_allclose(rep, cap, atol=1e-5)
    assert X.capture_attention(runs["plain"], "trace_000", trace, 0) is None


def test_member_attention_by_hand():
    attn = np.zeros((2, 1, 1, 5))
    attn[0, 0, 0] = [0.5, 0.1, 0.3, 0.0, 0.1]  # layer 0
    attn[1, 0, 0] = [0.3, 0.3, 0.1, 0.2, 0.1]  # layer 1
    slot_step = np.array([-1, -1, -1, 0, 1])
    g = X.member_attention(attn, 0, 4, slot_step, str, [(0, 0), (0, 1)], top=2)
    assert [w.slot for w in g[0].top] == [2, 1]  # sink (0) and itself (4) are left out
    assert g[0].sink == pytest.approx(0.5) and g[0].own == pytest.approx(0.1)
    assert g[1].top[0].slot == 1 and g[1].top[0].weight == pytest.approx(0.2)  # mean of 0.1, 0.3
    assert g[1].generated_mass == pytest.approx(0.1) and g[1].top[1].origin == "prompt"
    assert g[1].prompt_mass == pytest.approx(0.2 + 0.2)
    assert X.layer_groups(30, 3) == [(0, 9), (10, 19), (20, 29)]


def test_counterfactual_forces_the_member(runs, loaded, capsys):
    trace = Trace.load(runs["plain"], "trace_000")
    s = _parallel_step(trace)
    members = trace.steps()[s]["members"]
    i = len(members) - 1
    c = X.counterfactual(loaded.params, loaded.cfg, loaded.tokenizer, trace, s, i)
    f = c.forced_trace.steps()
    assert [m["token"] for m in f[s]["members"]] == [members[i]["token"]]
    assert f[s]["members"][0]["prob"] == pytest.approx(1.0)
    for t in range(s):  # steps before the forced one are the original run's
        assert f[t]["members"] == trace.steps()[t]["members"]
    assert set(c.diff()) >= {"distinct_2", "self_ppl"}
    assert c.diff()["self_ppl"] == pytest.approx(c.forced_quality["self_ppl"] - c.original_quality["self_ppl"])
    # through the command line, by the member's text
    rc, out, err = _explain(runs["plain"], "--step", str(s), "--force", f"w{members[i]['token']}",
                            capsys=capsys)
    assert rc == 0, err
    assert f"forced to member {i}" in out and "self_ppl" in out


def test_forcing_the_only_member_of_a_greedy_run_reproduces_it(tiny_folder, tmp_path, loaded):
    run = _generate(tiny_folder, tmp_path / "greedy", "--threshold", "0.9")
    trace = Trace.load(run, "trace_000")
    c = X.counterfactual(loaded.params, loaded.cfg, loaded.tokenizer, trace, 2, 0)
    assert c.forced_trace.clean_ids() == trace.clean_ids()
    assert c.diff()["distinct_2"] == 0 and c.forced_text == c.original_text


@pytest.mark.parametrize("args, message", [
    (["--step", "99"], "step 99 is out of range"),
    (["--step", "-1"], "out of range"),
    (["--step", "0", "--force", "7"], "unknown member 7 at step 0"),
    (["--step", "0", "--force", "nosuchtoken"], "unknown member 'nosuchtoken'"),
    (["--step", "0", "--force", "0", "--no-replay"], "cannot be combined"),
])
def test_bad_inputs_are_one_line_errors(runs, args, message, capsys, monkeypatch):
    import tempo_jax.loading as loading

    monkeypatch.setattr(loading, "load_checked", lambda *a: pytest.fail("the model was loaded before the check"))
    rc, out, err = _explain(runs["plain"], *args, capsys=capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_missing_trace_is_a_one_line_error(tmp_path, capsys):
    rc, _, err = _explain(tmp_path / "nothing", "--step", "0", capsys=capsys)
    assert rc == 2 and "no such folder" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = _explain(tmp_path / "empty", "--step", "0", capsys=capsys)
    assert rc == 2 and "no trace trace_000" in err


def test_a_run_that_does_not_replay_is_refused(runs, loaded, tmp_path):
    trace = Trace.load(runs["plain"], "trace_000")
    bad = Trace(trace.model, dict(trace.config, threshold=0.5), trace.prompt_ids, trace.arrays)
    if all(len(st["members"]) == 1 for st in trace.steps()):
        pytest.skip(reason="the run has no parallel set, so a greedy replay would match it")
    with pytest.raises(ValueError, match="does not reproduce"):
        X.replay(loaded.params, loaded.cfg, bad)


def test_report_lists_every_parallel_step_with_the_trace_numbers(runs):
    from tempo_jax.report import run_data, write_run_report

    trace = Trace.load(runs["captured"], "trace_000")
    data, _ = run_data(runs["captured"])
    parallel = [s for s, st in enumerate(trace.steps()) if len(st["members"]) > 1]
    ex = data["explain"]["steps"]
    assert [e["step"] for e in ex] == parallel
    for e in ex:
        members = trace.steps()[e["step"]]["members"]
        assert [m["prob"] for m in e["members"]] == [m["prob"] for m in members]
        assert e["attention_source"] == "capture"
        # the same numbers as the command's explanation from the capture
        attn = X.capture_attention(runs["captured"], "trace_000", trace, e["step"])
        ref = X.explain_step(trace, e["step"], lambda ids: f"w{ids[0]}", attn, "capture", top=3)
        assert e["members"][0]["attention"] == ref.to_dict()["members"][0]["attention"]
    html = write_run_report(runs["captured"], runs["captured"] / "r.html").read_text()
    for s in parallel:
        assert f'id="explain-{s}"' in html
    plain, _ = run_data(runs["plain"])
    assert all(e["attention_source"] is None for e in plain["explain"]["steps"])
