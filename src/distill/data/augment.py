"""Seeded, replayable data augmentation: random shifts and horizontal flips as numbered *views*.

Why replay: the teacher-output cache stores the teacher's logits per (sample, view). For those labels to stay
valid, the student must see exactly the augmented input the teacher labelled. So every random choice here is a
pure function of ``(seed, dataset index, view)``, computed with a counter-based hash (splitmix64) instead of a
stateful RNG: the same sample in the same view is augmented identically whatever batch it lands in, in whatever
order, on whatever device, in whichever process.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from distill.data.base import check_int
from distill.errors import DistillError

_MASK64 = (1 << 64) - 1
_SALT_SHIFT = 0x5348_4946_5400_0000  # + spatial dim: one independent stream per offset
_SALT_FLIP = 0x464C_4950_0000_0000


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic): a well-mixed 64-bit hash of ``z``."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_hash(seed: int, index: Tensor, view: int, salt: int) -> np.ndarray:
    """(B,) uint64 hash of ``(seed, index[i], view, salt)`` for each sample: a pure function of its arguments."""
    rows = index.detach().to("cpu", torch.int64).numpy().astype(np.uint64)  # (B,)
    with np.errstate(over="ignore"):
        h = _splitmix64(np.full_like(rows, seed & _MASK64))
        h = _splitmix64(h ^ rows)
        h = _splitmix64(h ^ np.uint64(view & _MASK64))
        return _splitmix64(h ^ np.uint64(salt & _MASK64))


class Augment:
    """Random shift (replicate padding, then a crop of the original size) and horizontal flip, replayable.

    shift: maximum offset in every spatial dim; each sample is moved by an integer in ``[-shift, shift]``.
    flip:  mirror the last dim with probability 0.5.
    seed:  the augmentation's own seed; view ``v`` of sample ``i`` depends only on ``(seed, i, v)``.
    Inputs are (B, C, L) or (B, C, H, W), already normalised.
    """

    def __init__(self, shift: int = 0, flip: bool = False, seed: int = 0) -> None:
        check_int("data.augment.shift", shift, minimum=0)
        if not isinstance(flip, bool):
            raise DistillError(f"data.augment.flip must be true or false, got {flip!r}")
        check_int("data.augment.seed", seed)
        self.shift = shift
        self.flip = flip
        self.seed = seed

    @property
    def identity(self) -> bool:
        """True when augmentation changes nothing (no shift, no flip)."""
        return self.shift == 0 and not self.flip

    def spec(self) -> dict[str, Any]:
        """JSON-able description (for fingerprints): ``{"shift", "flip", "seed"}``."""
        return {"shift": self.shift, "flip": self.flip, "seed": self.seed}

    def __repr__(self) -> str:
        return f"Augment(shift={self.shift}, flip={self.flip}, seed={self.seed})"

    def params(self, index: Tensor, view: int, ndim: int = 2) -> tuple[Tensor, Tensor]:
        """Per-sample parameters of view ``view`` for dataset rows ``index`` (B,), on the CPU.

        ndim (>= 1): number of spatial dims. Returns offsets (B, ndim) long in ``[0, 2 * shift]`` (crop start
        in the padded input; ``shift`` means no move) and flips (B,) bool. Offset ``d`` does not depend on ``ndim``.
        """
        span = np.uint64(2 * self.shift + 1)
        cols = [sample_hash(self.seed, index, view, _SALT_SHIFT + d) % span for d in range(ndim)]  # ndim x (B,)
        offsets = torch.from_numpy(np.stack(cols, axis=1).astype(np.int64))  # (B, ndim)
        if self.flip:
            top_bit = sample_hash(self.seed, index, view, _SALT_FLIP) >> np.uint64(63)  # (B,) 0 or 1
            flips = torch.from_numpy(top_bit.astype(np.bool_))
        else:
            flips = torch.zeros(len(index), dtype=torch.bool)
        return offsets, flips

    def __call__(self, x: Tensor, index: Tensor, view: int) -> Tensor:
        """View ``view`` of the batch ``x`` (B, C, *spatial) whose dataset rows are ``index`` (B,).

        Same shape, dtype and device as ``x``; ``x`` itself when the augmentation is the identity.
        """
        if self.identity:
            return x
        ndim = x.ndim - 2
        if ndim not in (1, 2):
            raise DistillError(f"data.augment needs inputs of shape (C, L) or (C, H, W), got {tuple(x.shape[1:])}")
        if len(index) != x.shape[0]:
            raise DistillError(f"augment: {len(index)} indices for a batch of {x.shape[0]}")
        offsets, flips = self.params(index, view, ndim)
        offsets, flips = offsets.to(x.device), flips.to(x.device)
        out = _shift(x, offsets, self.shift) if self.shift else x
        if self.flip:
            mask = flips.view(-1, *([1] * (x.ndim - 1)))  # (B, 1, 1[, 1])
            out = torch.where(mask, out.flip(-1), out)
        return out


def _shift(x: Tensor, offsets: Tensor, shift: int) -> Tensor:
    """Replicate-pad every spatial dim of ``x`` (B, C, *S) by ``shift``, then crop S at ``offsets`` (B, n)."""
    ndim = x.ndim - 2
    out = F.pad(x, [shift] * (2 * ndim), mode="replicate")  # (B, C, *(S + 2 * shift))
    for d in range(ndim):
        dim, size = 2 + d, x.shape[2 + d]
        idx = offsets[:, d:d + 1] + torch.arange(size, device=x.device)  # (B, S_d): rows to keep along dim
        shape = [x.shape[0]] + [1] * (out.ndim - 1)
        shape[dim] = size
        target = list(out.shape)
        target[dim] = size
        out = out.gather(dim, idx.view(shape).expand(target))  # dim d cropped to S_d, per sample
    return out
