"""User datasets: ``arrays`` (a .npz file) and ``folder`` (an image-folder tree read with Pillow)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from distill.data.base import DATASETS, ArrayDataset, RawSplits, channel_stats, check_int, stratified_split
from distill.errors import DistillError

# User splits carved off train use a fixed seed: the same file always gives the same split.
_SPLIT_SEED = 0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _fill_splits(
    train: ArrayDataset, val: ArrayDataset | None, test: ArrayDataset | None,
    val_fraction: float, test_fraction: float,
) -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    """Split the missing val/test off train (stratified, fixed seed)."""
    for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < frac < 1:
            raise DistillError(f"data.{key} must be between 0 and 1 (exclusive), got {frac!r}")
    fractions = (val_fraction if val is None else 0.0, test_fraction if test is None else 0.0)
    if fractions == (0.0, 0.0):
        return train, val, test  # type: ignore[return-value]
    val_i, test_i, train_i = stratified_split(train.y, fractions, seed=_SPLIT_SEED)
    return (train.subset(train_i), val if val is not None else train.subset(val_i),
            test if test is not None else train.subset(test_i))


# ----------------------------------------------------------------------------------------- arrays


def _labels(path: Path, key: str, y: np.ndarray) -> torch.Tensor:
    if y.ndim != 1:
        raise DistillError(f"{path}: '{key}' must be 1-D labels, got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)  # whole-number floats are labels saved carelessly; accept them
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise DistillError(f"{path}: '{key}' must hold integer class labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise DistillError(f"{path}: '{key}' has negative label {int(y.min())}; labels are 0..C-1")
    return torch.as_tensor(y.astype(np.int64))


def _array_pair(path: Path, npz: np.lib.npyio.NpzFile, xk: str, yk: str) -> ArrayDataset:
    for key in (xk, yk):
        if key not in npz.files:
            raise DistillError(f"{path}: missing key '{key}' (found: {', '.join(npz.files) or 'none'})")
    try:
        x, y = npz[xk], npz[yk]
    except ValueError as e:  # object arrays need pickle, which we refuse for user files
        raise DistillError(f"{path}: cannot read '{xk}'/'{yk}' without pickle ({e})") from None
    if x.ndim < 2 or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DistillError(f"{path}: '{xk}' must be a numeric (N, ...) array, got {x.dtype} {x.shape}")
    if len(x) != len(y):
        raise DistillError(f"{path}: '{xk}' has {len(x)} rows but '{yk}' has {len(y)}")
    xt = torch.as_tensor(x.astype(np.float32))
    if not torch.isfinite(xt).all():
        raise DistillError(f"{path}: '{xk}' contains NaN or Inf")
    return ArrayDataset(xt, _labels(path, yk, y))


def _optional_pair(path: Path, npz: np.lib.npyio.NpzFile, split: str) -> ArrayDataset | None:
    xk, yk = f"x_{split}", f"y_{split}"
    return _array_pair(path, npz, xk, yk) if xk in npz.files or yk in npz.files else None


@DATASETS.register("arrays")
def arrays(
    *, seed: int, path: str, val_fraction: float = 0.1, test_fraction: float = 0.1,
    num_classes: int | None = None,
) -> RawSplits:
    """Arrays from a ``.npz``: keys ``x``, ``y`` and optionally ``x_val``/``y_val``, ``x_test``/``y_test``.

    Missing val/test are split off train (stratified, fixed seed). ``num_classes`` defaults to the
    largest label + 1. Default normalisation: one scalar mean/std over train.
    """
    if num_classes is not None:
        check_int("data.num_classes", num_classes, minimum=1)
    file = Path(path)
    if not file.is_file():
        raise DistillError(f"dataset 'arrays': file not found: {file}")
    try:
        npz = np.load(file, allow_pickle=False)  # never unpickle user files
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DistillError(f"{file}: not a readable .npz file ({e})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DistillError(f"{file}: expected a .npz archive with keys x and y, got a single array")
    with npz:
        train = _array_pair(file, npz, "x", "y")
        val = _optional_pair(file, npz, "val")
        test = _optional_pair(file, npz, "test")
    for name, ds in (("x_val", val), ("x_test", test)):
        if ds is not None and ds.x.shape[1:] != train.x.shape[1:]:
            raise DistillError(f"{file}: '{name}' samples have shape {tuple(ds.x.shape[1:])}, "
                               f"'x' has {tuple(train.x.shape[1:])}")
    if len(train) == 0:
        raise DistillError("dataset 'arrays': the train split is empty")
    train, val, test = _fill_splits(train, val, test, val_fraction, test_fraction)
    found = max(int(ds.y.max()) for ds in (train, val, test) if len(ds)) + 1
    mean, std = channel_stats(train.x, per_channel=False)
    return RawSplits(train, val, test, num_classes=found if num_classes is None else num_classes,
                     mean=mean, std=std)


# ----------------------------------------------------------------------------------------- folder


def _class_dirs(split_dir: Path) -> dict[str, Path]:
    dirs = {d.name: d for d in sorted(split_dir.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    if not dirs:
        raise DistillError(f"dataset 'folder': no class sub-folders in {split_dir}")
    return dirs


def _read_image(file: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image as (H, W, C) uint8; ``size`` (W, H) resizes, None keeps the file's own size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            img = img.convert(mode)
            if size is not None and img.size != size:
                img = img.resize(size, Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DistillError(f"dataset 'folder': cannot read image {file} ({e})") from None
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


def _load_split(split_dir: Path, classes: list[str], mode: str, size: int | None,
                first: list[tuple[int, int]]) -> ArrayDataset:
    """All images under ``split_dir/<class>/``; ``first`` carries the first image's (H, W) across
    splits so every image must match it when ``size`` is None."""
    images, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(f for f in (split_dir / cls).iterdir()
                       if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        for f in files:
            arr = _read_image(f, mode, (size, size) if size is not None else None)
            if not first:
                first.append(arr.shape[:2])
            if arr.shape[:2] != first[0]:
                raise DistillError(f"dataset 'folder': image {f} is {arr.shape[1]}x{arr.shape[0]}, the first "
                                   f"was {first[0][1]}x{first[0][0]}; set data.size to resize all images")
            images.append(arr)
            labels.append(label)
    if not images:
        return ArrayDataset(torch.empty(0, len(mode), *(first[0] if first else (0, 0))),
                            torch.empty(0, dtype=torch.int64))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)  # (N, C, H, W) in [0, 1]
    return ArrayDataset(x.contiguous(), torch.tensor(labels, dtype=torch.int64))


@DATASETS.register("folder")
def folder(
    *, seed: int, root: str, size: int | None = None, channels: int = 3,
    val_fraction: float = 0.1, test_fraction: float = 0.1,
) -> RawSplits:
    """Images under ``root/{train,val,test}/<class>/`` or ``root/<class>/`` (val/test then split off).

    size: resize to size x size (default: keep the first image's size; all must match).
    channels: 1 (grayscale) or 3 (RGB). Pixels in [0, 1], shape (C, H, W); class names sorted.
    """
    base = Path(root)
    if not base.is_dir():
        raise DistillError(f"dataset 'folder': root folder not found: {base}")
    if channels not in (1, 3):
        raise DistillError(f"data.channels must be 1 or 3, got {channels!r}")
    if size is not None:
        check_int("data.size", size, minimum=1)
    mode = "L" if channels == 1 else "RGB"
    split_root = (base / "train").is_dir()
    classes = list(_class_dirs(base / "train" if split_root else base))
    first: list[tuple[int, int]] = []
    train = _load_split(base / "train" if split_root else base, classes, mode, size, first)
    loaded: dict[str, ArrayDataset | None] = {"val": None, "test": None}
    for split in loaded if split_root else ():
        if (base / split).is_dir():
            other = list(_class_dirs(base / split))
            if other != classes:
                raise DistillError(f"dataset 'folder': classes in {base / split} {other} differ from "
                                   f"those in {base / 'train'} {classes}")
            loaded[split] = _load_split(base / split, classes, mode, size, first)
    if len(train) == 0:
        raise DistillError("dataset 'folder': the train split is empty")
    train, val, test = _fill_splits(train, loaded["val"], loaded["test"], val_fraction, test_fraction)
    mean, std = channel_stats(train.x)
    return RawSplits(train, val, test, num_classes=len(classes), mean=mean, std=std,
                     class_names=tuple(classes))
