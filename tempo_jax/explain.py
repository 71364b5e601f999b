"""Explain one step of a saved run: its alternatives, where they looked, why they were pruned, and a
counterfactual where one member is forced.

``tempo-jax explain RUN_DIR --step S [--force MEMBER]``. Everything shown comes from the trace
(:class:`tempo_jax.trace.Trace`) when it holds it; what it does not hold (the members' attention when
the run was saved without ``--html``, the full step distribution) is recomputed by REPLAYING the run:
the engine is deterministic, so a replay of the trace's config on the trace's prompt reproduces the
trace, which :func:`replay` checks (step by step, up to the step asked for) before its numbers are
used. Runs with custom engine inputs (a sibling table, interventions) are not in the config and do
not replay; the check says so.

Counterfactual (``--force``): the run is replayed up to step S, then step S's candidate set is
replaced by the one forced member (its distribution is made one-hot on that token, so it is kept
alone with stored probability 1 and entropy 0), and generation continues with the same config.
The quality of the two clean paths is compared with :mod:`tempo_jax.quality`.

Shapes: L layers, H heads, n members of the step, Kc slots visible to the step, V vocab.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tempo_jax.errors import UsageError
from tempo_jax.trace import Trace

Decode = Callable[[Sequence[int]], str]


# --- typed results ----------------------------------------------------------------------------
@dataclasses.dataclass
class SlotWeight:
    slot: int
    text: str
    weight: float  # mean attention (over the group's layers and all heads)
    origin: str  # "prompt" or "step t"


@dataclasses.dataclass
class GroupAttention:
    """One member's attention in one layer group: the top context slots, the sink and itself."""

    layers: tuple[int, int]  # first, last (inclusive)
    top: list[SlotWeight]
    sink: float  # attention on slot 0
    own: float  # attention on the member's own slot
    prompt_mass: float  # on prompt slots other than the sink
    generated_mass: float  # on slots of earlier steps


@dataclasses.dataclass
class MemberInfo:
    index: int
    token: int
    text: str
    prob: float
    slot: int
    clean: bool  # on the clean path
    prune_score: float | None
    pruned_at: int | None
    decision: str  # words: how pruning treated it
    attention: list[GroupAttention] | None = None


@dataclasses.dataclass
class StepExplanation:
    step: int
    threshold: float
    entropy: float
    members: list[MemberInfo]
    pruning: str  # the rule in words, or "off"
    near_misses: list[tuple[int, str, float]] | None = None  # (token, text, prob) below the set
    attention_source: str | None = None  # "capture", "replay" or None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Counterfactual:
    step: int
    forced: MemberInfo
    original_text: str
    forced_text: str
    original_quality: dict[str, float]
    forced_quality: dict[str, float]
    forced_trace: Trace

    def diff(self) -> dict[str, float]:
        return {k: self.forced_quality[k] - self.original_quality[k]
                for k in self.original_quality if k in self.forced_quality}


# --- loading and checks -----------------------------------------------------------------------
def load_run(run_dir, stem: str = "trace_000") -> Trace:
    """The trace ``run_dir/<stem>.json``; a missing or unreadable one is a one-line UsageError."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UsageError(f"{run_dir}: no such folder (write a run with `tempo-jax generate --out {run_dir}`)")
    if not (run_dir / f"{stem}.json").exists() or not (run_dir / f"{stem}.npz").exists():
        raise UsageError(f"{run_dir}: no trace {stem}.json/.npz (write one with "
                         f"`tempo-jax generate --out {run_dir}`)")
    try:
        return Trace.load(run_dir, stem)
    except (ValueError, OSError, KeyError) as e:
        raise UsageError(f"{run_dir}/{stem}: unreadable trace ({e})") from e


def check_step(trace: Trace, step: int) -> None:
    if not 0 <= step < trace.n_steps:
        raise UsageError(f"step {step} is out of range: the trace has {trace.n_steps} steps "
                         f"(0..{trace.n_steps - 1})")


def resolve_member(trace: Trace, step: int, spec: str, decode: Decode | None) -> int:
    """The member index named by ``spec``: an integer is a member index; anything else is matched
    against the members' decoded text (exactly, then ignoring surrounding spaces)."""
    members = trace.steps()[step]["members"]
    listing = ", ".join(f"{i} {(decode([m['token']]) if decode else '#' + str(m['token']))!r} "
                        f"p={m['prob']:.3f}" for i, m in enumerate(members))
    try:
        i = int(spec)
    except ValueError:
        i = None
    if i is not None:
        if 0 <= i < len(members):
            return i
        raise UsageError(f"unknown member {spec} at step {step}: it has {len(members)} member(s): {listing}")
    if decode is not None:
        texts = [decode([m["token"]]) for m in members]
        for match in ([k for k, t in enumerate(texts) if t == spec],
                      [k for k, t in enumerate(texts) if t.strip() == spec.strip()]):
            if len(match) == 1:
                return match[0]
            if len(match) > 1:
                raise UsageError(f"member {spec!r} at step {step} is ambiguous; give its index: {listing}")
    raise UsageError(f"unknown member {spec!r} at step {step}; members: {listing}")


