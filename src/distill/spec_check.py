"""Check a component's keyword arguments against its signature, naming the offending key."""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable
from typing import Any

from pydantic import ConfigDict, ValidationError, create_model

from distill.errors import DistillError
from distill.registry import closest


def signature_params(fn: Callable[..., Any], skip: tuple[str, ...] = ()) -> dict[str, inspect.Parameter]:
    """Keyword-usable parameters of ``fn`` (a function or a class's ``__init__``), minus ``skip``."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = inspect.signature(target).parameters
    return {n: p for n, p in params.items()
            if n not in ("self", *skip) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], where: str, what: str,
                 skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Validate ``kwargs`` for ``fn``: unknown keys, missing required ones and wrong types raise a
    DistillError like ``student.hiden: unknown key for model 'mlp'; did you mean 'hidden'?``."""
    params = signature_params(fn, skip)
    for key in kwargs:
        if key not in params:
            raise DistillError(f"{where}.{key}: unknown key for {what}{closest(key, list(params))} "
                               f"(allowed: {', '.join(params) or 'none'})")
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: accept values as given
        hints = {}
    fields = {n: (hints.get(n, Any), ... if p.default is p.empty else p.default) for n, p in params.items()}
    model = create_model("Args", __config__=ConfigDict(extra="forbid", strict=True,
                                                       arbitrary_types_allowed=True), **fields)
    try:
        model.model_validate(kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise DistillError(f"{where}.{key}: {err['msg'].lower()} for {what} "
                           f"(got {_short(err.get('input'))})") from None
    return kwargs


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Method arguments that weight a loss term, and those that are temperatures, by name across every method.
WEIGHT_KEYS = ("weight", "alpha", "beta", "gamma")
TEMPERATURE_KEYS = ("T", "temperature", "tau", "nce_t")


def printable_key(key: Any) -> str:
    """A key as it can appear in a one-line error: a key holding a newline or another control character is
    escaped (``'a\\nb'``), so the message stays on one line."""
    text = str(key)
    return text if text.isprintable() else repr(text)[1:-1]


def numbers_in(value: Any, path: str) -> list[tuple[str, float]]:
    """Every real number inside ``value`` (nested lists and dicts), with its dotted path."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [(path, float(value))]
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in numbers_in(v, f"{path}.{printable_key(k)}")]
    if isinstance(value, (list, tuple)):
        return [n for i, v in enumerate(value) for n in numbers_in(v, f"{path}.{i}")]
    return []


def check_method_numbers(kwargs: dict[str, Any], weight: Any, where: str, what: str,
                         allow_negative: bool = False) -> None:
    """Every number a method takes is finite; temperatures are positive; loss weights (``weight``, ``alpha``,
    ``beta``, ``gamma``, ``w_*``) are not negative unless ``allow_negative`` (gradient ascent on a term is a
    deliberate choice, never a typo's). One DistillError naming the key."""
    for path, v in numbers_in({**kwargs, "weight": weight}, where):
        if not math.isfinite(v):
            raise DistillError(f"{path}: must be a finite number for {what}, got {v}")
    for key, value in kwargs.items():
        if key in TEMPERATURE_KEYS and isinstance(value, (int, float)) and value <= 0:
            raise DistillError(f"{where}.{key}: a temperature must be > 0 for {what}, got {value}")
    if allow_negative:
        return
    weights = {k: v for k, v in {**kwargs, "weight": weight}.items() if k in WEIGHT_KEYS or k.startswith("w_")}
    for path, v in numbers_in(weights, where):
        if v < 0:
            raise DistillError(f"{path}: a negative loss weight ({v}) makes training ascend that term for {what}; "
                               "set allow_negative: true on the method entry if that is intended")
