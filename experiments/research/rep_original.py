"""Replication instrument (issue 15): the original project's metrics, computed the way it computed
them, on runs of this engine in its upstream-compatible mode and in correct mechanics.

The original (JoeLuker/tempo, 6d27a20) captured ONE query per step (the fed token, i.e. the last
member of the previous set) and read its attention ``[L,H,K]`` over cache slots, but indexed those
slots with DISPLAYED-sequence indices (prompt, then every member of every set). Displayed index
``d`` and cache slot ``d`` agree only up to the first set with more than one member; after that the
"parallel" indices point at other tokens. Its "non-parallel" group holds every other key, slot 0
(the attention sink) and the prompt included.

Step numbering here is the ENGINE's: engine step ``s`` selects set ``s`` and (upstream) feeds its
last member at slot ``P + 1 + s`` with keys ``0..P+1+s``; the original called this step ``s + 1``
("step 1" of the entropy and head tables is engine step 0). ``P`` is the prompt length (the
prompt's last token is fed again at slot ``P`` before step 0).

The original's isolated mode (reconstructed from its ``AttentionMaskBuilder``): a mask over
displayed indices that hides, for row ``i`` in a parallel set ``[start, end)``, the other members
``j != i`` of the set; with the KV cache the fed token's row (its last displayed index) was applied
to cache slots, so it hides whatever the cache holds at those slot indices (the query's own slot
included when it falls inside the range). :func:`original_loop` runs that; without isolation it is
the same feed sequence as ``compat="upstream"`` (tested).

Metrics on plain arrays (hand-checked in tests/experiments/test_rep_original.py):
  :func:`original_ratio`      per-key attention on displayed parallel indices / on the rest;
  :func:`slot_ratio`          the same on slot maps (correct mechanics), sink reported separately;
  :func:`entropy_nats`, :func:`band_means`, :func:`locality` (recent vs distant keys per head).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.config import ModelConfig
from tempo_jax.engine.core import prefill
from tempo_jax.metrics import entropy_nats
from tempo_jax.model import KVCache, TapsSpec, forward
from tempo_jax.slots import slot_groups

ORIGINAL_PROMPT = "The cat sat on the"
ORIGINAL_TAU = 0.1
ORIGINAL_STEPS = 10
WIDTH = 10  # floor(1 / tau): the width cap never binds at tau 0.1
BUCKET = 64  # one prompt bucket (one compiled program) for every corpus prompt up to 64 tokens
RECENT = 3  # "recent" keys: the 3 most recent positions before (and incl.) the query's
# the original's layer bands (0-5, 6-15, 16-27 of 28 layers) as fractions of depth
BAND_EDGES = (6 / 28, 16 / 28)


# --- runs -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    """One generation with its per-step attention.

    sets: members per step (descending probability); attn: per step ``[L,H,Q,Kv]`` attention of
    the step's Q queries over the first Kv slots (Q = 1 upstream); for correct-mode runs the slot
    maps after the run, ``slot_step[K]``, ``slot_pos[K]`` and ``alive[K]``; ``prompt_len`` P."""

    sets: list[list[int]]
    attn: list[np.ndarray]
    prompt_len: int
    slot_step: np.ndarray | None = None
    slot_pos: np.ndarray | None = None
    alive: np.ndarray | None = None

    @property
    def sizes(self) -> list[int]:
        return [len(s) for s in self.sets]


def engine_run(m, ids, *, compat: str, siblings: str = "isolated", tau: float = ORIGINAL_TAU,
               steps: int = ORIGINAL_STEPS) -> Run:
    """A run of the engine (``compat`` "upstream" or "none") with full attention capture."""
    from tempo_jax.engine import GenerationConfig, generate

    g = GenerationConfig(threshold=tau, max_steps=steps, max_width=WIDTH, siblings=siblings,
                         compat=compat, prune=False, prompt_bucket=BUCKET)
    attn = []

    def on_step(s, st, cap):
        n = int(np.asarray(st.fed_n)[s])
        kv = int(np.asarray(st.n_written))
        attn.append(np.asarray(cap.attn, np.float64)[:, :, :n, :kv])

    tr = generate(m.params, m.cfg, ids, g, capture="full", on_step=on_step)
    a = tr.arrays
    sets = [[int(t) for t, v in zip(a["tokens"][s], a["valid"][s]) if v] for s in range(len(a["set_n"]))]
    extra = {}
    if compat == "none":
        extra = dict(slot_step=np.asarray(a["slot_step"]), slot_pos=np.asarray(a["slot_pos"]),
                     alive=np.asarray(a["alive"], bool))
    return Run(sets=sets, attn=attn[:len(sets)], prompt_len=len(ids), **extra)


@functools.partial(jax.jit, static_argnames=("mcfg",))
def _feed_one(params, mcfg: ModelConfig, cache: KVCache, token, slot, mask):
    """One token at position = slot (the original: position = cache length) -> (probs[V], cache,
    attention [L,H,K])."""
    pos = slot.astype(jnp.float32)
    key_pos = jnp.arange(cache.capacity, dtype=jnp.float32)[None] if mcfg.has_window else None  # slot = position
    logits, cache, taps = forward(params, mcfg, token[None, None], pos[None, None], slot[None, None],
                                  mask[None, None], cache, TapsSpec(attn=True), key_pos=key_pos)
    return jax.nn.softmax(logits[0, 0]), cache, taps["attn"][:, 0, :, 0, :]


def original_isolation_hidden(prompt_len: int, sizes, s: int) -> list[int]:
    """Cache slots the original's isolated mask hides from engine step ``s``'s query: the displayed
    indices of set ``s``'s other members (the query is its last member), read as slot indices and
    kept if the query can see them (slot <= P + 1 + s)."""
    n = sizes[s]
    if n < 2:
        return []
    end = prompt_len + int(np.sum(sizes[:s + 1]))
    start, row = end - n, end - 1
    q = prompt_len + 1 + s
    return [j for j in range(start, row) if j <= q]


def original_loop(params, mcfg: ModelConfig, ids, *, isolate: bool, tau: float = ORIGINAL_TAU,
                  steps: int = ORIGINAL_STEPS, eos_ids=()) -> Run:
    """The original feed sequence (as ``compat="upstream"``), optionally with its isolated mask
    (:func:`original_isolation_hidden`). Selection: every token with p >= tau, descending, else
    the argmax; stop when any member is EOS."""
    P = len(ids)
    prompt = np.pad(np.asarray(ids, np.int32), (0, -(-P // BUCKET) * BUCKET - P))
    K = len(prompt) + 2 + steps
    _, cache = prefill(params, mcfg, jnp.asarray(prompt), jnp.int32(P), K)
    k = np.arange(K)
    probs, cache, _ = _feed_one(params, mcfg, cache, jnp.int32(ids[-1]), jnp.int32(P),
                                jnp.asarray(k <= P))
    sets, attn = [], []
    for s in range(steps):
        p = np.asarray(probs, np.float64)
        order = np.argsort(-p, kind="stable")
        members = [int(t) for t in order if p[t] >= tau] or [int(order[0])]
        sets.append(members)
        q = P + 1 + s
        mask = k <= q
        if isolate:
            mask[original_isolation_hidden(P, [len(x) for x in sets], s)] = False
        probs, cache, a = _feed_one(params, mcfg, cache, jnp.int32(members[-1]), jnp.int32(q),
                                    jnp.asarray(mask))
        attn.append(np.asarray(a, np.float64)[:, :, None, :q + 1])
        if any(t in eos_ids for t in members):
            break
    return Run(sets=sets, attn=attn, prompt_len=P)


# --- the original metrics -------------------------------------------------------------------------
def displayed_parallel(prompt_len: int, sizes) -> set[int]:
    """Displayed-sequence indices of every member of every set with more than one member."""
    out, d = set(), prompt_len
    for n in sizes:
        if n > 1:
            out.update(range(d, d + n))
        d += n
    return out


def original_ratio(a, prompt_len: int, sizes_so_far) -> tuple[float, float] | None:
    """The original 1.1 metric for one step: ``a[Kv]`` = the single query's attention over slots
    ``0..Kv-1`` (already averaged over layers and heads); the "parallel" keys are the displayed
    indices of the sets so far (:func:`displayed_parallel`) that are < Kv, "non-parallel" every
    other key (sink and prompt included). Returns (mean per parallel key, mean per non-parallel
    key), or None when either group is empty."""
    a = np.asarray(a, np.float64)
    par = np.zeros(len(a), bool)
    idx = [d for d in displayed_parallel(prompt_len, sizes_so_far) if d < len(a)]
    par[idx] = True
    if not par.any() or par.all():
        return None
    return float(a[par].mean()), float(a[~par].mean())


def original_run_ratio(run: Run) -> tuple[float, list[float]]:
    """Mean over steps of the original per-step ratio (parallel / non-parallel), as its findings
    averaged the step table; per-step ratios. The query row is averaged over layers and heads."""
    ratios = []
    for s, at in enumerate(run.attn):
        r = original_ratio(at[:, :, 0].mean((0, 1)), run.prompt_len, run.sizes[:s + 1])
        if r is not None:
            ratios.append(r[0] / r[1])
    return (float(np.mean(ratios)) if ratios else float("nan")), ratios


def slot_ratio(a, slot_step, alive, set_n, s, sink_in_nonparallel: bool = False):
    """The same metric on slot maps (correct mechanics): ``a[Kv]`` = step ``s``'s attention averaged
    over layers, heads and its queries; parallel = context slots of earlier multi-member sets,
    non-parallel = prompt and single-member-set slots, sink (slot 0) separate unless
    ``sink_in_nonparallel`` (the original's grouping). Returns (par, nonpar, sink) means per key,
    or None when a group is empty."""
    a = np.asarray(a, np.float64)
    kv = len(a)
    g = slot_groups(np.asarray(slot_step)[:kv], np.asarray(alive)[:kv], np.asarray(set_n), s)
    par, non, sink = (np.asarray(x) for x in (g.parallel, g.nonparallel, g.sink))
    if sink_in_nonparallel:
        non = non | sink
    if not par.any() or not non.any():
        return None
    return float(a[par].mean()), float(a[non].mean()), float(a[sink].sum())


def correct_run_ratio(run: Run, sink_in_nonparallel: bool = False) -> tuple[float, list[float]]:
    """Mean over steps of :func:`slot_ratio`'s parallel / non-parallel ratio for a correct-mode run."""
    ratios = []
    alive = np.ones_like(run.alive) if run.alive is not None else None
    for s, at in enumerate(run.attn):
        r = slot_ratio(at.mean((0, 1, 2)), run.slot_step, alive, run.sizes, s, sink_in_nonparallel)
        if r is not None:
            ratios.append(r[0] / r[1])
    return (float(np.mean(ratios)) if ratios else float("nan")), ratios


def age_table(run: Run) -> dict:
    """Correct mechanics, recency kept apart: ``{(group, d): (per-key values, per-position totals)}``
    over every step of a correct-mode run, where ``group`` is "par" (context slots of multi-member
    sets) or "non" (prompt and single-member-set slots; the sink, slot 0, left out) and ``d`` the
    key's distance in logical positions from the step's queries (attention averaged over layers,
    heads and the step's queries, as :func:`slot_ratio`)."""
    out: dict = {}
    sizes = np.asarray(run.sizes)
    for s, at in enumerate(run.attn):
        a = at.mean((0, 1, 2))
        kv = len(a)
        g = slot_groups(run.slot_step[:kv], np.ones(kv, bool), sizes, s)
        pos, own = run.slot_pos[:kv], np.asarray(g.own)
        ctx = np.asarray(g.context)
        if not ctx.any():
            continue
        qpos = query_pos(pos, own, ctx)
        for group, mask in (("par", np.asarray(g.parallel)), ("non", np.asarray(g.nonparallel))):
            for p in np.unique(pos[mask]):
                sel = mask & (pos == p)
                keys, totals = out.setdefault((group, int(round(qpos - p))), ([], []))
                keys.extend(a[sel].tolist())
                totals.append(float(a[sel].sum()))
    return out


def matched_ratio(run: Run) -> tuple[float, float]:
    """Recency-matched parallel / non-parallel attention of a correct-mode run (the confound of
    :func:`slot_ratio`: parallel slots are recent, the prompt is far): for every distance ``d`` that
    both groups reach (:func:`age_table`, over the run's steps), the log of (mean per parallel key /
    mean per non-parallel key), averaged over those distances with equal weight; and the same per
    POSITION (a parallel set's summed attention vs a single token's). NaN when no distance is shared."""
    t = age_table(run)
    ds = sorted(d for g, d in t if g == "par" and ("non", d) in t)
    if not ds:
        return float("nan"), float("nan")
    lr = lambda i: float(np.mean([np.log(np.mean(t["par", d][i]) / np.mean(t["non", d][i])) for d in ds]))  # noqa: E731
    return lr(0), lr(1)


def bands(n_layers: int) -> np.ndarray:
    """Band per layer, 0 early / 1 middle / 2 late: the original's 0-5 / 6-15 / 16-27 of 28 layers
    mapped by relative depth ``(l + 0.5) / L``."""
    f = (np.arange(n_layers) + 0.5) / n_layers
    return np.digitize(f, BAND_EDGES)


def band_means(per_layer) -> np.ndarray:
    """``per_layer[L]`` -> means of the early, middle and late bands ``[3]``."""
    x = np.asarray(per_layer, np.float64)
    b = bands(len(x))
    return np.asarray([x[b == i].mean() for i in range(3)])


def funnel(per_layer) -> bool:
    """The original pattern: the middle band has the highest mean entropy of the three."""
    e, m, l = band_means(per_layer)
    return bool(m > e and m > l)


def locality(a, recent, distant) -> np.ndarray:
    """Per head: mean attention per recent key / (mean per recent key + mean per distant key).
    ``a[...,Kv]``; ``recent``/``distant`` boolean key masks ``[Kv]``. 1 = all local, 0 = all distant."""
    a = np.asarray(a, np.float64)
    r = a[..., recent].mean(-1)
    d = a[..., distant].mean(-1)
    return r / (r + d)


def tertile_classes(x) -> np.ndarray:
    """0 long-range / 1 balanced / 2 local: tertiles of a locality index over heads (ranks, so
    ties are broken by order; each class gets a third of the heads)."""
    x = np.asarray(x, np.float64).ravel()
    ranks = np.argsort(np.argsort(x, kind="stable"), kind="stable")
    return np.minimum(3 * ranks // len(x), 2)


def cohen_kappa(a, b, labels=(0, 1, 2)) -> float:
    """Cohen's kappa of two labelings over the classes ``labels``."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    po = float(np.mean(a == b))
    pe = float(sum(np.mean(a == c) * np.mean(b == c) for c in labels))
    return (po - pe) / (1 - pe) if pe < 1 else float("nan")


def original_step1(run: Run):
    """The original layer / head reading at its "step 1" (engine step 0): the single query's
    attention ``[L,H,Kv]`` -> (layer entropy [L] (mean over heads), head entropy [H] (mean over
    layers), head locality [H] (recent = the last RECENT keys incl. the query, distant = the rest,
    sink included, as the original did))."""
    a = run.attn[0][:, :, 0]  # [L,H,Kv]
    ent = entropy_nats(a)
    kv = a.shape[-1]
    recent = np.arange(kv) >= kv - RECENT
    loc = locality(a, recent, ~recent).mean(0)
    return ent.mean(1), ent.mean(0), loc


def query_pos(slot_pos, own, context) -> float:
    """Logical position of a step's queries: that of its own slots, else one past the context's."""
    return float(np.max(slot_pos[own])) if own.any() else float(np.max(slot_pos[context]) + 1)


def correct_context_locality(run: Run, s: int):
    """Correct mechanics, step ``s``: per head ``[L,H]`` locality over CONTEXT slots (sink and the
    step's own slots excluded): recent = context slots whose logical position is within RECENT of
    the query position, distant = the other context slots; None when either set is empty."""
    at = run.attn[s]  # [L,H,Q,Kv]
    kv = at.shape[-1]
    g = slot_groups(run.slot_step[:kv], np.ones(kv, bool), np.asarray(run.sizes), s)
    ctx = np.asarray(g.context)
    own = np.asarray(g.own)
    qpos = query_pos(run.slot_pos[:kv], own, ctx)
    recent = ctx & (run.slot_pos[:kv] >= qpos - RECENT)
    distant = ctx & ~recent
    if not recent.any() or not distant.any():
        return None
    return locality(at.mean(2), recent, distant)


def correct_layer_entropy(run: Run, s: int, drop_sink: bool = False) -> np.ndarray:
    """Step ``s``'s attention entropy ``[L,H]`` (nats), mean over its queries; with ``drop_sink``
    the rows are renormalised over the non-sink slots first."""
    at = run.attn[s]
    if drop_sink:
        at = at[..., 1:] / at[..., 1:].sum(-1, keepdims=True)
    return entropy_nats(at).mean(-1)


def inside_margin(verdict: str) -> bool:
    """Whether a stored "=0" test's verdict puts the effect inside its margin: "no effect within m"
    (TOST) or "differs (+/-), within m" (a difference from 0, its CI inside +-m)."""
    return verdict.startswith("no effect") or ", within " in verdict


def verdict_line(original: bool | None, correct: bool | None, sound: str) -> str:
    """The replication verdict from the three columns. ``original``/``correct``: does the claim
    appear under the original procedure / with the same metric on correct mechanics (None: not
    applicable); ``sound``: "holds" / "does not hold" / "cannot tell" / "descriptive" (the sound
    design; "descriptive": its contrast was never a registered test, so it decides nothing)."""
    parts = []
    if original is not None:
        parts.append("reproduces under the original procedure" if original else
                     "does not reproduce under the original procedure")
    if sound == "holds":
        parts.append("holds in the sound design")
    elif sound == "does not hold":
        parts.append("does not hold in the sound design" +
                     (": artefact of the original procedure" if original else ""))
    elif sound == "descriptive":
        parts.append("sound design: descriptive only (its contrast is not a registered test)")
    else:
        parts.append("sound design: cannot tell at this n")
    return "; ".join(parts)


# --- shared per-prompt measurement (one set of generations for every rep* experiment) -------------
MEASURE_VERSION = 2  # 2: the recency-matched ratios (``*_matched_lr``)
SHARED_CACHE = "rep-shared"


def measure_prompt(m, ids, light: bool = False) -> dict:
    """Four runs of one prompt at the original settings (tau 0.1, 10 steps, width cap 10): the
    upstream-compatible engine run, the original loop with its isolated mask, and correct-mode
    runs with isolated and visible siblings (``light``: the correct isolated run only, for the
    measures the confirmatory replications read). Returns small per-prompt arrays:
    ratios (original metric: ``up``, ``up_iso``; slot metric: ``iso``, ``vis``, and ``*_sinkin``
    with the sink counted as non-parallel; ``iso_matched_lr``, ``vis_matched_lr`` and
    ``*_matched_pos_lr``: :func:`matched_ratio`'s log ratios per key and per position), the
    original step-1 readings of the upstream run
    (``up_layer_ent[L]``, ``up_head_ent[H]``, ``up_head_loc[H]``), and for the correct isolated
    run: ``layer_ent[L]`` / ``layer_ent_nosink[L]`` (mean over steps, heads, queries),
    ``head_ent[L,H]``, ``loc[L,H]`` (mean over steps where defined), ``step0_layer_ent[L]``,
    ``step0_loc[L,H]`` (step 0 only), ``step_ent[S]`` and ``sizes[S]``."""
    iso = engine_run(m, ids, compat="none", siblings="isolated")
    out = {"iso": correct_run_ratio(iso)[0], "iso_sinkin": correct_run_ratio(iso, True)[0], "sizes": iso.sizes}
    out["iso_matched_lr"], out["iso_matched_pos_lr"] = matched_ratio(iso)
    if not light:
        eos = tuple(m.cfg.eos_token_ids or ())
        up = engine_run(m, ids, compat="upstream")
        up_iso = original_loop(m.params, m.cfg, ids, isolate=True, eos_ids=eos)
        vis = engine_run(m, ids, compat="none", siblings="visible")
        out |= {"up": original_run_ratio(up)[0], "up_iso": original_run_ratio(up_iso)[0],
                "vis": correct_run_ratio(vis)[0], "vis_sinkin": correct_run_ratio(vis, True)[0],
                "up_sizes": up.sizes, "up_iso_sizes": up_iso.sizes, "vis_sizes": vis.sizes}
        out["vis_matched_lr"], out["vis_matched_pos_lr"] = matched_ratio(vis)
        out["up_layer_ent"], out["up_head_ent"], out["up_head_loc"] = original_step1(up)
    steps = range(len(iso.sets))
    ent = np.stack([correct_layer_entropy(iso, s) for s in steps])  # [S,L,H]
    out["head_ent"] = ent.mean(0)
    out["layer_ent"] = ent.mean((0, 2))
    out["layer_ent_nosink"] = np.stack([correct_layer_entropy(iso, s, True) for s in steps]).mean((0, 2))
    out["step0_layer_ent"] = ent[0].mean(1)
    out["step_ent"] = ent.mean((1, 2))
    locs = [correct_context_locality(iso, s) for s in steps]
    defined = [x for x in locs if x is not None]
    L, H = ent.shape[1:]
    out["loc"] = np.mean(defined, 0) if defined else np.full((L, H), np.nan)
    out["step0_loc"] = locs[0] if locs[0] is not None else np.full((L, H), np.nan)
    # the original's step-1 head reading, same rule, on the correct run's step 0 (sink included)
    a0 = iso.attn[0].mean(2)  # [L,H,Kv]
    kv = a0.shape[-1]
    recent = np.arange(kv) >= kv - RECENT
    out["corr_head_loc"] = locality(a0, recent, ~recent).mean(0)
    out["corr_head_ent"] = entropy_nats(a0).mean(0)
    return out


def shared_measure(ctx, prompt_text: str, key_id: str, light: bool = False) -> dict:
    """:func:`measure_prompt` cached on disk across the rep* experiments (keyed by model source,
    settings version, ``light`` and prompt text), so the experiments share one set of generations."""
    import hashlib
    import os
    import pickle

    from experiments.research import PROJECT

    m = ctx.model
    tag = "|light" if light else ""  # the full measure's keys are unchanged
    h = hashlib.sha256(f"{m.source}|{MEASURE_VERSION}|{ORIGINAL_TAU}|{ORIGINAL_STEPS}|{WIDTH}{tag}|"
                       f"{prompt_text}".encode()).hexdigest()[:24]
    path = PROJECT.root / "runs" / "research" / "cache" / SHARED_CACHE / f"{h}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    r = measure_prompt(m, m.tokenizer(prompt_text).input_ids, light)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(pickle.dumps(r))
    tmp.replace(path)
    return r


def corpus_measures(ctx, light: bool = False) -> list[tuple]:
    """``(prompt, measure)`` for every prompt of the run, with progress (shared cache); ``light``:
    the correct isolated run's measures only (:func:`measure_prompt`)."""
    return [(p, shared_measure(ctx, p.prompt, p.id, light)) for p in ctx.progress(ctx.prompts)]


def original_measure(ctx) -> dict:
    """The measure of the original prompt "The cat sat on the" (columns 1 and 2)."""
    return shared_measure(ctx, ORIGINAL_PROMPT, "original")


def reduction(ratio: float) -> str:
    """A parallel / non-parallel ratio as the original worded it (percent less attention)."""
    return f"{100 * (1 - ratio):.0f}% less" if ratio <= 1 else f"{100 * (ratio - 1):.0f}% more"
