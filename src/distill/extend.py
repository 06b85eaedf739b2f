"""Add your own methods, models and datasets so recipes can name them.

From Python, decorate before building the recipe::

    from distill.extend import register_method, register_model, register_dataset

    @register_model("tiny")
    class Tiny(nn.Module):
        def __init__(self, input_shape, width: int = 8): ...

From an installed package, declare entry points in the groups ``distill.methods``, ``distill.models`` and
``distill.datasets`` (the entry point's name is the name recipes use)::

    [project.entry-points."distill.models"]
    tiny = "my_pkg.models:Tiny"

They are loaded on the first lookup of their registry and registered exactly as the decorators do; a plugin
that fails to load only breaks lookups of its own name.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from distill.data.base import DATASETS
from distill.errors import DistillError
from distill.methods.base import METHODS, Method
from distill.models.base import MODELS
from distill.registry import Registry

Obj = TypeVar("Obj")
P = inspect.Parameter


def register_method(name: str) -> Callable[[Obj], Obj]:
    """Decorator registering a ``distill.methods.Method`` subclass as method ``name``.

    Its ``__init__`` keyword arguments are what a recipe's method section may set. Anything other than a
    Method subclass, a non-lowercase name or a name already taken raises a DistillError.
    """
    return _decorator("register_method", METHODS, name, _method)


def register_model(name: str) -> Callable[[Obj], Obj]:
    """Decorator registering a model as ``name``: a builder ``fn(*, num_classes, input_shape, **options)``
    returning an ``nn.Module``, or an ``nn.Module`` subclass.

    ``num_classes`` and ``input_shape`` are passed only when the function or class declares them; its other
    keyword parameters are the model's options (checked by ``build_model`` and by recipes).
    """
    return _decorator("register_model", MODELS, name, _model)


def register_dataset(name: str) -> Callable[[Obj], Obj]:
    """Decorator registering a dataset builder ``fn(*, seed, **options)`` as ``name``.

    ``seed`` is passed only when the function declares it; its other keyword parameters are the dataset's
    options (set next to ``name`` in a recipe's data section). What it returns is handed to ``build_data``.
    """
    return _decorator("register_dataset", DATASETS, name, _dataset)


def _decorator(what: str, registry: Registry[Any], name: str,
               adapt: Callable[[str, Any], Any]) -> Callable[[Obj], Obj]:
    """Check ``name`` now; on decoration adapt the object, register it and return it unchanged."""
    if not isinstance(name, str) or not name or name != name.lower():
        raise DistillError(f"{what}({name!r}): names are non-empty lowercase strings")

    def deco(obj: Obj) -> Obj:
        try:
            item = adapt(name, obj)
        except DistillError as e:
            raise DistillError(f"{what}({name!r}): {e}") from None
        try:
            registry.register(name)(item)
        except ValueError:
            raise DistillError(f"{registry.kind} {name!r} is already registered") from None
        return obj

    return deco


def _method(name: str, obj: Any) -> type[Method]:
    """A method plugin is the Method subclass itself."""
    if not (inspect.isclass(obj) and issubclass(obj, Method)):
        raise DistillError(f"{obj!r} is not a distill.methods.Method subclass")
    return obj


def _model(name: str, obj: Any) -> Callable[..., nn.Module]:
    """Wrap a builder function or nn.Module subclass into a ``fn(*, num_classes, input_shape, **options)``."""
    if inspect.isclass(obj) and not issubclass(obj, nn.Module):
        raise DistillError(f"{obj!r} is neither a model builder function nor an nn.Module subclass")
    fixed = {"num_classes": int, "input_shape": tuple[int, ...]}
    declared, params = _user_params(obj, fixed)

    def build(**kwargs: Any) -> nn.Module:
        model = obj(**{k: v for k, v in kwargs.items() if k in declared or k not in fixed})
        if not isinstance(model, nn.Module):
            raise DistillError(f"model {name!r}: the builder returned {type(model).__name__}, not an nn.Module")
        return model

    head = [P(k, P.KEYWORD_ONLY, annotation=t) for k, t in fixed.items()]
    return _dress(build, obj, head + params)


def _dataset(name: str, obj: Any) -> Callable[..., Any]:
    """Wrap a dataset builder so ``seed`` is passed only when it declares it."""
    declared, params = _user_params(obj, {"seed": int})

    def build(*, seed: int = 0, **options: Any) -> Any:
        return obj(**({"seed": seed} if "seed" in declared else {}), **options)

    return _dress(build, obj, [P("seed", P.KEYWORD_ONLY, default=0, annotation=int), *params])


def _user_params(obj: Any, fixed: dict[str, Any]) -> tuple[set[str], list[P]]:
    """The fixed names ``obj`` declares, and its other parameters as keyword-only ones with resolved hints."""
    if not callable(obj):
        raise DistillError(f"{obj!r} is not callable")
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError) as e:
        raise DistillError(f"cannot read the signature of {obj!r} ({e})") from None
    required_positional = [p.name for p in sig.parameters.values()
                           if p.kind is P.POSITIONAL_ONLY and p.default is p.empty]
    if required_positional:
        raise DistillError(f"{obj!r} has positional-only parameters {required_positional}; "
                           "options are passed by keyword")
    hints = _hints(obj)
    declared = {k for k in sig.parameters if k in fixed}
    params = [p.replace(kind=P.KEYWORD_ONLY, annotation=hints.get(k, P.empty))
              if p.kind is not P.VAR_KEYWORD else p.replace(annotation=P.empty)
              for k, p in sig.parameters.items()
              if k not in fixed and p.kind not in (P.POSITIONAL_ONLY, P.VAR_POSITIONAL)]
    params.sort(key=lambda p: p.kind is P.VAR_KEYWORD)
    return declared, params


def _hints(obj: Any) -> dict[str, Any]:
    """Resolved type hints of a function or a class's ``__init__``; {} when they cannot be resolved."""
    try:
        return typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # forward references to names the user's module never defines
        return {}


def _dress(build: Callable[..., Any], obj: Any, params: list[P]) -> Callable[..., Any]:
    """Give the wrapper the user's name, docs and the signature recipes and ``build_model`` inspect."""
    build.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    build.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not P.empty}
    build.__wrapped__ = obj  # type: ignore[attr-defined]
    build.__name__ = getattr(obj, "__name__", build.__name__)
    build.__qualname__ = getattr(obj, "__qualname__", build.__qualname__)
    build.__doc__ = getattr(obj, "__doc__", None)
    build.__module__ = getattr(obj, "__module__", build.__module__)
    return build
