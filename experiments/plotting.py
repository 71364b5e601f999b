"""One place for figure setup in experiments: a non-interactive matplotlib and shared helpers."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ci_bars(stats_list):
    """``[{mean, lo, hi}]`` -> (means, yerr as [[below], [above]]) for ``errorbar``/``bar``."""
    means = [s["mean"] for s in stats_list]
    return means, [[s["mean"] - s["lo"] for s in stats_list], [s["hi"] - s["mean"] for s in stats_list]]
