"""Words and tables from stored results: a result's summary.md, FINDINGS.md over every result,
answers re-derived from stored statistics, and the replication table."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from tempo_jax import stats as S
from tempo_jax.research.design import Design, TestResult
from tempo_jax.research.provenance import json_safe
from tempo_jax.research.registration import registration_line
from tempo_jax.research.registry import Project
from tempo_jax.research.statistics import verdict


def fmt(x, spec=".3g") -> str:
    """A number for a table, ``n/a`` for None and non-finite values."""
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def default_answer(tests: list[TestResult], design: Design) -> str:
    """The primary tests' verdicts, for experiments without their own ``answer``."""
    prim = [t for t in tests if t.family == "primary"]
    return "; ".join(f"{t.hypothesis}{' (post hoc)' if t.post_hoc else ''} ({t.column}): {t.verdict}"
                     for t in prim)


def tests_table(tests: list[dict], family: str | None = None, limit: int | None = None,
                stability: dict[str, float] | None = None,
                simultaneous: dict[str, tuple[float, float]] | None = None) -> str:
    """A markdown table of stored tests (one family, at most ``limit`` rows); with ``stability``
    (column -> share of prompt resamples keeping the verdict) a stability column, with
    ``simultaneous`` (column -> CI adjusted for the family) a simultaneous-CI column."""
    rows = [t for t in tests if family is None or t["family"] == family]
    stab = stability is not None
    sim = simultaneous is not None
    lines = ["| test | column | n | estimate [95% CI] | d_z | p (adj) | TOST p (adj) | verdict |"
             + (" simultaneous CI |" if sim else "") + (" stability |" if stab else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if sim else "") + ("---|" if stab else "")]
    for t in rows[:limit]:
        name = t["hypothesis"] + (" (post hoc)" if t.get("post_hoc") else "")
        cell = ""
        if simultaneous is not None:
            lo, hi = simultaneous.get(t["column"], (float("nan"), float("nan")))
            cell += f" [{fmt(lo)}, {fmt(hi)}] |" if np.isfinite(lo) else " n/a |"
        if stability is not None:
            v = stability.get(t["column"], float("nan"))
            shown = math.floor(v * 100) / 100 if np.isfinite(v) else v  # 0.797 shows as 0.79, not 0.80
            cell += " n/a |" if not np.isfinite(v) else f" {shown:.2f}{' fragile' if v < FRAGILE else ''} |"
        lines.append(f"| {name} | `{t['column']}` | {t['n']} | {fmt(t['estimate'])} "
                     f"[{fmt(t['lo'])}, {fmt(t['hi'])}] | {fmt(t['d_z'], '.2f')} | {fmt(t['p_adj'])} | "
                     f"{fmt(t['p_tost_adj'])} | {t['verdict']} |" + cell)
    if limit is not None and len(rows) > limit:
        lines.append(f"| ... | {len(rows) - limit} more in result.json | | | | | | |" + (" |" if stab else "")
                     + (" |" if sim else ""))
    return "\n".join(lines)


FRAGILE = 0.8  # below this share of prompt resamples keeping the verdict, a verdict is fragile


def _rows(folder: Path) -> list[dict]:
    import csv

    path = folder / "rows.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _floats(rows: list[dict], column: str) -> np.ndarray:
    out = []
    for r in rows:
        try:
            out.append(float(r.get(column) or "nan"))
        except ValueError:
            out.append(float("nan"))
    return np.asarray(out, np.float64)


