"""Named choices that own their behaviour: the one dispatch mechanism of the engine's rules.

A *family* is a direct subclass of :class:`Choice` that declares the methods its members define and
``what`` (how an error names it); a *member* is a subclass of a family with ``name=``::

    class EosRule(Choice):
        what = "EOS rule"
        def hit(self, cand, eos_ids): ...

    class Any_(EosRule, name="any"):
        def hit(self, cand, eos_ids): return (jnp.isin(cand.tokens, eos_ids) & cand.valid).any()

Defining a member registers one instance in its family, in definition order. From the registry
come the names a config accepts (``GenerationConfig`` fields declare ``choices=Family``), the
``--flag`` choices, the one-line error for an unknown name, and a member's int ``code`` (its place;
sibling rules use it in the ``[L,H]`` table). Members compare equal to their names and hash like
them, so configs and traces keep plain strings while a :class:`~tempo_jax.engine.config.StaticSpec`
holds the members (static under ``jit``); two members are equal only when they are the same class,
so redefining a rule under an old name compiles anew. docs/extending.md walks through adding one.
"""

from __future__ import annotations

from typing import ClassVar, Self


class Choice:
    """Base of the choice families (see the module docstring)."""

    name: ClassVar[str] = ""
    what: ClassVar[str] = "choice"
    _members: ClassVar[dict[str, "Choice"]]
    _built_in: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, name: str | None = None, **kw):
        super().__init_subclass__(**kw)
        if Choice in cls.__bases__:  # a family: its own registry
            if name is not None:
                raise TypeError(f"{cls.__name__} is a family of choices; its members take the names")
            cls._members = {}
            return
        if not name:
            raise TypeError(f"{cls.__name__}: a member of a choice family needs name=...")
        if name in cls._members:
            raise ValueError(f"{cls.what} name {name!r} is already taken")
        cls.name = name
        cls._members[name] = cls()

    @classmethod
    def family(cls) -> type["Choice"]:
        return next(c for c in cls.__mro__ if Choice in c.__bases__)

    @classmethod
    def names(cls) -> list[str]:
        """Registered member names, in code order."""
        return list(cls._members)

    @classmethod
    def members(cls) -> tuple[Self, ...]:
        """Registered members, in code order."""
        return tuple(cls._members.values())  # type: ignore[arg-type]

    @classmethod
    def check(cls, value, what: str | None = None) -> Self:
        """The member named ``value`` (or ``value`` itself), or a one-line ValueError naming what is
        allowed."""
        if isinstance(value, cls.family()):
            return value  # type: ignore[return-value]
        member = cls._members.get(value) if isinstance(value, str) else None
        if member is None:
            raise ValueError(f"unknown {what or cls.what} {value!r}; allowed: {', '.join(cls._members)}")
        return member  # type: ignore[return-value]

    @classmethod
    def seal(cls) -> None:
        """Mark the members defined so far as built in (they cannot be unregistered)."""
        cls._built_in = tuple(cls._members)

    @classmethod
    def unregister(cls, name: str) -> None:
        """Remove a member added later (tests); built-in members keep their codes."""
        if name in cls._built_in:
            raise ValueError(f"{name!r} is a built-in {cls.what}")
        cls._members.pop(name, None)

    @property
    def code(self) -> int:
        """The member's int code: its place in definition order."""
        return list(self._members).index(self.name)

    def __eq__(self, other) -> bool:
        # a member equals its name, and a member of the same class; a rule redefined under the same
        # name is another class, so a compiled program that holds the old one is not reused
        if isinstance(other, Choice):
            return type(self) is type(other)
        return self.name == other

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).family().__name__}({self.name!r})"
