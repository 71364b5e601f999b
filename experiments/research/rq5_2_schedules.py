"""RQ 5.2: threshold schedules (constant, linear, exponential, bezier, relu) and a schedule learned
on the dev split, against the constant threshold 0.1.

Per test prompt, six TEMPO generations that differ ONLY in the per-step threshold
(``tau_s = tau_0 + (tau_final - tau_0) m(s / 11)``, see ``tempo_jax/engine/schedules.py``; W 8,
12 steps, isolated siblings, mixture combining, no pruning, host driver):
  - constant 0.1 (the reference; the engine default);
  - linear, exponential (k 3), bezier (p1 0, p2 1: smoothstep), relu (a 0.5), each from 0.1 to 0.3
    (same start threshold as the reference; the threshold rises as the continuation goes on);
  - the LEARNED schedule: (tau_0, tau_final, shape) chosen on DEV prompts by successive halving over
    a declared grid, maximising the declared objective (below). The search is run separately
    (``python -m experiments.research.rq5_2_schedules search``) and writes
    ``experiments/research/rq5_2_learned.json``, which the test run reads.

Objective (per prompt, averaged over prompts; declared before the search):
  ``J = quality - LAMBDA * (forward tokens per logical step - 1)`` with quality = clean-path
  accuracy (facts), parse rate of prompt + continuation (code), 0 (prose: no reference-based
  quality), LAMBDA = 0.1 (one extra member per step costs 0.1 of a correct answer).
Measures per generation (``tempo_jax.quality``): self-perplexity of the clean continuation, log10
paths through the lattice, repeated 3-grams, distinct-2; facts accuracy, code parse rate; cost =
forward tokens per logical step (members fed, = mean set size).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from tempo_jax.research import Design, Hypothesis, Output, quality_of
from experiments.research.tables import genre_table
from tempo_jax.engine import GenerationConfig, generate
from tempo_jax.errors import UsageError

GEN = dict(max_steps=12, max_width=8, prune=False)
REF_T = 0.1
FINAL = 0.3
LAMBDA = 0.1
SHAPES = ("linear", "exponential", "bezier", "relu")
LEARNED_PATH = Path(__file__).with_name("rq5_2_learned.json")
LOG11 = float(np.log(1.1))
# Bezier control points 0 and 1 (smoothstep 3t^2 - 2t^3): the engine default 0.25 / 0.75 is within
# 0.02 of linear and gave the same sets as linear in the smoke run.
SHAPE_ARGS = {"bezier": dict(bezier_p1=0.0, bezier_p2=1.0)}

# Dev search grid: start thresholds, final thresholds, shapes (tau_final == tau_0 is the constant).
GRID_T0 = (0.05, 0.1, 0.15)
GRID_TF = (0.05, 0.1, 0.2, 0.3)
GRID_SHAPES = ("linear", "exponential")
# Successive halving: prompts per genre added in each round, candidates kept after each round.
ROUNDS = ((1, 6), (2, 2), (2, 1))


@dataclasses.dataclass(frozen=True)
class Sched:
    """One threshold schedule."""

    kind: str
    tau0: float
    tau_final: float

    @property
    def label(self) -> str:
        if self.kind == "constant":
            return f"constant {self.tau0:g}"
        return f"{self.kind} {self.tau0:g}->{self.tau_final:g}"

    def config(self, seed: int) -> GenerationConfig:
        return GenerationConfig(**GEN, threshold=self.tau0, schedule=self.kind,
                                threshold_final=None if self.kind == "constant" else self.tau_final,
                                seed=seed, **SHAPE_ARGS.get(self.kind, {}))


REF = Sched("constant", REF_T, REF_T)
FIXED = {s: Sched(s, REF_T, FINAL) for s in SHAPES}

DESIGN = Design(
    id="rq5.2",
    questions=("5.2",),
    title="Threshold schedules (0.1 -> 0.3: linear, exponential, bezier, relu) and a dev-learned "
          "schedule vs the constant threshold 0.1",
    primary_metric="forward tokens per logical step and self-perplexity of the clean continuation, "
                   "as per-prompt log ratios of a schedule to constant 0.1; for the learned "
                   "schedule, the declared objective J = quality - 0.1 * (forward tokens per step - 1)",
    contrast="each schedule vs constant 0.1, same prompt, everything else fixed",
    hypotheses=(
        Hypothesis("C", "rising schedules (the four 0.1 -> 0.3 shapes and the learned one) feed fewer forward tokens per logical step "
                        "than constant 0.1", "lfwd_*", "<0"),
        Hypothesis("P", "rising schedules lower the self-perplexity of the clean continuation "
                        "(fewer members, cleaner mixture)", "lppl_*", "<0"),
        Hypothesis("D", "rising schedules give fewer lattice paths (log10)", "paths_*", "<0",
                   family="diversity", margin=0.5),
        Hypothesis("R", "repeated 3-gram rate within +-0.05 of constant 0.1's", "rep3_*", "=0",
                   family="diversity", margin=0.05),
        Hypothesis("F", "facts: clean-path accuracy within +-10 points of constant 0.1's",
                   "correct_*", "=0", family="quality", margin=0.10, bound=1.0),
        Hypothesis("K", "code: parse rate within +-10 points of constant 0.1's", "parses_*", "=0",
                   family="quality", margin=0.10),
        Hypothesis("L", "the dev-learned schedule beats constant 0.1 on the declared objective J",
                   "obj_learned", ">0", family="learned", margin=0.05),
    ),
    margin=LOG11,
    margin_note="log(1.1) for perplexity and forward-token log ratios; 0.5 for log10 paths; 0.05 "
                "for the repeat rate and the objective J; 10 points for accuracy and parse rate",
    metrics=("lfwd_*", "lppl_*", "paths_*", "rep3_*", "correct_*", "parses_*", "obj_*"),
    families={"primary": "holm", "diversity": "holm", "quality": "holm", "learned": "holm"},
    n_per_genre=6,
    quick_n=1,
    caveats=(
        "12 logical steps per generation and 6 test prompts per genre (18 in all) to fit the shared "
        "compute budget (<= 4 min): per-genre quality contrasts (facts accuracy, code parse rate on "
        "6 prompts) have almost no power.",
        "The learned schedule is chosen by successive halving on at most 15 dev prompts (5 per "
        "genre) over a 23-candidate grid with two shapes (linear, exponential); it is a weak, "
        "pre-declared search, and its objective weights cost against quality by a chosen LAMBDA.",
        "The objective gives prose prompts no quality term (no reference); for prose J only rewards "
        "lower cost.",
        "With 12 steps the schedule's rise spans the whole continuation; at other lengths the same "
        "shape ends elsewhere (t = s / (max_steps - 1)).",
        "Self-perplexity is the model judging its own text and favours high thresholds by "
        "construction; lower is not the same as better.",
    ),
    config={"generation": GEN, "reference": REF_T, "final": FINAL, "shapes": SHAPES,
            "shape_args": SHAPE_ARGS,
            "lambda": LAMBDA, "grid": {"t0": GRID_T0, "tf": GRID_TF, "shapes": GRID_SHAPES},
            "halving_rounds": ROUNDS, "learned_file": LEARNED_PATH.name},
)


def objective(genre: str, q: dict) -> float:
    """The declared per-prompt objective J (see the module docstring)."""
    quality = q["correct"] if genre == "facts" else q["parses"] if genre == "code" else 0.0
    return float(quality - LAMBDA * (q["fwd"] - 1.0))


def one(m, p, s: Sched, seed: int) -> dict:
    """One generation under schedule ``s``: quality measures, forward tokens per step, J."""
    ids = m.tokenizer(p.prompt).input_ids
    tr = generate(m.params, m.cfg, ids, s.config(seed), capture="none")
    q = dict(quality_of(m, p, tr))
    n = np.asarray(tr.arrays["set_n"], np.float64)
    q["fwd"] = float(n.mean())
    q["set_n"] = n.tolist()
    q["obj"] = objective(p.genre, q)
    return q


def grid() -> list[Sched]:
    out = []
    for t0 in GRID_T0:
        out.append(Sched("constant", t0, t0))
        out += [Sched(k, t0, tf) for tf in GRID_TF if tf != t0 for k in GRID_SHAPES]
    return out


def search(m, seed: int = 0, progress=lambda it: it) -> dict:
    """Successive halving on dev prompts: each round adds prompts per genre, scores every surviving
    candidate by its mean J over all dev prompts it has run so far, and keeps the top ones (ties:
    the cheaper candidate, i.e. lower mean forward tokens)."""
    from experiments import corpus

    need = sum(k for k, _ in ROUNDS)
    dev = corpus.load(split="dev", genres=list(DESIGN.genres), limit_per_genre=need)
    by_genre = {g: [p for p in dev if p.genre == g] for g in DESIGN.genres}
    alive = grid()
    scores: dict = {c: [] for c in alive}
    fwd: dict = {c: [] for c in alive}
    used = 0
    log = []
    for r, (k, keep) in enumerate(ROUNDS):
        batch = [p for g in DESIGN.genres for p in by_genre[g][used:used + k]]
        used += k
        for p in progress(batch):
            for c in alive:
                q = one(m, p, c, seed)
                scores[c].append(q["obj"])
                fwd[c].append(q["fwd"])
        ranked = sorted(alive, key=lambda c: (-np.mean(scores[c]), np.mean(fwd[c])))
        for c in alive:
            log.append({"round": r, "schedule": c.label, "kind": c.kind, "tau0": c.tau0,
                        "tau_final": c.tau_final, "n_dev": len(scores[c]),
                        "mean_J": float(np.mean(scores[c])), "mean_fwd": float(np.mean(fwd[c])),
                        "kept": c in ranked[:keep]})
        alive = ranked[:keep]
    best = alive[0]
    return {"learned": {"kind": best.kind, "tau0": best.tau0, "tau_final": best.tau_final,
                        "label": best.label},
            "objective": f"J = quality - {LAMBDA} * (forward tokens per step - 1)",
            "n_dev_prompts": used * len(DESIGN.genres), "seed": seed, "log": log}


def load_learned() -> tuple[Sched, dict]:
    if not LEARNED_PATH.exists():
        raise UsageError(f"rq5.2 needs the dev-learned schedule {LEARNED_PATH.name}; run "
                         "`python -m experiments.research.rq5_2_schedules search` first")
    d = json.loads(LEARNED_PATH.read_text())
    L = d["learned"]
    return Sched(L["kind"], float(L["tau0"]), float(L["tau_final"])), d


def run(ctx) -> Output:
    learned, found = load_learned()
    m = ctx.model
    conds = {"ref": REF, **FIXED, "learned": learned}

    def every(p):
        out, done = {}, {}
        for key, s in conds.items():
            if s not in done:  # a learned schedule equal to a fixed one is generated once
                done[s] = one(m, p, s, ctx.seed)
            out[key] = done[s]
        return out

    rows = []
    for p, q in ctx.map(every):
        row = {"prompt_id": p.id, "genre": p.genre}
        ref = q["ref"]
        for key in conds:
            r = q[key]
            row[f"fwd_{key}"], row[f"ppl_{key}"], row[f"J_{key}"] = r["fwd"], r["self_ppl"], r["obj"]
            row[f"lpaths_{key}"] = r["log10_paths"]
            row[f"setn_{key}"] = json.dumps(r["set_n"])
            for k in ("correct", "parses", "distinct_2", "repeat_3"):
                if k in r:
                    row[f"q_{k}_{key}"] = r[k]
            if key == "ref":
                continue
            row[f"lfwd_{key}"] = float(np.log(r["fwd"] / ref["fwd"]))
            row[f"lppl_{key}"] = float(np.log(r["self_ppl"] / ref["self_ppl"]))
            row[f"paths_{key}"] = r["log10_paths"] - ref["log10_paths"]
            row[f"rep3_{key}"] = r["repeat_3"] - ref["repeat_3"]
            row[f"obj_{key}"] = r["obj"] - ref["obj"]
            if p.genre == "facts":
                row[f"correct_{key}"] = r["correct"] - ref["correct"]
            if p.genre == "code":
                row[f"parses_{key}"] = r["parses"] - ref["parses"]
        rows.append(row)
    table = _table(rows, conds)
    _figure(ctx, rows, table, conds)
    notes = [f"Learned schedule (successive halving on {found['n_dev_prompts']} dev prompts, "
             f"{found['objective']}): {learned.label}.",
             "obj_<schedule> columns other than obj_learned are reported but were not "
             "pre-registered as tests (only L is)."]
    return Output(rows=rows, tables={"by_schedule": table, "dev_search": found["log"]}, notes=notes)


def _table(rows, conds) -> list[dict]:
    """Per genre (and all) and schedule: mean [BCa 95% CI] over prompts."""
    return genre_table(rows, [({"schedule": key, "label": s.label}, key) for key, s in conds.items()],
                       [("fwd_per_step", "fwd_"), ("self_ppl", "ppl_"), ("J", "J_"), ("log10_paths", "lpaths_"),
                        ("repeat_3", "q_repeat_3_"), ("distinct_2", "q_distinct_2_"), ("correct", "q_correct_"),
                        ("parses", "q_parses_")],
                       n_boot=1999, point_below=3, skip_empty=True)


def _figure(ctx, rows, table, conds):
    from experiments.plotting import pyplot
    from tempo_jax.engine.schedules import thresholds

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    colors = dict(zip(conds, ("black", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    S = GEN["max_steps"]
    for key, s in conds.items():
        args = {k.split("_")[1]: v for k, v in SHAPE_ARGS.get(s.kind, {}).items()}
        taus = thresholds(s.kind, s.tau0, None if s.kind == "constant" else s.tau_final, S, **args)
        label = s.label + (" (learned)" if key == "learned" else "")
        ls = "--" if key == "learned" else "-"
        axes[0].plot(range(S), taus, ls, color=colors[key], label=label)
        n = np.asarray([json.loads(r[f"setn_{key}"]) for r in rows], np.float64)
        axes[1].plot(range(n.shape[1]), n.mean(0), ls, marker="o", ms=3, color=colors[key], label=label)
    axes[0].set(xlabel="logical step s", ylabel="threshold tau_s", title="schedules")
    axes[0].legend(fontsize=7)
    axes[1].set(xlabel="logical step s", ylabel="mean set size (forward tokens)",
                title=f"members fed per step (mean over {len(rows)} test prompts)")
    ax = axes[2]
    for rec in (r for r in table if r["genre"] == "all"):
        key = rec["schedule"]
        ax.errorbar(rec["fwd_per_step"], rec["J"],
                    xerr=[[rec["fwd_per_step"] - rec["fwd_per_step_lo"]], [rec["fwd_per_step_hi"] - rec["fwd_per_step"]]],
                    yerr=[[rec["J"] - rec["J_lo"]], [rec["J_hi"] - rec["J"]]],
                    fmt="o", capsize=3, color=colors[key],
                    label=rec["label"] + (" (learned)" if key == "learned" else ""))
    ax.set(xlabel="forward tokens per logical step", ylabel="objective J (mean, 95% BCa CI)",
           title=f"objective J = quality - {LAMBDA} (fwd - 1)")
    ax.legend(fontsize=7)
    fig.suptitle("RQ 5.2: threshold schedules vs constant 0.1 (test split)")
    fig.tight_layout()
    ctx.figure(fig, "schedules")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    pct = lambda t: f"{100 * (np.exp(t.estimate) - 1):+.0f}% [{100 * (np.exp(t.lo) - 1):+.0f}, {100 * (np.exp(t.hi) - 1):+.0f}]"
    parts = []
    for key in (*SHAPES, "learned"):
        f, p = by.get(f"lfwd_{key}"), by.get(f"lppl_{key}")
        if f is None or p is None or not np.isfinite(f.estimate):
            continue
        parts.append(f"{key} vs constant 0.1: forward tokens per step {pct(f)} ({f.verdict}), "
                     f"self-perplexity {pct(p)} ({p.verdict})")
    L = by.get("obj_learned")
    tail = ""
    if L is not None and np.isfinite(L.estimate):
        tail = (f". Learned schedule vs constant 0.1 on the objective J: {L.estimate:+.3f} "
                f"[{L.lo:+.3f}, {L.hi:+.3f}] ({L.verdict})")
    return "; ".join(parts) + tail + "."


def _main(argv) -> None:
    if argv[:1] != ["search"]:
        raise SystemExit("usage: python -m experiments.research.rq5_2_schedules search")
    from tqdm.auto import tqdm

    from tempo_jax.loading import load_model

    res = search(load_model(verbose=False), progress=lambda it: tqdm(it, desc="rq5.2 dev search"))
    LEARNED_PATH.write_text(json.dumps(res, indent=1) + "\n")
    print(res["learned"])


if __name__ == "__main__":
    _main(sys.argv[1:])
