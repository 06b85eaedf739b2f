"""Epoch cost of distillation with the teacher cache, with the live teacher, and of a hand-written loop.

For each teacher/student pair, rounds of one epoch each are interleaved (plain student epoch through the
engine, KD epoch from the cache, KD epoch with the live teacher, the same plain epoch as a minimal hand-written
PyTorch loop; the order alternates between rounds), so machine noise hits all four alike. In each round the
plain, cached and hand-written loops run ``--repeats`` epochs each, interleaved, and keep their fastest. Epoch
times are medians over the rounds after a warm-up round; each ratio is the median of the per-round ratios.
Also measures cache size and build time for several k. Writes the tables into docs/BENCHMARKS.md between
the ``speed`` markers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed.py --rounds 8 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from distill.build import build_arch, build_methods
from distill.cache import build_cache, open_cache
from distill.cache.plan import fingerprint_for
from distill.data import BatchLoader
from distill.engine import FitJob, fit
from distill.methods import MethodSet
from distill.methods.ce import CE
from distill.plan import plan_from_recipe
from distill.recipe import recipe_from_dict

sys.path.insert(0, str(Path(__file__).parent))
from docs_section import replace_section  # noqa: E402

TEACHER = {"name": "external", "target": "ccexam.models:MNISTNet", "kwargs": {"input_size": 28},
           "weights": "pkg:ccexam/weights/mnist.pth", "normalize": {"mean": [0.1307], "std": [0.3081]}}
PAIRS = {"ccexam -> cnn[16,32]": {"name": "cnn", "channels": [16, 32], "hidden": 64},
         "ccexam -> cnn[8,16]": {"name": "cnn", "channels": [8, 16], "hidden": 32}}


def recipe_for(student: dict, out: Path, samples: int, k: int | str = "all"):
    return recipe_from_dict({
        "name": "speed", "output_dir": str(out), "data": {"name": "mnist", "limit_train": samples, "batch_size": 128},
        "teacher": TEACHER, "student": student, "method": {"name": "kd", "T": 4, "alpha": 0.1, "beta": 0.9},
        "train": {"epochs": 1, "optimizer": {"name": "sgd", "lr": 0.01}, "schedule": {"name": "constant"},
                  "log_every": 50},
        "cache": {"k": k}, "eval": {"latency": False}})


def flops(model: nn.Module, x: torch.Tensor) -> int:
    """Forward FLOPs for one sample (torch's counter: 2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x[:1])
    return int(counter.get_total_flops())


def engine_epoch(recipe, data, model, methods: MethodSet, out: Path, *, teacher=None, cache=None) -> float:
    job = FitJob(model=model, methods=methods, loader=BatchLoader(data.train, 128, shuffle=True, seed=0),
                 train=recipe.train, out_dir=out, seed=0, fingerprint="speed", teacher=teacher, cache=cache,
                 num_classes=data.num_classes, log=lambda _: None)
    return fit(job)[-1]["seconds"]


def handwritten_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> float:
    """The loop a user would write by hand: shuffle, slice, forward, CE, backward, SGD step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(epoch)
    t0 = time.perf_counter()
    model.train()
    perm = torch.randperm(len(x), generator=g)
    for b in range(0, len(x), 128):
        idx = perm[b: b + 128]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def measure_pair(label: str, student: dict, samples: int, rounds: int, tmp: Path, repeats: int = 1) -> dict:
    recipe = recipe_for(student, tmp / label.replace(" ", ""), samples)
    plan = plan_from_recipe(recipe)
    data, t_model = plan.data, plan.teacher.model
    teacher = plan.teacher.frozen(data)
    fp = fingerprint_for(plan, teacher)
    cache = build_cache(tmp / "cache", teacher=teacher, inputs=data.train.x, fingerprint=fp, log=lambda _: None)
    x, y = data.train.x, data.train.y
    times: dict[str, list[float]] = {"plain": [], "cached": [], "live": [], "hand": []}
    for r in range(rounds + 1):  # round 0 warms up allocators and caches, and is dropped
        runs = {
            "plain": lambda: engine_epoch(recipe, data, build_arch(recipe.student, data, 0), MethodSet([CE()]),
                                          tmp / "plain"),
            "cached": lambda: engine_epoch(recipe, data, build_arch(recipe.student, data, 0), build_methods(recipe),
                                           tmp / "cached", cache=open_cache(cache.path, fp)),
            "live": lambda: engine_epoch(recipe, data, build_arch(recipe.student, data, 0), build_methods(recipe),
                                         tmp / "live", teacher=teacher),
            "hand": lambda r=r: handwritten_epoch(build_arch(recipe.student, data, 0), x, y, r),
        }
        found = round_times(runs, r, repeats)
        if r:
            for name, seconds in found.items():
                times[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}

    def paired(a: str, b: str) -> float:
        # median of per-round ratios: both epochs of a round ran back to back, so slow drifts in machine load cancel
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    s_model = build_arch(recipe.student, data, 0)
    return {"pair": label, "samples": len(x), "rounds": rounds, **{f"{k}_s": v for k, v in med.items()},
            "flops_ratio": flops(t_model, teacher.renormalise(x[:1])) / flops(s_model, x[:1]),
            "cached_over_plain": paired("cached", "plain"), "live_over_plain": paired("live", "plain"),
            "plain_over_hand": paired("plain", "hand")}


def round_times(runs: dict, r: int, repeats: int) -> dict[str, float]:
    """One round: each loop's fastest of ``repeats`` epochs, the loops interleaved (plain, cached, hand, plain, ...;
    the order reversed in odd rounds, so neither side always runs first). Interference from the machine only ever
    slows an epoch, so the fastest of a few back-to-back epochs is the least noisy estimate (timeit's rule). The
    live-teacher epoch, no bar's operand, runs once."""
    order = [n for n in runs if n != "live"]
    order = order if r % 2 else order[::-1]
    best = {"live": runs["live"]()}
    for _ in range(repeats):
        for name in order:
            best[name] = min(best.get(name, float("inf")), runs[name]())
    return best


def cache_sizes(samples: int, tmp: Path) -> list[dict]:
    rows = []
    for k in (1, 5, 10, "all"):
        recipe = recipe_for(PAIRS["ccexam -> cnn[16,32]"], tmp / f"k{k}", samples, k=k)
        plan = plan_from_recipe(recipe)
        data, teacher = plan.data, plan.teacher.frozen(plan.data)
        fp = fingerprint_for(plan, teacher)
        cache = build_cache(tmp / f"cache-k{k}", teacher=teacher, inputs=data.train.x, fingerprint=fp,
                            log=lambda _: None)
        m = cache.manifest
        rows.append({"k": k, "bytes": m["bytes_per_sample_view"], "build_s": m["build_seconds"],
                     "total_mb": sum(f["bytes"] for f in m["files"].values()) / 1e6})
    return rows


def markdown(pairs: list[dict], sizes: list[dict], command: str) -> str:
    lines = ["Command (one run; in each round the plain, cached and hand-written loops run `--repeats` epochs "
             "each, interleaved, and keep their fastest; each ratio is the median over rounds of the ratio within a "
             "round):", "",
             f"    {command}", "",
             "| pair | teacher/student FLOPs | plain epoch (s) | KD cached (s) | KD live (s) | hand-written (s) "
             "| cached / plain | live / plain | plain / hand-written |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in pairs:
        lines.append(f"| {p['pair']} ({p['samples']} MNIST images, batch 128, median of {p['rounds']}) "
                     f"| {p['flops_ratio']:.1f}x | {p['plain_s']:.2f} | {p['cached_s']:.2f} | {p['live_s']:.2f} "
                     f"| {p['hand_s']:.2f} | **{p['cached_over_plain']:.3f}** | {p['live_over_plain']:.2f} "
                     f"| **{p['plain_over_hand']:.3f}** |")
    lines += ["", "Cache size and build time (ccexam MNIST teacher, 10 classes, fp16 values, temperatures 1 and 4; "
              "k=10 and k=all store the same 10 classes):", "",
              "| k | bytes per sample per view | cache size (MB) | build time (s) |", "|---|---:|---:|---:|"]
    for s in sizes:
        lines.append(f"| {s['k']} | {s['bytes']} | {s['total_mb']:.2f} | {s['build_s']:.2f} |")
    return "\n".join(lines)


def profile_plain(label: str, samples: int, tmp: Path) -> None:
    """Print the cProfile of one plain engine epoch of ``label``'s student (after a warm-up epoch), by own time."""
    import cProfile
    import pstats

    recipe = recipe_for(PAIRS[label], tmp, samples)
    data = plan_from_recipe(recipe).data
    epoch = lambda name: engine_epoch(recipe, data, build_arch(recipe.student, data, 0),  # noqa: E731
                                      MethodSet([CE()]), tmp / name)
    epoch("warm")
    prof = cProfile.Profile()
    prof.enable()
    epoch("profiled")
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)


def engine_overhead(samples: int, rounds: int, tmp: Path) -> None:
    """Print what the engine adds per step where the model costs nothing: a 784-10 linear student, the engine's
    plain epoch against the hand-written loop, interleaved, the fastest of ``rounds`` epochs each."""
    recipe = recipe_for(PAIRS["ccexam -> cnn[8,16]"], tmp, samples)
    data = plan_from_recipe(recipe).data

    def linear() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    runs = {"engine": lambda: engine_epoch(recipe, data, linear(), MethodSet([CE()]), tmp / "linear"),
            "hand": lambda: handwritten_epoch(linear(), data.train.x, data.train.y, 0)}
    best = {k: float("inf") for k in runs}
    for r in range(rounds + 1):  # round 0 warms up
        for name in (list(runs) if r % 2 else list(runs)[::-1]):
            seconds = runs[name]()
            best[name] = min(best[name], seconds) if r else best[name]
    steps = -(-len(data.train) // 128)
    print(f"linear student, {steps} steps an epoch, fastest of {rounds}: engine {best['engine']:.4f} s, hand-written "
          f"{best['hand']:.4f} s; the engine adds {(best['engine'] - best['hand']) / steps * 1e3:.3f} ms a step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="measured rounds per pair (after one warm-up round)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="epochs of each loop per round, the fastest kept (1: one epoch each, as before)")
    ap.add_argument("--samples", type=int, default=10000, help="MNIST training images per epoch")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    ap.add_argument("--profile", choices=list(PAIRS), help="print a cProfile of one plain epoch of this pair, only")
    ap.add_argument("--overhead", action="store_true", help="print the engine's own cost per step (a linear "
                    "student, so the model costs nothing), only")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.overhead:
        with tempfile.TemporaryDirectory() as d:
            return engine_overhead(args.samples, args.rounds, Path(d))
    if args.profile:
        with tempfile.TemporaryDirectory() as d:
            return profile_plain(args.profile, args.samples, Path(d))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pairs = [measure_pair(label, student, args.samples, args.rounds, tmp / f"p{i}", args.repeats)
                 for i, (label, student) in enumerate(PAIRS.items())]
        sizes = cache_sizes(args.samples, tmp / "sizes")
    command = (f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed.py --rounds {args.rounds} "
               f"--repeats {args.repeats} --samples {args.samples}")
    text = markdown(pairs, sizes, command)
    print(text)
    if not args.no_write:
        replace_section(Path(__file__).parents[1] / "docs" / "BENCHMARKS.md", "speed", text)


if __name__ == "__main__":
    main()