def primary_extras(result: dict, folder: Path) -> tuple[dict[str, float], dict[str, tuple[float, float]], list[str]]:
    """For the primary tests of a stored result whose per-prompt rows are on disk: the stability of
    each verdict (:func:`statistics.stability`), a simultaneous CI (:func:`statistics.simultaneous_ci`)
    and a per-genre table (mean [95% t CI] (n) per genre). Tests computed elsewhere than from a
    rows.csv column get no entry."""
    from tempo_jax.research.statistics import simultaneous_ci, stability

    rows = _rows(folder)
    prim = [t for t in result["tests"] if t["family"] == "primary"]
    if not rows or not prim:
        return {}, {}, []
    d = result["design"]
    genres = sorted({r.get("genre", "") for r in rows} - {""})
    stab, sim, lines = {}, {}, []
    method = d["families"].get("primary", "holm")
    rejected = sum(1 for t in prim if t.get("p_adj") is not None and t["p_adj"] < d["alpha"])
    bounds = {h["name"]: h.get("bound") for h in d["hypotheses"]}
    for t in prim:
        if t["column"] not in rows[0] or t.get("note"):
            continue
        vals = _floats(rows, t["column"])
        stab[t["column"]] = stability(vals, {k: (np.nan if v is None else v) for k, v in t.items()},
                                      d["alpha"], seed=d.get("seed", 0), bound=bounds.get(t["hypothesis"]))
        sim[t["column"]] = simultaneous_ci(vals, len(prim), method, rejected, d["alpha"])
        cells = []
        for g in genres:
            v = vals[[r.get("genre") == g for r in rows]]
            v = v[np.isfinite(v)]
            if len(v) >= 2:
                lo, hi = S.t_ci(v)
                cells.append(f"{fmt(v.mean())} [{fmt(lo)}, {fmt(hi)}] ({len(v)})")
            else:
                cells.append(f"{fmt(v.mean()) if len(v) else 'n/a'} ({len(v)})")
        lines.append(f"| {t['hypothesis']} | `{t['column']}` | " + " | ".join(cells) + " |")
    if lines:
        lines = ["| test | column | " + " | ".join(genres) + " |",
                 "|---|---|" + "---|" * len(genres)] + lines
    return stab, sim, lines


def summary_md(result: dict) -> str:
    """A result folder's summary.md."""
    d, prov = result["design"], result["provenance"]
    out = [f"# {result['id']}: {result['title']}", "",
           f"**Answer.** {result['answer']}", "",
           f"Questions {', '.join(result['questions'])}; unit: {d['unit']}; n = {prov['n_prompts']} "
           f"prompts ({prov['split']} split, genres {', '.join(prov['genres'])}); alpha {d['alpha']}; "
           f"equivalence margin +-{fmt(d['margin'])} ({d['margin_note']}). CIs of declared paired tests "
           "are BCa bootstrap over prompts; p is the sign-flip permutation p; precomputed tests say "
           "their method in result.json (`note`).", "",
           f"Primary metric: {d['primary_metric']}. Contrast: {d['contrast']}.", ""]
    for fam, method in d["families"].items():
        out += [f"## Family `{fam}` (correction: {method})", "", tests_table(result["tests"], fam, 40), ""]
    if line := registration_line(prov, d):
        out += [line, ""]
    if result.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    if d["caveats"]:
        out += ["## Caveats", ""] + [f"- {c}" for c in d["caveats"]] + [""]
    out += [f"Model {prov['model']} (params sha256 {prov['params_hash'][:12]}), commit "
            f"{prov['commit'][:10]}{' (dirty)' if prov['dirty'] else ''}, corpus sha256 "
            f"{str(prov.get('corpus_hash'))[:12]}, seed {prov['seed']}, {prov['run_seconds']} s. "
            f"Reproduce: `{prov['command']}`.", ""]
    return "\n".join(out)


def _stored_test(t: dict[str, Any], fields: set[str]) -> TestResult:
    """A TestResult from its stored JSON (None, how JSON holds NaN, back to NaN)."""
    kw: dict[str, Any] = {k: (float("nan") if v is None else v) for k, v in t.items() if k in fields}
    return TestResult(**kw)


def reword(project: Project, result: dict, path: Path | None = None) -> dict:
    """Re-derive the answer sentence (and summary.md) from the STORED statistics with the
    experiment's current ``answer`` function: wording can be corrected without recomputing."""
    try:
        mod = project.get(result["id"])
    except ValueError:
        return result
    if not hasattr(mod, "answer") or result.get("title") != mod.DESIGN.title:
        return result  # not this experiment's current design: keep the stored wording
    fields = {f.name for f in dataclasses.fields(TestResult)}
    tests = [_stored_test(t, fields) for t in result["tests"]]
    answer = mod.answer(tests, mod.DESIGN)
    if answer != result.get("answer") and path is not None:
        result["answer"] = answer
        path.write_text(json.dumps(json_safe(result), indent=1) + "\n")
        (path.parent / "summary.md").write_text(summary_md(result))
    return result