def generation_config(trace: Trace):
    """The trace's :class:`GenerationConfig` (lists back to tuples); beam traces are refused."""
    from tempo_jax.engine import GenerationConfig

    cfg = dict(trace.config)
    if cfg.get("method") == "beam":
        raise UsageError("a beam-search trace cannot be replayed step by step (its steps are the "
                         "best beam read backwards); explain works on TEMPO, greedy and sampling runs")
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    kw: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in names}
    return GenerationConfig(**kw)


# --- replay -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Replay:
    trace: Trace
    dist: np.ndarray | None  # [V] d_S, the distribution step S selected from (before any forcing)
    attn: np.ndarray | None  # [L,H,n,Kc] attention of step S's fed queries


def replay(params, mcfg, trace: Trace, capture_step: int | None = None,
           force: tuple[int, int] | None = None, check: bool = True) -> Replay:
    """Re-run ``trace``'s config on its prompt with the host driver.

    ``capture_step`` S: also return d_S and the full attention of step S's forward.
    ``force`` (step, token): at that step the distribution is made one-hot on ``token`` before
    selection, so the set is that token alone; generation then continues normally.
    ``check``: steps before the forced one (or all steps, unforced) must reproduce the trace's
    members and probabilities (to 1e-4); otherwise a UsageError says the run does not replay.
    """
    import jax
    import jax.numpy as jnp

    from tempo_jax.engine.rules import Capture
    from tempo_jax.engine.run import _init, _step, check_request, mechanics, pad_prompt

    gcfg = generation_config(trace)
    ids = list(trace.prompt_ids)
    check_request(mcfg, gcfg, ids)
    spec = gcfg.static()
    inputs = gcfg.inputs(mcfg)
    mech = mechanics(spec)
    st = _init[mech](params, mcfg, spec, inputs, pad_prompt(gcfg, ids), jnp.int32(len(ids)),
                     gcfg.capacity_for(len(ids)))
    widths = mech.feed_widths(spec)
    dist = attn = None
    for s in range(gcfg.max_steps):
        if s == capture_step:
            dist = np.asarray(st.dist)
        if force is not None and s == force[0]:
            st = st.replace(dist=jax.nn.one_hot(force[1], st.dist.shape[0], dtype=st.dist.dtype),
                            next_n=jnp.int32(1))
        width = next(w for w in widths if w >= int(st.next_n))
        cap = Capture.FULL if s == capture_step else Capture.NONE
        base = int(st.n_written)
        st, captured = _step[mech](params, mcfg, spec, inputs, st, cap, width)
        if s == capture_step:
            n = int(np.asarray(st.fed_n)[s])
            attn = np.asarray(captured.attn)[:, :, :n, :base + n]
        if bool(st.done):
            break
    out = Trace.from_state(st, gcfg, ids, trace.model, {})
    if check:
        upto = force[0] if force is not None else out.n_steps
        _check_same(trace, out, upto)
    return Replay(out, dist, attn)


