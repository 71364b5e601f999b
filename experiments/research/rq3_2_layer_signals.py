"""RQ 3.2: do different layers contribute differently to pruning decisions?

Data (:mod:`experiments.research.layer_pruning_data`): one TEMPO run per prompt WITHOUT pruning;
every judged set (more than one member, look-ahead window of 2 steps closed inside the run) gets,
per member, the pruning score each layer alone would give it (``recv[N,L]``), so the pruning of any
layer weighting is computed offline on the SAME sets. Each member is forced after the clean path and
continued greedily for N_CONT tokens; three references say which member is the better branch:
  lik    the continuation's log-likelihood under the model (sum over its N_CONT greedy tokens;
         the member's own probability is NOT included, since selection already knows it);
  gold   (facts) the branch's text contains the gold answer or an alias (normalised, whole words);
  parse  (code) prompt + branch text parses (:func:`tempo_jax.quality.parses`, whole lines).
Metric per prompt: within-set pairwise concordance of a layer weighting's pruning score with the
reference (pairs whose reference differs; ties in score count 1/2; 0.5 = chance). It does not depend
on how many members a rule prunes (a rule that prunes nothing would "keep the gold" always); the
keep rates of the engine's relative rule (rho = 0.8) are reported as a table.
Layer weightings: all layers (engine default), early / middle / late thirds, each single layer,
and a softmax over layer weights fitted on the DEV split (optax, pairwise logistic objective on the
relative score difference, one fit per reference), evaluated on the test split. Selection
probability is the non-attention reference.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tempo_jax.research import Design, Hypothesis, Output
from experiments.research.layer_pruning_data import (Branches, branch_ids, judged_branches,
                                                     pair_concordance, relative_keep)
from tempo_jax import quality
from tempo_jax.engine import GenerationConfig

GEN = dict(max_steps=10, min_steps=10, threshold=0.05, max_width=4, prune=False, prune_window=2,
           siblings="isolated")
N_CONT = 6
RHO = 0.8
CRITERIA = ("lik", "gold", "parse")
GROUPS = ("early", "middle", "late")
DEV_PER_GENRE = 7
MARGIN = 0.05

_H = []
for c, what in (("lik", "the continuation likelihood"), ("gold", "the gold answer (facts)"),
                ("parse", "parse validity (code)")):
    _H += [Hypothesis(f"G_{g}_{c}", f"{g} layers' pruning score agrees with {what} differently from "
                                    "all layers", f"d_{g}_{c}", ">0" if (g, c) in (
                          ("late", "gold"), ("early", "parse"), ("late", "lik")) else "=0", bound=1.0)
           for g in GROUPS]
    _H.append(Hypothesis(f"F_{c}", f"dev-fitted layer weights agree with {what} better than all "
                                   "layers on test", f"d_fitted_{c}", ">0", bound=1.0))
    _H.append(Hypothesis(f"C_{c}", f"all-layers pruning score agrees with {what} above chance (0.5)",
                         f"all_vs_chance_{c}", ">0", family="reference"))
    _H.append(Hypothesis(f"P_{c}", f"all-layers pruning score agrees with {what} more than the "
                                   "selection probability does", f"all_minus_prob_{c}", ">0",
                         family="reference"))
    _H.append(Hypothesis(f"L_{c}", f"single layer l vs all layers ({what})", f"dL*_{c}", "=0",
                         family="layers"))

DESIGN = Design(
    id="rq3.2",
    questions=("3.2",),
    title="Layer-specific pruning signals: which layers' attention picks the better branch",
    primary_metric="within-set pairwise concordance of a layer weighting's pruning score with the "
                   "better branch (continuation likelihood; gold answer for facts; parse validity "
                   "for code), per prompt; difference to the all-layers score",
    contrast="early / middle / late thirds and a dev-fitted layer weighting vs all layers, same sets",
    hypotheses=tuple(_H),
    margin=MARGIN,
    margin_note="0.05 concordance (probability that the better member scores higher)",
    metrics=tuple(f"{p}_{c}" for c in CRITERIA for p in (*(f"d_{g}" for g in GROUPS), "d_fitted",
                                                         "all_vs_chance", "all_minus_prob", "dL*")),
    families={"primary": "holm", "reference": "holm", "layers": "fdr_bh"},
    genres=("prose", "code", "facts"),
    n_per_genre=15,
    quick_n=2,
    caveats=(
        "Decisions are computed offline on an unpruned run: each set is judged as the engine's "
        "window-timed relative rule would judge it if nothing had been pruned before; online "
        "pruning would change later context (not run here, for time).",
        "The references are short greedy branches (N_CONT tokens) after the clean path; 'gold' and "
        "'parse' contrasts exist only in sets where the branch decides them, so their n is smaller.",
        "Pre-registered directions (late > all for gold and likelihood, early > all for parse) follow "
        "the question's 'early layers syntax, late layers semantics'; the other group contrasts are "
        "'=0' within the margin.",
        "The layer weights are fitted on the dev split prompts (DEV_PER_GENRE per genre) inside the "
        "run and never see test prompts.",
    ),
    config={"generation": GEN, "n_cont": N_CONT, "rho": RHO, "dev_per_genre": DEV_PER_GENRE,
            "groups": "thirds of the layers", "fit": "softmax layer weights, optax adam 400 steps, L2 0.01 on the logits"},
)


@dataclasses.dataclass
class PromptData:
    """One prompt's judged branches with the three reference labels (NaN where they do not apply)."""

    b: Branches
    lik: np.ndarray  # [N]
    gold: np.ndarray  # [N] 1/0 (facts) or NaN
    parse: np.ndarray  # [N] 1/0 (code) or NaN


