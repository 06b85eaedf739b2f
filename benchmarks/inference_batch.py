"""Inference throughput (samples/s, eval mode, no grad) of several models at several batch sizes on this machine:
the measurement behind ``distill.batching`` (no single batch size is fastest for every model), the batch the
teacher cache's rule picks for each (``distill.batching.cache_batch_size``) and its speed against the fastest;
then the time to build the teacher cache of the pretrained ccexam CNN over the first 20,000 MNIST training images
against one plain forward pass over the same images at the fastest batch size (median of 3 interleaved rounds).

    python benchmarks/inference_batch.py [--no-write]

Writes the tables into docs/BENCHMARKS.md (section ``inference-batch``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from distill.batching import cache_batch_size
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


def throughput(model: torch.nn.Module, x: torch.Tensor, b: int, channels_last: bool = False) -> float:
    """Samples per second; ``channels_last``: model and batches in channels-last memory (4-D inputs)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    try:
        with torch.inference_mode():
            for i in range(0, min(len(x), 2 * b), b):  # warm-up
                model(x[i:i + b].contiguous(memory_format=fmt))
            t0 = time.perf_counter()
            for i in range(0, len(x), b):
                model(x[i:i + b].contiguous(memory_format=fmt))
            return len(x) / (time.perf_counter() - t0)
    finally:
        model.to(memory_format=torch.contiguous_format)


def cache_build_rows(n: int = 20000, rounds: int = 3) -> list[str]:
    """Median seconds: building the teacher cache (top-10 of 10 logits, fp16) of the ccexam CNN over ``n`` MNIST
    images through the frozen teacher a run uses, and one plain forward over them at each of ``SIZES`` in either
    memory layout (the fastest kept)."""
    import statistics
    import tempfile

    import ccexam.models as ccexam

    from distill.cache.build import build_cache, cache_fingerprint
    from distill.data.builtin import mnist
    from distill.models.teacher import FrozenTeacher

    model = ccexam.MNISTNet(input_size=28).eval()
    teacher = FrozenTeacher(model)
    x = (mnist(seed=0, limit_train=n).train.x - 0.1307) / 0.3081  # (n, 1, 28, 28)
    fp = cache_fingerprint(teacher=teacher, teacher_spec={}, inputs=x, augment=None, views=1, k=10, dtype="fp16",
                           temperatures=[4.0])
    build, best = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            t0 = time.perf_counter()
            build_cache(Path(tmp) / f"c{r}", teacher=teacher, inputs=x, fingerprint=fp, log=lambda _m: None)
            build.append(time.perf_counter() - t0)
            best.append(min(n / throughput(model, x, b, cl) for b in SIZES for cl in (False, True)))
            model.to(memory_format=torch.channels_last if teacher.channels_last else torch.contiguous_format)
    ratio = statistics.median(b / f for b, f in zip(build, best))
    return [f"Teacher cache of the ccexam CNN over the first {n:,} MNIST training images (top-10 of 10 logits, "
            f"fp16; batch {cache_batch_size(teacher, x[:1])} by the rule, channels-last: {teacher.channels_last}): "
            f"built in {statistics.median(build):.2f} s; one plain forward over the same images at the fastest of "
            f"{list(SIZES)} in either memory layout: {statistics.median(best):.2f} s. Build over fastest forward, "
            f"median of {rounds} rounds: {ratio:.2f}x."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = ap.parse_args()
    lines = ["Command: `python benchmarks/inference_batch.py` (samples per second over 4,096 random inputs, eval "
             "mode, no grad).", "", f"| model | {' | '.join(f'b={b}' for b in SIZES)} | fastest / slowest | "
             "cache rule's batch | its speed / fastest | channels-last speed-up at that batch |",
             "|---|" + "---:|" * (len(SIZES) + 4)]
    for name, (model, shape) in models().items():
        model.eval()
        x = torch.randn(N, *shape)
        speeds = [throughput(model, x, b) for b in SIZES]
        rule = cache_batch_size(model, x[:1])
        at_rule = speeds[SIZES.index(rule)] if rule in SIZES else throughput(model, x, rule)
        cl = f"{throughput(model, x, rule, channels_last=True) / at_rule:.2f}x" if x.ndim == 4 else "-"
        lines.append(f"| {name} | {' | '.join(f'{s:,.0f}' for s in speeds)} | {max(speeds) / min(speeds):.2f}x | "
                     f"{rule} | {at_rule / max(speeds):.2f} | {cl} |")
    lines += ["", *cache_build_rows()]
    print("\n".join(lines))
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from docs_section import replace_section

        replace_section(Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md", "inference-batch",
                        "\n".join(lines))


if __name__ == "__main__":
    main()
