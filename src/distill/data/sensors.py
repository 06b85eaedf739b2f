"""``mnist-modal``: MNIST digits seen by several sensors at once, for cross-modal distillation.

Each sample is a dict input with the ``image`` (1, 28, 28) and one or more other sensors of the same digit:

- ``rows``: a line-scan sensor, (28, 28) as 28 channels x 28 time steps: row t of the image is read at step t.
  A sequence model reads it (a 1-D convolutional student, channels = the 28 pixels of a row); it cannot see two
  rows at once the way a 2-D convolution sees a neighbourhood.
- ``lowres``: a 7x7 sensor, (1, 7, 7): each cell averages a 4x4 block; 49 values instead of 784, the fine
  strokes that separate a 4 from a 9 are lost, and no model of it can rebuild the image.

Every field is standardised with its own training-split statistics (``image`` with MNIST's 0.1307 / 0.3081,
what the pretrained ccexam teacher expects). Splits are MNIST's.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.data.base import DATASETS, ArrayDataset, RawSplits, channel_stats, check_int
from distill.data.builtin import _mnist_arrays
from distill.errors import DistillError

SENSORS = ("rows", "lowres")


def _sense(x: Tensor, sensor: str) -> Tensor:
    """Sensor ``sensor``'s reading of images x (N, 1, 28, 28) in [0, 1]."""
    if sensor == "rows":
        return x[:, 0].transpose(1, 2).contiguous()  # (N, 28 pixels as channels, 28 rows as time)
    return F.avg_pool2d(x, 4)  # (N, 1, 7, 7)


def _standardise(parts: list[Tensor]) -> list[Tensor]:
    """Standardise (train, val, test) with the training part's scalar mean and std."""
    mean, std = channel_stats(parts[0], per_channel=False)
    return [(p - mean[0]) / std[0] for p in parts]


@DATASETS.register("mnist-modal")
def mnist_modal(*, seed: int, limit_train: int | None = None, sensors: list[str] | None = None) -> RawSplits:
    """MNIST as dict inputs: ``image`` plus each of ``sensors`` (default both ``rows`` and ``lowres``)."""
    names = list(SENSORS) if sensors is None else list(sensors)
    if unknown := [s for s in names if s not in SENSORS]:
        raise DistillError(f"data.sensors: unknown sensor(s) {unknown} (known: {', '.join(SENSORS)})")
    if limit_train is not None:
        check_int("data.limit_train", limit_train, minimum=1)
    (tx, ty), (vx, vy), (sx, sy) = _mnist_arrays()
    if limit_train is not None:
        tx, ty = tx[:limit_train], ty[:limit_train]
    images = [(x - 0.1307) / 0.3081 for x in (tx, vx, sx)]
    fields = [{"image": im} for im in images]
    for sensor in names:
        for f, reading in zip(fields, _standardise([_sense(x, sensor) for x in (tx, vx, sx)])):
            f[sensor] = reading
    train, val, test = (ArrayDataset(f, y) for f, y in zip(fields, (ty, vy, sy)))
    return RawSplits(train, val, test, num_classes=10, mean=(0.0,), std=(1.0,))
