"""Power before running: how many prompts a paired design needs, from a pilot's SD.

The unit is the prompt and every declared test is one-sample on the per-prompt differences ``d``:

* the difference test (two-sided, paired t; noncentral t power as ``statsmodels``' ``TTestPower``) needs
  :func:`n_for_difference` prompts to detect a true mean ``effect`` (the smallest effect of interest)
  with the given power;
* the equivalence test (TOST at ``+-margin``) needs :func:`n_for_tost` prompts to conclude "no effect"
  with the given power when the true mean is ``true_effect`` (0 by default); its power is the
  standard t approximation ``T(df, (m - e)/se - t) + T(df, (m + e)/se - t) - 1`` (Chow, Shao & Wang,
  *Sample Size Calculations in Clinical Research*, section 3.2).

``alpha`` is the family's corrected level: for a family of ``k`` tests corrected by Holm (or BH) the
first-ranked test is held to ``alpha / k`` (:func:`family_alpha`), so a design powered at that level
is powered whatever the other tests do. The exact sign-flip test the harness runs cannot give a p
below :func:`p_floor`: a test whose floor exceeds its corrected alpha can never reject.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as st

N_MAX = 1_000_000


def family_alpha(alpha: float, k: int) -> float:
    """The level the most significant of ``k`` tests in a Holm (or BH) family must reach."""
    return alpha / max(int(k), 1)


def n_for_difference(sd: float, effect: float, alpha: float, power: float = 0.8) -> int:
    """Prompts for a two-sided paired t test to detect a mean difference ``effect`` with ``power``."""
    if not effect:
        raise ValueError("the smallest effect of interest must be nonzero")
    if not sd > 0:  # no spread: any n >= 2 detects a nonzero mean
        return 2
    es = abs(effect) / sd
    return _first_n(lambda n: t_power(es, n, alpha), power)


def t_power(es: float, n: int, alpha: float) -> float:
    """Power of the two-sided one-sample t test at standardized effect ``es`` with ``n`` values: the
    noncentral t tail beyond the critical value (scipy ``nct``, the same as statsmodels'
    ``TTestPower.power``); where ``nct`` returns NaN (a huge noncentrality at few df) the same tail
    by quadrature over the chi-square variance: E_V[Phi(nc - t sqrt(V/df)) + Phi(-nc - t sqrt(V/df))]."""
    from scipy.integrate import quad

    df, nc = n - 1, es * math.sqrt(n)
    t = st.t.ppf(1 - alpha / 2, df)
    p = st.nct.sf(t, df, nc) + st.nct.cdf(-t, df, nc)
    if np.isfinite(p):
        return float(p)
    tail = lambda v: (st.norm.sf(t * math.sqrt(v / df) - nc) + st.norm.cdf(-t * math.sqrt(v / df) - nc)) \
        * st.chi2.pdf(v, df)  # noqa: E731
    return float(min(1.0, quad(tail, 0, np.inf, limit=200)[0]))


def _first_n(pw, power: float) -> int:
    """The smallest n >= 2 with ``pw(n) >= power`` for a power function increasing in n (doubling,
    then bisection; ``N_MAX + 1``: beyond reach). statsmodels' ``solve_power`` root finder can fail to
    converge (it returns NaN), so the search is done here."""
    lo, hi = 2, 2
    while pw(hi) < power:
        if hi > N_MAX:
            return N_MAX + 1
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if pw(mid) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo


def tost_power(n: int, sd: float, margin: float, alpha: float, true_effect: float = 0.0) -> float:
    """Approximate power of the paired TOST at ``+-margin`` with ``n`` prompts (module docstring)."""
    if n < 2:
        return 0.0
    if not sd > 0:
        return 1.0 if abs(true_effect) < margin else 0.0
    df, se = n - 1, sd / math.sqrt(n)
    t = st.t.ppf(1 - alpha, df)
    p = st.t.cdf((margin - true_effect) / se - t, df) + st.t.cdf((margin + true_effect) / se - t, df) - 1
    return float(max(0.0, p))


def n_for_tost(sd: float, margin: float, alpha: float, power: float = 0.8, true_effect: float = 0.0) -> int:
    """Smallest n at which :func:`tost_power` reaches ``power`` (``N_MAX + 1``: beyond reach)."""
    if not margin > 0:
        raise ValueError("the equivalence margin must be > 0")
    if abs(true_effect) >= margin:
        return N_MAX + 1
    return _first_n(lambda n: tost_power(n, sd, margin, alpha, true_effect), power)


def p_floor(n: int, n_perm: int = 4999, exact_max: int = 12) -> float:
    """The smallest two-sided p the harness's sign-flip test can return with ``n`` prompts: 2 / 2^n
    when it enumerates every sign vector (n <= ``exact_max``), else 2 / (1 + ``n_perm``) (scipy's
    two-sided p doubles the smaller one-sided (1 + count) / (1 + n_perm))."""
    if n < 1:
        return 1.0
    return 2.0 / 2 ** n if n <= exact_max else max(2.0 / 2 ** n, 2.0 / (1 + n_perm))
