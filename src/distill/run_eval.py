"""Per-epoch evaluation of a role (top-1 on validation and test; next-token top-1 and perplexity for a language
model) and the one-line description of a run's data."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from distill.data import DataSplits, StreamDataset
from distill.engine.dist import rank, sum_across_ranks, world_size
from distill.evaluate import predict, topk_accuracy
from distill.lm_eval import LM_EVAL_BATCH, lm_epoch_eval
from distill.models import Keys


def epoch_eval(data: DataSplits, batch_size: int, inputs: Keys = None) -> Callable[[nn.Module], dict[str, float]]:
    """The default per-epoch evaluation of a role: top-1 on the validation and test splits (next-token top-1
    and perplexity for a language model)."""
    if data.tokens:
        return partial(lm_epoch_eval, data, batch_size or LM_EVAL_BATCH, inputs)

    def evaluate(model: nn.Module) -> dict[str, float]:
        return {"val_top1": epoch_top1(model, data.val, batch_size, inputs),
                "test_top1": epoch_top1(model, data.test, batch_size, inputs)}
    return evaluate


def epoch_top1(model: nn.Module, split: Any, batch_size: int, inputs: Keys = None) -> float:
    """Top-1 accuracy on ``split``. Under torchrun each rank predicts its own contiguous share and the correct
    counts are summed: every rank gets the same number, and none waits while another evaluates everything."""
    if world_size() == 1:
        return topk_accuracy(predict(model, split, batch_size, inputs), split.y)
    per = -(-len(split) // world_size())  # ceil: the last ranks may get fewer (or no) rows
    lo, hi = min(len(split), rank() * per), min(len(split), (rank() + 1) * per)
    part = split.subset(torch.arange(lo, hi))
    correct = int((predict(model, part, batch_size, inputs).argmax(dim=1) == part.y).sum()) if hi > lo else 0
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")  # nccl reduces device tensors
    counts = sum_across_ranks(torch.tensor([correct, hi - lo], dtype=torch.float64, device=device))
    return float(counts[0] / counts[1])


def describe_data(data: DataSplits) -> str:
    """The one-line description of a run's data that every strategy logs first."""
    labelled = len(data.labelled_train())
    streamed = ", streamed" if isinstance(data.train, StreamDataset) else ""
    shape = data.input_shape if isinstance(data.input_shape, dict) else tuple(data.input_shape)
    if data.tokens:
        return (f"data: {data.name} train {len(data.train)} / val {len(data.val)} / test {len(data.test)} blocks of "
                f"{data.train.y.shape[1]} tokens, vocabulary {data.num_classes:,}")
    return (f"data: {data.name} train {len(data.train)} ({labelled} labelled) / val {len(data.val)} / "
            f"test {len(data.test)}, {data.num_classes} classes, input {shape}{streamed}")
