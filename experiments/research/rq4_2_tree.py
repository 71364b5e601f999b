"""RQ 4.2: convergence and divergence of TEMPO's parallel paths (token-tree statistics).

Per prompt: one TEMPO run (threshold 0.1, max width 4, isolated siblings, mixture combining, no
pruning, 16 logical steps). Its clean path c_0..c_{S-1} (the top member of every step) and the
prompt are prefilled ONCE as an ordinary causal sequence; then, for every branching step s (>= 2
members), each member m of C_s and one control token (the "near miss": the most probable
non-member token of the clean-path sequence's next-token distribution at s) is continued greedily
for K = 8 tokens as the plain sequence prompt + c_0..c_{s-1} + m (all rows in one batch: each row
reads the shared prefix slots 0..P+s-1 and its own new slots, at RoPE positions P+s, P+s+1, ...).

Convergence of an alternative a (member j >= 1, or the near miss) with the top member's
continuation (both K greedy tokens g^a_1..g^a_K, g^0_1..g^0_K):
  meet depth  = the first t in 1..K with g^a_t == g^0_t (t = 1: the same next greedy token);
  merge depth = the first t from which g^a_t.. g^a_K == g^0_t..g^0_K (they stay together to the
                horizon); an alternative that does not meet / merge within K is censored at K + 1.
Branching triggers, over the run's steps (step s branches if |C_s| >= 2): the entropy of the
step's distribution (AUROC, prompt-cluster bootstrap) and the class of the token just written
(the clean-path token c_{s-1}, or the prompt's last token at s = 0): punctuation / number /
subword / function word / content word / whitespace; per prompt, the branching rate after a class
minus the rate after every other class.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.research import Design, Hypothesis, Output, TestResult
from tempo_jax import stats as S

STEPS, WIDTH, TAU, K = 16, 4, 0.1, 8
N_BOOT = 2000
CLASSES = ("punct", "number", "subword", "function", "content", "space")
FUNCTION_WORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its "
    "this that these those he she they we you i me him her them us my your his their our not no so "
    "than then there here what which who whom when where why how do does did has have had will would "
    "can could should may might must shall all any some each every one".split())

DESIGN = Design(
    id="rq4.2",
    questions=("4.2",),
    title="Convergence and divergence of TEMPO's parallel paths: branching, reconvergence, triggers",
    primary_metric="share of a branching step's alternatives (members j >= 1) whose greedy "
                   "8-token continuation meets the top member's continuation (same token at the "
                   "same offset), minus the same share for a near-miss control token",
    contrast="members vs the near-miss token (most probable non-member) of the same step, continued "
             "the same way; per prompt",
    hypotheses=(
        Hypothesis("M", "members meet the top member's continuation within 8 tokens more often than "
                        "near-miss tokens (share, members - near miss)", "d_meet", ">0", margin=0.10),
        Hypothesis("G", "members merge with the top member's continuation (stay together to the "
                        "horizon) more often than near-miss tokens", "d_merge", ">0", margin=0.10),
        Hypothesis("D", "members meet earlier than near-miss tokens (mean meet depth in tokens, "
                        "censored at 9; members - near miss)", "d_depth", "<0", margin=1.0),
        Hypothesis("C", "branching rate after a token of this class minus after the other classes "
                        "(per prompt; prompts without the class are left out)", "after_*", "=0",
                   family="triggers", margin=0.10),
    ),
    margin=0.10,
    margin_note="10 points for shares and rates; 1 token for meet depth",
    metrics=("d_meet", "d_merge", "d_depth", "after_*", "meet_mem", "meet_nm", "merge_mem",
             "merge_nm", "depth_mem", "depth_nm", "branch_factor", "branch_share"),
    families={"primary": "holm", "triggers": "holm", "entropy": "holm"},
    n_per_genre=10,
    quick_n=2,
    caveats=(
        "Continuations are plain causal sequences (prompt + clean path up to the step + the "
        "alternative), not the TEMPO lattice: they ask where each alternative would lead on its own.",
        "Meet and merge compare tokens at the same offset; a shift by one token (e.g. ',' vs ' and') "
        "that later reads the same counts as not converged, so both are lower bounds on convergence.",
        "The near miss is ranked under the clean-path sequence's distribution, not TEMPO's mixture "
        "distribution, and can be a token TEMPO would have kept at another step's context.",
        "Entropy is not a monotone trigger by construction: a second token above 0.1 needs a flatter "
        "distribution, but a very flat one has no token above 0.1 and TEMPO then keeps the top token "
        "alone. E was written expecting AUROC > 0.5; the --quick smoke run (6 prompts) already showed "
        "AUROC < 0.5, so the branching rate per entropy quintile (table by_entropy, figure) is added "
        "as a descriptive view; E's statement and test are unchanged.",
        "Token classes come from the token's text (leading space, letters, digits, a function-word "
        "list); code tokens are mostly punctuation or subwords. Class rates are not adjusted for "
        "entropy.",
        "16 steps and 10 test prompts per genre (30) to fit the shared 3-minute compute budget.",
    ),
    config={"steps": STEPS, "width": WIDTH, "tau": TAU, "horizon": K, "control": "near miss",
            "classes": CLASSES},
)


# --- pure helpers (tested on hand-made cases) ------------------------------------------------------
def token_class(text: str) -> str:
    """Class of a decoded token: ``space`` (only whitespace), ``number`` (any digit), ``punct`` (no
    letter or digit), ``subword`` (letters without a leading space: continues a word),
    ``function`` / ``content`` (a leading space or newline, then a word; function words from a
    fixed list)."""
    if not text.strip():
        return "space"
    if any(ch.isdigit() for ch in text):
        return "number"
    if not any(ch.isalpha() for ch in text):
        return "punct"
    if not text[0].isspace():
        return "subword"
    word = re.sub(r"[^a-z']", "", text.strip().lower())
    return "function" if word in FUNCTION_WORDS else "content"


def meet_depth(a, b) -> int:
    """First 1-based offset t with a[t-1] == b[t-1]; len + 1 if none (censored)."""
    n = min(len(a), len(b))
    return next((t + 1 for t in range(n) if a[t] == b[t]), n + 1)


def merge_depth(a, b) -> int:
    """Smallest 1-based t with a[t-1:] == b[t-1:] (equal to the horizon); len + 1 if the last
    tokens differ."""
    n = min(len(a), len(b))
    t = n
    while t > 0 and a[t - 1] == b[t - 1]:
        t -= 1
    return t + 1


def branch_after(classes, branched) -> dict[str, float]:
    """Per class c: branching rate of steps after a class-c token minus the rate after any other
    class (NaN when either side is empty). ``classes[s]``: class of the token before step s;
    ``branched[s]``: bool."""
    c = np.asarray(classes)
    y = np.asarray(branched, np.float64)
    out = {}
    for k in CLASSES:
        inside, other = y[c == k], y[c != k]
        out[k] = float(inside.mean() - other.mean()) if len(inside) and len(other) else float("nan")
    return out


# --- batched greedy continuations over a shared prefix ------------------------------------------
@functools.lru_cache(maxsize=None)
def _prefill_fn(k: int):
    from tempo_jax.model import causal_mask, forward, init_cache

    def f(params, cfg, prefix):
        """prefix[T] -> (logits [T,V], cache with T + k slots: the prefix at 0..T-1)."""
        t = prefix.shape[0]
        cache = init_cache(cfg, 1, t + k, params["embed"].dtype)
        ar = jnp.arange(t)
        key_pos = jnp.arange(t + k, dtype=jnp.float32)[None] if cfg.has_window else None
        logits, cache, _ = forward(params, cfg, prefix[None], ar[None].astype(jnp.float32), ar[None],
                                   causal_mask(1, t, t + k), cache, key_pos=key_pos)
        return logits[0], cache

    return jax.jit(f, static_argnums=1)


@functools.lru_cache(maxsize=None)
def _decode_fn(k: int):
    from tempo_jax.model import forward

    def f(params, cfg, cache, rows_start, rows_token):
        """cache [L,1,T+k,G,D] holding the prefix; rows_start[B]: the prefix slots row b reads
        (P + s), also its first RoPE position; rows_token[B]: its first token. -> greedy [B,k]."""
        b = rows_start.shape[0]
        cap = cache.k.shape[2]
        t = cap - k
        cache = jax.tree_util.tree_map(lambda x: jnp.repeat(x, b, axis=1), cache)
        slots = jnp.arange(cap)
        # a row's key positions: its prefix slots at their index, its own slots t.. at start, start + 1, ..
        key_pos = (jnp.where(slots[None] >= t, rows_start[:, None] + slots[None] - t, slots[None]).astype(jnp.float32)
                   if cfg.has_window else None)

        def body(carry, i):
            cache, cur = carry
            mask = (slots[None, :] < rows_start[:, None]) | ((slots[None, :] >= t) & (slots[None, :] <= t + i))
            lg, cache, _ = forward(params, cfg, cur[:, None], (rows_start + i)[:, None].astype(jnp.float32),
                                   jnp.full((b, 1), t + i, jnp.int32), mask[:, None, :], cache, key_pos=key_pos)
            nxt = jnp.argmax(lg[:, 0], -1).astype(jnp.int32)
            return (cache, nxt), nxt

        _, toks = jax.lax.scan(body, (cache, rows_token.astype(jnp.int32)), jnp.arange(k))
        return toks.T

    return jax.jit(f, static_argnums=1)


class Continuer:
    """Greedy k-token continuations of ``prefix_ids[:start] + [token]`` for many (start, token)
    rows from ONE prefill of ``prefix_ids`` (padded to a multiple of ``bucket``)."""

    def __init__(self, params, cfg, prefix_ids, k: int = K, bucket: int = 32):
        n = len(prefix_ids)
        t = -(-n // bucket) * bucket
        pre = np.zeros(t, np.int32)
        pre[:n] = prefix_ids
        self.params, self.cfg, self.k, self.n = params, cfg, k, n
        logits, self.cache = _prefill_fn(k)(params, cfg, jnp.asarray(pre))
        self.logits = np.asarray(logits[:n])  # [n,V]: next-token logits after each prefix slot

    def __call__(self, starts, first_tokens) -> np.ndarray:
        """-> tokens [B,k] (row b: the k greedy tokens after ``first_tokens[b]``)."""
        rows = len(starts)
        if rows == 0:
            return np.zeros((0, self.k), np.int32)
        if min(starts) < 1 or max(starts) > self.n:
            raise ValueError(f"row starts must lie in [1, {self.n}]")
        b = max(8, 1 << (rows - 1).bit_length())  # power-of-two row buckets: few compiles
        st = np.full(b, 1, np.int32)
        ft = np.zeros(b, np.int32)
        st[:rows], ft[:rows] = starts, first_tokens
        toks = _decode_fn(self.k)(self.params, self.cfg, self.cache, jnp.asarray(st), jnp.asarray(ft))
        return np.asarray(toks[:rows])


# --- the experiment -------------------------------------------------------------------------------
def _one(m, p, seed) -> dict:
    from tempo_jax.engine import GenerationConfig, generate

    ids = [int(t) for t in m.tokenizer(p.prompt).input_ids]
    g = GenerationConfig(max_steps=STEPS, max_width=WIDTH, threshold=TAU, prune=False, seed=seed)
    tr = generate(m.params, m.cfg, ids, g)
    sets = [[mm["token"] for mm in st["members"]] for st in tr.steps()]
    probs = [[mm["prob"] for mm in st["members"]] for st in tr.steps()]
    entropy = [st["entropy"] for st in tr.steps()]
    clean = [s[0] for s in sets]
    P = len(ids)
    prefix = ids + clean
    # logits of the plain clean-path sequence give each step's near miss
    rows_start, rows_tok, rows_meta = [], [], []
    branching = [s for s in range(len(sets)) if len(sets[s]) >= 2]
    cont = Continuer(m.params, m.cfg, prefix)
    lg = cont.logits
    for s in branching:
        row = lg[P - 1 + s].copy()
        row[sets[s]] = -np.inf
        near = int(np.argmax(row))
        for j, tok in enumerate(sets[s]):
            rows_start.append(P + s), rows_tok.append(tok), rows_meta.append((s, j))
        rows_start.append(P + s), rows_tok.append(near), rows_meta.append((s, -1))
    toks = cont(rows_start, rows_tok)
    conts = {meta: [int(x) for x in toks[i]] for i, meta in enumerate(rows_meta)}
    pairs = []
    for s in branching:
        ref = conts[(s, 0)]
        for j in list(range(1, len(sets[s]))) + [-1]:
            c = conts[(s, j)]
            pairs.append({"step": s, "member": j, "token": sets[s][j] if j >= 0 else rows_tok[rows_meta.index((s, -1))],
                          "meet": meet_depth(c, ref), "merge": merge_depth(c, ref),
                          "next_same": c[0] == ref[0]})
    dec = lambda t: m.tokenizer.decode([int(t)])
    before = [ids[-1]] + clean[:-1]
    classes = [token_class(dec(t)) for t in before]
    top_classes = [token_class(dec(t)) for t in clean]
    return {"sets": sets, "probs": probs, "entropy": entropy, "pairs": pairs, "classes": classes,
            "top_classes": top_classes, "conts": conts, "prompt": p.prompt,
            "texts": [[dec(t) for t in s] for s in sets]}


def _prompt_row(p, r) -> dict:
    sets = r["sets"]
    n = np.array([len(s) for s in sets])
    row = {"prompt_id": p.id, "genre": p.genre, "branch_factor": float(n.mean()),
           "branch_share": float((n >= 2).mean())}
    mem = [q for q in r["pairs"] if q["member"] >= 1]
    nm = [q for q in r["pairs"] if q["member"] == -1]
    if mem and nm:
        for key, name in (("meet", "meet"), ("merge", "merge")):
            a = np.mean([q[key] <= K for q in mem])
            b = np.mean([q[key] <= K for q in nm])
            row[f"{name}_mem"], row[f"{name}_nm"], row[f"d_{name}"] = float(a), float(b), float(a - b)
        a, b = np.mean([q["meet"] for q in mem]), np.mean([q["meet"] for q in nm])
        row["depth_mem"], row["depth_nm"], row["d_depth"] = float(a), float(b), float(a - b)
    for c, v in branch_after(r["classes"], n >= 2).items():
        row[f"after_{c}"] = v
    return row


def run(ctx) -> Output:
    m = ctx.model
    rows, results, steps_rows, pair_rows = [], [], [], []
    for p, r in ctx.map(lambda p: _one(m, p, ctx.seed)):
        rows.append(_prompt_row(p, r))
        results.append((p, r))
        for s, toks in enumerate(r["sets"]):
            steps_rows.append({"prompt_id": p.id, "genre": p.genre, "step": s, "set_n": len(toks),
                               "branched": int(len(toks) >= 2), "entropy": r["entropy"][s],
                               "class_before": r["classes"][s], "class_top": r["top_classes"][s]})
        for q in r["pairs"]:
            pair_rows.append({"prompt_id": p.id, "genre": p.genre, "step": q["step"],
                              "kind": "member" if q["member"] >= 1 else "near_miss",
                              "member": q["member"], "meet": q["meet"], "merge": q["merge"],
                              "next_same": int(q["next_same"])})
    tests = [_entropy_auroc(steps_rows, ctx.seed)]
    tables = {"steps": steps_rows, "pairs": pair_rows, "by_class": _class_table(steps_rows),
              "by_step": _step_table(steps_rows), "depth": _depth_table(pair_rows),
              "by_entropy": _entropy_table(steps_rows)}
    _figures(ctx, results, steps_rows, pair_rows)
    notes = [_describe(rows, pair_rows, tests[0])]
    return Output(rows=rows, tests=tests, tables=tables, notes=notes)


def _entropy_auroc(steps_rows, seed) -> TestResult:
    y = np.array([r["branched"] for r in steps_rows], bool)
    x = np.array([r["entropy"] for r in steps_rows], np.float64)
    g = np.array([r["prompt_id"] for r in steps_rows])
    r = S.auroc_ci(y, x, g, n_boot=N_BOOT, seed=seed)
    vals = S._cluster_resamples(lambda i: S.auroc(y[i], x[i]) - 0.5, g, N_BOOT, seed)
    p = max(min(1.0, 2 * min((vals <= 0).mean(), (vals >= 0).mean())), 1 / N_BOOT) if len(vals) else np.nan
    return TestResult("E", "auroc_entropy", "entropy", ">0", r["n_groups"], r["value"] - 0.5,
                      r["lo"] - 0.5, r["hi"] - 0.5, float(p), 1.0, margin=0.05,
                      note=f"AUROC - 0.5 of the step entropy for branching (|C_s| >= 2) over "
                           f"{r['n']} steps: AUROC {r['value']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}], "
                           "percentile cluster-bootstrap CI over prompts, bootstrap p")


def _class_table(steps_rows) -> list[dict]:
    out = []
    for key in ("class_before", "class_top"):
        for c in CLASSES:
            sel = [r for r in steps_rows if r[key] == c]
            if sel:
                out.append({"class_of": key, "class": c, "steps": len(sel),
                            "prompts": len({r["prompt_id"] for r in sel}),
                            "branch_rate": float(np.mean([r["branched"] for r in sel])),
                            "mean_set_n": float(np.mean([r["set_n"] for r in sel])),
                            "mean_entropy": float(np.mean([r["entropy"] for r in sel]))})
    return out


def _step_table(steps_rows) -> list[dict]:
    out = []
    for s in sorted({r["step"] for r in steps_rows}):
        sel = [r for r in steps_rows if r["step"] == s]
        out.append({"step": s, "prompts": len(sel), "mean_set_n": float(np.mean([r["set_n"] for r in sel])),
                    "branch_rate": float(np.mean([r["branched"] for r in sel]))})
    return out


def _entropy_table(steps_rows, bins: int = 5) -> list[dict]:
    """Branching rate per entropy quantile bin (pooled steps)."""
    e = np.array([r["entropy"] for r in steps_rows], np.float64)
    y = np.array([r["branched"] for r in steps_rows], np.float64)
    edges = np.quantile(e, np.linspace(0, 1, bins + 1))
    idx = np.clip(np.searchsorted(edges, e, side="right") - 1, 0, bins - 1)
    return [{"bin": b, "lo": float(edges[b]), "hi": float(edges[b + 1]), "steps": int((idx == b).sum()),
             "branch_rate": float(y[idx == b].mean()) if (idx == b).any() else float("nan")}
            for b in range(bins)]


def _depth_table(pair_rows) -> list[dict]:
    out = []
    for kind in ("member", "near_miss"):
        sel = [r for r in pair_rows if r["kind"] == kind]
        for t in range(1, K + 2):
            out.append({"kind": kind, "depth": t if t <= K else f">{K}",
                        "meet_share": float(np.mean([r["meet"] == t for r in sel])) if sel else float("nan"),
                        "merge_share": float(np.mean([r["merge"] == t for r in sel])) if sel else float("nan"),
                        "n": len(sel)})
    return out


def _describe(rows, pair_rows, auroc) -> str:
    bf = np.array([r["branch_factor"] for r in rows])
    bs = np.array([r["branch_share"] for r in rows])
    mem = [r for r in pair_rows if r["kind"] == "member"]
    met = [r["meet"] for r in mem if r["meet"] <= K]
    return (f"Descriptive: mean set size (branching factor) {bf.mean():.2f} per step (prompt range "
            f"{bf.min():.2f}-{bf.max():.2f}); {100 * bs.mean():.0f}% of steps branch; "
            f"{len(mem)} member alternatives continued; of those that meet the top member's "
            f"continuation within {K} tokens the median meet depth is "
            f"{np.median(met) if met else float('nan'):.0f} token(s); {100 * np.mean([r['next_same'] for r in mem]) if mem else float('nan'):.0f}% "
            f"have the same next greedy token. {auroc.note}.")


# --- figures ---------------------------------------------------------------------------------------
def _figures(ctx, results, steps_rows, pair_rows):
    from experiments.plotting import pyplot

    plt = pyplot()
    # (1) branching by step and by class; (2) meet / merge depth distributions
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    et = _entropy_table(steps_rows)
    axes[3].bar(range(len(et)), [t["branch_rate"] for t in et], color="tab:purple")
    axes[3].set_xticks(range(len(et)), [f"{t['lo']:.1f}-{t['hi']:.1f}" for t in et], fontsize=8)
    axes[3].set_xlabel("entropy of the step distribution (nats), quintiles")
    axes[3].set_ylabel("share of steps that branch")
    axes[3].set_title("branching vs entropy", fontsize=10)
    tab = _step_table(steps_rows)
    axes[0].bar([t["step"] for t in tab], [t["mean_set_n"] for t in tab], color="tab:blue")
    axes[0].set_xlabel("logical step")
    axes[0].set_ylabel("mean set size over prompts")
    axes[0].set_title("branching factor per step", fontsize=10)
    ct = [t for t in _class_table(steps_rows) if t["class_of"] == "class_before"]
    axes[1].bar([f"{t['class']}\n(n={t['steps']})" for t in ct], [t["branch_rate"] for t in ct], color="tab:green")
    axes[1].set_ylabel("share of steps that branch")
    axes[1].set_title("branching after a token of each class", fontsize=10)
    axes[1].tick_params(axis="x", labelsize=8)
    for kind, col in (("member", "tab:red"), ("near_miss", "tab:gray")):
        sel = [r for r in pair_rows if r["kind"] == kind]
        if not sel:
            continue
        for key, style in (("meet", "-o"), ("merge", "--s")):
            d = np.array([r[key] for r in sel])
            cum = [(d <= t).mean() for t in range(1, K + 1)]
            axes[2].plot(range(1, K + 1), cum, style, color=col, ms=4,
                         label=f"{kind.replace('_', ' ')}: {key} (n={len(sel)})")
    axes[2].set_xlabel(f"tokens after the alternative (horizon {K})")
    axes[2].set_ylabel("cumulative share converged")
    axes[2].set_title("reconvergence with the top member's continuation", fontsize=10)
    axes[2].legend(fontsize=8)
    axes[2].set_ylim(0, 1)
    fig.suptitle(f"RQ 4.2: TEMPO token trees over {len({r['prompt_id'] for r in steps_rows})} prompts "
                 f"(tau {TAU}, width {WIDTH}, {STEPS} steps)")
    fig.tight_layout()
    ctx.figure(fig, "branching")
    # (3) trees for one prompt per genre
    picks, seen = [], set()
    for p, r in results:
        if p.genre not in seen:
            seen.add(p.genre)
            picks.append((p, r))
    fig, axes = plt.subplots(len(picks), 1, figsize=(18, 3.4 * len(picks)), squeeze=False)
    for ax, (p, r) in zip(axes[:, 0], picks):
        draw_tree(ax, p, r)
    fig.tight_layout()
    ctx.figure(fig, "trees")


def draw_tree(ax, p, r, steps: int = 12):
    """Nodes = members (text and probability; area ~ probability), columns = steps, rows = rank;
    grey edges: every member of step s-1 feeds step s (one shared TEMPO context); red edges: a
    member's own greedy next token (its plain continuation) when that token is a member of step s."""
    sets, probs, texts = r["sets"][:steps], r["probs"][:steps], r["texts"][:steps]
    for s in range(1, len(sets)):
        for i in range(len(sets[s - 1])):
            for j in range(len(sets[s])):
                ax.plot([s - 1, s], [-i, -j], color="0.85", lw=0.6, zorder=1)
            cont = r["conts"].get((s - 1, i))
            if cont is not None and cont[0] in sets[s]:
                j = sets[s].index(cont[0])
                ax.plot([s - 1, s], [-i, -j], color="tab:red", lw=1.6, zorder=2)
    for s, (toks, pr, tx) in enumerate(zip(sets, probs, texts)):
        for j, (q, w) in enumerate(zip(pr, tx)):
            ax.scatter([s], [-j], s=60 + 500 * q, color="tab:blue" if j == 0 else "tab:orange",
                       alpha=0.35, zorder=3)
            label = repr(w)[1:-1][:12]
            ax.text(s, -j + 0.28, f"{label}", ha="center", va="bottom", fontsize=8, zorder=4)
            ax.text(s, -j - 0.3, f"{q:.2f}", ha="center", va="top", fontsize=7, color="0.3", zorder=4)
    ax.set_xlim(-0.6, len(sets) - 0.4)
    ax.set_ylim(-WIDTH + 0.3, 0.8)
    ax.set_yticks([-j for j in range(WIDTH)], [f"rank {j}" for j in range(WIDTH)], fontsize=8)
    ax.set_xticks(range(len(sets)))
    ax.set_xlabel("logical step", fontsize=8)
    prompt = p.prompt if len(p.prompt) <= 90 else "..." + p.prompt[-87:]
    ax.set_title(f"{p.genre} {p.id}: {prompt!r}   (blue: clean path; grey: every member feeds the "
                 "next step; red: a member's own greedy next token, drawn from branching steps)", fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def answer(tests, design) -> str:
    by = {t.column: t for t in tests}
    ok = lambda c: c in by and np.isfinite(by[c].estimate)
    pts = lambda t: f"{100 * t.estimate:+.0f} points [{100 * t.lo:+.0f}, {100 * t.hi:+.0f}] ({t.verdict})"
    parts = []
    if ok("d_meet"):
        parts.append(f"share of a branching step's members whose greedy continuation meets the top "
                     f"member's within {K} tokens, minus the same share for near-miss tokens: "
                     f"{pts(by['d_meet'])}")
    if ok("d_merge"):
        parts.append(f"merging (staying together to the horizon), members minus near misses "
                     f"{pts(by['d_merge'])}")
    if ok("d_depth"):
        t = by["d_depth"]
        parts.append(f"meet depth members minus near miss {t.estimate:+.2f} tokens [{t.lo:+.2f}, "
                     f"{t.hi:+.2f}] ({t.verdict})")
    cls = [f"{c[6:]} {pts(by[c])}" for c in sorted(by) if c.startswith("after_") and ok(c)]
    if cls:
        parts.append("branching rate after a token of a class minus after the others: " + ", ".join(cls))
    if ok("auroc_entropy"):
        t = by["auroc_entropy"]
        parts.append(f"step entropy separates branching steps with AUROC {0.5 + t.estimate:.2f} "
                     f"[{0.5 + t.lo:.2f}, {0.5 + t.hi:.2f}] ({t.verdict} vs 0.5)")
    return "; ".join(parts) + "."
