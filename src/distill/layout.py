"""Channels-last memory for CNN inference on a CPU.

On this project's CPU a CNN's inference runs 1.2-5.6x faster with its weights and inputs in channels-last memory
(``python benchmarks/inference_batch.py``, docs/BENCHMARKS.md). Frozen teachers switch for good
(``FrozenTeacher``); a student being trained is switched only for the length of an evaluation
(``inference_layout``), its own tensors put back afterwards, so its training is untouched. The choice depends on
the model and input alone (no timing): a model on the CPU with a 2-D convolution, fed a 4-D batch, whose forward
accepts the layout (a ``.view`` of a conv output does not: such a model stays as it is).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn


def wants_channels_last(model: nn.Module, x: Any) -> bool:
    """True when ``model`` (on the CPU, with a Conv2d) is fed a 4-D tensor batch ``x``."""
    if not isinstance(x, Tensor) or x.ndim != 4 or x.device.type != "cpu":
        return False
    p = next(model.parameters(), None)
    return (p is None or p.device.type == "cpu") and any(isinstance(m, nn.Conv2d) for m in model.modules())


@contextlib.contextmanager
def inference_layout(model: nn.Module, x: Any, run: Any) -> Iterator[bool]:
    """Within: ``model`` in channels-last memory when it wants it and ``run(x_channels_last)`` (a probe on one
    sample) succeeds; yields whether it is. After: every parameter, gradient and buffer tensor of ``model``
    is the very one it had before (values are never changed by a layout, so nothing is copied back)."""
    if not wants_channels_last(model, x):
        yield False
        return
    params = [(p, p.data, p.grad) for p in model.parameters()]
    buffers = [(m, name, b) for m in model.modules() for name, b in m._buffers.items()]
    model.to(memory_format=torch.channels_last)
    try:
        try:
            run(x[:1].contiguous(memory_format=torch.channels_last))
            ok = True
        except RuntimeError:  # e.g. a .view() of a conv output, which needs contiguous memory
            ok = False
        if not ok:
            _restore(params, buffers)
        yield ok
    finally:
        _restore(params, buffers)


def _restore(params: list[tuple[nn.Parameter, Tensor, Tensor | None]],
             buffers: list[tuple[nn.Module, str, Tensor | None]]) -> None:
    for p, data, grad in params:
        p.data, p.grad = data, grad
    for m, name, b in buffers:
        m._buffers[name] = b
