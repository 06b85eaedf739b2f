"""Check a component's keyword arguments against its signature, naming the offending key."""

from __future__ import annotations

import inspect
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
