"""Splits read item by item from any map-style ``torch.utils.data.Dataset``: data that does not fit in memory.

A ``StreamDataset`` is the streamed twin of the in-memory ``ArrayDataset``: the same ``len``, ``y``, ``take``,
``subset`` and ``with_targets``, so the engine, the teacher cache, evaluation and DDP treat both alike. Batches
of a training epoch come from ``BatchLoader`` (order a function of (seed, epoch), sharded across ranks); here a
split is read in order for evaluation and cache building (``batches``), with DataLoader workers.

An item is ``(input, target)`` or a dict holding ``target`` (or ``label``) beside its input fields; ``input``
is a tensor (or numpy array) or a dict of them. Targets come from the dataset's ``targets`` attribute when it
has one (torchvision's convention), else from one pass over the items before training starts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from distill.data.base import ArrayDataset, Input, take_rows
from distill.errors import DistillError

TARGET_KEYS = ("target", "label")
ITEM_HELP = "expected (input, target) or a dict with a 'target' key beside its input fields"


def default_workers() -> int:
    """DataLoader workers for streamed splits when none are set: two, or fewer on a smaller machine."""
    return min(2, os.cpu_count() or 1)


def _tensor(value: Any, where: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(value)
    if isinstance(value, (int, float, bool)):
        return torch.tensor(value)
    raise DistillError(f"{where} is a {type(value).__name__}, expected a tensor or numpy array")


def parse_item(item: Any, where: str = "dataset item") -> tuple[Input, Any]:
    """Split one dataset item into (input, target); anything else is a one-line DistillError."""
    if isinstance(item, dict):
        key = next((k for k in TARGET_KEYS if k in item), None)
        if key is None:
            raise DistillError(f"{where} is a dict with keys {sorted(map(str, item))} but no 'target': {ITEM_HELP}")
        fields = {str(k): _tensor(v, f"{where} field {k!r}") for k, v in item.items() if k not in TARGET_KEYS}
        if not fields:
            raise DistillError(f"{where} has a target but no input fields")
        return fields, item[key]
    if isinstance(item, (tuple, list)) and len(item) == 2:
        x, target = item
        if isinstance(x, dict):
            return {str(k): _tensor(v, f"{where} input field {k!r}") for k, v in x.items()}, target
        return _tensor(x, f"{where} input"), target
    what = f"a {type(item).__name__} of {len(item)}" if isinstance(item, (tuple, list)) else f"a {type(item).__name__}"
    raise DistillError(f"{where} is {what}: {ITEM_HELP}")


def _label(target: Any, where: str) -> int:
    value = target.item() if isinstance(target, (Tensor, np.ndarray)) and target.size and target.ndim == 0 else target
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DistillError(f"{where}: the target must be an integer class label, got {target!r}")
    return int(value)


class Normalize:
    """Picklable per-channel ``(x - mean) / std`` for a single input tensor (C, ...) (worker processes)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, x: Input) -> Input:
        if isinstance(x, dict):
            return x
        shape = (-1,) + (1,) * (x.ndim - 1) if len(self.mean) > 1 else (1,)
        m = torch.tensor(self.mean, dtype=torch.float32).view(shape)
        s = torch.tensor(self.std, dtype=torch.float32).view(shape)
        return (x.float() - m) / s


class _Inputs(Dataset):
    """Position ``p`` of a split -> the input of source item ``rows[p]`` (targets come from the split)."""

    def __init__(self, source: Dataset, rows: Tensor, transform: Callable[[Input], Input] | None) -> None:
        self.source, self.rows, self.transform = source, rows, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, pos: int) -> Input:
        row = int(self.rows[pos])
        x, _ = parse_item(self.source[row], f"dataset item {row}")
        return self.transform(x) if self.transform is not None else x


class StreamDataset:
    """A split streamed from a map-style Dataset: ``y`` (N,) targets (label budget applied), ``rows`` (N,) the
    source items it is made of, ``transform`` applied to each input (normalisation), ``workers`` per DataLoader."""

    def __init__(self, source: Dataset, y: Tensor, rows: Tensor | None = None,
                 transform: Callable[[Input], Input] | None = None, workers: int | None = None) -> None:
        self.source, self.y = source, y
        self.rows = torch.arange(len(y)) if rows is None else rows
        self.transform = transform
        self.workers = default_workers() if workers is None else workers

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def _replace(self, **changes: Any) -> StreamDataset:
        args = {"source": self.source, "y": self.y, "rows": self.rows, "transform": self.transform,
                "workers": self.workers, **changes}
        return StreamDataset(**args)

    def subset(self, index: Tensor) -> StreamDataset:
        """Positions ``index`` (K,) as a new split over the same source."""
        return self._replace(y=self.y[index], rows=self.rows[index])

    def with_targets(self, y: Tensor) -> StreamDataset:
        """The same items with other targets."""
        return self._replace(y=y)

    def with_transform(self, transform: Callable[[Input], Input] | None) -> StreamDataset:
        """The same items with another per-input transform."""
        return self._replace(transform=transform)

    def inputs(self) -> Dataset:
        """The map-style Dataset of inputs (by position) that DataLoaders read."""
        return _Inputs(self.source, self.rows, self.transform)

    def take(self, index: Tensor) -> Input:
        """The inputs at positions ``index`` (K,), read in this process and collated: for a few samples."""
        ds = self.inputs()
        return default_collate([ds[int(i)] for i in index])

    def loader(self, batch_sampler: Any, *, pin_memory: bool = False, persistent: bool = False) -> DataLoader:
        """A DataLoader over positions; its own generator keeps the global RNG untouched (resume, equality)."""
        return DataLoader(self.inputs(), batch_sampler=batch_sampler, num_workers=self.workers,
                          pin_memory=pin_memory, persistent_workers=persistent and self.workers > 0,
                          generator=torch.Generator().manual_seed(0))


