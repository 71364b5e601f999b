"""The front door: bad inputs give one error line and status 2 (no traceback), strict trace JSON,
clean text that stops at its own EOS, and help that shows defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tempo_jax.trace import Trace
from repo import ROOT as REPO_ROOT  # noqa: E402

ROOT = REPO_ROOT
SCRIPTS = ROOT / "experiments" / "analysis"
CLI = [sys.executable, "-m", "tempo_jax.cli"]
# run as if torch were not installed: transformers then prints its "PyTorch was not found" notice
NO_TORCH = """
import importlib.util, sys
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name == "torch" or name.startswith("torch.") else _find(name, package))
from tempo_jax.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(cmd, timeout=180):
    # a fresh user's environment: an in-process CLI call elsewhere in the suite may have set
    # TRANSFORMERS_VERBOSITY in this process, which children would inherit
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def assert_user_error(r, *words):
    lines = r.stderr.splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("tempo-jax: error: ")
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture(scope="module")
def long_prompt(tmp_path_factory):
    f = tmp_path_factory.mktemp("prompts") / "long.txt"
    f.write_text("word " * 9000 + "\n")  # ~9000 tokens; the default model's context is 8192
    return f


@pytest.mark.parametrize("args, words", [
    (["--prompt", ""], ["prompt is empty"]),
    (["--threshold", "0"], ["threshold", "(0, 1]"]),
    (["--threshold", "1.5"], ["threshold", "1.5"]),
    (["--max-width", "0"], ["--max-width", ">= 1"]),
    (["--max-steps", "0"], ["--max-steps", ">= 1"]),
    (["--model", "/nonexistent"], ["--model", "/nonexistent"]),
    (["--prompt-file", "/nonexistent.txt"], ["/nonexistent.txt", "No such file"]),
], ids=["empty-prompt", "threshold-0", "threshold-1.5", "width-0", "steps-0", "model", "prompt-file"])
def test_generate_refuses_bad_input_before_loading(args, words):
    if "--prompt" not in args and "--prompt-file" not in args:
        args = ["--prompt", "The cat sat on the", *args]
    r = _run(CLI + ["generate", *args], timeout=60)
    assert_user_error(r, *words)
    assert r.stdout == ""  # nothing ran


@pytest.mark.slow
def test_generate_refuses_prompt_longer_than_context(long_prompt):
    r = _run(CLI + ["generate", "--prompt-file", str(long_prompt)])
    assert_user_error(r, "exceeds the model's context", "8192")


@pytest.mark.slow
def test_forward_refuses_long_prompt_and_is_quiet_without_torch(long_prompt):
    r = _run([sys.executable, "-c", NO_TORCH, "forward", "--prompt-file", str(long_prompt)])
    assert_user_error(r, "exceeds the model's context", "8192")
    assert "PyTorch" not in r.stderr  # the tokenizer's transformers import said nothing


def test_quiet_libraries_silences_the_torch_notice():
    code = NO_TORCH.replace("from tempo_jax.cli import main\nsys.exit(main(sys.argv[1:]))",
                            "import transformers\nprint(transformers.__version__)")
    loud = _run([sys.executable, "-c", code], timeout=120)
    assert loud.returncode == 0 and "PyTorch was not found" in loud.stderr  # the notice exists
    quiet = _run([sys.executable, "-c", "from tempo_jax.errors import quiet_libraries\n"
                  "quiet_libraries()\n" + code], timeout=120)
    assert quiet.returncode == 0 and "PyTorch" not in quiet.stderr, quiet.stderr


@pytest.mark.parametrize("script, args, words", [
    ("analyze_attention_mech_interp.py", ["--prompt", "The cat", "--threshold", "2"],
     ["threshold", "2.0"]),
    ("analyze_attention_mech_interp.py", ["--prompt-file", "/nonexistent.txt"],
     ["--prompt-file", "/nonexistent.txt"]),
    ("statistical_confidence_analysis.py", ["--data-dir", ".", "--ci", "2"], ["--ci", "(0, 1)"]),
    ("statistical_confidence_analysis.py", ["--data-dir", "/nonexistent"],
     ["--data-dir", "/nonexistent"]),
], ids=["analyze-threshold", "analyze-prompt-file", "stats-ci", "stats-data-dir"])
def test_analysis_scripts_refuse_bad_input(script, args, words):
    r = _run([sys.executable, str(SCRIPTS / script), *args], timeout=60)
    assert_user_error(r, *words)


def test_forward_echo_of_a_long_prompt_is_short():
    from tempo_jax.cli import _echo_prompt

    decode = lambda ids: "".join(f"<{i}>" for i in ids)
    assert _echo_prompt("ab", [1, 2], decode) == "prompt tokens 2: ['<1>', '<2>']"
    text = "The quick brown fox. " * 400
    line = _echo_prompt(text, list(range(2000)), decode)
    assert "prompt tokens 2000" in line and len(line) < 220 and "\n" not in line
    assert repr(text[:60]) in line and repr(text[-60:]) in line


def test_help_shows_defaults_and_describes_every_option(capsys):
    from tempo_jax.cli import GENERATE_EXAMPLES, build_parser, main

    with pytest.raises(SystemExit) as e:
        main(["generate", "--help"])
    assert e.value.code == 0
    h = " ".join(capsys.readouterr().out.split())  # the help is wrapped to the terminal width
    for text in ("(default: 0.1)", "(default: 32)", "(default: 8)", "(default: isolated)",
                 "(default: runs/latest)", GENERATE_EXAMPLES.splitlines()[1].strip()):
        assert text in h, text
    assert "(default: None)" not in h and "(default: False)" not in h
    sub = next(a for a in build_parser()._actions if isinstance(a.choices, dict))
    for name in ("generate", "forward", "convert", "sweep"):
        for action in sub.choices[name]._actions:
            assert action.help, (name, action.dest)


