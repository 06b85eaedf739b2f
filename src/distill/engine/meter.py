"""Running loss terms of an epoch, kept on the device: no host sync per step."""

from __future__ import annotations

import time
from collections.abc import Callable
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
        self.grad_norms: list[Tensor] = []  # one 0-d tensor per step, read once at the end of the epoch
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.samples = 0
        self.t0 = time.perf_counter()

    def add(self, loss: Tensor, terms: dict[str, Tensor], n: int) -> None:
        self.window.append((loss.detach(), {k: v.detach() for k, v in terms.items()}))
        self.samples += n

    def add_grad_norm(self, norm: Tensor) -> None:
        """The step's total gradient norm (before clipping), kept on the device until ``summary``."""
        self.grad_norms.append(norm.detach())

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
        if self.grad_norms:
            norms = torch.stack(self.grad_norms).float()
            norms = norms[torch.isfinite(norms)]  # AMP overflow steps are skipped by the scaler anyway
            if len(norms):
                out.update(grad_norm_median=float(norms.median()), grad_norm_max=float(norms.max()))
        return out


SPIKE_RATIO = 20.0  # max/median step gradient norm; plain cross-entropy training stays under ~5 (measured)


def warn_spikes(desc: str, grad_clip: float | None, stats: dict[str, Any], log: Callable[[str], None]) -> None:
    """Warn when, in a run's first epoch, a few steps' gradients dwarf the typical step: momentum SGD then throws
    the weights far off (units die, the student stops learning) unless ``train.grad_clip`` caps them. Only the
    first epoch: late in training the median falls towards zero and any hard batch would look like a spike."""
    top, mid = stats.get("grad_norm_max"), stats.get("grad_norm_median")
    if grad_clip or stats.get("epoch") != 1 or top is None or not mid or top <= SPIKE_RATIO * mid:
        return
    log(f"{desc}: warning: gradient spikes in the first epoch: the largest step's gradient norm is "
        f"{top / mid:.0f}x the epoch's median ({top:.3g} against {mid:.3g}); the model may stop learning: "
        f"set train.grad_clip (e.g. {2 * mid:.2g}, twice the median)")


COLLAPSE_EPOCHS = 3  # consecutive main-stage epochs at chance before the warning (one noisy epoch is not a collapse)


def chance_spans(history: list[dict[str, Any]], num_classes: int) -> list[tuple[int, int]]:
    """(first, last) epoch numbers of each run of at least ``COLLAPSE_EPOCHS`` main-stage epochs whose validation
    (else test) top-1 is at chance: within 5% of the way from 1/C to 100% (14.5% for 10 classes, 52.5% for 2).
    Pre-training stages (FitNet's hints) are skipped: they leave the head untrained, so chance is expected."""
    if num_classes < 2:
        return []
    bar = 1.0 / num_classes + 0.05 * (1.0 - 1.0 / num_classes)
    spans, run = [], []
    for row in history + [{}]:  # the empty row ends a run still open at the last epoch
        key = "val_top1" if "val_top1" in row else "test_top1"
        if row.get("stage") == "main" and row.get(key) is not None and row[key] <= bar:
            run.append(row["epoch"])
            continue
        if len(run) >= COLLAPSE_EPOCHS:
            spans.append((run[0], run[-1]))
        run = []
    return spans


def warn_collapse(desc: str, history: list[dict[str, Any]], num_classes: int, log: Callable[[str], None]) -> None:
    """Warn once per span when validation top-1 has sat at chance for ``COLLAPSE_EPOCHS`` main-stage epochs.

    A student whose units died after a gradient blow-up predicts one class from then on, and nothing else says
    so: its loss stays finite. The loss-scale check cannot see every cause before the first step (a method's own
    cross-entropy, DKD's warm-up ramp, a blow-up later in training), so the epochs' accuracy is watched too."""
    spans = chance_spans(history, num_classes)
    if not history or not spans or spans[-1] != (history[-COLLAPSE_EPOCHS]["epoch"], history[-1]["epoch"]):
        return  # no span, or the last one did not just reach its length
    key = "val_top1" if "val_top1" in history[-1] else "test_top1"
    bar = 1.0 / num_classes + 0.05 * (1.0 - 1.0 / num_classes)
    best, when = max((r[key], r["epoch"]) for r in history if r.get("stage") == "main" and r.get(key) is not None)
    past = f"best so far {100 * best:.2f}% at epoch {when}" if best > bar else "never above it"
    shown = ", ".join(f"{100 * r[key]:.2f}%" for r in history[-COLLAPSE_EPOCHS:])
    log(f"{desc}: warning: {key.split('_')[0]} top-1 has been at chance ({100 / num_classes:.2f}% for "
        f"{num_classes} classes) for the last {COLLAPSE_EPOCHS} epochs ({shown}; {past}): the student has likely "
        "collapsed (units dead after a gradient blow-up); set train.grad_clip or lower the distillation terms' "
        "weights (weight: auto for a method without its own cross-entropy)")