def _branch_text(tok, prompt_ids, ids) -> str:
    full = tok.decode(list(prompt_ids) + list(ids))
    head = tok.decode(list(prompt_ids))
    return full[len(head):] if full.startswith(head) else tok.decode(list(ids))


def contains_answer(text: str, gold: str, aliases=()) -> bool:
    """The normalised text (:func:`tempo_jax.quality.normalise_text`) contains the normalised gold
    or an alias as whole words."""
    t = f" {quality.normalise_text(text)} "
    return any(ng and f" {ng} " in t for ng in (quality.normalise_text(g) for g in (gold, *aliases)))


def collect(m, prompt) -> PromptData:
    """Judged branches of one corpus prompt and their labels."""
    ids = m.tokenizer(prompt.prompt).input_ids
    b, _ = judged_branches(m.params, m.cfg, ids, GenerationConfig(**GEN), N_CONT)
    n = len(b.step)
    texts = [_branch_text(m.tokenizer, ids, branch_ids(b, i)) for i in range(n)]
    gold = np.full(n, np.nan)
    parse = np.full(n, np.nan)
    if prompt.genre == "facts":
        gold = np.asarray([contains_answer(t, prompt.reference, prompt.aliases) for t in texts], float)
    if prompt.genre == "code":
        parse = np.asarray([quality.parses(prompt.prompt + t) for t in texts], float)
    return PromptData(b=b, lik=b.cont_logp, gold=gold, parse=parse)


def layer_configs(n_layers: int) -> dict[str, np.ndarray]:
    """Named layer weightings [L] (summing to 1): all, thirds, each single layer."""
    out = {"all": np.full(n_layers, 1.0 / n_layers)}
    for g, idx in zip(GROUPS, np.array_split(np.arange(n_layers), 3)):
        w = np.zeros(n_layers)
        w[idx] = 1.0 / len(idx)
        out[g] = w
    for l in range(n_layers):
        w = np.zeros(n_layers)
        w[l] = 1.0
        out[f"L{l}"] = w
    return out


def _pairs(d: PromptData, crit: str):
    """(set ids, i, j) of pairs of the same set whose reference says i is better than j."""
    lab = getattr(d, crit)
    out = []
    for g in np.unique(d.b.set_id):
        idx = np.flatnonzero(d.b.set_id == g)
        for i in idx:
            for j in idx:
                if np.isfinite(lab[i]) and np.isfinite(lab[j]) and lab[i] > lab[j]:
                    out.append((i, j))
    return out


