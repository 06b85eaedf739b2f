"""The model registry, ``build_model`` and small helpers shared by the zoo builders.

Every builder has the signature ``fn(*, num_classes, input_shape, **options) -> nn.Module`` and the
module it returns maps a batch ``(B, *input_shape)`` to logits ``(B, num_classes)``. Zoo models end in
a Linear layer named ``fc``, so the tap ``"fc:input"`` is always the penultimate embedding.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from distill.errors import DistillError
from distill.registry import Registry, closest

Builder = Callable[..., nn.Module]

MODELS: Registry[Builder] = Registry("model", "distill.models", adapt="distill.extend:_model")

# Models built from their own arguments, not from the data's input shape: they may read a dict of fields
# (external: any user module; hf, static, bilstm: token ids and attention mask). The tensor zoo is every other name.
SHAPE_FREE = frozenset({"external", "hf", "static", "bilstm", "causal_lm"})

# Arguments every builder receives from build_model itself, never from the user's options.
_FIXED = ("num_classes", "input_shape")


def build_model(name: str, *, num_classes: int, input_shape: tuple[int, ...], **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` for ``num_classes`` classes and per-sample ``input_shape``.

    Unknown or missing options raise a DistillError naming them and the allowed ones; unknown model
    names raise the registry's did-you-mean error.
    """
    builder = MODELS.get(name)
    _check_num_classes(num_classes)
    shape = _check_input_shape(input_shape)
    _check_options(name, builder, kwargs)
    return builder(num_classes=num_classes, input_shape=shape, **kwargs)


def options_of(builder: Builder) -> dict[str, inspect.Parameter]:
    """The user-settable options of a builder (its keyword parameters minus num_classes/input_shape)."""
    params = inspect.signature(builder).parameters
    return {
        k: p for k, p in params.items()
        if k not in _FIXED and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def _check_options(name: str, builder: Builder, kwargs: dict[str, Any]) -> None:
    allowed = options_of(builder)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(builder).parameters.values())
    listing = ", ".join(allowed) or "none"
    for key in kwargs:
        if key not in allowed and not takes_any:
            raise DistillError(
                f"model {name!r}: unknown option {key!r}{closest(key, list(allowed))} (allowed: {listing})"
            )
    for key, p in allowed.items():
        if p.default is p.empty and key not in kwargs:
            raise DistillError(f"model {name!r} needs option {key!r} (allowed: {listing})")


def _check_num_classes(num_classes: Any) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise DistillError(f"num_classes must be a positive integer, got {num_classes!r}")


def _check_input_shape(input_shape: Any) -> tuple[int, ...]:
    ok = isinstance(input_shape, (tuple, list)) and 1 <= len(input_shape) <= 3 and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape
    )
    if not ok:
        raise DistillError(
            f"input_shape must be 1 to 3 positive integers per sample, e.g. (1, 28, 28); got {input_shape!r}"
        )
    return tuple(input_shape)


@dataclass(frozen=True)
class SpatialOps:
    """Layer classes for 1-D ``(C, L)`` or 2-D ``(C, H, W)`` inputs, so one builder serves both."""

    conv: type[nn.Module]
    bn: type[nn.Module]
    maxpool: type[nn.Module]
    avgpool: type[nn.Module]  # adaptive: any spatial size pools to 1


def spatial_ops(model: str, input_shape: tuple[int, ...]) -> SpatialOps:
    """Pick Conv1d/Conv2d (and friends) from ``input_shape``; flat inputs are a DistillError."""
    if len(input_shape) == 2:
        return SpatialOps(nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d)
    if len(input_shape) == 3:
        return SpatialOps(nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)
    raise DistillError(
        f"model {model!r} needs (C, L) sequences or (C, H, W) images, got input_shape {input_shape}; "
        "use 'mlp' for flat features"
    )


def init_weights(model: nn.Module) -> None:
    """He init for convs and unit BatchNorm, as in the CIFAR ResNet papers (Linear keeps torch's init)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def positive_ints(model: str, key: str, value: Any, *, allow_empty: bool = True) -> list[int]:
    """Validate an option that must be a list of positive integers."""
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    )
    if not ok or (not allow_empty and not value):
        raise DistillError(
            f"model {model!r}: option {key!r} must be a list of positive integers, got {value!r}"
        )
    return list(value)


def check_dropout(model: str, value: Any) -> float:
    """Validate a dropout probability in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise DistillError(f"model {model!r}: option 'dropout' must be in [0, 1), got {value!r}")
    return float(value)


def check_int(model: str, key: str, value: Any, minimum: int = 1) -> int:
    """Validate an integer option that must be at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DistillError(f"model {model!r}: option {key!r} must be an integer >= {minimum}, got {value!r}")
    return value
