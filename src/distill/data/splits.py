"""``build_data``: a registered dataset, or the user's own splits, made ready to train.

Both doors end here: a recipe names a registered dataset (whose builder may return in-memory arrays, streamed
Datasets, or a mapping of splits), and ``distill.fit`` hands over Datasets, DataLoaders or ``(x, y)`` tensors.
Either way: missing val/test are split off train (stratified, fixed seed), the label budget is applied to
train, and tensor inputs are normalised (in memory at once; streamed ones per item).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from distill.data.base import (
    DATASETS,
    DataSplits,
    RawSplits,
    Stats,
    _check_inputs,
    _check_kwargs,
    _check_labels,
    _resolve_norm,
    apply_label_budget,
    inferred_classes,
)
from distill.data.stream import as_split, normalize_split, sample_shape
from distill.data.user import _fill_splits
from distill.errors import DistillError

IDENTITY: tuple[Stats, Stats] = ((0.0,), (1.0,))
SPLITS = ("train", "val", "test")


def build_data(name: str, *, seed: int = 0, labels_per_class: int | None = None,
               normalize: tuple[Sequence[float], Sequence[float]] | None = None, workers: int | None = None,
               classes: Sequence[int] | None = None, **kwargs: object) -> DataSplits:
    """Build the registered dataset ``name``: load it, apply the label budget to train (seeded by
    ``seed``) and normalise every split with ``normalize`` or the dataset's default stats. ``classes``: keep
    only the samples of these classes, relabelled 0..len(classes)-1 in the order given (a task of its own).

    A builder returns ``RawSplits``, or a mapping with ``train`` and optionally ``val``, ``test`` and
    ``num_classes``, whose splits may be anything ``distill.fit`` accepts (Datasets stream)."""
    builder = DATASETS.get(name)
    _check_kwargs(name, builder, kwargs)
    raw = builder(seed=seed, **kwargs)
    if isinstance(raw, dict):
        raw = raw_splits(name, workers=workers, **raw)
    elif not isinstance(raw, RawSplits):
        raise DistillError(f"dataset {name!r}: its builder returned a {type(raw).__name__}; expected RawSplits or "
                           "a mapping with 'train' (and optionally 'val', 'test', 'num_classes')")
    if classes is not None:
        if raw.train.y.ndim == 2:
            raise DistillError(f"data.classes: dataset {name!r} predicts tokens; there are no classes to select")
        raw = select_classes(raw, list(classes))
    return ready(name, raw, seed=seed, labels_per_class=labels_per_class, normalize=normalize)


def raw_splits(name: str, *, train: Any, val: Any = None, test: Any = None, num_classes: int | None = None,
               workers: int | None = None, mean: Stats | None = None, std: Stats | None = None) -> RawSplits:
    """User splits as RawSplits: converted (``as_split``), val/test split off train when missing (10% each),
    classes counted from the labels when not given. Inputs stay as given unless ``mean``/``std`` are set."""
    parts = {k: as_split(v, f"dataset {name!r} {k}", workers) if v is not None else None
             for k, v in (("train", train), ("val", val), ("test", test))}
    if len(parts["train"]) == 0:
        raise DistillError(f"dataset {name!r}: the train split is empty")
    tr, va, te = _fill_splits(parts["train"], parts["val"], parts["test"], 0.1, 0.1)
    if num_classes is None:
        num_classes = inferred_classes(name, (tr, va, te))
    return RawSplits(tr, va, te, num_classes=num_classes, mean=mean or IDENTITY[0], std=std or IDENTITY[1])


def select_classes(raw: RawSplits, classes: list[int]) -> RawSplits:
    """The samples of ``classes`` only, in every split, relabelled by their position in ``classes``."""
    if len(set(classes)) != len(classes) or not classes or min(classes) < 0 or max(classes) >= raw.num_classes:
        raise DistillError(f"data.classes: {classes} must be distinct class indices in [0, {raw.num_classes})")
    remap = torch.full((raw.num_classes,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))

    def keep(split: Any) -> Any:
        rows = (remap[split.y] >= 0).nonzero().squeeze(1)  # (K,)
        part = split.subset(rows)
        return part.with_targets(remap[part.y])

    names = tuple(raw.class_names[c] for c in classes) if raw.class_names else None
    return RawSplits(keep(raw.train), keep(raw.val), keep(raw.test), num_classes=len(classes), mean=raw.mean,
                     std=raw.std, class_names=names)


def ready(name: str, raw: RawSplits, *, seed: int, labels_per_class: int | None,
          normalize: tuple[Sequence[float], Sequence[float]] | None) -> DataSplits:
    """Label budget and normalisation applied to every split; the result the engine trains on."""
    _check_labels(name, raw)
    _check_inputs(name, raw)
    if labels_per_class is not None and raw.train.y.ndim == 2:
        raise DistillError(f"data.labels_per_class: dataset {name!r} predicts tokens (every token is its own label); "
                           "cap the text with its train_tokens instead")
    input_shape = sample_shape(raw.train)
    if isinstance(input_shape, dict):
        if normalize is not None:
            raise DistillError(f"dataset {name!r} has dict inputs {sorted(input_shape)}: data.normalize applies to "
                               "tensor inputs only")
        mean, std = IDENTITY
    else:
        mean, std = _resolve_norm(raw, normalize, input_shape[0] if len(input_shape) >= 2 else 1)
    full_y = raw.train.y.clone()  # never touch the builder's (possibly cached) tensors
    y = apply_label_budget(full_y, raw.num_classes, labels_per_class, seed) if labels_per_class is not None else full_y
    same = (tuple(mean), tuple(std)) == IDENTITY
    train, val, test = (s if same else normalize_split(s, mean, std) for s in (raw.train, raw.val, raw.test))
    return DataSplits(train=train.with_targets(y), val=val.with_targets(raw.val.y.clone()),
                      test=test.with_targets(raw.test.y.clone()), num_classes=raw.num_classes,
                      input_shape=input_shape, mean=tuple(mean), std=tuple(std), name=name,
                      class_names=raw.class_names, full_y=full_y if labels_per_class is not None else None)


def python_data(train: Any, val: Any = None, test: Any = None, *, seed: int = 0, num_classes: int | None = None,
                labels_per_class: int | None = None, workers: int | None = None) -> DataSplits:
    """``distill.fit``'s data: Datasets, DataLoaders or ``(x, y)`` tensors (not normalised: inputs are used as
    given), or a registered dataset name / ``{"name": ..., **options}`` mapping."""
    if isinstance(train, (str, dict)) and not (isinstance(train, dict) and "train" in train):
        spec = {"name": train} if isinstance(train, str) else dict(train)
        if val is not None or test is not None:
            raise DistillError("fit: a registered dataset brings its own val/test splits; do not pass val=/test=")
        name = spec.pop("name", None)
        if not isinstance(name, str):
            raise DistillError(f"fit: train={train!r} names no dataset (give {{'name': ..., **options}})")
        return build_data(name, seed=seed, labels_per_class=labels_per_class, workers=workers, **spec)
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
        raise DistillError(f"fit: num_classes must be an integer, got {num_classes!r}")
    raw = raw_splits("python", train=train, val=val, test=test, num_classes=num_classes, workers=workers)
    return ready("python", raw, seed=seed, labels_per_class=labels_per_class, normalize=None)

