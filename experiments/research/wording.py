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
