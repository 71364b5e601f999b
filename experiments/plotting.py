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


def condition_boxplots(ctx, rows, conditions, panels, title: str, name: str):
    """One box plot panel per ``(key, label, log_scale)`` in ``panels``: the per-prompt values
    ``row[f"{key}_{condition}"]`` of each condition (NaNs dropped), saved via ``ctx.figure``."""
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for a, (key, label, log_scale) in zip(np.atleast_1d(ax), panels):
        data = [[r[f"{key}_{c}"] for r in rows if np.isfinite(r[f"{key}_{c}"])] for c in conditions]
        a.boxplot(data, tick_labels=list(conditions), showfliers=False)
        a.set_title(label)
        if log_scale:
            a.set_yscale("log")
    fig.suptitle(title)
    return ctx.figure(fig, name)