def _check_same(a: Trace, b: Trace, upto: int) -> None:
    n = min(upto, a.n_steps)
    ok = b.n_steps >= n
    for s in range(n if ok else 0):
        ma, mb = a.steps()[s]["members"], b.steps()[s]["members"]
        if [m["token"] for m in ma] != [m["token"] for m in mb] or not np.allclose(
                [m["prob"] for m in ma], [m["prob"] for m in mb], atol=1e-4):
            ok = False
            break
    if not ok:
        raise UsageError("replaying the trace's config does not reproduce its steps (was it made "
                         "with custom engine inputs, another model, or another tempo-jax?); "
                         "give --model if the trace's model is elsewhere")


# --- attention --------------------------------------------------------------------------------
def capture_attention(run_dir, stem: str, trace: Trace, step: int) -> np.ndarray | None:
    """``[L,H,n,Kc]`` attention of step ``step``'s fed queries from the run's full capture, or None
    when the run has none (or a capture of another run)."""
    from tempo_jax.capture import load_capture
    from tempo_jax.capture import capture_dir

    cdir = capture_dir(run_dir, stem)
    if not (cdir / "capture.json").exists():
        return None
    cap = load_capture(cdir)
    if "attn" not in cap or cap["attn"][0].shape[0] != trace.n_steps:
        return None
    a = trace.arrays
    n, base = int(a["fed_n"][step]), int(a["cache_len"][step])
    return np.asarray(cap["attn"][0][step, :, :, :n, :base + n], np.float64)


def layer_groups(n_layers: int, n_groups: int) -> list[tuple[int, int]]:
    """``n_groups`` contiguous, near-equal layer ranges (first, last inclusive)."""
    n_groups = max(1, min(n_groups, n_layers))
    edges = np.linspace(0, n_layers, n_groups + 1).round().astype(int)
    return [(int(edges[i]), int(edges[i + 1]) - 1) for i in range(n_groups)]


def member_attention(attn: np.ndarray, query: int, own_slot: int, slot_step: np.ndarray,
                     slot_text: Callable[[int], str], groups, top: int) -> list[GroupAttention]:
    """One query row of ``attn[L,H,n,Kc]`` summarised per layer group: mean over the group's layers
    and all heads; the ``top`` context slots leave out the sink (slot 0) and the member itself."""
    out = []
    kc = attn.shape[-1]
    origin = lambda k: "prompt" if slot_step[k] < 0 else f"step {int(slot_step[k])}"
    for lo, hi in groups:
        w = attn[lo:hi + 1, :, query, :].mean((0, 1))  # [Kc]
        ctx = np.ones(kc, bool)
        ctx[0] = False
        if 0 <= own_slot < kc:
            ctx[own_slot] = False
        idx = [int(k) for k in np.argsort(-np.where(ctx, w, -1.0))[:top] if ctx[k]]
        prompt = (slot_step[:kc] < 0) & ctx
        gen = (slot_step[:kc] >= 0) & ctx
        out.append(GroupAttention((lo, hi), [SlotWeight(k, slot_text(k), float(w[k]), origin(k)) for k in idx],
                                  float(w[0]), float(w[own_slot]) if 0 <= own_slot < kc else 0.0,
                                  float(w[prompt].sum()), float(w[gen].sum())))
    return out


# --- the explanation --------------------------------------------------------------------------
def clean_members(trace: Trace) -> list[int]:
    """Per step, the index of the most probable alive member (the clean path, ignoring EOS)."""
    out = []
    for st in trace.steps():
        alive = [i for i, m in enumerate(st["members"]) if not m["pruned"]] or [0]
        out.append(alive[0])
    return out


def pruning_words(config: dict) -> str:
    if not config.get("prune"):
        return "off"
    rule = config.get("prune_rule", "relative")
    par = {"relative": f"prune when score < rho x mean score of the set (rho = {config.get('prune_rho')})",
           "absolute": f"prune when score < theta (theta = {config.get('prune_theta')})",
           "sigmoid": f"prune with probability sigmoid(k (theta - score)) (k = {config.get('prune_k')}, "
                      f"theta = {config.get('prune_theta')})"}.get(rule, rule)
    return (f"{rule}: {par}; score = attention received from the next {config.get('prune_window')} "
            f"step(s), timing {config.get('prune_timing')}; the best-scoring member always survives")


