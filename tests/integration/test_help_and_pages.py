"""Help text and report pages lose nothing and add no noise: each default shown once, one-line
refusals before any file is written, generated pages outside the source tree, tokens shown as text,
rounded timings, and a table of contents on the findings page."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from repo import ROOT as REPO_ROOT  # noqa: E402

REPO = REPO_ROOT


# --- help text ----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, shown", [
    (["search"], "(default: 64)"),
    (["research", "run"], "(default: experiments/results/ID)"),
    (["research", "report"], "(default: runs/research/FINDINGS.html)"),
    (["report"], "(default: 48)"),
])
def test_help_shows_each_default_once(argv, shown, capsys, monkeypatch):
    from tempo_jax.cli import build_parser

    monkeypatch.setenv("COLUMNS", "1000")  # one line per option's help: nothing is wrapped apart
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv + ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert shown in text
    for line in text.splitlines():
        assert line.lower().count("default") <= 1, line
        assert "(default: None)" not in line and "(default: False)" not in line, line


# --- research report ----------------------------------------------------------------------------
def _research_report(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "tempo_jax.cli", "research", "report", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_research_report_refuses_an_empty_results_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    p = _research_report("--results", empty, "--html", "--html-out", tmp_path / "f.html")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tempo-jax: error: "), p.stderr
    assert str(empty) in lines[0] and "no results" in lines[0] and "result.json" in lines[0]
    assert list(empty.iterdir()) == [] and not (tmp_path / "f.html").exists()


def test_research_report_refuses_a_missing_folder_or_a_file(tmp_path, capsys):
    from tempo_jax.cli import main

    assert main(["research", "report", "--results", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope: no such folder" in err and not (tmp_path / "nope").exists()
    f = tmp_path / "results.txt"
    f.write_text("x")
    assert main(["research", "report", "--results", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a folder" in err and f.read_text() == "x"


@pytest.fixture
def one_result(tmp_path):
    """A results folder holding a copy of one committed experiment (with a figure)."""
    res = tmp_path / "results"
    shutil.copytree(REPO / "experiments" / "results" / "rq4.3", res / "rq4.3")
    assert list((res / "rq4.3").glob("fig_*.png"))
    return res


def _links_resolve(page: Path) -> list[str]:
    """The page's relative links that point at no file."""
    hrefs = re.findall(r'<a href="([^"#][^"]*)"', page.read_text())
    assert hrefs
    return [h for h in hrefs if "://" not in h and not (page.parent / h.split("#")[0]).exists()]


def test_research_report_html_goes_outside_the_source_tree(one_result, tmp_path, monkeypatch, capsys):
    from tempo_jax.cli import main

    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["research", "report", "--results", str(one_result), "--html"]) == 0
    page = cwd / "runs" / "research" / "FINDINGS.html"
    assert f"wrote {Path('runs/research/FINDINGS.html')}" in capsys.readouterr().out
    assert page.exists() and not (one_result / "FINDINGS.html").exists()
    assert (one_result / "FINDINGS.md").exists()  # the Markdown stays beside its results
    text = page.read_text()
    assert text.count("data:image/png;base64,") == len(list((one_result / "rq4.3").glob("fig_*.png")))
    assert _links_resolve(page) == []
    # --html-out chooses the file (and implies --html)
    other = tmp_path / "x" / "f.html"
    assert main(["research", "report", "--results", str(one_result), "--html-out", str(other)]) == 0
    assert "data:image/png;base64," in other.read_text() and _links_resolve(other) == []
    assert main(["research", "report", "--results", str(one_result), "--html-out", str(tmp_path)]) == 2


def test_committed_findings_page_embeds_figures_and_links_resolve(tmp_path):
    from tempo_jax.report import write_findings_html

    page = write_findings_html(REPO / "experiments" / "FINDINGS.md", REPO / "experiments" / "results",
                               tmp_path / "runs" / "research" / "FINDINGS.html")
    assert page.read_text().count("data:image/png;base64,") > 0
    assert _links_resolve(page) == []


# --- findings table of contents -----------------------------------------------------------------
def _ids_and_toc(text: str) -> tuple[list[tuple[str, str]], str]:
    heads = re.findall(r'<h([23]) id="([^"]+)">', text)
    nav = re.search(r'<nav class="toc".*?</nav>', text, re.S)
    assert nav, "no table of contents"
    return heads, nav.group(0)


