"""Per-epoch logs: a CSV rewritten atomically each epoch, plus TensorBoard when it is installed."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from distill.io import write_text


class EpochLog:
    """Writes ``log.csv`` (one row per epoch) and, if ``tensorboard`` is importable, event files."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / "log.csv"
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional extra

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except Exception:  # tensorboard not installed: CSV only
            self.tb = None

    def write(self, history: list[dict[str, Any]]) -> None:
        """Rewrite the CSV with every epoch so far and log the newest epoch to TensorBoard."""
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
        write_text(self.path, buf.getvalue())
        if self.tb is not None and history:
            last = history[-1]
            for k, v in last.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, last["epoch"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
