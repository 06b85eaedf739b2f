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


def describe_epoch(desc: str, stats: dict[str, Any]) -> str:
    """The progress line of one finished epoch: loss, validation / test top-1 (and perplexity), speed."""
    stage = "" if stats["stage"] == "main" else " (pre-training stage)"
    parts = [f"{desc} epoch {stats['stage_epoch']}/{stats['stage_epochs']}{stage}",
             f"loss {stats.get('loss', float('nan')):.4f}"]
    for key in ("val_top1", "test_top1"):
        if key in stats:
            parts.append(f"{key.split('_')[0]} {100 * stats[key]:.2f}%")
            ppl = stats.get(key.replace("top1", "ppl"))
            if ppl is not None:  # a language model: top-1 is next-token accuracy, and perplexity says more
                parts[-1] += f" (ppl {ppl:.2f})"
    parts.append(f"{stats['seconds']:.1f}s ({stats['samples_per_s']:.0f} samples/s)")
    return "  ".join(parts)
