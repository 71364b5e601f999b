"""Registration that can be verified: ``tempo-jax research register ID`` writes
``<project folder>/registrations/ID.json`` (the design, the power analysis from a dev pilot, and a
hash of the experiment module and every repository module it imports), to be committed before the
first confirmatory result. A run on a confirmatory split (:data:`CONFIRMATORY`) refuses, one line
each, a dirty tree, a missing or uncommitted registration, a module whose hash differs from the
registered one, and a design whose primary tests are underpowered and that is not declared
exploratory (secondary families get a power row too, for the record, but do not block). A later change is an
amendment (reason, date, whether a confirmatory result had been seen); a hypothesis added after a
result was seen is listed in ``post_hoc`` and its tests are labelled so in result.json and FINDINGS.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import hashlib
import importlib.util
import json
from pathlib import Path

from tempo_jax.errors import UsageError
from tempo_jax.research import power as P
from tempo_jax.research.design import Design
from tempo_jax.research.provenance import git, git_state, json_safe

CONFIRMATORY = ("confirm",)
POWER = 0.8


def _imports(path: Path) -> set[str]:
    """Module names a source file imports (module level and inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _file_of(name: str, root: Path) -> Path | None:
    """The source file of module ``name`` when it lies inside the repository ``root``."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    path = Path(spec.origin).resolve()
    inside = root.resolve() in path.parents
    return path if inside and not any(p.name in (".venv", "site-packages") for p in path.parents) else None


def module_files(path: Path, root: Path) -> dict[str, str]:
    """Relative path -> sha256 of the experiment module at ``path`` and every repository module in
    its import closure (the shared instruments it measures with, the library included)."""
    seen: dict[Path, str] = {}
    todo = [path.resolve()]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen[f] = hashlib.sha256(f.read_bytes()).hexdigest()
        for name in _imports(f):
            g = _file_of(name, root)
            if g is not None and g not in seen:
                todo.append(g)
    return {str(f.relative_to(root.resolve())): h for f, h in sorted(seen.items())}


def combined_hash(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def path_of(project, exp_id: str) -> Path:
    return project.folder / "registrations" / f"{exp_id}.json"


def n_used(design: Design, project) -> int:
    """Prompts a full run of ``design`` uses (its split, genres and n per genre)."""
    return len(project.corpus.load(split=design.split, genres=list(design.genres),
                                   limit_per_genre=design.n_per_genre))


def power_table(design: Design, pilot_rows: list[dict], n: int) -> list[dict]:
    """Per hypothesis column of the pilot: the pilot SD, the family's corrected alpha, the n the
    difference test and the TOST need for 80% power, the n used, and the sign-flip p floor."""
    import fnmatch

    import numpy as np

    cols = sorted({k for r in pilot_rows for k in r})
    matched = {h.name: [c for c in cols if fnmatch.fnmatchcase(c, h.column)] for h in design.hypotheses}
    k = {fam: sum(len(matched[h.name]) or 1 for h in design.hypotheses if h.family == fam)
         for fam in design.families}
    out = []
    for h in design.hypotheses:
        margin = design.margin if h.margin is None else h.margin
        effect = margin if h.sesoi is None else h.sesoi
        a = P.family_alpha(design.alpha, k[h.family])
        for c in matched[h.name] or [h.column]:
            vals = np.asarray([r.get(c, np.nan) for r in pilot_rows], np.float64)
            vals = vals[np.isfinite(vals)]
            if len(vals) < 2:
                raise UsageError(f"{design.id}: the pilot has {len(vals)} finite value(s) of {c}; "
                                 "its SD needs at least 2 prompts")
            sd = float(vals.std(ddof=1))
            n_diff, n_tost = P.n_for_difference(sd, effect, a, POWER), P.n_for_tost(sd, margin, a, POWER)
            need = n_tost if h.expect == "=0" else n_diff
            out.append({"hypothesis": h.name, "column": c, "family": h.family, "expect": h.expect,
                        "alpha_corrected": a, "pilot_sd": sd, "pilot_n": int(len(vals)),
                        "smallest_effect": effect, "margin": margin, "n_difference": n_diff,
                        "n_tost": n_tost, "n_needed": need, "n_used": n, "p_floor": P.p_floor(n),
                        "powered": n >= need, "can_reject": P.p_floor(n) <= a})
    return out


def _read_pilot(pilot: Path, exp_id: str) -> tuple[str, list[dict]]:
    """(the pilot's model, its per-prompt rows), or a one-line refusal."""
    import csv

    res, rows = pilot / "result.json", pilot / "rows.csv"
    if not res.exists() or not rows.exists():
        raise UsageError(f"--pilot {pilot}: not a result folder (needs result.json and rows.csv)")
    stored = json.loads(res.read_text())
    if stored.get("id") != exp_id:
        raise UsageError(f"--pilot {pilot}: a result of {stored.get('id')!r}, not of {exp_id}")
    split = (stored.get("provenance") or {}).get("split")
    if split != "dev":
        raise UsageError(f"--pilot {pilot}: a pilot must run on the dev split (it ran on {split!r}); "
                         "use `tempo-jax research run ID --quick --out DIR`")
    with open(rows, newline="") as f:
        return (str(stored["provenance"].get("model", "")),
                [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)])


def _num(v):
    """A rows.csv cell as a number: "" (a prompt without that value) is NaN; text stays text."""
    if v == "":
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def register(project, exp_id: str, pilot: Path | list[Path], amend: str | None = None) -> Path:
    """Write (or amend) the registration of ``exp_id`` from one dev pilot per model family it will
    run on (the power table has a row per pilot and test; every row's n must be reached); refuses
    what a registration cannot be."""
    mod = project.get(exp_id)
    design: Design = mod.DESIGN
    design.check()
    if design.split not in CONFIRMATORY:
        raise UsageError(f"{exp_id}: registration is for confirmatory designs (split "
                         f"{', '.join(CONFIRMATORY)}); its split is {design.split!r}")
    path = path_of(project, exp_id)
    old = json.loads(path.read_text()) if path.exists() else None
    if old is not None and amend is None:
        raise UsageError(f"{exp_id} is registered ({path.name}); a change is an amendment: give --amend REASON")
    if old is None and amend is not None:
        raise UsageError(f"{exp_id} is not registered yet; register it first (without --amend)")
    pilots = [Path(p) for p in (pilot if isinstance(pilot, (list, tuple)) else [pilot])]
    n = n_used(design, project)
    table = []
    for p in pilots:
        model, rows = _read_pilot(p, exp_id)
        table += [{**row, "pilot_model": model} for row in power_table(design, rows, n)]
    for row in table:
        if not row["can_reject"]:
            raise UsageError(f"{exp_id}: test {row['hypothesis']} ({row['column']}) can never reject: the "
                             f"smallest p at n={row['n_used']} is {row['p_floor']:.3g} > corrected alpha "
                             f"{row['alpha_corrected']:.3g}")
    short = [r for r in table if not r["powered"] and r["family"] == "primary"]  # secondary: reported
    if short and not design.exploratory:
        r = short[0]
        raise UsageError(f"{exp_id}: underpowered: {r['hypothesis']} ({r['column']}) needs n={r['n_needed']} "
                         f"for 80% power at corrected alpha {r['alpha_corrected']:.3g}, the design uses "
                         f"{r['n_used']}; grow the split or declare the design exploratory")
    files = module_files(Path(mod.__file__), project.root)
    today = datetime.date.today().isoformat()
    reg = {"id": exp_id, "registered": today, "design": json_safe(dataclasses.asdict(design)),
           "module_hash": combined_hash(files), "files": files, "power": json_safe(table),
           "pilot": [str(p) for p in pilots], "amendments": [], "post_hoc": []}
    if old is not None:
        seen = result_seen(project, exp_id)
        before = {h["name"] for h in old["design"]["hypotheses"]}
        added = [h.name for h in design.hypotheses if h.name not in before]
        reg["registered"] = old["registered"]
        reg["amendments"] = old["amendments"] + [{"date": today, "reason": amend, "results_seen": seen,
                                                  "added_hypotheses": added,
                                                  "previous_module_hash": old["module_hash"]}]
        reg["post_hoc"] = sorted(set(old["post_hoc"]) | (set(added) if seen else set()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(reg, indent=1) + "\n")
    return path


def result_seen(project, exp_id: str) -> bool:
    """Whether a confirmatory result of ``exp_id`` exists on any model (committed or in the results
    folder: ``ID`` and ``ID@MODEL``)."""
    for res in [project.results / exp_id / "result.json", *project.results.glob(f"{exp_id}@*/result.json")]:
        if res.exists() and (json.loads(res.read_text()).get("provenance") or {}).get("split") in CONFIRMATORY:
            return True
    return False


def check_run(project, exp_id: str, mod) -> dict:
    """Refuse a confirmatory run that registration does not cover (one line each); return what
    result.json records: the registration commit, the module hash and the post hoc tests."""
    if git_state(project.root)["dirty"]:
        raise UsageError(f"{exp_id}: the working tree has uncommitted changes; a confirmatory run starts "
                         "from a clean tree (commit or stash them)")
    path = path_of(project, exp_id)
    if not path.exists():
        raise UsageError(f"{exp_id}: no registration ({path.relative_to(project.root)}); run `tempo-jax "
                         f"research register {exp_id} --pilot DIR` and commit it first")
    rel = str(path.resolve().relative_to(project.root.resolve()))
    commit = git(project.root, "log", "-n", "1", "--format=%H", "--", rel)
    if not commit or git(project.root, "status", "--porcelain", "--", rel):
        raise UsageError(f"{exp_id}: the registration {rel} is not committed; commit it before the first result")
    reg = json.loads(path.read_text())
    files = module_files(Path(mod.__file__), project.root)
    if combined_hash(files) != reg["module_hash"]:
        changed = sorted(f for f in set(files) | set(reg["files"]) if files.get(f) != reg["files"].get(f))
        raise UsageError(f"{exp_id}: the experiment's code differs from its registration ({', '.join(changed[:3])}"
                         f"{' ...' if len(changed) > 3 else ''}); register an amendment with --amend REASON")
    short = [r for r in reg["power"] if not r["powered"] and r["family"] == "primary"]
    if short and not reg["design"].get("exploratory"):
        raise UsageError(f"{exp_id}: the registration records an underpowered design "
                         f"({short[0]['column']} needs n={short[0]['n_needed']}); amend it")
    return {"commit": commit, "module_hash": reg["module_hash"], "post_hoc": reg.get("post_hoc", []),
            "amendments": len(reg.get("amendments", [])),
            "power": [{k: r.get(k) for k in ("hypothesis", "column", "pilot_model", "n_needed", "n_used",
                                              "pilot_sd")} for r in reg["power"]]}


def registration_line(prov: dict, design: dict | None = None) -> str:
    """How FINDINGS and summary.md state a result's registration (empty when it has none); with the
    stored ``design``, n needed vs used is given for the primary tests only."""
    reg = prov.get("registration")
    if not reg:
        return ""
    primary = None if design is None else {h["name"] for h in design["hypotheses"] if h["family"] == "primary"}
    rows = [r for r in reg.get("power", []) if primary is None or r["hypothesis"] in primary]
    need = "; ".join(f"{r['column']}{' (' + r['pilot_model'] + ')' if r.get('pilot_model') else ''} "
                     f"{r['n_needed']} / {r['n_used']}" for r in rows)
    post = ", ".join(reg.get("post_hoc", [])) or "none"
    return (f"Registered before this result at commit {reg['commit'][:10]} ({reg['amendments']} "
            f"amendment(s)); tests added after a result (post hoc): {post}. n needed for 80% power / "
            f"n used{' (primary tests, each pilot)' if primary is not None else ''}: {need}.")


def power_summary(path: Path) -> str:
    """The registration's power table as markdown (n needed vs n used per test)."""
    reg = json.loads(Path(path).read_text())
    pilots = reg["pilot"] if isinstance(reg["pilot"], list) else [reg["pilot"]]
    lines = [f"{reg['id']}: power at 80%, corrected alpha per family (pilots {', '.join(pilots)})",
             "| test | column | pilot model | expect | pilot SD (n) | smallest effect | alpha | n diff | n TOST "
             "| n used | p floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reg["power"]:
        lines.append(f"| {r['hypothesis']}{' (post hoc)' if r['hypothesis'] in reg['post_hoc'] else ''} | "
                     f"`{r['column']}` | {r.get('pilot_model', '')} | {r['expect']} | "
                     f"{r['pilot_sd']:.3g} ({r['pilot_n']}) | "
                     f"{r['smallest_effect']:.3g} | {r['alpha_corrected']:.3g} | {r['n_difference']} | "
                     f"{r['n_tost']} | {r['n_used']} | {r['p_floor']:.2g} |")
    for a in reg["amendments"]:
        lines.append(f"amendment {a['date']}: {a['reason']} (results seen: {a['results_seen']}; "
                     f"added: {', '.join(a['added_hypotheses']) or 'none'})")
    return "\n".join(lines)
