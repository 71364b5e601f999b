"""A confirmatory design from an exploratory one whose instrument and per-prompt statistics stand:
the same ``run``, ONE primary test (the others demoted to a ``secondary`` family), the confirm split,
an n chosen from the dev pilots' power analysis, and both model families."""

from __future__ import annotations

import dataclasses
from typing import Callable

from tempo_jax.research import Design, Hypothesis


def confirmatory(base: Design, *, id: str, title: str, primary: str | Hypothesis, n_per_genre: int,
                 sesoi: float | None = None, caveats: tuple[str, ...] = (), quick_n: int = 10) -> Design:
    """``base`` with hypothesis ``primary`` the only primary test (its name, or a new Hypothesis on
    one column when a former primary was a glob over several; ``sesoi``: its smallest effect of
    interest), every other former primary in family ``secondary`` (Holm), the ``confirm`` split,
    ``n_per_genre`` prompts per genre; caveats naming one model are dropped, ``caveats`` added."""
    names = [h.name for h in base.hypotheses]
    if isinstance(primary, Hypothesis):
        new = dataclasses.replace(primary, family="primary", sesoi=primary.sesoi if sesoi is None else sesoi)
        base = dataclasses.replace(base, hypotheses=(new, *[dataclasses.replace(h, family="secondary")
                                                            if h.family == "primary" else h
                                                            for h in base.hypotheses]))
        primary, names = new.name, names + [new.name]
    if primary not in names:
        raise ValueError(f"{base.id} has no hypothesis {primary!r}; it has {', '.join(names)}")
    hyps = []
    for h in base.hypotheses:
        if h.name == primary:
            hyps.append(dataclasses.replace(h, family="primary", sesoi=h.sesoi if sesoi is None else sesoi))
        elif h.family == "primary":
            hyps.append(dataclasses.replace(h, family="secondary"))
        else:
            hyps.append(h)
    fams = {"primary": "holm", "secondary": "holm", **{k: v for k, v in base.families.items() if k != "primary"}}
    kept = tuple(c for c in base.caveats if not c.startswith("One model"))
    return dataclasses.replace(base, id=id, title=title, hypotheses=tuple(hyps), families=fams, split="confirm",
                               n_per_genre=n_per_genre, quick_n=quick_n, caveats=kept + caveats,
                               exploratory=False)


def primary_first(answer: Callable[[list, Design], str]) -> Callable[[list, Design], str]:
    """An exploratory ``answer(tests, design)`` led by the confirmatory design's primary test(s):
    "Primary test H (statement): estimate [CI] (verdict)." then the exploratory wording, which
    reports the former primaries in their old order."""

    def wrapped(tests, design: Design) -> str:
        said = {h.name: h.statement for h in design.hypotheses}
        lead = [f"Primary test {t.hypothesis} ({said.get(t.hypothesis, t.column)}): {t.estimate:+.3g} "
                f"[{t.lo:+.3g}, {t.hi:+.3g}] ({t.verdict})." for t in tests if t.family == "primary"]
        return " ".join(lead + [answer(tests, design)])

    return wrapped
