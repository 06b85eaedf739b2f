"""User datasets: ``arrays`` (a .npz file) and ``folder`` (an image-folder tree read with Pillow)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from distill.data.base import (
    DATASETS,
    ArrayDataset,
    RawSplits,
    channel_stats,
    check_int,
    inferred_classes,
    stratified_split,
)
from distill.data.stream import StreamDataset
from distill.errors import DistillError
from distill.io import first_line

# User splits carved off train use a fixed seed: the same file always gives the same split.
_SPLIT_SEED = 0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _fill_splits(train: Any, val: Any, test: Any, val_fraction: float, test_fraction: float) -> tuple[Any, Any, Any]:
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
    if np.issubdtype(x.dtype, np.complexfloating):
        raise DistillError(f"{path}: '{xk}' is complex ({x.dtype}); models take real values (split the real and "
                           "imaginary parts into channels)")
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
    found = inferred_classes(f"arrays {file}", (train, val, test)) if num_classes is None else num_classes
    mean, std = channel_stats(train.x, per_channel=False)
    return RawSplits(train, val, test, num_classes=found,
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
            arr = np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise DistillError(f"dataset 'folder': cannot read image {file} ({first_line(e)})") from None
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


class FolderImages(Dataset):
    """Images read lazily, one file per item: ``(x, label)`` with x (C, H, W) float32 in [0, 1].

    ``targets`` (the labels, known from the folder names) spares the one pass over the items that a Dataset
    without it costs. Picklable, so DataLoader workers read it. Paths and labels are numpy arrays, not lists of
    Python objects: forked workers share them, whereas touching a list's objects (reference counts) would copy
    its pages into every worker, memory that grows with the number of images."""

    def __init__(self, files: list[Path], labels: list[int], mode: str, size: int | None) -> None:
        self.files = np.array([str(f) for f in files])  # (N,) fixed-width unicode, one buffer
        self.targets = np.array(labels, dtype=np.int64)  # (N,)
        self.mode, self.size = mode, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        size = (self.size, self.size) if self.size is not None else None
        arr = _read_image(Path(str(self.files[i])), self.mode, size)
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255), int(self.targets[i])  # (C, H, W)


def _list_split(split_dir: Path, classes: list[str], size: int | None,
                first: list[tuple[int, int]]) -> tuple[list[Path], list[int]]:
    """Files and labels under ``split_dir/<class>/``. Every header is read now (not the pixels), so an unreadable
    file, or (without ``size``) one whose size differs from the first image's, is an error before training."""
    from PIL import Image, UnidentifiedImageError

    files, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted(f for f in (split_dir / cls).iterdir()
                        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")):
            try:
                with Image.open(f) as img:
                    hw = (img.size[1], img.size[0])
            except (UnidentifiedImageError, OSError) as e:
                raise DistillError(f"dataset 'folder': cannot read image {f} ({first_line(e)})") from None
            except Image.DecompressionBombError:  # a header claiming billions of pixels: refused before decoding
                raise DistillError(f"dataset 'folder': image {f} claims more pixels than Pillow's decompression-bomb "
                                   f"limit ({2 * (Image.MAX_IMAGE_PIXELS or 0):,}); not a training image") from None
            if not first:
                first.append(hw)
            if size is None and hw != first[0]:
                raise DistillError(f"dataset 'folder': image {f} is {hw[1]}x{hw[0]}, the first was "
                                   f"{first[0][1]}x{first[0][0]}; set data.size to resize all images")
            files.append(f)
            labels.append(label)
    return files, labels


def _split(files: list[Path], labels: list[int], mode: str, size: int | None, in_memory: bool) -> Any:
    ds = FolderImages(files, labels, mode, size)
    y = torch.tensor(labels, dtype=torch.int64)
    if not in_memory:
        return StreamDataset(ds, y)
    if not files:
        return ArrayDataset(torch.empty(0, len(mode), 1, 1), y)
    return ArrayDataset(torch.stack([ds[i][0] for i in range(len(ds))]), y)  # (N, C, H, W)


STATS_SAMPLES = 1000


def _stats(train: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of up to 1,000 evenly spaced training images (all of them when there are fewer),
    the same images whether the split is streamed or in memory, so both modes train identically."""
    pick = torch.linspace(0, len(train) - 1, min(len(train), STATS_SAMPLES)).round().long().unique()
    return channel_stats(train.take(pick))


@DATASETS.register("folder")
def folder(
    *, seed: int, root: str, size: int | None = None, channels: int = 3,
    val_fraction: float = 0.1, test_fraction: float = 0.1, in_memory: bool = False,
) -> RawSplits:
    """Images under ``root/{train,val,test}/<class>/`` or ``root/<class>/`` (val/test then split off).

    size: resize to size x size (default: keep the first image's size; all must match).
    channels: 1 (grayscale) or 3 (RGB). Pixels in [0, 1], shape (C, H, W); class names sorted.
    in_memory: decode every image up front (the fast path for data that fits); by default images are read
    lazily, item by item, by DataLoader workers (``data.workers``). Normalisation statistics come from up to
    1,000 evenly spaced training images in both modes.
    """
    base = Path(root)
    if not base.is_dir():
        raise DistillError(f"dataset 'folder': root folder not found: {base}")
    if channels not in (1, 3):
        raise DistillError(f"data.channels must be 1 or 3, got {channels!r}")
    if size is not None:
        check_int("data.size", size, minimum=1)
    if not isinstance(in_memory, bool):
        raise DistillError(f"data.in_memory must be true or false, got {in_memory!r}")
    mode = "L" if channels == 1 else "RGB"
    split_root = (base / "train").is_dir()
    classes = list(_class_dirs(base / "train" if split_root else base))
    first: list[tuple[int, int]] = []
    listed = {"train": _list_split(base / "train" if split_root else base, classes, size, first)}
    for split in ("val", "test") if split_root else ():
        if (base / split).is_dir():
            other = list(_class_dirs(base / split))
            if other != classes:
                raise DistillError(f"dataset 'folder': classes in {base / split} {other} differ from "
                                   f"those in {base / 'train'} {classes}")
            listed[split] = _list_split(base / split, classes, size, first)
    if not listed["train"][0]:
        raise DistillError("dataset 'folder': the train split is empty")
    parts = {k: _split(*v, mode, size, in_memory) for k, v in listed.items()}
    train, val, test = _fill_splits(parts["train"], parts.get("val"), parts.get("test"), val_fraction, test_fraction)
    mean, std = _stats(train)
    return RawSplits(train, val, test, num_classes=len(classes), mean=mean, std=std, class_names=tuple(classes))