def batches(split: Any, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[Tensor, Input]]:
    """``(index, input)`` batches of positions ``[start, stop)`` of a split, in order."""
    stop = len(split) if stop is None else stop
    if isinstance(split, StreamDataset):
        chunks = [list(range(b, min(stop, b + batch_size))) for b in range(start, stop, batch_size)]
        for chunk, x in zip(chunks, split.loader(chunks)):
            yield torch.tensor(chunk), x
        return
    for b in range(start, stop, batch_size):
        index = torch.arange(b, min(stop, b + batch_size))
        yield index, split.take(index)


def head(split: Any, n: int) -> Input:
    """The inputs of the first ``n`` samples (fewer when the split is smaller), batched."""
    return split.take(torch.arange(min(n, len(split))))


def sample_shape(split: Any) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
    """Per-sample input shape (a dict of shapes for dict inputs), from the first sample."""
    x = head(split, 1)
    return {k: tuple(v.shape[1:]) for k, v in x.items()} if isinstance(x, dict) else tuple(x.shape[1:])


def targets_of(source: Dataset, name: str, workers: int) -> Tensor:
    """(N,) long targets: the ``targets`` attribute when it fits, else one pass over the items."""
    n = len(source)  # type: ignore[arg-type]
    known = getattr(source, "targets", None)
    if known is not None and len(known) == n:
        return torch.as_tensor(np.asarray(known), dtype=torch.int64).reshape(n)
    loader = DataLoader(source, batch_size=256, num_workers=workers, collate_fn=_targets_only,
                        generator=torch.Generator().manual_seed(0))
    try:
        return torch.cat([torch.tensor(t, dtype=torch.int64) for t in loader])
    except DistillError as e:
        raise DistillError(f"{name}: {e}") from None


def _targets_only(items: list[Any]) -> list[int]:
    return [_label(parse_item(item)[1], "dataset item") for item in items]


def from_dataset(source: Any, name: str, workers: int | None = None) -> StreamDataset:
    """A torch Dataset as a streamed split, its first item's form checked now, before any training."""
    if not hasattr(source, "__getitem__") or not hasattr(source, "__len__"):
        raise DistillError(f"{name}: a {type(source).__name__} is not a map-style Dataset (needs __getitem__ and "
                           "__len__)")
    if len(source) == 0:
        raise DistillError(f"{name}: the dataset is empty")
    first_x, first_t = parse_item(source[0], f"{name}: item 0")
    _label(first_t, f"{name}: item 0")
    workers = default_workers() if workers is None else workers
    return StreamDataset(source, targets_of(source, name, workers), workers=workers)


def as_split(obj: Any, name: str, workers: int | None = None) -> ArrayDataset | StreamDataset:
    """What users hand us as a split: an ``(x, y)`` pair of tensors (x may be a dict), a Dataset, a DataLoader
    that does not shuffle, or one of our own splits."""
    if isinstance(obj, (ArrayDataset, StreamDataset)):
        return obj
    if isinstance(obj, DataLoader):
        if isinstance(obj.sampler, torch.utils.data.RandomSampler) or obj.batch_sampler is not None and \
                not isinstance(obj.batch_sampler.sampler, torch.utils.data.SequentialSampler):
            raise DistillError(f"{name}: a shuffling DataLoader cannot be resumed exactly: distill shuffles with "
                               "its own sampler (order a function of seed and epoch). Pass the Dataset itself, or "
                               "a DataLoader with shuffle=False")
        return from_dataset(obj.dataset, name, obj.num_workers if workers is None else workers)
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[1], Tensor):
        x, y = obj
        if not isinstance(x, (Tensor, dict)):
            raise DistillError(f"{name}: (x, y) needs x as a tensor or a dict of tensors, got {type(x).__name__}")
        try:
            return ArrayDataset(x, y.long())
        except ValueError as e:
            raise DistillError(f"{name}: {e}") from None
    if isinstance(obj, Dataset) or (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")):
        return from_dataset(obj, name, workers)
    raise DistillError(f"{name}: a {type(obj).__name__} is not data: give a Dataset, a DataLoader, (x, y) tensors "
                       "or a registered dataset name")


def normalize_split(split: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """``(x - mean) / std`` on a split's tensor inputs (dict inputs are left as they are)."""
    from distill.data.base import normalize

    if isinstance(split, StreamDataset):
        return split.with_transform(Normalize(mean, std))
    if isinstance(split.x, dict):
        return split
    return ArrayDataset(normalize(split.x, mean, std), split.y)


__all__ = ["StreamDataset", "as_split", "batches", "from_dataset", "head", "normalize_split", "parse_item",
           "sample_shape", "take_rows"]