def _hand_trace():
    """Steps: [x 0.5 / EOS 0.3], [EOS 0.6 / y 0.4] (EOS the top member, rule 'all' goes on), [z]."""
    return Trace("m", {}, [1, 2], {
        "tokens": np.array([[7, 9], [9, 8], [5, 0]]),
        "probs": np.array([[0.5, 0.3], [0.6, 0.4], [1.0, 0.0]]),
        "slots": np.array([[3, 4], [5, 6], [7, -1]]),
        "positions": np.array([[3.0, 3.0], [4.0, 4.0], [5.0, 0.0]]),
        "valid": np.array([[True, True], [True, True], [True, False]]),
        "tau": np.array([0.2, 0.2, 0.2]), "entropy": np.array([1.0, np.nan, np.inf]),
        "set_n": np.array([2, 2, 1]),
        "prune_score": np.full(8, np.nan), "pruned_at": np.full(8, -1)})


def test_clean_text_stops_where_its_own_path_emits_eos():
    tr = _hand_trace()
    words = {1: "A", 2: "B", 5: " z", 7: " x", 8: " y", 9: "<eos>"}
    decode = lambda ids: "".join(words[i] for i in ids)
    assert tr.clean_ids() == [7, 9, 5]  # no eos_ids: every step, as before
    assert tr.clean_ids(eos_ids=(9,)) == [7]  # EOS as a non-top member (step 0) does not stop it
    assert tr.clean_text(decode, eos_ids=(9,)) == "AB x"
    assert tr.render(decode) == "AB[ x/<eos>][<eos>/ y] z"
    assert tr.render(decode, eos_ids=(9,)) == "AB[ x/{EOS:<eos>}][{EOS:<eos>}/ y] z"
    assert "\033[1;7m{EOS:<eos>}" in tr.render(decode, colour=True, eos_ids=(9,))
    tr.arrays["pruned_at"][5] = 2  # the EOS member of step 1 pruned: the path goes on through y
    assert tr.clean_ids(eos_ids=(9,)) == [7, 8, 5]


def _strict_loads(text):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_trace_json_is_strict(tmp_path):
    tr = _hand_trace()
    j, _ = tr.save(tmp_path, "t")
    meta = _strict_loads(j.read_text())
    assert [st["entropy"] for st in meta["steps"]] == [1.0, None, None]
    assert Trace.load(tmp_path, "t").steps()[0]["members"] == meta["steps"][0]["members"]


@pytest.mark.slow
def test_beam_trace_json_is_strict(tmp_path, capsys):
    from tempo_jax.cli import main

    out = tmp_path / "beam"
    assert main(["generate", "--prompt", "The cat sat on the", "--method", "beam", "--beam-width", "2",
                 "--max-steps", "3", "--out", str(out)]) == 0
    text = (out / "trace_000.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    meta = _strict_loads(text)
    assert len(meta["steps"]) == 3 and all(st["entropy"] is None for st in meta["steps"])
    assert "clean text: The cat sat on the" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["research", "run", "rq9"], ["unknown experiment 'rq9'", "rq1.1"]),
    (["research", "run", "rq1.1", "--quick", "--out", "experiments/results/rq1.1"],
     ["may not overwrite the committed results"]),
], ids=["unknown-experiment", "quick-into-results"])
def test_research_command_refuses_bad_input(args, words):
    r = _run([sys.executable, "-m", "tempo_jax.cli", *args], timeout=120)
    assert_user_error(r, *words)


def test_research_command_refuses_an_empty_prompt_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    r = _run([sys.executable, "-m", "tempo_jax.cli", "research", "run", "rq1.1", "--prompt-file",
              str(empty)], timeout=120)
    assert_user_error(r, "no usable prompt")


def test_generate_options_and_generation_config_agree_field_for_field():
    """Every GenerationConfig field is a `generate` option with the field's default, and the
    options parse back into the same config; a range declared on a field shows in its help."""
    import dataclasses

    from tempo_jax.cli import build_parser, generation_config
    from tempo_jax.engine import GenerationConfig

    parser = build_parser()
    gen = next(a for a in parser._actions if isinstance(a.choices, dict)).choices["generate"]
    options = {a.dest: a for a in gen._actions}
    fields = dataclasses.fields(GenerationConfig)
    for f in fields:
        assert f.name in options, f"GenerationConfig.{f.name} has no --{f.name.replace('_', '-')}"
        assert options[f.name].option_strings == ["--" + f.name.replace("_", "-")]
        assert options[f.name].help.startswith(f.metadata["help"]), f.name
        if not f.type.startswith("tuple"):
            assert options[f.name].default == f.default, f.name
    assert "in (0, 1]" in options["threshold"].help and "[0, 1]" in options["prune_rho"].help
    assert generation_config(parser.parse_args(["generate", "--prompt", "x"])) == GenerationConfig()
    args = parser.parse_args(["generate", "--prompt", "x", "--prune-layers", "1,3", "--prune",
                              "--prune-layer-weights", "0.5,2", "--schedule-k", "-2", "--method", "beam",
                              "--beam-width", "3"])
    g = generation_config(args)
    assert (g.prune_layers, g.prune_layer_weights, g.schedule_k, g.method, g.beam_width, g.prune) == \
        ((1, 3), (0.5, 2.0), -2.0, "beam", 3, True)
    cli_only = {"prompt", "prompt_file", "model", "dtype", "layout", "out",
                "no_colour", "html", "max_capture_mb", "help", "func"}
    assert set(options) - {f.name for f in fields} <= cli_only
