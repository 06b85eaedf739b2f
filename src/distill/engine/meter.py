"""Running loss terms of an epoch, kept on the device: no host sync per step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distill.engine.checkpoint import find_checkpoint
from distill.engine.dist import mean_across_ranks
from distill.errors import NonFiniteLossError


class Meter:
    """Running loss terms without a host sync per step: detached values are stacked and checked for
    non-finite values every ``log_every`` steps (and at the end of the epoch)."""

    def __init__(self, desc: str, out_dir: Path, epoch: int, n_steps: int) -> None:
        self.desc, self.out_dir, self.epoch, self.n_steps = desc, out_dir, epoch, n_steps
        self.window: list[tuple[Tensor, dict[str, Tensor]]] = []
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.samples = 0
        self.t0 = time.perf_counter()

    def add(self, loss: Tensor, terms: dict[str, Tensor], n: int) -> None:
        self.window.append((loss.detach(), {k: v.detach() for k, v in terms.items()}))
        self.samples += n

    def flush(self) -> str:
        """Fold the window into the epoch sums (one host sync) and return the running means as text.

        Under torchrun every rank calls it at the same step and the window is averaged across ranks first:
        logged losses are those of the global batch, and a NaN on any rank stops every rank at once.
        """
        if self.window:
            keys = list(self.window[0][1])
            table = torch.stack([torch.stack([w[0].float() for w in self.window]),
                                 *(torch.stack([w[1][k].float() for w in self.window]) for k in keys)])  # (1+K, S)
            table = mean_across_ranks(table)
            bad = (~torch.isfinite(table[0])).nonzero()
            if len(bad):
                self._fail(self.steps + int(bad[0]), dict(zip(keys, table[1:, int(bad[0])])))
            for key, total in zip(["loss", *keys], table.sum(dim=1).tolist()):
                self.sums[key] = self.sums.get(key, 0.0) + total
            self.steps += len(self.window)
            self.window = []
        rate = self.samples / max(1e-9, time.perf_counter() - self.t0)
        return " ".join(f"{k} {v / max(1, self.steps):.4f}" for k, v in self.sums.items()) + f" {rate:.0f}/s"

    def _fail(self, step_in_epoch: int, terms: dict[str, Tensor]) -> None:
        ckpt = find_checkpoint(self.out_dir)
        kept = f"kept the last good checkpoint {ckpt}" if ckpt else "no checkpoint was written yet"
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        raise NonFiniteLossError(
            f"{self.desc}: non-finite loss at epoch {self.epoch + 1}, step {step_in_epoch + 1} "
            f"(global step {self.epoch * self.n_steps + step_in_epoch + 1}; {shown}); training stopped, {kept}. "
            "Lower the learning rate or set train.grad_clip.")

    def summary(self, lr: float) -> dict[str, Any]:
        seconds = time.perf_counter() - self.t0
        out: dict[str, Any] = {"epoch": self.epoch + 1, "lr": lr}
        out.update({k: v / max(1, self.steps) for k, v in self.sums.items()})
        out.update({"seconds": round(seconds, 3), "samples_per_s": round(self.samples / max(seconds, 1e-9), 1)})
        return out
