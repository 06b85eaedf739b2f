"""One generic registry for datasets, models and methods."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from distill.errors import DistillError

T = TypeVar("T")


def closest(name: str, choices: list[str], n: int = 3) -> str:
    """Return a "did you mean" hint for ``name`` among ``choices`` (may be empty)."""
    hits = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    return f"; did you mean {', '.join(repr(h) for h in hits)}?" if hits else ""


class Registry(Generic[T]):
    """Maps lowercase names to objects. Duplicate names are an error.

    >>> MODELS = Registry("model")
    >>> @MODELS.register("mlp")
    ... def mlp(...): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (lowercase)."""
        if name != name.lower():
            raise ValueError(f"{self.kind} names are lowercase: {name!r}")

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"duplicate {self.kind} name {name!r}")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the object registered as ``name``; unknown names raise with suggestions."""
        try:
            return self._items[name]
        except KeyError:
            raise DistillError(
                f"unknown {self.kind} {name!r}{closest(name, self.names())} "
                f"(known: {', '.join(self.names())})"
            ) from None

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
