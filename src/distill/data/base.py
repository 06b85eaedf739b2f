"""In-memory datasets, the dataset registry and ``build_data`` (label budget + normalisation)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from distill.errors import DistillError
from distill.registry import Registry, closest
from distill.types import UNLABELLED

Stats = tuple[float, ...]


Input = Tensor | dict[str, Tensor]
"""A batch's input: one tensor (B, ...), or named tensors that all have B rows (several fields of a sample)."""


def take_rows(x: Input, index: Tensor) -> Input:
    """Rows ``index`` (K,) of an input: ``x[index]``, field by field for a dict."""
    return {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]


def rows_of(x: Input) -> int:
    """N, the number of rows of an input (every field of a dict must agree)."""
    sizes = {k: int(v.shape[0]) for k, v in x.items()} if isinstance(x, dict) else {"x": int(x.shape[0])}
    if len(set(sizes.values())) > 1:
        raise DistillError(f"input fields disagree on the number of samples: {sizes}")
    if not sizes:
        raise DistillError("a dict input needs at least one field")
    return next(iter(sizes.values()))


@dataclass
class ArrayDataset:
    """A whole split held in memory (the fast path: batches are gathered by index, no DataLoader).

    x: (N, *input_shape) float32, or a dict of named (N, ...) tensors (several fields per sample).
    y: (N,) int64; ``UNLABELLED`` (-1) marks transfer-set samples. Or (N, S): a target per token (the next
       token of a language-model block, ``distill.data.corpus``; -100 where nothing counts).
    """

    x: Input
    y: Tensor

    def __post_init__(self) -> None:
        if self.y.ndim not in (1, 2) or rows_of(self.x) != self.y.shape[0]:
            shape = {k: tuple(v.shape) for k, v in self.x.items()} if isinstance(self.x, dict) else tuple(self.x.shape)
            raise ValueError(f"x {shape} and y {tuple(self.y.shape)} disagree on N")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, index: Tensor) -> Input:
        """The inputs of rows ``index`` (K,), batched."""
        return take_rows(self.x, index)

    def subset(self, index: Tensor) -> ArrayDataset:
        """Rows ``index`` (a (K,) long tensor) as a new dataset."""
        return ArrayDataset(take_rows(self.x, index), self.y[index])

    def with_targets(self, y: Tensor) -> ArrayDataset:
        """The same inputs with other targets (e.g. every label, without the label budget)."""
        return ArrayDataset(self.x, y)


@dataclass
class RawSplits:
    """What a registered builder returns: every sample labelled, x in the dataset's own domain
    (e.g. pixels in [0, 1]), plus the normalisation to use when the recipe names none."""

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    num_classes: int
    mean: Stats
    std: Stats
    class_names: tuple[str, ...] | None = None


@dataclass
class DataSplits:
    """Ready-to-train splits. ``mean``/``std`` have already been applied to the inputs of every split;
    ``train.y`` is ``UNLABELLED`` for transfer samples outside the label budget, ``full_y`` keeps every label.

    Each split is an in-memory ``ArrayDataset`` (the fast path) or a ``StreamDataset`` read item by item through
    a DataLoader. ``input_shape`` is per sample; for dict inputs it maps each field to its shape.
    """

    train: Any
    val: Any
    test: Any
    num_classes: int
    input_shape: tuple[int, ...] | dict[str, tuple[int, ...]]
    mean: Stats
    std: Stats
    name: str
    class_names: tuple[str, ...] | None = None
    full_y: Tensor | None = None

    @property
    def tokens(self) -> bool:
        """True for a language-model corpus: targets per token, (N, S), logits (B, S, V)."""
        return self.test.y.ndim == 2

    @property
    def paired(self) -> bool:
        """True when teacher and student read two tokenisations of one text, aligned (``corpus_pair``)."""
        return isinstance(self.input_shape, dict) and "align" in self.input_shape

    def labelled_train(self) -> Any:
        """Only the labelled part of train: what a student trained from scratch sees."""
        if self.train.y.ndim == 2:
            return self.train  # token targets: every block is text to learn from
        keep = (self.train.y != UNLABELLED).nonzero().squeeze(1)  # (K,)
        return self.train.subset(keep)

    def teacher_train(self) -> Any:
        """The training split with every label: a teacher trained here is not bound by the label budget."""
        return self.train if self.full_y is None else self.train.with_targets(self.full_y)

    def shape_for(self, keys: str | list[str] | None) -> tuple[int, ...] | None:
        """The per-sample input shape a model reading ``keys`` sees (zoo models are built for it); None when it
        reads several fields of a dict input, or every field under a prefix (``teacher``: ``teacher.input_ids``,
        ...)."""
        if not isinstance(self.input_shape, dict):
            return tuple(self.input_shape)
        if isinstance(keys, str) and not any(k.startswith(keys + ".") for k in self.input_shape):
            if keys not in self.input_shape:
                raise DistillError(f"a model reads input key {keys!r} but dataset '{self.name}' has keys "
                                   f"{sorted(self.input_shape)}")
            return tuple(self.input_shape[keys])
        return None