def _decision(m: dict, members: list[dict], config: dict, step: int, n_steps: int) -> str:
    if len(members) < 2:
        return "single member: never judged"
    if not config.get("prune"):
        return "kept (pruning off)"
    if m["prune_score"] is None:
        return (f"not judged: the run ended before its window (step {step + config.get('prune_window', 0)})"
                if step + config.get("prune_window", 0) >= n_steps else "not judged")
    if m["pruned_at"] is not None:
        why = ""
        if config.get("prune_rule") == "relative":
            scores = [x["prune_score"] for x in members if x["prune_score"] is not None]
            cut = config.get("prune_rho", 0.0) * float(np.mean(scores))
            why = f": score {m['prune_score']:.4g} < cutoff {cut:.4g}"
        elif config.get("prune_rule") == "absolute":
            why = f": score {m['prune_score']:.4g} < theta {config.get('prune_theta')}"
        return f"PRUNED at step {m['pruned_at']}{why}"
    best = max(x["prune_score"] for x in members if x["prune_score"] is not None)
    return "kept: best score of the set" if m["prune_score"] >= best else "kept: score above the cutoff"


def explain_step(trace: Trace, step: int, decode: Decode | None = None, attn: np.ndarray | None = None,
                 attention_source: str | None = None, dist: np.ndarray | None = None,
                 n_groups: int = 3, top: int = 5, near: int = 5, steps: list[dict] | None = None
                 ) -> StepExplanation:
    """The explanation of step ``step`` of ``trace`` (``attn[L,H,n,Kc]``: its queries' attention,
    from a capture or a replay; ``dist[V]``: the distribution the step selected from; ``steps``:
    ``trace.steps()`` when the caller has it already)."""
    check_step(trace, step)
    tok = (lambda t: decode([int(t)])) if decode is not None else (lambda t: f"#{int(t)}")
    steps = trace.steps() if steps is None else steps
    st = steps[step]
    a = trace.arrays
    alive = [i for i, m in enumerate(st["members"]) if not m["pruned"]] or [0]
    clean = alive[0]
    members = []
    for i, m in enumerate(st["members"]):
        members.append(MemberInfo(i, m["token"], tok(m["token"]), m["prob"], m["slot"], i == clean,
                                  m["prune_score"], m["pruned_at"],
                                  _decision(m, st["members"], trace.config, step, trace.n_steps)))
    if attn is not None:
        slot_step, slot_token = a["slot_step"], a["slot_token"]
        base = int(a["cache_len"][step])
        groups = layer_groups(attn.shape[0], n_groups)
        text = lambda k: tok(slot_token[k])
        for mi in members:
            q = mi.slot - base
            if mi.slot >= 0 and 0 <= q < attn.shape[2]:
                mi.attention = member_attention(attn, q, mi.slot, slot_step, text, groups, top)
    near_misses = None
    if dist is not None:
        order = np.argsort(-dist)
        have = {m.token for m in members}
        near_misses = [(int(t), tok(t), float(dist[t])) for t in order[:len(have) + near]
                       if int(t) not in have][:near]
    return StepExplanation(step, st["threshold"], st["entropy"], members, pruning_words(trace.config),
                           near_misses, attention_source if attn is not None else None)