def test_toc_links_every_heading_with_unique_ids():
    from tempo_jax.report.findings import heading_ids, markdown, toc

    used, found = set(), []
    body = heading_ids(markdown("# T\n\n## A\n\n### x\n\n## A\n\n### x\n\n### x\n\n## B & c!\n"), used, found)
    heads, nav = _ids_and_toc(body + toc(found))
    ids = [i for _, i in heads]
    assert ids == ["a", "x", "a-2", "x-2", "x-3", "b-c"]  # unique: repeats get -2, -3
    assert re.findall(r'href="#([^"]+)"', nav) == ids
    # the h3s are nested under their h2: the second "A" holds two links
    assert ('<li><a href="#a-2">A</a><ul><li><a href="#x-2">x</a></li><li><a href="#x-3">x</a></li></ul></li>'
            in nav)


def test_findings_page_has_a_toc_of_experiments_and_their_families(tmp_path):
    from tempo_jax.report import write_findings_html

    res = tmp_path / "results"
    md = "# Findings\n\nIntro.\n\n"
    for exp in ("rqX", "rqY"):
        (res / exp).mkdir(parents=True)
        (res / exp / "summary.md").write_text(f"# {exp}: t\n\n## Family `primary`\n\n| test | verdict |\n"
                                              "|---|---|\n| H1 | differs (+) |\n\n## Notes\n\nn\n")
        md += f"## {exp} — demo\n\n**Answer.** yes\n\n"
    (tmp_path / "FINDINGS.md").write_text(md)
    text = write_findings_html(tmp_path / "FINDINGS.md", res, tmp_path / "out" / "F.html").read_text()
    heads, nav = _ids_and_toc(text)
    ids = [i for _, i in heads]
    assert [lvl for lvl, _ in heads] == ["2", "3", "3", "2", "3", "3"] and len(set(ids)) == len(ids) == 6
    assert re.findall(r'href="#([^"]+)"', nav) == ids
    assert text.index("<nav") < text.index('<h2 id="rqx-demo"')  # after the intro, before the experiments


# --- report --max-mb ----------------------------------------------------------------------------
@pytest.mark.parametrize("mb", ["0", "-3", "nan"])
def test_report_refuses_a_non_positive_max_mb_before_any_work(mb, tmp_path, capsys):
    from tempo_jax.cli import main

    assert main(["report", str(tmp_path / "no-run"), "--max-mb", mb]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-mb" in err and "trace_000" not in err


# --- run report: tokens as text, timings rounded ------------------------------------------------
SHOWN = ["'s", "<|im_end|>", "a\tb", "caf\u00e9"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tinymodel import save_tiny_with_tokenizer

    from tempo_jax.cli import main

    folder = save_tiny_with_tokenizer(tmp_path_factory.mktemp("tiny") / "model")
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["generate", "--model", str(folder), "--prompt", "w5 w9 w12 w7", "--max-steps", "12",
                 "--threshold", "0.08", "--out", str(out), "--no-colour"]) == 0
    return out


def test_run_report_shows_tokens_as_text_and_rounds_timings(tiny_run, tmp_path):
    from tempo_jax.report import write_run_report
    from tempo_jax.trace import Trace

    decode = lambda ids: "".join(SHOWN[t % len(SHOWN)] for t in ids)  # noqa: E731
    page = write_run_report(tiny_run, tmp_path / "r.html", decode=decode).read_text()
    data = json.loads(page.split('id="run-data">', 1)[1].split("</script>", 1)[0])
    assert data["explain"]["steps"], "the run needs a parallel step for this test"
    shown = html.unescape(page.split('id="explain-section"', 1)[1].split('id="config-section"', 1)[0])
    members = {m["text"] for e in data["explain"]["steps"] for m in e["members"]}
    for text in members:
        assert json.dumps(text, ensure_ascii=False) in shown, text  # in quotes, the characters themselves
    assert members & set(SHOWN) and "\\u00" not in shown
    assert '"a\\tb"' in shown or "a\tb" not in members  # a tab shows as \t
    # timings: rounded in the page and in its data, and still the trace's numbers
    timings = Trace.load(tiny_run, "trace_000").timings
    assert timings
    for k, v in timings.items():
        row = re.search(rf"<th>timing {k}</th><td>([^<]*)</td>", page).group(1)
        assert re.fullmatch(r"\d+(\.\d{1,3})?( s)?", row), row
        assert abs(float(row.split()[0]) - v) <= max(5e-4, 5e-3 * abs(v))
        assert len(repr(data["timings"][k]).partition(".")[2]) <= 3