DATASETS: Registry[Callable[..., RawSplits]] = Registry("dataset", "distill.datasets", adapt="distill.extend:_dataset")


def _stat_shape(x: Tensor, n: int) -> tuple[int, ...]:
    """Broadcast shape for per-channel stats: channel dim is 1 when samples are >= 2-D."""
    if n == 1:
        return (1,) * x.ndim
    if x.ndim < 3 or x.shape[1] != n:
        raise ValueError(f"{n} mean/std values do not match input of shape {tuple(x.shape)}")
    return (1, n) + (1,) * (x.ndim - 2)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Return ``(x - mean) / std`` as float32; stats are per channel (dim 1) when ``x.ndim >= 3``,
    otherwise a single scalar pair."""
    shape = _stat_shape(x, len(mean))
    m = torch.tensor(mean, dtype=torch.float32).reshape(shape)
    s = torch.tensor(std, dtype=torch.float32).reshape(shape)
    return (x.float() - m) / s


def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Inverse of ``normalize``: back to the dataset's own domain (e.g. pixels in [0, 1])."""
    shape = _stat_shape(x, len(mean))
    m = torch.tensor(mean, dtype=torch.float32).reshape(shape)
    s = torch.tensor(std, dtype=torch.float32).reshape(shape)
    return x.float() * s + m


def channel_stats(x: Tensor, per_channel: bool = True) -> tuple[Stats, Stats]:
    """Mean/std of ``x`` (N, ...): per channel (dim 1) for >= 2-D samples, else one scalar pair.
    A zero std becomes 1 so constant inputs do not divide by zero."""
    if per_channel and x.ndim >= 3:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()  # (C, N*H*W)
    else:
        flat = x.reshape(1, -1).double()  # (1, N*D)
    mean = flat.mean(dim=1).tolist()
    std = [s if s > 0 else 1.0 for s in flat.std(dim=1).tolist()]
    return tuple(mean), tuple(std)


