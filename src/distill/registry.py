"""One generic registry for datasets, models and methods, optionally extended by installed plugins."""

from __future__ import annotations

import difflib
import importlib
import warnings
from collections.abc import Callable
from importlib import metadata
from typing import Any, Generic, TypeVar

from distill.errors import DistillError

T = TypeVar("T")

# Turns the object an entry point loads into a registry item (may raise DistillError), or names such a
# function as "module:function", imported on first use so a registry can name an adapter in a module
# that imports the registry.
Adapter = Callable[[str, Any], Any] | str


def closest(name: str, choices: list[str], n: int = 3) -> str:
    """Return a "did you mean" hint for ``name`` among ``choices`` (may be empty)."""
    hits = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    return f"; did you mean {', '.join(repr(h) for h in hits)}?" if hits else ""


class Registry(Generic[T]):
    """Maps lowercase names to objects. Duplicate names are an error.

    With ``entry_point_group``, installed packages add items through entry points of that group
    (the entry point's name is the key): they are loaded once, on the first ``get``/``names``/``in``,
    and passed through ``adapt``. A plugin that fails to load is left out of ``names()``; ``get`` of
    it raises a one-line DistillError saying why.

    >>> MODELS = Registry("model")
    >>> @MODELS.register("mlp")
    ... def mlp(...): ...
    """

    def __init__(self, kind: str, entry_point_group: str | None = None, adapt: Adapter | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._adapt = adapt
        self._items: dict[str, T] = {}
        self._broken: dict[str, str] = {}  # plugin name -> why it did not load
        self._plugins_loaded = entry_point_group is None

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
        self._load_plugins()
        if name in self._items:
            return self._items[name]
        if name in self._broken:
            raise DistillError(self._broken[name])
        raise DistillError(
            f"unknown {self.kind} {name!r}{closest(name, self.names())} "
            f"(known: {', '.join(self.names())})"
        )

    def names(self) -> list[str]:
        """Sorted registered names (plugins that failed to load are left out)."""
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._items)

    def _unregister(self, name: str) -> None:
        """Forget ``name`` (registered or broken); for tests that register temporary items."""
        self._items.pop(name, None)
        self._broken.pop(name, None)

    def _load_plugins(self) -> None:
        """Load every entry point of the group, once; failures are recorded, never raised."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # first: a plugin that looks names up while importing must not recurse
        for ep in metadata.entry_points(group=self.entry_point_group):
            self._load_plugin(ep)

    def _load_plugin(self, ep: metadata.EntryPoint) -> None:
        where = f"plugin {ep.name!r} (entry point {self.entry_point_group})"
        try:
            obj = ep.load()
        except Exception as e:  # any import-time failure of a third-party package
            self._broken[ep.name] = f"{where}: cannot load {ep.value} ({type(e).__name__}: {_line(e)})"
            return
        current = self._items.get(ep.name)
        if current is not None:
            if getattr(current, "__wrapped__", current) is not obj:  # not the plugin registering itself
                warnings.warn(f"{where}: ignored, {self.kind} {ep.name!r} is already registered", stacklevel=4)
            return
        try:
            if ep.name != ep.name.lower():
                raise DistillError(f"{self.kind} names are lowercase: {ep.name!r}")
            self._items[ep.name] = self._adapter()(ep.name, obj)
        except DistillError as e:
            self._broken[ep.name] = f"{where}: {_line(e)}"

    def _adapter(self) -> Callable[[str, Any], T]:
        if self._adapt is None:
            return lambda name, obj: obj
        if isinstance(self._adapt, str):
            module, _, attr = self._adapt.partition(":")
            self._adapt = getattr(importlib.import_module(module), attr)
        return self._adapt  # type: ignore[return-value]


def _line(e: BaseException) -> str:
    """The first line of an exception's message (messages stay one line)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"
