"""The models and data of the peer benchmark (benchmarks/peer.py), importable by both frameworks.

``TinyCNN`` is the issue's 9,098-parameter student: two conv3-ReLU-maxpool stages (8 and 16 channels) and a
linear layer over the flattened 16x7x7 map. ``mnist_split`` gives torchdistill the very tensors ``distill``
trains on (the first 20,000 MNIST training images, the 10,000 validation and 10,000 test images, normalised
with MNIST's mean and std, which is also the ccexam teacher's normalisation), as a TensorDataset, so neither
side pays for per-sample image decoding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

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


def mnist_split(split: str, limit_train: int = 20000) -> TensorDataset:
    """``train`` (first ``limit_train`` images), ``val`` or ``test``, normalised: (N, 1, 28, 28), (N,)."""
    from distill.data.builtin import mnist

    raw = mnist(seed=0, limit_train=limit_train)
    ds = {"train": raw.train, "val": raw.val, "test": raw.test}[split]
    x, y = ds.x, ds.y
    return TensorDataset((x - MEAN) / STD, y)