def refresh_equivalence(project: Project, path: Path) -> list[str]:
    """Recompute the equivalence tests of a stored result whose differences were identical on every
    prompt (``lo == hi``) with the current ``stats.tost`` rule, re-correct their family and re-derive
    the verdicts and the answer; returns the columns whose verdict changed (a p that moved without a
    verdict change is rewritten and noted too). For results stored under an earlier zero-spread rule."""
    result = json.loads(path.read_text())
    mod = project.get(result["id"])
    design = mod.DESIGN
    fields = {f.name for f in dataclasses.fields(TestResult)}
    tests = [_stored_test(t, fields) for t in result["tests"]]
    bounds = {h.name: h.bound for h in design.hypotheses}
    touched, moved = set(), []
    for t in tests:
        if t.n >= 2 and np.isfinite(t.estimate) and t.lo == t.hi == t.estimate and not t.note:
            p = S.tost(np.full(t.n, t.estimate), t.margin, design.alpha, bounds.get(t.hypothesis))["p"]
            if not np.isclose(p, t.p_tost, rtol=1e-9, atol=0.0):
                moved.append(f"{t.column}: TOST p {fmt(t.p_tost)} -> {fmt(p)}")
                t.p_tost = p
                touched.add(t.family)
    changed = []
    for fam in touched:
        idx = [i for i, t in enumerate(tests) if t.family == fam]
        pt = S.correct([tests[i].p_tost for i in idx], design.families[fam]).p_adj
        for j, i in enumerate(idx):
            tests[i].p_tost_adj = float(pt[j])
            old = tests[i].verdict
            tests[i].verdict = verdict(tests[i], design.alpha)
            if tests[i].verdict != old:
                changed.append(f"{tests[i].column}: {old} -> {tests[i].verdict}")
    if moved:
        result["tests"] = [dataclasses.asdict(t) for t in tests]
        result.setdefault("notes", []).append(
            "Equivalence tests of differences identical on every prompt recomputed after the run with "
            "stats.tost's rule (exact binomial with the column's bound on |difference|; p = 1 without "
            "one): " + "; ".join(moved) + (f"; verdicts changed: {'; '.join(changed)}" if changed
                                            else "; no verdict changed") + ".")
        if hasattr(mod, "answer"):
            result["answer"] = mod.answer(tests, design)
        path.write_text(json.dumps(json_safe(result), indent=1) + "\n")
        (path.parent / "summary.md").write_text(summary_md(result))
    return changed


def _natural(exp_id: str) -> list:
    """Sort key: rq1.1 < rq1.1b < rq1.3 < rq10.1 < rep1.1 (numbers compared as numbers)."""
    import re

    return [(0, int(x), "") if x.isdigit() else (1, 0, x) for x in re.findall(r"\d+|[a-z]+", exp_id)
            if x not in ("rq",)] if exp_id.startswith("rq") else [(2, 0, exp_id)]


def write_findings(project: Project, results_dir: Path | None = None, path: Path | None = None) -> Path:
    """Regenerate FINDINGS.md (default ``project.findings``) from every ``results_dir/*/result.json``
    (default ``project.results``)."""
    results_dir = project.results if results_dir is None else results_dir
    path = project.findings if path is None else path
    groups: dict[str, list[tuple[dict, Path]]] = {}
    for f in sorted(results_dir.glob("*/result.json"), key=lambda f: (f.parent.name.partition("@")[2], f)):
        r = reword(project, json.loads(f.read_text()), f)
        groups.setdefault(r["id"], []).append((r, f.parent))
    ids = sorted(groups, key=_natural)
    confirm = [i for i in ids if any(_confirmatory(r) for r, _ in groups[i])]
    links = supersedes(project)
    out = ["# Findings", "",
           "Generated by `tempo-jax research report` from `experiments/results/*/result.json`; do not "
           "edit by hand. Each design (hypotheses, metric, alpha, correction family, equivalence "
           "margin) is declared in its experiment module, and each answer is computed on the corpus "
           "split named, with the prompt as the unit of analysis. A result without a registration line "
           "is exploratory: its design was not registered in a form that can be verified (most first "
           "results ran from an uncommitted tree, and n was set by a time budget, not by power); a "
           "confirmatory result names the commit of its registration (`tempo-jax research register`), "
           "which precedes it, and the n its power analysis asked for. Verdicts: *differs* (corrected p < alpha), "
           "*no effect within +-m* (not significant and TOST-equivalent within the margin), *cannot "
           "tell at this n* (neither). Paired p-values are sign-flip permutation p-values from 4,999 "
           "random sign vectors (the smallest possible raw two-sided p is 4e-4; 2 / 2^n by exact "
           "enumeration when n <= 12), then corrected within each "
           "declared family; CIs are BCa bootstrap over prompts unless a test's note says otherwise. "
           "Stability: the share of 1,000 prompt-bootstrap resamples in which a primary verdict keeps its "
           "kind (paired t test and TOST on each resample, with the correction the test received); "
           "below 0.8 it is marked fragile. The simultaneous CI is a t interval at the level the family's "
           "correction implies (Holm: Bonferroni, 1 - alpha / k for k tests; Benjamini-Hochberg: the "
           "false-coverage-rate level 1 - R alpha / k for R rejections), so it excludes 0 whenever the "
           "Bonferroni-corrected t test would reject. Equivalence of differences identical on every prompt "
           "uses the exact binomial rule of `stats.tost` with the column's bound on one prompt's "
           "difference (none: no equivalence claim). Each result states its model; an experiment run on "
           "both model families shows each, and whether each primary prediction holds on both, one or "
           "neither. The unit of a test is the prompt unless the entry's method line (from the test's note) "
           "says otherwise.", ""]
    if confirm:
        out += ["# Confirmatory results", "",
                "Registered before they ran (commit named in each entry), on the `confirm` split, which "
                "no exploratory run has read; they supersede the exploratory record below on the "
                "questions they answer.", ""]
        for i in confirm:
            out += _group(groups[i], results_dir, path)
            if i in links:
                old = ", ".join(links[i]["supersedes"])
                out += [f"**Supersedes** {old} (exploratory). What changed: {links[i]['changed']}", ""]
    out += ["# Exploratory record", "",
            "The first answers, kept as they were computed (see the paragraph above on why they are "
            "exploratory).", ""]
    by_old = {o: c for c, v in links.items() if c in confirm for o in v["supersedes"]}
    for i in ids:
        if i not in confirm:
            out += _group(groups[i], results_dir, path)
            if i in by_old:
                out += [f"**Superseded by** {by_old[i]} (confirmatory, above).", ""]
    out += replication_section(project, [rf for i in ids for rf in groups[i]])
    path.write_text("\n".join(out) + "\n")
    return path


