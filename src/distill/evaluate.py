"""Evaluation metrics: accuracy, agreement, calibration, size and latency of a model."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn


class HasXY(Protocol):
    """An in-memory dataset: inputs ``x`` (N, ...) float32 and labels ``y`` (N,) int64."""

    x: Tensor
    y: Tensor


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore every submodule's own flag afterwards.

    Restoring per module (not ``model.train(was_training)``) keeps deliberately frozen
    submodules, e.g. a BatchNorm left in eval inside a training model, as they were.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _logits_of(out: Any) -> Tensor:
    """Models in this library may return a tensor, a ``ModelOutput`` / HF output (``.logits``) or a tuple."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"cannot find logits in model output of type {type(out).__name__}")


def _device_of(model: nn.Module, fallback: torch.device) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else fallback


def _chunks(data: Any, batch_size: int) -> Iterator[Any]:
    """Input batches of a tensor, a dict of tensors or a split (in memory or streamed), in order."""
    if isinstance(data, Tensor):
        yield from (data[i:i + batch_size] for i in range(0, len(data), batch_size))
    elif isinstance(data, dict):
        from distill.data.base import rows_of, take_rows

        n = rows_of(data)
        yield from (take_rows(data, torch.arange(i, min(n, i + batch_size))) for i in range(0, n, batch_size))
    else:
        from distill.data.stream import batches

        yield from (x for _, x in batches(data, batch_size))


def _to(x: Any, device: torch.device) -> Any:
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)


@torch.inference_mode()
def predict(model: nn.Module, data: Any, batch_size: int | None = None, inputs: Any = None) -> Tensor:
    """Logits (N, C) of ``model`` on ``data``, computed in eval mode in batches of ``batch_size`` (None: the
    fastest, measured once per model; ``distill.batching``).

    ``data``: a (N, ...) tensor, a dict of them, or a split (``ArrayDataset`` / ``StreamDataset``); ``inputs``:
    the keys of a dict input the model reads (``distill.models.Keys``). Batches move to the model's device;
    the result is float32 on the CPU. The model's previous train/eval mode is restored afterwards.
    """
    from distill.models.teacher import feed

    if batch_size is None:
        from distill.batching import inference_batch_size

        batch_size = inference_batch_size(model, data, inputs)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from distill.batching import _rows, _take
    from distill.layout import inference_layout

    device = _device_of(model, torch.device("cpu"))
    outs = []
    run = lambda x: _logits_of(feed(model, x, inputs)).float().cpu()  # noqa: E731
    first = _to(_take(data, 1), device) if _rows(data) else None
    with _eval_mode(model), inference_layout(model, first, run) as channels_last:
        for x in _chunks(data, batch_size):
            x = _to(x, device)
            outs.append(run(x.contiguous(memory_format=torch.channels_last) if channels_last else x))
    if not outs:
        raise ValueError("predict() needs at least one input")
    return torch.cat(outs)


def topk_accuracy(logits: Tensor, y: Tensor, k: int = 1) -> float:
    """Fraction (in [0, 1]) of rows whose label is among the ``k`` largest logits."""
    if len(logits) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == y.view(-1, 1).to(top.device)).any(dim=1).float().mean().item()


def agreement(logits: Tensor, ref_logits: Tensor) -> float:
    """Fraction of rows where ``logits`` and ``ref_logits`` have the same arg-max (top-1 agreement)."""
    if logits.shape[0] != ref_logits.shape[0]:
        raise ValueError(f"agreement(): {logits.shape[0]} rows vs {ref_logits.shape[0]} reference rows")
    if len(logits) == 0:
        return float("nan")
    same = logits.argmax(dim=1) == ref_logits.argmax(dim=1).to(logits.device)
    return same.float().mean().item()