def format_step(e: StepExplanation) -> str:
    """The explanation as plain text (what ``tempo-jax explain`` prints)."""
    lines = [f"step {e.step}: {len(e.members)} member(s), threshold {e.threshold:.4g}, "
             f"entropy of the step's distribution {e.entropy:.3f} nats", f"pruning: {e.pruning}", "",
             "  #  token                prob     slot  prune score  decision"]
    for m in e.members:
        score = "-" if m.prune_score is None else f"{m.prune_score:.4g}"
        mark = "*" if m.clean else " "
        lines.append(f"{mark}{m.index:2d}  {m.text!r:20s} {m.prob:7.4f}  {m.slot:5d}  {score:>11s}  {m.decision}")
    lines.append("(* = clean path: most probable alive member)")
    if e.near_misses is not None:
        lines.append("\nbest tokens that did not make the set (probability in the step's distribution):")
        lines += [f"     {t!r:20s} {p:7.4f}" for _, t, p in e.near_misses]
    if any(m.attention for m in e.members):
        lines.append(f"\nattention to context ({e.attention_source}; mean over the group's layers and "
                     "all heads; top slots as slot:token, @sN = a member of step N; the sink (slot 0) "
                     "and the member itself are left out of the top slots):")
        for m in e.members:
            if not m.attention:
                continue
            lines.append(f"  member {m.index} {m.text!r}:")
            for g in m.attention:
                tops = ", ".join(f"{w.slot}:{w.text!r}{'' if w.origin == 'prompt' else '@s' + w.origin[5:]}"
                                 f" {w.weight:.3f}" for w in g.top)
                lines.append(f"    layers {g.layers[0]:2d}-{g.layers[1]:2d}  sink {g.sink:.3f}  self "
                             f"{g.own:.3f}  prompt {g.prompt_mass:.3f}  generated {g.generated_mass:.3f}"
                             f" | {tops}")
    elif e.attention_source is None:
        lines.append("\n(no attention shown: the run has no full capture (generate --html) and was not "
                     "replayed (--no-replay), or the step's members never entered the cache)")
    return "\n".join(lines)


# --- counterfactual ---------------------------------------------------------------------------
def quality(trace: Trace, tokenizer, params, mcfg, gold: str | None = None, aliases=()) -> dict[str, float]:
    """:func:`tempo_jax.quality.measure` of the clean path: the facts measures when ``gold`` is given,
    the genre-free ones otherwise (distinct-2, repeated 3-grams, paths, self-perplexity)."""
    from tempo_jax import quality as Q

    prompt_text = tokenizer.decode(trace.prompt_ids)
    q = Q.measure(trace, genre="facts" if gold else "custom", reference=gold or "", aliases=aliases,
                  tokenizer=tokenizer, prompt_text=prompt_text, params=params, cfg=mcfg,
                  eos_ids=mcfg.eos_token_ids or ())
    q.pop("coverage_any", None)
    q.pop("coverage_alive", None)
    return q


def counterfactual(params, mcfg, tokenizer, trace: Trace, step: int, member: int,
                   gold: str | None = None) -> Counterfactual:
    """Force member ``member`` of step ``step`` alone and regenerate; compare the clean paths."""
    check_step(trace, step)
    m = trace.steps()[step]["members"][member]
    forced = replay(params, mcfg, trace, force=(step, m["token"])).trace
    eos = mcfg.eos_token_ids or ()
    dec = lambda ids: tokenizer.decode(list(ids))
    info = MemberInfo(member, m["token"], dec([m["token"]]), m["prob"], m["slot"],
                      clean_members(trace)[step] == member, m["prune_score"], m["pruned_at"], "forced")
    return Counterfactual(step, info, trace.clean_text(dec, eos), forced.clean_text(dec, eos),
                          quality(trace, tokenizer, params, mcfg, gold),
                          quality(forced, tokenizer, params, mcfg, gold), forced)


def format_counterfactual(c: Counterfactual, decode: Decode, eos_ids=()) -> str:
    lines = [f"\ncounterfactual: step {c.step} forced to member {c.forced.index} {c.forced.text!r} "
             f"(p = {c.forced.prob:.4f}{', already the clean choice' if c.forced.clean else ''})",
             f"  original clean text: {c.original_text!r}",
             f"  forced clean text:   {c.forced_text!r}",
             f"  forced run: {c.forced_trace.render(decode, eos_ids=eos_ids, prompt=False)!r}",
             "  quality (clean path)        original     forced   forced-original"]
    for k, d in c.diff().items():
        lines.append(f"    {k:24s} {c.original_quality[k]:10.4g} {c.forced_quality[k]:10.4g} {d:+10.4g}")
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------
EXAMPLES = """examples:
  tempo-jax generate --prompt "The capital of France is" --out runs/paris --html
  tempo-jax explain runs/paris --step 0
  tempo-jax explain runs/paris --step 0 --force 1            # member 1 alone, then regenerate
  tempo-jax explain runs/paris --step 0 --force " Lyon" --gold Paris
"""


