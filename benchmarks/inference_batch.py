"""Inference throughput (samples/s, eval mode, no grad) of several models at several batch sizes on this machine:
the measurement behind ``distill.batching`` (no single batch size is fastest for every model).

    python benchmarks/inference_batch.py [--no-write]

Writes the table into docs/BENCHMARKS.md (section ``inference-batch``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from distill.models import build_model

SIZES = (32, 64, 128, 256, 512, 1000)
N = 4096


def models() -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    import ccexam.models as ccexam  # the pretrained MNIST CNN's architecture (make installs it)

    torch.manual_seed(0)
    return {
        "ccexam MNISTNet": (ccexam.MNISTNet(input_size=28), (1, 28, 28)),
        "cnn [8, 16]": (build_model("cnn", num_classes=10, input_shape=(1, 28, 28), channels=[8, 16], hidden=32),
                        (1, 28, 28)),
        "resnet32 (1-D)": (build_model("resnet32", num_classes=10, input_shape=(1, 40)), (1, 40)),
        "mlp [256]": (build_model("mlp", num_classes=10, input_shape=(784,), hidden=[256]), (784,)),
        "resnet8x4": (build_model("resnet8x4", num_classes=10, input_shape=(3, 32, 32)), (3, 32, 32)),
    }


def throughput(model: torch.nn.Module, x: torch.Tensor, b: int) -> float:
    with torch.inference_mode():
        for i in range(0, min(len(x), 2 * b), b):  # warm-up
            model(x[i:i + b])
        t0 = time.perf_counter()
        for i in range(0, len(x), b):
            model(x[i:i + b])
        return len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = ap.parse_args()
    lines = ["Command: `python benchmarks/inference_batch.py` (samples per second over 4,096 random inputs, eval "
             "mode, no grad).", "", f"| model | {' | '.join(f'b={b}' for b in SIZES)} | fastest / slowest |",
             "|---|" + "---:|" * (len(SIZES) + 1)]
    for name, (model, shape) in models().items():
        model.eval()
        speeds = [throughput(model, torch.randn(N, *shape), b) for b in SIZES]
        lines.append(f"| {name} | {' | '.join(f'{s:,.0f}' for s in speeds)} | {max(speeds) / min(speeds):.2f}x |")
    print("\n".join(lines))
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from docs_section import replace_section

        replace_section(Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md", "inference-batch",
                        "\n".join(lines))


if __name__ == "__main__":
    main()
