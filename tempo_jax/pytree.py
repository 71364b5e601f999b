"""The library's typed pytrees: subclass :class:`Struct` and annotate fields.

A subclass becomes a frozen dataclass registered with JAX (every field a leaf or a subtree; None is
an empty subtree), so it passes through ``jit``, ``vmap`` and ``lax`` loops, and its ``replace``
names an unknown field in a one-line ValueError instead of a constructor's TypeError.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self, dataclass_transform

import jax


@dataclass_transform(frozen_default=True)
class Struct:
    """Base of a frozen, JAX-registered dataclass (see the module docstring)."""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        dataclasses.dataclass(frozen=True)(cls)
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        jax.tree_util.register_dataclass(cls, data_fields=names, meta_fields=[])

    def fields(self) -> dict[str, Any]:
        """Field name -> value, not copied (``dataclasses.asdict`` would deep-copy every array)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (``dataclasses.replace``), unknown names refused in one line."""
        names = [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        bad = [k for k in changes if k not in names]
        if bad:
            raise ValueError(f"unknown {type(self).__name__} field {bad[0]!r}; allowed: {', '.join(names)}")
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
