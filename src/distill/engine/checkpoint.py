"""Epoch checkpoints, written atomically as a directory swap.

``<role>/checkpoint/`` holds ``weights.safetensors`` (student + method connectors), ``state.pt`` (optimizer,
scheduler and RNG state, read back with ``weights_only=True``) and ``meta.json`` (epoch, history, recipe
fingerprint). A new checkpoint is written to ``checkpoint.tmp/`` and swapped in, so a kill at any moment
leaves either the previous complete checkpoint or the new one.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError
from distill.io import load_into, load_torch, load_weights, read_json, save_torch, save_weights, write_json


@dataclass
class Resumed:
    epoch: int  # number of completed epochs
    history: list[dict[str, Any]]


def save_checkpoint(root: Path, *, model: nn.Module, methods: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, epoch: int, history: list[dict], fingerprint: str) -> Path:
    """Write the checkpoint for ``epoch`` completed epochs; returns its directory."""
    final, tmp, old = root / "checkpoint", root / "checkpoint.tmp", root / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    weights.update({f"methods.{k}": v for k, v in methods.state_dict().items()})
    save_weights(tmp / "weights.safetensors", weights)
    save_torch(tmp / "state.pt", {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                  "rng": torch.get_rng_state()})
    write_json(tmp / "meta.json", {"epoch": epoch, "history": history, "fingerprint": fingerprint})
    _fsync_dir(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(root: Path) -> Path | None:
    """The last complete checkpoint under ``root`` (a kill during the swap leaves it at ``.old``)."""
    for name in ("checkpoint", "checkpoint.old"):
        d = root / name
        if (d / "meta.json").is_file() and (d / "weights.safetensors").is_file() and (d / "state.pt").is_file():
            return d
    return None


def load_checkpoint(ckpt: Path, *, model: nn.Module, methods: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, fingerprint: str) -> Resumed:
    """Restore everything ``save_checkpoint`` wrote; refuse a checkpoint made by another recipe."""
    meta = read_json(ckpt / "meta.json", "the checkpoint's metadata",
                     f"delete {ckpt} to train that role from the start, or run without --resume")
    if meta.get("fingerprint") != fingerprint:
        raise DistillError(f"{ckpt} was written by a different recipe; resume needs the same recipe "
                           "(or run without --resume / with another output_dir)")
    weights = load_weights(ckpt / "weights.safetensors")
    load_into(model, strip_prefix(weights, "model."), f"{ckpt}/weights.safetensors")
    load_into(methods, strip_prefix(weights, "methods."), f"{ckpt}/weights.safetensors")
    state = load_torch(ckpt / "state.pt")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return Resumed(epoch=int(meta["epoch"]), history=list(meta["history"]))


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix removed (checkpoints hold model. and methods.)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
