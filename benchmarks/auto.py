"""`distill auto` on the demo pair under a batch-1 latency budget no larger than the demo student's.

Searches with `--budget latency_ms_b1<=recipe` (the demo recipe's own student, a 784-32-10 MLP, measured at batch
1 by the search as it measures every trial; `--trials` trials, the default space), runs the chosen recipe for
`--seeds` seeds, runs the demo recipe itself for the same seeds, and compares their test top-1 (last and best
epoch, mean ± std).
Writes the section `auto` of docs/BENCHMARKS.md and copies the Pareto PNG to docs/auto-pareto.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/mnist-transfer-kd.yaml"
DISTILL = [str(ROOT / ".venv" / "bin" / "distill")]


def ms(values: list[float], scale: float = 100.0) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.2f} ± {scale * sd:.2f}"


def student(report: Path) -> dict:
    return json.loads(report.read_text())["models"]["student"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="runs/auto-demo")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    out = ROOT / a.out
    started = time.perf_counter()
    subprocess.run([*DISTILL, "auto", RECIPE, f"output_dir={out}", "--trials", str(a.trials), "--budget",
                    "latency_ms_b1<=recipe", "--seeds", str(a.seeds)], check=True, cwd=ROOT)
    wall = time.perf_counter() - started
    search = json.loads((out / "auto.json").read_text())
    budget = float(search["budget_limit"])
    chosen = next(r for r in search["trials"] if r["trial"] == search["chosen"])
    final = sorted((out / f"final-trial{chosen['trial']:03d}").glob("seed*/report.json"))
    demo = []
    for s in range(a.seeds):
        folder = out / "demo" / f"seed{s}"
        subprocess.run([*DISTILL, "run", RECIPE, f"seed={s}", f"output_dir={folder}", "compare=false",
                        f"cache.path={out / 'cache'}"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        demo.append(folder / "report.json")
    text = table(a, budget, search, chosen, [student(r) for r in final], [student(r) for r in demo], wall)
    print(text)
    if not a.no_write:
        shutil.copyfile(out / "pareto.png", ROOT / "docs" / "auto-pareto.png")
        sys.path.insert(0, str(Path(__file__).parent))
        from docs_section import replace_section

        replace_section(ROOT / "docs" / "BENCHMARKS.md", "auto", text)


def table(a: argparse.Namespace, budget: float, search: dict, chosen: dict, final: list[dict], demo: list[dict],
          wall: float) -> str:
    rows = search["trials"]
    count = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "over budget")}
    command = f"OMP_NUM_THREADS=2 .venv/bin/python benchmarks/auto.py --trials {a.trials} --seeds {a.seeds}"
    lines = [f"```bash\n{command}\n```",
             "", f"Budget: `--budget latency_ms_b1<=recipe`, batch-1 latency <= **{budget:.4f} ms**, the demo "
             "student's as the search measured it (the lowest of 10 medians of 100 timed forwards spread over 1.5 "
             "s; every trial is measured so, once per architecture). "
             f"Trial 0 is the demo recipe as written. Search: {len(rows)} trials, {count['complete']} "
             "trained to the end, "
             f"**{count['pruned']} pruned early** (Median pruner on validation top-1), {count['over budget']} over "
             f"the budget (never trained); search time {search['seconds']:.0f} s, whole command (search + "
             f"{a.seeds} final seeds) {wall:.0f} s. Chosen: trial {chosen['trial']}, "
             f"`{describe(chosen['values'])}` (validation top-1 {chosen['val_top1']:.2%}, "
             f"{chosen['latency_ms_b1']:.4f} ms, {int(chosen['params']):,} params).", "",
             "| student | params | latency b1 (ms) | test top-1 last (%) | test top-1 at best-val epoch (%) | seeds |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, runs, ms_b1 in (("demo recipe (kd T=4, lr 0.01, hidden [32])", demo, budget),
                              ("chosen by distill auto", final, chosen["latency_ms_b1"])):
        lines.append(f"| {name} | {runs[0]['params']:,} | {ms_b1:.4f} | {ms([r['top1_last'] for r in runs])} "
                     f"| {ms([r['top1_best'] for r in runs])} | {len(runs)} |")
    diff = statistics.mean(r["top1_last"] for r in final) - statistics.mean(r["top1_last"] for r in demo)
    return "\n".join(lines + ["", f"Chosen minus demo, last-epoch test top-1: **{100 * diff:+.2f} points**. "
                              "Latencies in the table: the budget measurement for the demo student, the search's "
                              "measurement for the chosen one.", "",
                              "![distill auto Pareto front](auto-pareto.png)"])


def describe(values: dict) -> str:
    from distill.search.study import describe as text

    return text(values)


if __name__ == "__main__":
    main()