def add_parser(sub) -> None:
    import argparse

    e = sub.add_parser("explain", help="one step of a saved run: alternatives, attention, pruning, "
                                       "and a counterfactual with a member forced",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    e.add_argument("run", metavar="RUN_DIR", help="a folder written by `tempo-jax generate`")
    e.add_argument("--step", type=int, required=True, help="the logical step to explain (0-based)")
    e.add_argument("--stem", default="trace_000", help="which trace of the folder (default: trace_000)")
    e.add_argument("--force", default=None, metavar="TOKEN_OR_INDEX",
                   help="regenerate from STEP with this member alone (an integer is a member index; "
                        "otherwise the member's text)")
    e.add_argument("--gold", default=None, help="expected answer: the counterfactual also reports "
                                                "whether each clean path starts with it")
    e.add_argument("--model", default=None, help="model to replay with (default: the trace's model)")
    e.add_argument("--layer-groups", type=int, default=3, help="layer groups for the attention summary "
                                                                "(default: 3)")
    e.add_argument("--top", type=int, default=5, help="context slots listed per group (default: 5)")
    e.add_argument("--no-replay", action="store_true",
                   help="never load the model: show only what the trace and its capture hold")
    e.add_argument("--json", default=None, metavar="FILE", help="also write the explanation as JSON")
    e.set_defaults(func=main)


def _model_spec(trace: Trace, given: str | None) -> str | None:
    if given is not None:
        return given
    from tempo_jax.named_models import named

    if not trace.model:
        return None
    prefix = trace.model.split(":", 1)[0] if ":" in trace.model else None
    return prefix if prefix is not None and named(prefix) is not None else trace.model


def main(args) -> int:
    from tempo_jax.errors import user_input

    if args.layer_groups < 1 or args.top < 1:
        raise UsageError("--layer-groups and --top must be >= 1")
    if args.no_replay and args.force is not None:
        raise UsageError("--force regenerates with the model; it cannot be combined with --no-replay")
    if args.json:
        from tempo_jax.destinations import check_file_destination

        check_file_destination(args.json, "--json")
    trace = load_run(args.run, args.stem)
    check_step(trace, args.step)
    if args.force is not None or not args.no_replay:
        generation_config(trace)  # beam traces are refused before the model loads
    from tempo_jax.loading import tokenizer_for

    found = tokenizer_for(trace.model)
    decode = found[0] if found else None
    force_idx = resolve_member(trace, args.step, args.force, decode) if args.force is not None and decode else None
    attn = capture_attention(args.run, args.stem, trace, args.step)
    source = "capture" if attn is not None else None
    dist = None
    m = None
    if not args.no_replay:
        from tempo_jax.loading import load_checked

        m = load_checked(_model_spec(trace, args.model))
        decode = lambda ids: m.tokenizer.decode(list(ids))
        if args.force is not None and force_idx is None:
            force_idx = resolve_member(trace, args.step, args.force, decode)
        with user_input():
            r = replay(m.params, m.cfg, trace, capture_step=args.step)
        dist = r.dist
        if attn is None:
            attn, source = r.attn, "replay"
    e = explain_step(trace, args.step, decode, attn, source, dist, args.layer_groups, args.top)
    print(format_step(e))
    out = {"explanation": e.to_dict()}
    if force_idx is not None:
        assert m is not None and decode is not None  # --force with --no-replay is refused above
        c = counterfactual(m.params, m.cfg, m.tokenizer, trace, args.step, force_idx, args.gold)
        print(format_counterfactual(c, decode, m.cfg.eos_token_ids or ()))
        out["counterfactual"] = {
            "step": c.step, "forced": dataclasses.asdict(c.forced), "original_text": c.original_text,
            "forced_text": c.forced_text, "original_quality": c.original_quality,
            "forced_quality": c.forced_quality, "diff": c.diff(),
            "forced_steps": c.forced_trace.to_json()["steps"]}
    if args.json:
        from tempo_jax.trace import _strict

        from tempo_jax.destinations import write_text_atomic

        write_text_atomic(args.json, json.dumps(_strict(out), indent=1, allow_nan=False))
    return 0