def supersedes(project: Project) -> dict[str, dict]:
    """``<project folder>/supersedes.json``: confirmatory id -> {"supersedes": [exploratory ids],
    "changed": what changed from the exploratory answer} (written after the result; {} if absent)."""
    path = project.folder / "supersedes.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _confirmatory(result: dict) -> bool:
    from tempo_jax.research.registration import CONFIRMATORY

    return (result.get("provenance") or {}).get("split") in CONFIRMATORY


def _model_name(result: dict) -> str:
    return str((result.get("provenance") or {}).get("model", "not recorded"))


HOLDS = {"<0": "differs -", ">0": "differs +", "=0": "no effect"}


def holds_table(members: list[dict]) -> list[str]:
    """Per primary test of an experiment run on several models: each model's verdict and whether
    the registered prediction (``expect``: "<0" / ">0" a significant difference that way, "=0" a
    significant TOST at the margin) holds on all, some or none of them."""
    from tempo_jax.research.statistics import category

    names = [_model_name(r) for r in members]
    keys: list[tuple[str, str]] = []
    for r in members:
        keys += [(t["hypothesis"], t["column"]) for t in r["tests"]
                 if t["family"] == "primary" and (t["hypothesis"], t["column"]) not in keys]
    lines = ["| test | column | " + " | ".join(names) + " | prediction holds on |",
             "|---|---|" + "---|" * len(names) + "---|"]
    for h, c in keys:
        cells, held = [], []
        for name, r in zip(names, members):
            t = next((t for t in r["tests"] if (t["hypothesis"], t["column"]) == (h, c)), None)
            if t is None or t["p_adj"] is None or t["p_tost_adj"] is None:
                cells.append("not run")
                continue
            alpha = r["design"]["alpha"]
            kind = category(t["estimate"], t["p_adj"], t["p_tost_adj"], alpha)
            cells.append(t["verdict"])
            # "=0" predicts equivalence within the margin: it holds when the TOST rejects, even
            # beside a significant difference that lies inside the margin
            if HOLDS.get(t["expect"]) == kind or (t["expect"] == "=0" and t["p_tost_adj"] < alpha):
                held.append(name)
        run = sum(x != "not run" for x in cells)
        if run == 2:
            where = "both" if len(held) == 2 else f"one ({held[0]})" if held else "neither"
        else:
            where = f"{len(held)} of {run}" + (f" ({', '.join(held)})" if held else "")
        lines.append(f"| {h} | `{c}` | " + " | ".join(cells) + f" | {where} |")
    return lines


def _group(members: list[tuple[dict, Path]], results_dir: Path, path: Path) -> list[str]:
    """FINDINGS.md lines of one experiment: its result on each model it ran on."""
    first = members[0][0]
    out = [f"## {first['id']} — {first['title']} (questions {', '.join(first['questions'])})", ""]
    if len(members) == 1:
        return out + _entry(*members[0], results_dir, path)
    for r, folder in members:
        out += [f"### On {_model_name(r)}", ""] + _entry(r, folder, results_dir, path)
    out += ["Across model families (does each primary prediction hold on each?):", "",
            *holds_table([r for r, _ in members]), ""]
    return out


