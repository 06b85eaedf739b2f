"""The generator of a data-free run and the latent codes it reads (``strategy: data_free``).

``build_generator`` follows DAFL's generator (Chen et al. 2019, official code): a linear layer from the latent
code to ``width`` maps at a quarter of the input size, BatchNorm, two upsampling convolution blocks with
LeakyReLU(0.2), then ``tanh`` and a non-affine BatchNorm, so a batch comes out zero-mean and unit-variance per
channel: the statistics of inputs normalised the way the teacher expects them. The same layout with 1-D
convolutions serves (C, L) signals, and an MLP serves flat (L,) vectors.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.types import UNLABELLED

# DAFL passes 0.8 as BatchNorm's second positional argument, which is eps (not momentum); kept as published.
DAFL_EPS = 0.8


class ConvGenerator(nn.Module):
    """z (B, latent) -> (B, C, *size) for 2-D images or 1-D signals (DAFL's generator, ``dims`` 2 or 1)."""

    def __init__(self, latent: int, shape: tuple[int, ...], width: int = 128) -> None:
        super().__init__()
        dims = len(shape) - 1
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
        self.size, self.width = tuple(shape[1:]), width
        self.init = tuple(math.ceil(s / 4) for s in self.size)  # two 2x upsamplings reach the input size
        self.mode = "nearest"
        self.fc = nn.Linear(latent, width * math.prod(self.init))
        self.bn0 = norm(width)
        self.block1 = nn.Sequential(conv(width, width, 3, 1, 1), norm(width, DAFL_EPS), nn.LeakyReLU(0.2))
        self.block2 = nn.Sequential(conv(width, width // 2, 3, 1, 1), norm(width // 2, DAFL_EPS), nn.LeakyReLU(0.2),
                                    conv(width // 2, shape[0], 3, 1, 1), nn.Tanh(), norm(shape[0], affine=False))

    def forward(self, z: Tensor) -> Tensor:
        x = self.bn0(self.fc(z).view(z.shape[0], self.width, *self.init))  # (B, width, *init)
        x = self.block1(nn.functional.interpolate(x, scale_factor=2, mode=self.mode))  # (B, width, *2init)
        x = nn.functional.interpolate(x, size=self.size, mode=self.mode)  # (B, width, *size)
        return self.block2(x)  # (B, C, *size)


class MLPGenerator(nn.Module):
    """z (B, latent) -> (B, L) flat vectors: two hidden layers, then tanh and a non-affine BatchNorm."""

    def __init__(self, latent: int, length: int, width: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent, width), nn.BatchNorm1d(width, DAFL_EPS), nn.LeakyReLU(0.2),
            nn.Linear(width, width), nn.BatchNorm1d(width, DAFL_EPS), nn.LeakyReLU(0.2),
            nn.Linear(width, length), nn.Tanh(), nn.BatchNorm1d(length, affine=False))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def build_generator(shape: tuple[int, ...], latent: int, width: int, seed: int) -> nn.Module:
    """The generator for per-sample input ``shape`` ((C, H, W), (C, L) or (L,)), initialised from ``seed``."""
    if not 1 <= len(shape) <= 3:
        raise DistillError(f"strategy data_free generates inputs of shape (C, H, W), (C, L) or (L,); "
                           f"the data's inputs have shape {tuple(shape)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if len(shape) == 1:
            return MLPGenerator(latent, shape[0], width)
        return ConvGenerator(latent, tuple(shape), width)


class LatentCodes:
    """The "training split" of a data-free run: ``n`` rows of latent codes, never a real input.

    A batch's codes are a function of the seed and the exact rows it holds (the loader's order changes every
    epoch): fresh noise at every step, as DAFL draws it, yet replayed exactly by a resumed run and different
    on every rank. ``y`` is all ``UNLABELLED``: there are no labels either.
    """

    def __init__(self, n: int, latent: int, seed: int) -> None:
        self.latent, self.seed = latent, seed
        self.y = torch.full((n,), UNLABELLED, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, index: Tensor) -> Tensor:
        """(K, latent) standard normal codes for rows ``index`` (K,)."""
        words = np.random.SeedSequence([self.seed % 2**63, *index.tolist()]).generate_state(2)
        gen = torch.Generator().manual_seed(int(words[0]) << 31 | int(words[1]) >> 1)
        return torch.randn(len(index), self.latent, generator=gen)

    def subset(self, index: Tensor) -> LatentCodes:
        """Rows ``index`` (codes are drawn per batch, so only the row count matters)."""
        return LatentCodes(len(index), self.latent, self.seed)
