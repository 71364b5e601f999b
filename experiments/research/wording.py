"""Words for an ``answer()`` sentence chosen from a computed verdict (harness.verdict's strings)."""

from __future__ import annotations


def said(t, plus: str, minus: str, otherwise: str, same: str | None = None) -> str:
    """``plus`` if ``t.verdict`` is "differs (+)...", ``minus`` if "differs (-)...", ``same`` if it
    is "no effect..." and ``same`` is given, else ``otherwise`` (cannot tell, or no wording for
    equivalence)."""
    if t.verdict.startswith("differs (+)"):
        return plus
    if t.verdict.startswith("differs (-)"):
        return minus
    if same is not None and t.verdict.startswith("no effect"):
        return same
    return otherwise


def ci(t, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    """``+0.123 [+0.045, +0.201] (verdict)`` of a test result (values times ``scale``)."""
    f = lambda v: f"{scale * v:+.{digits}f}"
    return f"{f(t.estimate)}{unit} [{f(t.lo)}, {f(t.hi)}] ({t.verdict})"


def listed(tests, phrases: dict[str, str], num=ci) -> str:
    """``phrases[h] + " " + num(test h)`` for each hypothesis h of ``phrases`` (in its order) that has a
    test among ``tests``, joined by "; "."""
    by = {t.hypothesis: t for t in tests}
    return "; ".join(f"{text} {num(by[h])}" for h, text in phrases.items() if h in by)