def fit_weights(data: list[PromptData], crit: str, n_layers: int, steps: int = 400,
                seed: int = 0) -> np.ndarray:
    """Softmax layer weights maximising a pairwise logistic objective on the DEV prompts:
    loss = mean over prompts of mean over their pairs (i better than j) of
    softplus(-a (s_i - s_j) / mean of s over the set), s = recv @ softmax(z); a = exp(log_a) is
    fitted too; L2 0.01 on z. Uniform weights if no pair exists."""
    import jax
    import jax.numpy as jnp
    import optax

    di, dj, mean_w, pw = [], [], [], []
    for d in data:
        pr = _pairs(d, crit)
        if not pr:
            continue
        for i, j in pr:
            sid = d.b.set_id == d.b.set_id[i]
            di.append(d.b.recv[i])
            dj.append(d.b.recv[j])
            mean_w.append(d.b.recv[sid].mean(0))
            pw.append(1.0 / len(pr))
    if not di:
        return np.full(n_layers, 1.0 / n_layers)
    ri, rj, rm = (jnp.asarray(np.asarray(x), jnp.float32) for x in (di, dj, mean_w))
    pw = jnp.asarray(np.asarray(pw) / np.sum(pw), jnp.float32)

    def loss(p):
        w = jax.nn.softmax(p["z"])
        diff = (ri @ w - rj @ w) / jnp.maximum(rm @ w, 1e-9)
        return jnp.sum(pw * jax.nn.softplus(-jnp.exp(p["log_a"]) * diff)) + 1e-2 * jnp.sum(p["z"] ** 2)

    p = {"z": jnp.zeros(n_layers), "log_a": jnp.asarray(np.log(5.0), jnp.float32)}
    opt = optax.adam(0.05)
    st = opt.init(p)

    @jax.jit
    def upd(p, st):
        g = jax.grad(loss)(p)
        u, st = opt.update(g, st, p)
        return optax.apply_updates(p, u), st

    for _ in range(steps):
        p, st = upd(p, st)
    return np.asarray(jax.nn.softmax(p["z"]), np.float64)


