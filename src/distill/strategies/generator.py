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
    """The "training split" of a data-free run: ``n`` rows of latent codes per epoch, never a real input.

    Row ``i`` of epoch ``e`` is a standard normal vector that is a function of ``(seed, e, i)`` alone (a counter-based
    generator, ``normal_codes``): fresh noise every epoch, as DAFL draws it; replayed exactly by a resumed run; and
    the same codes whether one process takes a batch or several ranks take its rows. ``y`` is all ``UNLABELLED``:
    there are no labels either. The loader calls ``set_epoch`` before each epoch.
    """

    def __init__(self, n: int, latent: int, seed: int) -> None:
        self.latent, self.seed, self.epoch = latent, seed, 0
        self.y = torch.full((n,), UNLABELLED, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Draw the codes of epoch ``epoch`` from now on."""
        self.epoch = epoch

    def take(self, index: Tensor) -> Tensor:
        """(K, latent) standard normal codes for rows ``index`` (K,) of the current epoch."""
        key = int(_splitmix(np.array([self.seed % 2**63, self.epoch % 2**63], dtype=np.uint64)).sum(dtype=np.uint64))
        return torch.from_numpy(normal_codes(key, index.numpy(), self.latent))

    def subset(self, index: Tensor) -> LatentCodes:
        """``len(index)`` rows (codes depend on the row number, so only the count matters)."""
        return LatentCodes(len(index), self.latent, self.seed)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 (Steele et al. 2014) on a uint64 array: a bijection whose outputs pass as independent."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def normal_codes(key: int, rows: np.ndarray, width: int) -> np.ndarray:
    """(len(rows), width) float32 standard normals, each a function of (key, row, column) only: two hashed
    uniforms per value through Box-Muller. No generator state, so any subset of rows comes out the same."""
    counters = rows.astype(np.uint64)[:, None] * np.uint64(2 * width) + np.arange(2 * width, dtype=np.uint64)
    bits = _splitmix(counters ^ np.uint64(key))  # (K, 2 * width)
    u = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # uniform in (0, 1)
    z = np.sqrt(-2.0 * np.log(u[:, :width])) * np.cos(2.0 * np.pi * u[:, width:])
    return z.astype(np.float32)