def _entry(r: dict, folder: Path, results_dir: Path, path: Path) -> list[str]:
    """One result's answer, primary tests, per-genre rows, registration, figures, notes, caveats."""
    import os

    d, prov = r["design"], r["provenance"]
    rel = Path(os.path.relpath(folder, path.parent)).as_posix()  # links resolve from FINDINGS.md
    out = [f"**Answer.** {r['answer']}", "",
           f"Model {_model_name(r)}; n = {prov['n_prompts']} prompts, "
           f"{prov['split']} split, genres {', '.join(prov['genres'])}; "
           f"primary metric: {d['primary_metric']}; margin +-{fmt(d['margin'])} ({d['margin_note']}). "
           f"Files: [summary]({rel}/summary.md), [result.json]({rel}/result.json), "
           f"[per-prompt rows]({rel}/rows.csv).", ""]
    if _confirmatory(r) and d.get("exploratory"):
        out += ["**Exploratory** (declared before it ran): its n is below what the power analysis asked "
                "for (see n needed / n used below), so a verdict here is not confirmatory.", ""]
    stab, sim, per_genre = primary_extras(r, folder)
    out += [tests_table(r["tests"], "primary", stability=stab, simultaneous=sim), ""]
    methods = [f"{t['hypothesis']} (`{t['column']}`): {t['note']}" for t in r["tests"]
               if t["family"] == "primary" and t.get("note")]
    if methods:
        out += ["Unit and method of the primary tests computed otherwise than over per-prompt rows: "
                + "; ".join(dict.fromkeys(methods)) + ".", ""]
    if per_genre:
        out += ["Per genre (mean [95% t CI] (n) of each primary test's per-prompt values):", "",
                *per_genre, ""]
    if line := registration_line(prov, d):
        out += [line, ""]
    figs = sorted(folder.glob("fig_*.png"))
    if figs:
        out += ["Figures: " + ", ".join(f"[{f.stem[4:]}]({rel}/{f.name})" for f in figs), ""]
    if r.get("notes"):
        out += ["Notes: " + " ".join(r["notes"]), ""]
    if d["caveats"]:
        out += ["Caveats: " + " ".join(d["caveats"]), ""]
    return out


def replication_section(project: Project, results: list[tuple[dict, Path]]) -> list[str]:
    """FINDINGS.md's "Replication of the original findings" table (issue 15): one row per ``rep*``
    result and model (``(result, its folder)``), built by that experiment's ``replication(result,
    folder)`` from the stored statistics."""
    rows = []
    for r, folder in results:
        if not r["id"].startswith("rep"):
            continue
        try:
            mod = project.get(r["id"])
        except ValueError:
            continue
        if hasattr(mod, "replication") and r.get("title") == mod.DESIGN.title:
            label = r["id"] if folder.name == r["id"] else f"{r['id']} on {_model_name(r)}"
            try:
                rows.append((label, folder.name, mod.replication(r, folder)))
            except (OSError, KeyError, ValueError, StopIteration) as e:  # one bad row never breaks the report
                bad = {"finding": r["title"], "original": "n/a", "correct": "n/a", "sound": "n/a",
                       "verdict": f"row not built ({type(e).__name__}: {e})"}
                rows.append((label, folder.name, bad))
    if not rows:
        return []
    cell = lambda x: str(x).replace("|", "/")
    out = ["## Replication of the original findings", "",
           "The research questions' \"current findings\" came from the original PyTorch project's "
           "loop (one fed token per step, no position sharing, displayed-text indices, the sink in "
           "the non-parallel group; see docs/replication.md). Each row: (1) the original metric "
           "computed as the original did, on a `compat=\"upstream\"` run of \"The cat sat on the\" "
           "(tau 0.1, 10 steps) and, where it is a per-prompt statistic, over test prompts; (2) the "
           "same metric on correct mechanics (siblings fed, shared positions, slot maps, sink "
           "separate); (3) the sound, pre-registered design. Verdict rules are in each experiment's "
           "caveats.", "",
           "| finding | (1) original procedure | (2) same metric, correct mechanics | (3) sound design | verdict |",
           "|---|---|---|---|---|"]
    for label, rel, row in rows:
        out.append(f"| {cell(row['finding'])} ([{label}](results/{rel}/summary.md)) | "
                   f"{cell(row['original'])} | {cell(row['correct'])} | {cell(row['sound'])} | "
                   f"{cell(row['verdict'])} |")
    return out + [""]
