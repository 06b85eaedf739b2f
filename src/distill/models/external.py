"""Any ``nn.Module`` named by import path, e.g. a pretrained teacher from another package.

The module is imported only when the model is built, so optional dependencies never load at
``import distill``. Weights are loaded by the caller (``distill.io``), not here.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from torch import nn

from distill.errors import DistillError
from distill.io import first_line
from distill.models.base import MODELS
from distill.registry import closest


def resolve(target: str) -> Any:
    """Import ``'package.module:Attr'`` (``Attr`` may be dotted) and return the attribute."""
    if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
        raise DistillError(
            f"external model target must look like 'package.module:Class', got {target!r}"
        )
    module_name, attr_path = target.split(":")
    try:
        obj: Any = _import(module_name)
    except ImportError as e:
        raise DistillError(f"external model {target!r}: cannot import {module_name!r} ({e})") from None
    except Exception as e:  # a broken third-party module must still give a one-line error
        raise DistillError(
            f"external model {target!r}: importing {module_name!r} failed ({type(e).__name__}: {e})"
        ) from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            raise DistillError(
                f"external model {target!r}: {getattr(obj, '__name__', module_name)!r} has no attribute "
                f"{part!r}{closest(part, public)}"
            )
        obj = getattr(obj, part)
    return obj


def _import(module_name: str) -> Any:
    """Import ``module_name``; a module not found on ``sys.path`` is also looked for in the current directory
    (as ``python -m`` would), so a recipe can name a model file of the project it is run from."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if e.name != module_name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


@MODELS.register("external")
def external(
    *, num_classes: int, input_shape: tuple[int, ...], target: str, kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """Construct ``target`` (a class or factory function) with ``kwargs``.

    ``num_classes`` and ``input_shape`` are not passed on: the run checks the output size by a dry run.
    """
    factory = resolve(target)
    if not callable(factory):
        raise DistillError(
            f"external model {target!r} is a {type(factory).__name__}, not a class or function"
        )
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise DistillError(f"external model {target!r}: 'kwargs' must be a mapping of names, got {kwargs!r}")
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise DistillError(
            f"external model {target!r}: constructor rejected kwargs {kwargs} ({type(e).__name__}: {first_line(e)})"
        ) from None
    except Exception as e:  # user code may raise anything (a missing file, an assertion, CUDA-only code)
        raise DistillError(f"external model {target!r}: its constructor raised {type(e).__name__}: "
                           f"{first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise DistillError(
            f"external model {target!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model
