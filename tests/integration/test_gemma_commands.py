"""Every command on a Gemma 3 model: a tiny random Gemma 3 (tests/tinymodel.py, a 4-position sliding
window) saved by HF transformers as a safetensors folder with a word-level tokenizer ("w5" is token
5), converted by ``tempo-jax convert``, then generate (TEMPO with pruning and a full capture as HTML;
beam; speculative), forward, explain, report and search; and the refusals a user can meet (an
unknown --model name, a GGUF of another architecture, a config field not implemented): one line,
exit 2."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from test_front_door import _run, assert_user_error
from tempo_jax.trace import Trace

pytest.importorskip("torch", reason="the tiny Gemma is built by HF transformers (pip install -e .[test])")
pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "tempo_jax.cli"]
PROMPT = "w5 w9 w12 w7 w30 w11"  # past the window already


def _hf_folder(folder, **config_changes):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tinymodel import tiny_gemma

    hf, cfg, _ = tiny_gemma(0)
    hf.save_pretrained(folder, safe_serialization=True)
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3} | {f"w{i}": i for i in range(4, cfg.vocab_size)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
                            eos_token="<eos>").save_pretrained(folder)
    if config_changes:
        path = folder / "config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | config_changes))
    return folder


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from tempo_jax.cli import main

    base = tmp_path_factory.mktemp("gemma")
    src = _hf_folder(base / "hf")
    assert main(["convert", str(src), str(base / "model")]) == 0
    return base / "model"


def _main(*args) -> int:
    from tempo_jax.cli import main

    return main([str(a) for a in args])


def test_convert_keeps_the_hf_model(converted):
    """The converted folder gives HF's logits (the map and config of an HF Gemma 3 folder)."""
    import torch

    from tempo_jax.loading import load_model
    from tempo_jax.model import causal_mask, forward, init_cache
    from tinymodel import tiny_gemma

    m = load_model(str(converted), verbose=False)
    assert m.cfg.family == "gemma3" and m.cfg.has_window
    ids = [2, 5, 9, 12, 7, 30, 11, 40, 8, 3]
    t = len(ids)
    pos = np.arange(t)[None]
    got, _, _ = forward(m.params, m.cfg, np.asarray([ids]), pos, pos, causal_mask(1, t, t),
                        init_cache(m.cfg, 1, t), key_pos=pos.astype(np.float32))
    with torch.no_grad():
        want = tiny_gemma(0)[0](torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(np.asarray(got[0]), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_generate_with_pruning_capture_report_and_explain(converted, tmp_path, capsys):
    out = tmp_path / "run"
    assert _main("generate", "--model", converted, "--prompt", PROMPT, "--max-steps", 10,
                 "--min-steps", 10, "--threshold", "0.05", "--prune", "--prune-rho", "0.9",
                 "--prune-window", 1, "--html", "--out", out, "--no-colour") == 0
    trace = Trace.load(out, "trace_000")
    a = trace.arrays
    assert trace.n_steps == 10 and a["set_n"].max() > 1  # real parallel sets, past the window
    assert (a["pruned_at"] >= 0).any()  # and pruned members
    assert "<html" in (out / "trace_000.html").read_text()
    assert _main("report", out, "--out", tmp_path / "page.html") == 0
    assert "<html" in (tmp_path / "page.html").read_text()
    step = next(s for s, st in enumerate(trace.steps()) if len(st["members"]) > 1)
    capsys.readouterr()
    assert _main("explain", out, "--step", step) == 0
    printed = capsys.readouterr().out
    assert f"step {step}" in printed


@pytest.mark.parametrize("method", ["beam", "speculative", "greedy"])
def test_other_methods(converted, tmp_path, method):
    assert _main("generate", "--model", converted, "--prompt", PROMPT, "--max-steps", 8, "--min-steps", 8,
                 "--method", method, "--out", tmp_path / method, "--no-colour") == 0
    assert Trace.load(tmp_path / method, "trace_000").n_steps >= 1


def test_forward_and_search(converted, tmp_path, capsys):
    capsys.readouterr()
    assert _main("forward", "--model", converted, "--prompt", PROMPT) == 0
    printed = capsys.readouterr().out
    # every layer reported; the sliding layers (window 4) cannot see the first token of 6
    assert "next-token top-10" in printed and all(f"layer  {i}" in printed for i in range(3))
    assert printed.count("first-token 0.000") >= 2
    assert _main("search", "--model", converted, "--budget", 12, "--max-steps", 6,
                 "--out", tmp_path / "search", PROMPT) == 0
    found = json.loads((tmp_path / "search" / "search.json").read_text())
    assert found["forward_tokens"] <= 12


def test_unknown_model_name_is_one_line():
    assert_user_error(_run(CLI + ["generate", "--model", "gemma3-27b", "--prompt", "hi"]),
                      "gemma3-27b", "gemma3-270m")


def test_gguf_of_another_architecture_is_one_line(tmp_path):
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(tmp_path / "phi.gguf"), "phi2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert_user_error(_run(CLI + ["generate", "--model", str(tmp_path / "phi.gguf"), "--prompt", "hi"]),
                      "phi2", "not supported")


def test_config_field_not_implemented_is_one_line(tmp_path):
    src = _hf_folder(tmp_path / "hf", final_logit_softcapping=30.0)
    assert_user_error(_run(CLI + ["convert", str(src), str(tmp_path / "out")]), "final_logit_softcapping")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_two_analysis_scripts(converted, tmp_path):
    """experiments/analysis: per-step attention metrics over prompts, then statistics over prompts."""
    import importlib.util

    from repo import ROOT

    def load(name):
        spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / "analysis" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    pf = tmp_path / "prompts.txt"
    pf.write_text(f"{PROMPT}\nw7 w8 w30 w31 w32\nw40 w41 w42 w43 w44\n")
    out = tmp_path / "res"
    assert load("analyze_attention_mech_interp").main(
        ["--prompt-file", str(pf), "--max-tokens", "6", "--threshold", "0.05", "--max-width", "4",
         "--output-dir", str(out), "--model", str(converted), "--no-plots"]) == 0
    with np.load(out / "metrics.npz") as z:
        assert z["par_per_token"].shape[0] == 3 and z["par_per_token"].shape[2:] == (3, 4)  # L=3, H=4
    assert load("statistical_confidence_analysis").main(["--data-dir", str(out), "--n-boot", "200"]) == 0
    st = json.loads((out / "stats.json").read_text())
    assert st["unit"] == "prompt" and len(st["rows"]) == 4  # 3 layers + overall
