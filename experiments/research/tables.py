"""Cells of the descriptive tables experiments write next to their tests (``table_*.csv``).

- :func:`ci_cells`: one measure as three cells, ``{name: mean, name_lo: lo, name_hi: hi}``, the mean
  over prompts and its BCa bootstrap 95% CI (:func:`tempo_jax.stats.bootstrap_ci`).
- :func:`genre_table`: those cells for several measures, per genre (and all) and condition.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tempo_jax import stats as S


def ci_cells(name: str, values: Sequence[float], *, n_boot: int, seed: int = 0, point_below: int = 0,
             skip_empty: bool = False) -> dict[str, float]:
    """``{name: mean, f"{name}_lo": lo, f"{name}_hi": hi}`` over the finite ``values[N]``.

    From ``point_below`` finite values on, lo/hi are the BCa bootstrap CI of
    :func:`tempo_jax.stats.bootstrap_ci` (``n_boot`` resamples, ``seed``; its own rules apply: fewer
    than 2 values -> NaN bounds, constant values -> lo = hi = mean); with 1 to ``point_below - 1``
    values no bootstrap is run and lo = hi = mean. No finite value: NaN cells, or ``{}`` with
    ``skip_empty``.
    """
    x = np.asarray(values, np.float64).ravel()
    x = x[np.isfinite(x)]
    if not len(x) and skip_empty:
        return {}
    if 0 < len(x) < point_below:
        m = float(x.mean())
        ci = {"mean": m, "lo": m, "hi": m}
    else:
        ci = S.bootstrap_ci(x, n_boot=n_boot, seed=seed)
    return {name: ci["mean"], f"{name}_lo": ci["lo"], f"{name}_hi": ci["hi"]}


GENRES = ("all", "prose", "code", "facts")


def genre_table(rows: Sequence[dict], conditions: Sequence[tuple[dict, str]],
                columns: Sequence[tuple[str, str]], **ci) -> list[dict]:
    """One record per genre of :data:`GENRES` ("all": every row) and condition, in that order:
    ``{"genre": g, **head, "n": rows of g, **ci_cells(name, values)}`` for each ``(head, suffix)``
    of ``conditions`` and ``(name, prefix)`` of ``columns``, where ``values`` are
    ``row[prefix + suffix]`` of the genre's rows that have that key. ``ci``: :func:`ci_cells`'
    keywords (n_boot, seed, point_below, skip_empty)."""
    out = []
    for genre in GENRES:
        sub = [r for r in rows if genre == "all" or r["genre"] == genre]
        for head, suffix in conditions:
            rec = {"genre": genre, **head, "n": len(sub)}
            for name, prefix in columns:
                key = prefix + suffix
                rec.update(ci_cells(name, [r[key] for r in sub if key in r], **ci))
            out.append(rec)
    return out