def stratified_split(y: Tensor, fractions: Sequence[float], seed: int = 0) -> list[Tensor]:
    """Split row indices into ``len(fractions) + 1`` parts (the last takes the rest), keeping each
    class's share in every part. Returns sorted (K,) long index tensors.

    Each sample gets the key (rank within its class in a random order) / (class size); sorting by
    it interleaves the classes evenly, so any prefix is stratified and part sizes are exact.
    """
    n = len(y)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)  # (N,)
    key = torch.empty(n, dtype=torch.float64)
    for c in y.unique().tolist():
        rows = perm[y[perm] == c]  # this class, in random order
        key[rows] = (torch.arange(len(rows), dtype=torch.float64) + 0.5) / len(rows)
    order = perm[torch.argsort(key[perm], stable=True)]  # ties broken by the random order
    sizes = [max(1, round(f * n)) if f > 0 else 0 for f in fractions]
    if sum(sizes) >= n:
        raise DistillError(f"cannot split {n} samples into parts of {sizes} and a non-empty rest")
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    bounds.append(n)
    return [order[a:b].sort().values for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def check_int(key: str, value: object, minimum: int | None = None) -> None:
    """Raise a DistillError naming ``key`` unless ``value`` is an int (not bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise DistillError(f"{key} must be an integer{bound}, got {value!r}")


def _check_kwargs(name: str, builder: Callable[..., RawSplits], kwargs: dict) -> None:
    """Unknown or missing builder options become a DistillError naming the key."""
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [k for k in params if k != "seed"]
    for key in kwargs:
        if key not in allowed:
            hint = closest(key, allowed)
            raise DistillError(
                f"dataset {name!r}: unknown option {key!r}{hint} (allowed: {', '.join(allowed) or 'none'})"
            )
    for key, p in params.items():
        if key != "seed" and p.default is inspect.Parameter.empty and key not in kwargs:
            raise DistillError(f"dataset {name!r}: missing required option {key!r}")


MAX_CLASSES = 1 << 24  # a label id beyond this is a data error (a hash, a row id), not a class to allocate logits for


def _check_labels(name: str, raw: RawSplits) -> None:
    """Every split non-empty with labels in 0..num_classes-1, at least two classes to tell apart, and a class
    count a model can hold: one DistillError naming the dataset and split otherwise."""
    if raw.num_classes > MAX_CLASSES:
        present = int(torch.unique(raw.train.y).numel())
        raise DistillError(f"dataset {name!r}: labels imply {raw.num_classes:,} classes (largest label "
                           f"{raw.num_classes - 1}) for {present} distinct labels in the train split; remap the labels "
                           "to 0..K-1")
    if raw.train.y.ndim == 2:
        return _check_token_targets(name, raw)
    classes = torch.unique(raw.train.y) if len(raw.train) else torch.empty(0)
    if len(classes) == 1:
        raise DistillError(f"dataset {name!r}: every train label is {int(classes[0])}; a classifier needs at least "
                           "two classes (every model would score 100%)")
    for split in ("train", "val", "test"):
        ds: ArrayDataset = getattr(raw, split)
        if len(ds) == 0:
            raise DistillError(f"dataset {name!r}: the {split} split is empty")
        lo, hi = int(ds.y.min()), int(ds.y.max())
        if lo < 0 or hi >= raw.num_classes:
            bad = lo if lo < 0 else hi
            raise DistillError(
                f"dataset {name!r}: label {bad} in the {split} split is outside 0..{raw.num_classes - 1}"
            )


def _check_token_targets(name: str, raw: RawSplits) -> None:
    """Token targets (N, S): every split non-empty, every id that counts (not -100) inside the vocabulary."""
    for split in ("train", "val", "test"):
        y = getattr(raw, split).y
        counted = y[y != -100]
        if len(y) == 0 or counted.numel() == 0:
            raise DistillError(f"dataset {name!r}: the {split} split has no token to predict")
        lo, hi = int(counted.min()), int(counted.max())
        if lo < 0 or hi >= raw.num_classes:
            raise DistillError(f"dataset {name!r}: token id {lo if lo < 0 else hi} in the {split} split is outside "
                               f"the vocabulary 0..{raw.num_classes - 1}")


def inferred_classes(name: str, splits: Sequence[Any]) -> int:
    """The class count labels imply (largest + 1) when none is declared; labels must then be dense: an id that
    never appears between 0 and the largest is refused (a model would carry outputs nothing trains)."""
    ys = [s.y for s in splits if len(s)]
    largest = max(int(y.max()) for y in ys)
    present = torch.unique(torch.cat(ys))
    present = present[present >= 0]  # a negative label is reported by the label check, naming its split
    # one class alone, or a runaway id, has a message of its own (the label check)
    if 2 <= len(present) < largest + 1 and largest < MAX_CLASSES:
        missing = sorted(set(range(largest + 1)) - set(present.tolist()))
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise DistillError(f"dataset {name!r}: labels run up to {largest} but {len(missing)} id(s) in between never "
                           f"appear ({shown}); remap the labels to 0..K-1, or declare the class count "
                           "(num_classes) if those classes exist but are absent here")
    return largest + 1


def _check_inputs(name: str, raw: RawSplits) -> None:
    """Real-valued, finite inputs in every split (each field of a dict input): one DistillError naming the
    dataset, split, field and first bad row otherwise. Streamed splits are checked on their first samples."""
    for split in ("train", "val", "test"):
        ds = getattr(raw, split)
        x = ds.x if isinstance(ds, ArrayDataset) else ds.take(torch.arange(min(len(ds), 64)))
        for field, values in (x.items() if isinstance(x, dict) else [("", x)]):
            where = f"dataset {name!r}, {split} split{f', field {field!r}' if field else ''}"
            if not isinstance(values, Tensor):
                continue  # e.g. raw strings a tokenizer reads: nothing numeric to check
            if values.is_complex():
                raise DistillError(f"{where}: inputs are complex ({values.dtype}); models take real values "
                                   "(split real and imaginary parts into channels)")
            if values.is_floating_point():
                bad = (~torch.isfinite(values.reshape(len(values), -1))).any(dim=1).nonzero()  # (K, 1) rows
                if len(bad):
                    raise DistillError(f"{where}: {len(bad)} sample(s) have NaN or infinite inputs, the first at "
                                       f"row {int(bad[0])}; clean or drop them")


def apply_label_budget(y: Tensor, num_classes: int, labels_per_class: int, seed: int) -> Tensor:
    """Return a copy of ``y`` (N,) keeping ``labels_per_class`` random labels per class, the rest
    set to ``UNLABELLED``. The choice depends only on ``seed``. 0: no label at all (label-free distillation:
    the student learns from the teacher alone)."""
    check_int("data.labels_per_class", labels_per_class, minimum=0)
    counts = torch.bincount(y, minlength=num_classes)  # (C,)
    smallest = int(counts.argmin())
    if labels_per_class > counts[smallest]:
        raise DistillError(
            f"data.labels_per_class={labels_per_class} exceeds the smallest class in the train split "
            f"(class {smallest} has {int(counts[smallest])} samples)"
        )
    gen = torch.Generator().manual_seed(seed)
    out = torch.full_like(y, UNLABELLED)
    for c in range(num_classes):
        rows = (y == c).nonzero().squeeze(1)  # (count_c,)
        keep = rows[torch.randperm(len(rows), generator=gen)[:labels_per_class]]
        out[keep] = c
    return out


def _resolve_norm(raw: RawSplits, normalize_arg: tuple | None, channels: int) -> tuple[Stats, Stats]:
    if normalize_arg is None:
        return tuple(raw.mean), tuple(raw.std)
    try:
        mean, std = (tuple(float(v) for v in part) for part in normalize_arg)
    except (TypeError, ValueError):
        raise DistillError(
            f"data.normalize must be [mean, std] lists of numbers, got {normalize_arg!r}"
        ) from None
    if len(mean) != len(std) or len(mean) not in (1, channels):
        raise DistillError(
            f"data.normalize: mean and std need 1 or {channels} values each, got {len(mean)} and {len(std)}"
        )
    if any(s <= 0 for s in std):
        raise DistillError(f"data.normalize: std values must be > 0, got {list(std)}")
    return mean, std
