"""The HTML reports (tempo_jax.report): built from tiny-model runs, opened from file:// in headless
Chromium through selenium, clicked, and checked against the numbers on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


# --- runs of the tiny model ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """The tiny random model saved with a word-level tokenizer ("w5" is token 5)."""
    from tinymodel import save_tiny_with_tokenizer

    return save_tiny_with_tokenizer(tmp_path_factory.mktemp("tiny") / "model")


def _generate(folder, out, *extra):
    from tempo_jax.cli import main

    rc = main(["generate", "--model", str(folder), "--prompt", "w5 w9 w12 w7", "--max-steps", "12",
               "--threshold", "0.08", "--out", str(out), "--no-colour", *extra])
    assert rc == 0


@pytest.fixture(scope="module")
def full_run(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    _generate(tiny_folder, out, "--html")
    return out


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if not (CHROMIUM.exists() and DRIVER.exists()):
        pytest.skip(reason="needs /usr/bin/chromium and /usr/bin/chromedriver "
                    "(apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1200",
              f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        opts.add_argument(a)
    opts.binary_location = str(CHROMIUM)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    yield d
    d.quit()


def _open(driver, path: Path):
    driver.get(path.resolve().as_uri())
    driver.get_log("browser")  # start each page with an empty log


def _errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _click(driver, step: int, member: int):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    el = driver.find_element(By.CSS_SELECTOR, f'.member[data-step="{step}"][data-member="{member}"]')
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    el.click()
    heat = driver.find_element(By.ID, "heatmap")
    WebDriverWait(driver, 10).until(
        lambda d: heat.get_attribute("data-step") == str(step) and heat.get_attribute("data-member") == str(member))
    return heat


def _cell(driver, layer: int, slot: int) -> float:
    from selenium.webdriver.common.by import By

    td = driver.find_element(By.CSS_SELECTOR, f'#heatmap td.cell[data-layer="{layer}"][data-slot="{slot}"]')
    return float(td.get_attribute("data-v"))


def _member_query(trace, s: int, i: int) -> tuple[int, int]:
    """(step whose forward queried from the member's slot, its query row)."""
    a = trace.arrays
    slot = int(a["slots"][s, i])
    ws = int(a["slot_step"][slot])
    return ws, slot - int(a["cache_len"][ws])


# --- tests without a browser --------------------------------------------------------------------
def test_generate_html_writes_one_self_contained_file(full_run):
    from tempo_jax.trace import Trace

    html = (full_run / "trace_000.html").read_text()
    assert (full_run / "capture" / "capture.json").exists()
    assert "<script src" not in html and "http://" not in html and "https://" not in html
    trace = Trace.load(full_run, "trace_000")
    # one lazily decoded attention block per step, [L,H,Q,Kc] with only the fed queries/written slots
    for s in range(trace.n_steps):
        q, kc = int(trace.arrays["fed_n"][s]), int(trace.arrays["cache_len"][s] + trace.arrays["fed_n"][s])
        assert f'id="step-{s}" data-shape="2,4,{q},{kc}"' in html


def test_report_command_and_errors(full_run, tmp_path, capsys):
    from tempo_jax.cli import main

    assert main(["report", str(full_run), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text().count('type="application/octet-stream"') > 0
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no trace_000.json" in capsys.readouterr().err
    assert main(["report", str(full_run), str(full_run)]) == 2  # a comparison needs --out


def test_beam_search_run_gets_a_report_without_attention(tiny_folder, tmp_path):
    from tempo_jax.trace import Trace

    _generate(tiny_folder, tmp_path, "--method", "beam", "--beam-width", "2", "--html")
    html = (tmp_path / "trace_000.html").read_text()
    assert 'id="no-capture"' in html and 'type="application/octet-stream"' not in html
    data = json.loads(html.split('id="run-data">', 1)[1].split("</script>", 1)[0])
    assert [m["t"] for st in data["steps"] for m in st["members"]] == \
        [m["token"] for st in Trace.load(tmp_path, "trace_000").steps() for m in st["members"]]


def test_small_budget_downsamples_with_a_note(full_run, tmp_path):
    from tempo_jax.report import write_run_report

    html = write_run_report(full_run, tmp_path / "small.html", max_bytes=2000).read_text()
    assert 'id="capture-note"' in html and "every" in html
    assert html.count('type="application/octet-stream"') < 12


def test_markdown_subset():
    from tempo_jax.report import markdown

    out = markdown("# T\n\nsome **bold** `x<y` [l](a.md)\n\n| a | b |\n|---|---|\n| 1 | <2> |\n\n- i\n- j\n")
    assert "<h1>T</h1>" in out and "<strong>bold</strong>" in out and "<code>x&lt;y</code>" in out
    assert '<a href="a.md">l</a>' in out and "<td>&lt;2&gt;</td>" in out and "<li>j</li>" in out


# --- browser tests ------------------------------------------------------------------------------
def test_lattice_and_heatmap_match_the_capture(full_run, driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from tempo_jax.capture import load_capture
    from tempo_jax.trace import Trace

    trace = Trace.load(full_run, "trace_000")
    steps = trace.steps()
    _open(driver, full_run / "trace_000.html")
    members = driver.find_elements(By.CSS_SELECTOR, "#lattice .member")
    assert len(members) == sum(len(st["members"]) for st in steps)
    assert [int(m.get_attribute("data-token")) for m in members] == \
        [m["token"] for st in steps for m in st["members"]]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#lattice .member.clean")) >= 1

    attn = load_capture(full_run / "capture")["attn"][0]
    par = [s for s, st in enumerate(steps) if len(st["members"]) > 1]
    s = par[0] if par else 2
    i = len(steps[s]["members"]) - 1
    _click(driver, s, i)
    ws, q = _member_query(trace, s, i)
    kc = int(trace.arrays["cache_len"][ws] + trace.arrays["fed_n"][ws])
    want = attn[ws, :, :, q, :kc].mean(1)  # [L, Kc], average over heads
    for layer, slot in [(0, 0), (1, 1), (1, kc - 1), (0, kc // 2)]:
        assert _cell(driver, layer, slot) == pytest.approx(float(want[layer, slot]), abs=2e-3)
    # one head, then another member: the heatmap follows
    Select(driver.find_element(By.ID, "head-select")).select_by_value("2")
    assert _cell(driver, 1, 0) == pytest.approx(float(attn[ws, 1, 2, q, 0]), abs=2e-3)
    _click(driver, 0, 0)
    ws0, q0 = _member_query(trace, 0, 0)
    assert _cell(driver, 0, 1) == pytest.approx(float(attn[ws0, 0, 2, q0, 1]), abs=2e-3)
    assert _errors(driver) == []
    driver.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_summary_capture_shows_per_layer_values(tiny_folder, driver, tmp_path):
    from selenium.webdriver.common.by import By

    from tempo_jax.capture import CaptureWriter, load_capture
    from tempo_jax.engine import GenerationConfig, generate
    from tempo_jax.loading import load_model
    from tempo_jax.report import capture_dir, write_run_report

    m = load_model(str(tiny_folder), verbose=False)
    ids = m.tokenizer("w5 w9 w12 w7").input_ids
    trace = generate(m.params, m.cfg, ids, GenerationConfig(max_steps=8, threshold=0.08),
                     on_step=CaptureWriter(capture_dir(tmp_path)), capture="summary", model_id=m.source)
    trace.save(tmp_path, "trace_000")
    page = write_run_report(tmp_path, decode=m.tokenizer.decode)
    _open(driver, page)
    _click(driver, 3, 0)
    ws, q = _member_query(trace, 3, 0)
    ent = load_capture(capture_dir(tmp_path))["entropy"][0]
    td = driver.find_element(By.CSS_SELECTOR, '#heatmap td[data-layer="1"][data-field="entropy"]')
    assert float(td.get_attribute("data-v")) == pytest.approx(float(ent[ws, 1, :, q].mean()), abs=1e-3)
    assert _errors(driver) == []


def test_compare_aligns_two_runs_by_step(tiny_folder, full_run, driver, tmp_path):
    from selenium.webdriver.common.by import By

    from tempo_jax.cli import main
    from tempo_jax.trace import Trace

    other = tmp_path / "greedy"
    _generate(tiny_folder, other, "--method", "greedy")
    out = tmp_path / "compare.html"
    assert main(["report", str(full_run), str(other), "--out", str(out)]) == 0
    _open(driver, out)
    rows = driver.find_elements(By.CSS_SELECTOR, "#compare-table tr[data-step]")
    ta, tb = Trace.load(full_run, "trace_000"), Trace.load(other, "trace_000")
    assert len(rows) == max(ta.n_steps, tb.n_steps)
    diff = {int(r.get_attribute("data-step")) for r in rows if "differs" in r.get_attribute("class")}
    want = {s for s in range(len(rows)) if s >= min(ta.n_steps, tb.n_steps) or
            sorted(m["token"] for m in ta.steps()[s]["members"]) != sorted(m["token"] for m in tb.steps()[s]["members"])}
    assert diff == want
    assert driver.find_elements(By.CSS_SELECTOR, "#config-diff tr.cfg-diff")  # method differs
    assert _errors(driver) == []


def test_findings_html_embeds_figures_and_tests(tmp_path, driver):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tempo_jax.cli import main
    from tempo_jax.report import write_findings_html

    res = tmp_path / "results"
    res.mkdir()
    assert main(["research", "report", "--results", str(res), "--html"]) == 2  # no results: refused
    assert list(res.iterdir()) == []
    (res / "rqX").mkdir()
    fig = plt.figure(figsize=(2, 1))
    plt.plot([0, 1], [1, 0])
    fig.savefig(res / "rqX" / "fig_demo.png")
    plt.close(fig)
    (res / "rqX" / "summary.md").write_text("# rqX: t\n\n## Family `secondary`\n\n| test | verdict |\n"
                                             "|---|---|\n| H9 | differs (+) |\n")
    md = res / "FINDINGS.md"
    md.write_text("# Findings\n\nIntro.\n\n## rqX — demo (questions 1.1)\n\n**Answer.** yes\n\n"
                  "| test | verdict |\n|---|---|\n| H1 | no effect within +-0.1 |\n\n"
                  "Figures: [demo](rqX/fig_demo.png)\n")
    page = write_findings_html(md, res)
    html = page.read_text()
    assert "data:image/png;base64," in html and "<td>H1</td>" in html and "<td>H9</td>" in html
    _open(driver, page)
    assert driver.execute_script("return document.images[0].naturalWidth") > 0
    assert _errors(driver) == []


def test_512_step_full_capture_stays_usable(driver, tmp_path):
    """A 512-step full-capture run of a tiny model (context 1024): print the time to open the page
    and to show the attention of a member of the last steps."""
    import jax
    import jax.numpy as jnp
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conversion.hf import params_from_state
    from tempo_jax.capture import CaptureWriter
    from tempo_jax.config import config_from_hf
    from tempo_jax.engine import GenerationConfig, generate
    from tempo_jax.report import capture_dir, write_run_report

    hc = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                     initializer_range=0.3, tie_word_embeddings=False, eos_token_id=2, bos_token_id=1)
    torch.manual_seed(0)
    sd = {k: v.detach().numpy() for k, v in LlamaForCausalLM(hc).state_dict().items()}
    cfg = config_from_hf(hc.to_dict(), name="tiny-long")
    params = jax.tree_util.tree_map(jnp.asarray, params_from_state(cfg, sd.__getitem__))
    t0 = time.perf_counter()
    trace = generate(params, cfg, [5, 9, 12, 7], GenerationConfig(max_steps=512, threshold=0.1, max_width=4,
                                                                   min_steps=512),
                     on_step=CaptureWriter(capture_dir(tmp_path)), model_id="tiny-long")
    trace.save(tmp_path, "trace_000")
    t1 = time.perf_counter()
    page = write_run_report(tmp_path, decode=lambda ids: " ".join(f"w{i}" for i in ids))
    t2 = time.perf_counter()
    start = time.perf_counter()
    _open(driver, page)
    from selenium.webdriver.common.by import By

    n_members = len(driver.find_elements(By.CSS_SELECTOR, "#lattice .member"))
    opened = time.perf_counter() - start
    s = trace.n_steps - 1
    start = time.perf_counter()
    _click(driver, s, 0)
    driver.find_element(By.CSS_SELECTOR, '#heatmap td.cell[data-layer="1"][data-slot="0"]')
    clicked = time.perf_counter() - start
    size = page.stat().st_size / 2**20
    print(f"\n512-step report: {trace.n_steps} steps, {n_members} members, page {size:.1f} MB; "
          f"generate {t1 - t0:.1f} s, write {t2 - t1:.1f} s, open {opened:.2f} s, click {clicked:.2f} s")
    assert trace.n_steps == 512 and n_members == sum(len(st["members"]) for st in trace.steps())
    assert _errors(driver) == []
    driver.save_screenshot(str(tmp_path / "long.png"))
