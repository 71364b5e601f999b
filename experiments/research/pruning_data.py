"""Judged members of TEMPO runs with retroactive pruning: the data behind RQ 3.1 (and §3).

Per prompt, one TEMPO generation with pruning on and summary capture. A member is JUDGED when its
set had more than one member and its look-ahead window closed inside the run. For each judged member:
the label (survived = never pruned), the selection-time features (probability, rank, set size,
probability relative to the set), the attention it received from the FIRST look-ahead step only
(weighted like the pruning score: mean over layers and heads of the step's queries' attention on its
slot), the full pruning score it got (the window's score, as the engine computed it) and its
residual stream after chosen layers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tempo_jax.engine import GenerationConfig, generate


@dataclasses.dataclass
class Judged:
    """Rows of judged members (N) from one prompt."""

    survived: np.ndarray  # [N] bool
    prob: np.ndarray  # [N]
    rank: np.ndarray  # [N] member index (0 = most probable)
    set_size: np.ndarray  # [N]
    rel_prob: np.ndarray  # [N] prob / sum of the set's probs
    early_attn: np.ndarray  # [N] mean attention received from step s+1's queries
    step: np.ndarray  # [N] the set's step
    score: np.ndarray  # [N] the engine's pruning score (whole look-ahead window; NaN if never scored)
    resid: np.ndarray  # [N, layers, E]


def judged_members(params, mcfg, ids, gcfg: GenerationConfig, layers) -> tuple[Judged, object]:
    """Run TEMPO on ``ids`` (gcfg must prune) -> (judged members, trace)."""
    if not gcfg.prune:
        raise ValueError("judged_members needs a config with prune=True")
    resid, received = [], []

    def on_step(s, st, cap):
        resid.append(np.asarray(cap.resid)[list(layers)])  # [l,W,E]
        n = int(np.asarray(st.fed_n)[s])
        received.append(np.asarray(cap.received).mean((0, 1)) / max(n, 1))  # [K] per query

    tr = generate(params, mcfg, ids, gcfg, capture="summary", on_step=on_step)
    a = tr.arrays
    rows = {f.name: [] for f in dataclasses.fields(Judged)}
    for s in range(tr.n_steps - gcfg.prune_window):
        n = int(a["set_n"][s])
        if n < 2:
            continue
        probs = a["probs"][s, :n]
        for i in range(n):
            slot = int(a["slots"][s, i])
            rows["survived"].append(a["pruned_at"][slot] < 0)
            rows["prob"].append(probs[i])
            rows["rank"].append(i)
            rows["set_size"].append(n)
            rows["rel_prob"].append(probs[i] / probs.sum())
            rows["early_attn"].append(received[s + 1][slot])
            rows["step"].append(s)
            rows["score"].append(a["prune_score"][slot])
            rows["resid"].append(resid[s][:, i])
    e = mcfg.hidden_size
    out = Judged(**{k: (np.asarray(v) if v else np.zeros((0, len(layers), e) if k == "resid" else 0))
                    for k, v in rows.items()})
    return out, tr