def expected_calibration_error(logits: Tensor, y: Tensor, bins: int = 15) -> float:
    """Standard equal-width ECE of the top-1 softmax confidence.

    Bin ``b`` holds confidences in ``(b / bins, (b + 1) / bins]``; ECE is the sample-weighted mean
    over bins of ``|accuracy - mean confidence|``.
    """
    if len(logits) == 0:
        return float("nan")
    probs = logits.float().softmax(dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == y.to(pred.device)).float()
    # ceil(conf * bins) - 1 maps (lo, hi] intervals to their index; clamp guards conf == 0 and rounding.
    idx = (conf * bins).ceil().long().sub(1).clamp(0, bins - 1)
    conf_sum = torch.zeros(bins, device=conf.device).index_add_(0, idx, conf)
    acc_sum = torch.zeros(bins, device=conf.device).index_add_(0, idx, correct)
    # |sum(acc) - sum(conf)| per bin / N equals |B|/N * |acc(B) - conf(B)|.
    return ((acc_sum - conf_sum).abs().sum() / len(conf)).item()


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once, frozen ones included)."""
    return sum(p.numel() for p in model.parameters())


def latency_ms(model: nn.Module, sample: Any, batch_size: int, *, repeats: int = 10, warmup: int = 2,
               budget_s: float = 3.0, inputs: Any = None) -> float:
    """Median wall time in ms of one forward pass at ``batch_size``.

    ``sample`` is one input (1, ...) (or a dict of them, read through ``inputs``), expanded to the batch.
    Runs under ``torch.inference_mode`` in eval mode (previous mode restored). Stops early once ``budget_s``
    seconds have passed, but only after at least 3 timings (or ``repeats`` if fewer), so slow models on CPU
    do not stall a run.
    """
    from distill.models.teacher import feed

    device = _device_of(model, torch.device("cpu"))

    def expand(t: Tensor) -> Tensor:
        return t[:1].to(device).expand(batch_size, *t.shape[1:]).contiguous()

    batch = {k: expand(v) for k, v in sample.items()} if isinstance(sample, dict) else expand(sample)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    timings: list[float] = []
    start = time.perf_counter()
    with _eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            feed(model, batch, inputs)
        sync()
        for _ in range(max(repeats, 1)):
            t0 = time.perf_counter()
            feed(model, batch, inputs)
            sync()  # CUDA is asynchronous: wait, or we time the launch only
            timings.append(time.perf_counter() - t0)
            if time.perf_counter() - start > budget_s and len(timings) >= min(3, repeats):
                break
    return statistics.median(timings) * 1000.0


def _from_history(history: list[dict]) -> tuple[float | None, float | None, int | None]:
    """(top1_last, top1_best, best_epoch) from per-epoch records.

    The best epoch is chosen on ``val_top1`` only (never on test, which would leak the test set into
    model selection); ties go to the EARLIEST such epoch. Epochs without ``val_top1`` are skipped; if
    none has one, top1_best and best_epoch are None.
    """
    last = history[-1].get("test_top1")
    scored = [h for h in history if h.get("val_top1") is not None]
    if not scored:
        return last, None, None
    best = scored[0]
    for h in scored[1:]:
        if h["val_top1"] > best["val_top1"]:  # strict: keeps the earliest on ties
            best = h
    return last, best.get("test_top1"), best.get("epoch")


def model_metrics(model: nn.Module, test_x: Any, test_y: Tensor, *, num_classes: int, inputs: Any = None,
                  teacher_logits: Tensor | None = None, weights_path: str | Path | None = None,
                  history: list[dict] | None = None, latency: bool = True,
                  logits: Tensor | None = None) -> dict[str, float | int | None]:
    """All report metrics of one model on the test set.

    Keys: top1 (this model on test), top1_last, top1_best, best_epoch, top5 (None when num_classes <= 5),
    agreement (top-1 agreement with ``teacher_logits``, None without), ece, params, size_bytes (None
    without ``weights_path``), latency_ms_b1 / latency_ms_b256 (None when ``latency`` is False).

    With a non-empty ``history`` (per-epoch dicts with 'epoch', 'val_top1', 'test_top1'): top1_last is the
    last epoch's test_top1 (falling back to top1 if absent) and top1_best the test_top1 of the epoch with
    the highest val_top1 (earliest on ties). Without history, top1_last = top1_best = top1 and best_epoch
    is None. ``logits``: the model's test logits when already computed (the teacher's, for the agreement column).
    """
    logits = predict(model, test_x, inputs=inputs) if logits is None else logits
    top1 = topk_accuracy(logits, test_y, 1)
    top1_last: float | None = top1
    top1_best: float | None = top1
    best_epoch: int | None = None
    if history:
        last, top1_best, best_epoch = _from_history(history)
        top1_last = top1 if last is None else last
    from distill.data.stream import head

    if isinstance(test_x, (Tensor, dict)):
        sample = {k: v[:1] for k, v in test_x.items()} if isinstance(test_x, dict) else test_x[:1]
    else:
        sample = head(test_x, 1)
    return {
        "top1": top1,
        "top1_last": top1_last,
        "top1_best": top1_best,
        "best_epoch": best_epoch,
        "top5": topk_accuracy(logits, test_y, 5) if num_classes > 5 else None,
        "agreement": agreement(logits, teacher_logits) if teacher_logits is not None else None,
        "ece": expected_calibration_error(logits, test_y),
        "params": count_params(model),
        "size_bytes": os.path.getsize(weights_path) if weights_path is not None else None,
        "latency_ms_b1": latency_ms(model, sample, 1, inputs=inputs) if latency else None,
        "latency_ms_b256": latency_ms(model, sample, 256, inputs=inputs) if latency else None,
    }