def prompt_metrics(d: PromptData, configs: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-prompt concordance of every weighting (and of selection probability) per reference,
    and the keep rates of the relative rule."""
    out = {}
    b = d.b
    scores = {name: b.recv @ w for name, w in configs.items()}
    scores["prob"] = b.prob
    for c in CRITERIA:
        lab = getattr(d, c)
        ok = np.isfinite(lab)
        for name, s in scores.items():
            out[f"conc_{name}_{c}"] = pair_concordance(s[ok], lab[ok], b.set_id[ok])[0] if ok.any() else np.nan
    for name, s in scores.items():
        if name == "prob" or name.startswith("L"):
            continue
        keep = relative_keep(s, b.set_id, RHO)
        out[f"pruned_{name}"] = float(1 - keep.mean()) if len(keep) else np.nan
        for c in CRITERIA:
            lab = getattr(d, c)
            best = []  # members that are the set's best (lik: the maximum; gold/parse: good ones)
            for g in np.unique(b.set_id):
                idx = np.flatnonzero(b.set_id == g)
                v = lab[idx]
                if not np.isfinite(v).all() or v.max() == v.min():
                    continue
                best += list(idx[v == v.max()])
            out[f"keep_{name}_{c}"] = float(keep[best].mean()) if best else np.nan
    return out


def run(ctx) -> Output:
    from experiments import corpus

    m = ctx.model
    n_layers = m.cfg.num_layers
    collect_one = lambda p: collect(m, p)
    dev_n = ctx.design.quick_n if ctx.quick else DEV_PER_GENRE
    dev = corpus.load(split="dev", genres=list(ctx.design.genres), limit_per_genre=dev_n)
    dev_data = [d for _, d in dataclasses.replace(ctx, prompts=dev).map(collect_one, "dev prompts")]
    configs = layer_configs(n_layers)
    fitted = {c: fit_weights(dev_data, c, n_layers, seed=ctx.seed) for c in CRITERIA}
    rows, per_prompt = [], []
    for p, d in ctx.map(collect_one, "test prompts"):
        met = prompt_metrics(d, {**configs, **{f"fitted_{c}": w for c, w in fitted.items()}})
        row = {"prompt_id": p.id, "genre": p.genre, "n_sets": len(np.unique(d.b.set_id)),
               "n_members": len(d.b.step)}
        for c in CRITERIA:
            a = met[f"conc_all_{c}"]
            for g in GROUPS:
                row[f"d_{g}_{c}"] = met[f"conc_{g}_{c}"] - a
            row[f"d_fitted_{c}"] = met[f"conc_fitted_{c}_{c}"] - a
            row[f"all_vs_chance_{c}"] = a - 0.5
            row[f"all_minus_prob_{c}"] = a - met[f"conc_prob_{c}"]
            for l in range(n_layers):
                row[f"dL{l}_{c}"] = met[f"conc_L{l}_{c}"] - a
        rows.append(row)
        per_prompt.append(met)
    table = _config_table(per_prompt, list(configs) + [f"fitted_{c}" for c in CRITERIA] + ["prob"],
                          ctx.seed)
    weights = [{"layer": l, **{f"fitted_{c}": float(fitted[c][l]) for c in CRITERIA}} for l in range(n_layers)]
    notes = [f"{sum(r['n_sets'] for r in rows)} judged sets, {sum(r['n_members'] for r in rows)} members "
             f"from {len(rows)} test prompts; weights fitted on {len(dev_data)} dev prompts."]
    for c in CRITERIA:
        top = np.argsort(fitted[c])[::-1][:3]
        notes.append(f"fitted weights ({c}): largest on layers " +
                     ", ".join(f"L{l} ({fitted[c][l]:.2f})" for l in top) + ".")
    _figures(ctx, table, weights, n_layers)
    return Output(rows=rows, tables={"configs": table, "fitted_weights": weights}, notes=notes)


def _config_table(per_prompt, names, seed) -> list[dict]:
    """Mean over prompts of each weighting's concordance and keep rates, with percentile bootstrap
    CIs over prompts."""
    from tempo_jax import stats as S

    out = []
    for name in names:
        row = {"config": name}
        for c in CRITERIA:
            v = np.asarray([m.get(f"conc_{name}_{c}", np.nan) for m in per_prompt])
            v = v[np.isfinite(v)]
            r = S.bootstrap_ci(v, n_boot=999, seed=seed) if len(v) > 2 else {"lo": np.nan, "hi": np.nan}
            row.update({f"conc_{c}": float(v.mean()) if len(v) else np.nan, f"conc_{c}_lo": r["lo"],
                        f"conc_{c}_hi": r["hi"], f"n_{c}": len(v)})
            k = np.asarray([m.get(f"keep_{name}_{c}", np.nan) for m in per_prompt])
            row[f"keep_best_{c}"] = float(np.nanmean(k)) if np.isfinite(k).any() else np.nan
        pr = np.asarray([m.get(f"pruned_{name}", np.nan) for m in per_prompt])
        row["pruned_fraction"] = float(np.nanmean(pr)) if np.isfinite(pr).any() else np.nan
        out.append(row)
    return out


def _figures(ctx, table, weights, n_layers):
    from experiments.plotting import pyplot

    plt = pyplot()
    by = {r["config"]: r for r in table}
    fig, axes = plt.subplots(len(CRITERIA), 1, figsize=(12, 8.5), sharex=True)
    xs = np.arange(n_layers)
    for ax, c in zip(axes, CRITERIA):
        v = [by[f"L{l}"][f"conc_{c}"] for l in xs]
        lo = [by[f"L{l}"][f"conc_{c}_lo"] for l in xs]
        hi = [by[f"L{l}"][f"conc_{c}_hi"] for l in xs]
        ax.errorbar(xs, v, yerr=[np.subtract(v, lo), np.subtract(hi, v)], marker="o", ms=3, capsize=2,
                    label="single layer")
        for name, color in (("all", "k"), ("early", "C1"), ("middle", "C2"), ("late", "C3"),
                            (f"fitted_{c}", "C4"), ("prob", "grey")):
            ax.axhline(by[name][f"conc_{c}"], color=color, ls="--" if name != "prob" else ":",
                       label=name if name != f"fitted_{c}" else "fitted (dev)")
        ax.axhline(0.5, color="lightgrey", lw=0.8)
        if not np.isfinite(by["all"][f"conc_{c}"]):
            ax.text(0.5, 0.5, "no set where this reference differs between members", ha="center",
                    va="center", transform=ax.transAxes, color="grey")
        ax.set_ylabel(f"concordance ({c})")
        ax.set_title({"lik": "Agreement with the branch of highest continuation likelihood (all genres)",
                      "gold": "Agreement with the branch that contains the gold answer (facts)",
                      "parse": "Agreement with the branch that parses (code)"}[c], fontsize=10)
    axes[0].legend(fontsize=7, ncol=7, loc="upper center", bbox_to_anchor=(0.5, 1.35))
    axes[-1].set_xlabel("layer whose attention alone gives the pruning score (means over prompts, "
                        "95% bootstrap CI)")
    fig.tight_layout()
    ctx.figure(fig, "layers")
    fig, ax = plt.subplots(figsize=(10, 3))
    for c in CRITERIA:
        ax.plot(xs, [w[f"fitted_{c}"] for w in weights], marker="o", ms=3, label=c)
    ax.axhline(1 / n_layers, color="k", ls="--", label="uniform (all layers)")
    ax.set_xlabel("layer")
    ax.set_ylabel("fitted weight (dev split)")
    ax.set_title("Layer weights fitted on the dev split, one fit per reference")
    ax.legend(fontsize=8)
    ctx.figure(fig, "fitted_weights")


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    f = lambda t: f"{t.estimate:+.3f} [{t.lo:+.3f}, {t.hi:+.3f}]"
    name = {"lik": "continuation likelihood", "gold": "gold answer (facts)", "parse": "parse validity (code)"}
    parts = []
    for c in CRITERIA:
        ch, pb = by.get(f"all_vs_chance_{c}"), by.get(f"all_minus_prob_{c}")
        if ch is None or not np.isfinite(ch.estimate):
            parts.append(f"{name[c]}: no data")
            continue
        groups = "; ".join(f"{g} {f(by[f'd_{g}_{c}'])} ({by[f'd_{g}_{c}'].verdict})" for g in GROUPS
                           if f"d_{g}_{c}" in by)
        fit = by.get(f"d_fitted_{c}")
        fit_word = (f"dev-fitted weights gave every test prompt the same concordance as all layers ({f(fit)}; the "
                    "fit stayed at near-uniform weights)" if fit.lo == 0 and fit.hi == 0
                    else f"dev-fitted weights {f(fit)} ({fit.verdict})")
        layers = [t for t in tests if t.column.startswith("dL") and t.column.endswith(f"_{c}")]
        up = [t.column[2:].split("_")[0] for t in layers if t.verdict.startswith("differs (+)")]
        down = [t.column[2:].split("_")[0] for t in layers if t.verdict.startswith("differs (-)")]
        parts.append(f"{name[c]} (n = {ch.n} prompts): all layers vs chance {f(ch)} ({ch.verdict}), vs "
                     f"selection probability {f(pb)} ({pb.verdict}); vs all layers: {groups}; {fit_word}; "
                     f"single layers better / worse than all (BH): "
                     f"{', '.join('L' + u for u in up) or 'none'} / {', '.join('L' + u for u in down) or 'none'}")
    return ("Within-set concordance of the pruning score with the better branch, as differences to "
            "the all-layers score. " + ". ".join(parts) + ".")
