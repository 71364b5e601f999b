"""Self-contained HTML reports of generation runs: one run (token lattice + attention on click) and
two runs side by side. The page needs no network: data, script and styles are all inline.

Per-step attention of a full capture is stored lazily: one ``<script type="application/octet-stream"
id="step-S">`` block per step holds the base64 of that step's ``[L,H,Q,Kc]`` float16 array (Q the
queries the step fed, Kc the slots written up to and including the step); the page decodes a block
only when a member of that step is clicked.
"""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tempo_jax.capture import capture_dir
from tempo_jax.loading import tokenizer_for
from tempo_jax.trace import Trace, _strict

Decode = Callable[[Sequence[int]], str]

DEFAULT_MAX_BYTES = 48 * 1024 * 1024  # budget for embedded attention (base64 characters)


def _json_script(obj) -> str:
    """JSON safe to place inside a <script> element."""
    text = json.dumps(_strict(obj), allow_nan=False, separators=(",", ":"))
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def quoted(text) -> str:
    """A token's text in double quotes as the page shows it: the characters themselves, with only
    control characters, quotes and backslashes escaped (``\\n``, ``\\t``, ``\\"``) so whitespace shows."""
    return json.dumps(str(text), ensure_ascii=False)


def seconds(v):
    """A duration rounded for display and the page's data: 3 significant digits, at most 3 decimals."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v == 0:
        return v
    return round(float(v), min(3, max(0, 2 - int(np.floor(np.log10(abs(v)))))))


def _decoder(decode: Decode | None):
    cache: dict[int, str] = {}

    def one(t: int) -> str:
        t = int(t)
        if t not in cache:
            cache[t] = decode([t]) if decode is not None else f"#{t}"
        return cache[t]

    return one


def _clean_members(trace: Trace, steps, eos_ids) -> list[int]:
    """Per step, the member index on the clean path (-1 once the path has ended at EOS)."""
    eos = {int(t) for t in eos_ids}
    out, ended = [], False
    for st in steps:
        if ended or not st["members"]:
            out.append(-1)
            continue
        alive = [i for i, m in enumerate(st["members"]) if not m["pruned"]] or [0]
        if st["members"][alive[0]]["token"] in eos:
            ended = True
            out.append(-1)
        else:
            out.append(alive[0])
    return out


def run_data(run_dir, stem: str = "trace_000", decode: Decode | None = None,
             eos_ids: Sequence[int] = (), max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[dict, list[dict]]:
    """(the page's JSON data, the lazily decoded per-step blocks) of one run."""
    run_dir = Path(run_dir)
    trace = Trace.load(run_dir, stem)
    if decode is None:
        found = tokenizer_for(trace.model)
        if found is not None:
            decode, found_eos = found
            eos_ids = eos_ids or found_eos
    tok = _decoder(decode)
    a: dict[str, Any] = dict(trace.arrays)
    empty_i = np.zeros(0, np.int32)
    for name in ("slot_step", "slot_member", "slot_token", "pruned_at"):  # beam traces have no slot maps
        a.setdefault(name, empty_i)
    a.setdefault("slot_pos", np.zeros(0, np.float32))
    a.setdefault("n_written", np.int32(len(a["slot_step"])))
    for name in ("cache_len", "fed_n"):
        a.setdefault(name, np.zeros(trace.n_steps, np.int32))
    steps = trace.steps()
    clean = _clean_members(trace, steps, eos_ids)
    eos = {int(t) for t in eos_ids}
    n_written = int(a["n_written"])
    slot_step = a["slot_step"][:n_written]
    lattice = []
    for st, c in zip(steps, clean):
        lattice.append({
            "step": st["step"], "tau": st["threshold"], "entropy": st["entropy"], "clean": c,
            "members": [{"t": m["token"], "x": tok(m["token"]), "p": m["prob"], "slot": m["slot"],
                         "pos": m["position"], "pruned_at": m["pruned_at"], "score": m["prune_score"],
                         "eos": m["token"] in eos} for m in st["members"]]})
    slots = {"step": slot_step.tolist(), "member": a["slot_member"][:n_written].tolist(),
             "pos": a["slot_pos"][:n_written].tolist(),
             "x": [tok(t) for t in a["slot_token"][:n_written]],
             "pruned_at": a["pruned_at"][:n_written].tolist()}
    bracket = clean_text = None
    txt = run_dir / f"{stem}.txt"
    if txt.exists():
        body = txt.read_text()
        bracket, _, clean_text = body.partition("\n\nclean: ")
        clean_text = clean_text.rstrip("\n")
    elif decode is not None:
        bracket, clean_text = trace.render(decode, eos_ids=eos_ids), trace.clean_text(decode, eos_ids)
    data = {"stem": stem, "model": trace.model, "config": trace.config,
            "timings": {k: seconds(v) for k, v in trace.timings.items()},
            "prompt_ids": trace.prompt_ids, "prompt": decode(trace.prompt_ids) if decode else None,
            "prompt_tokens": [tok(t) for t in trace.prompt_ids], "steps": lattice, "slots": slots,
            "cache_len": a["cache_len"].tolist(), "fed_n": a["fed_n"].tolist(),
            "bracket": bracket, "clean_text": clean_text, "decoded": decode is not None,
            "schema_version": trace.schema_version,
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "capture": None}
    blocks: list[dict] = []
    cdir = capture_dir(run_dir, stem)
    if max_bytes > 0 and (cdir / "capture.json").exists():
        data["capture"], blocks = _capture_blocks(cdir, a, max_bytes)
    data["explain"] = step_explanations(trace, steps, run_dir, stem, decode,
                                        full_capture=bool(data["capture"]) and data["capture"].get("mode") == "full")
    try:
        from importlib.metadata import version

        data["version"] = version("tempo-jax")
    except Exception:
        data["version"] = None
    return data, blocks


MAX_EXPLAINED_STEPS = 256


def step_explanations(trace: Trace, steps, run_dir, stem: str, decode: Decode | None,
                      full_capture: bool, top: int = 3) -> dict:
    """Per parallel step, what ``tempo-jax explain`` prints (members, probabilities, pruning
    decisions, and with a full capture the top context slots per layer group): ``{"pruning": words,
    "steps": [StepExplanation dicts], "left_out": parallel steps beyond MAX_EXPLAINED_STEPS}``."""
    from tempo_jax.explain import capture_attention, explain_step, pruning_words

    parallel = [s for s, st in enumerate(steps) if len(st["members"]) > 1]
    out = []
    for s in parallel[:MAX_EXPLAINED_STEPS]:
        attn = capture_attention(run_dir, stem, trace, s) if full_capture else None
        e = explain_step(trace, s, decode, attn, "capture" if attn is not None else None, top=top,
                         steps=steps)
        out.append(e.to_dict())
    return {"pruning": pruning_words(trace.config) if "prune" in trace.config else "off", "steps": out,
            "left_out": max(0, len(parallel) - MAX_EXPLAINED_STEPS)}


def _capture_blocks(cdir: Path, a: dict, max_bytes: int) -> tuple[dict, list[dict]]:
    from tempo_jax.capture import load_capture

    cap = load_capture(cdir)
    n_steps = min(len(a["fed_n"]), min(arr.shape[0] for arr, _ in cap.values()))
    cache_len, fed_n = a["cache_len"], a["fed_n"]
    info = {"dir": cdir.name, "steps": n_steps, "every": 1, "note": None}
    if cap and next(iter(cap.values()))[0].shape[0] != len(fed_n):
        return dict(info, mode="stale", layers=0, heads=0,
                    note=f"{cdir.name}/ holds {next(iter(cap.values()))[0].shape[0]} steps but the trace "
                         f"{len(fed_n)}: it belongs to another run and is not shown."), []
    blocks = []
    if "attn" in cap:
        attn = cap["attn"][0]  # [S,L,H,W,K]
        L, H = attn.shape[1], attn.shape[2]
        info.update(mode="full", layers=L, heads=H)
        # estimate the embedded size and keep every k-th step when it exceeds the budget
        est = sum(L * H * int(fed_n[s]) * int(cache_len[s] + fed_n[s]) * 2 * 4 / 3 for s in range(n_steps))
        every = max(1, int(np.ceil(est / max_bytes)))
        if every > 1:
            info["every"] = every
            info["note"] = (f"Attention is embedded for every {every}th step only (steps 0, {every}, "
                            f"{2 * every}, ...) to keep this page under {max_bytes >> 20} MB; the "
                            f"full capture is in {cdir.name}/.")
        for s in range(0, n_steps, every):
            q, kc = int(fed_n[s]), int(cache_len[s] + fed_n[s])
            arr = np.ascontiguousarray(attn[s, :, :, :q, :kc], dtype="<f2")
            blocks.append({"id": f"step-{s}", "type": "application/octet-stream",
                           "attrs": {"data-shape": f"{L},{H},{q},{kc}"},
                           "text": base64.b64encode(arr.tobytes()).decode("ascii")})
    elif "entropy" in cap:
        L, H = cap["entropy"][0].shape[1], cap["entropy"][0].shape[2]
        info.update(mode="summary", layers=L, heads=H)
        for s in range(n_steps):
            q = int(fed_n[s])
            one = {k: np.round(cap[k][0][s, :, :, :q].astype(np.float64), 5).tolist()
                   for k in ("entropy", "sink", "leakage") if k in cap}
            blocks.append({"id": f"sum-{s}", "type": "application/json", "attrs": {},
                           "text": _json_script(one)})
    else:
        info.update(mode="other", layers=0, heads=0,
                    note="the capture holds no attention or summary fields")
    return info, blocks


# --- rendering --------------------------------------------------------------------------------
def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["json_script"] = _json_script
    env.filters["quoted"] = quoted
    return env


def _static(name: str) -> str:
    return (Path(__file__).parent / "templates" / name).read_text()


def render_run(data: dict, blocks: list[dict], title: str | None = None) -> str:
    return _env().get_template("run.html.j2").render(
        title=title or f"tempo-jax run {data['stem']}", data=data, blocks=blocks,
        css=_static("report.css"), js=_static("report.js"))


def write_run_report(run_dir, out=None, stem: str = "trace_000", decode: Decode | None = None,
                     eos_ids: Sequence[int] = (), max_bytes: int = DEFAULT_MAX_BYTES,
                     name: str | None = None) -> Path:
    """Write the one-file HTML report of ``run_dir/<stem>.*`` (default ``run_dir/<stem>.html``);
    ``name`` is the run's folder name in the page title (default ``run_dir``'s own: ``generate``
    passes the final name while it writes into a temporary folder)."""
    data, blocks = run_data(run_dir, stem, decode, eos_ids, max_bytes)
    out = Path(out) if out else Path(run_dir) / f"{stem}.html"
    from tempo_jax.destinations import write_text_atomic

    write_text_atomic(out, render_run(data, blocks, f"tempo-jax run {name or Path(run_dir).name}/{stem}"))
    return out


def write_compare_report(run_a, run_b, out, stem_a: str = "trace_000", stem_b: str = "trace_000",
                         decode: Decode | None = None, eos_ids: Sequence[int] = ()) -> Path:
    """Two runs side by side, aligned by step (no attention data)."""
    da, _ = run_data(run_a, stem_a, decode, eos_ids, max_bytes=0)
    db, _ = run_data(run_b, stem_b, decode, eos_ids, max_bytes=0)
    da["capture"] = db["capture"] = None
    da["label"], db["label"] = f"A: {Path(run_a).name}/{stem_a}", f"B: {Path(run_b).name}/{stem_b}"
    keys = sorted(set(da["config"]) | set(db["config"]))
    diff = [{"key": k, "a": da["config"].get(k), "b": db["config"].get(k),
             "same": da["config"].get(k) == db["config"].get(k)} for k in keys]
    html = _env().get_template("compare.html.j2").render(
        title=f"tempo-jax compare {da['label']} vs {db['label']}", a=da, b=db, diff=diff,
        css=_static("report.css"), js=_static("compare.js"))
    out = Path(out)
    from tempo_jax.destinations import write_text_atomic

    write_text_atomic(out, html)
    return out
