"""Start-to-report wall time of `distill run` on the peer benchmark's work (benchmarks/peer-kd.yaml: the pretrained
ccexam MNIST CNN -> a 9,098-parameter CNN, 20,000 MNIST images, KD at T=4, 3 epochs), as a user runs it:
a fresh run (the teacher cache built, the teacher's test logits stored with it) and the same recipe at the next
seed reading that cache (a rerun, or a bench's second seed). Rounds interleave the two; the machine's load is
printed before each run. Writes the table into docs/BENCHMARKS.md (section ``start-to-report``).

    python benchmarks/start_to_report.py --rounds 3 [--baseline REV]

``--baseline REV`` also times a fresh run of the code at git revision REV (checked out into a temporary worktree,
run with this venv) in the same rounds, for a before/after ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docs_section import replace_section

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "benchmarks" / "peer-kd.yaml"


def timed(*overrides: str, src: Path | None = None) -> float:
    """Seconds from the command's start to its exit (report written), imports and data loading included;
    ``src``: run the distill package found there instead of this checkout's."""
    load = os.getloadavg()[0]
    env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "distill.cli", "run", str(RECIPE), *overrides], check=True,
                   capture_output=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - t0
    print(f"  {seconds:6.2f} s  (load before: {load:.2f})  {' '.join(overrides)}", flush=True)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", help="a git revision whose fresh run is timed in the same rounds")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = ap.parse_args()
    fresh, cached, before = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "baseline"
        if args.baseline:
            subprocess.run(["git", "worktree", "add", "--detach", str(old), args.baseline], check=True, cwd=ROOT,
                           capture_output=True)
        try:
            for r in range(args.rounds):
                out = Path(tmp) / f"r{r}"
                if args.baseline:
                    before.append(timed(f"output_dir={out}/old", src=old / "src"))
                fresh.append(timed(f"output_dir={out}/seed0", f"cache.path={out}/cache"))
                cached.append(timed(f"output_dir={out}/seed1", f"cache.path={out}/cache", "seed=1"))
        finally:
            if args.baseline:
                subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
    ratio = statistics.median(c / f for c, f in zip(cached, fresh))
    base = f" --baseline {args.baseline}" if args.baseline else ""
    rows = [f"| fresh, at {args.baseline} | {statistics.median(before):.2f} | {min(before):.2f} | {max(before):.2f} |"
            ] if before else []
    text = "\n".join([
        f"Command: `python benchmarks/start_to_report.py --rounds {args.rounds}{base}` ({os.cpu_count()} CPU cores).",
        "", "| run of `benchmarks/peer-kd.yaml` | start to report (s), median | min | max |", "|---|---:|---:|---:|",
        *rows,
        f"| fresh (teacher cache built) | {statistics.median(fresh):.2f} | {min(fresh):.2f} | {max(fresh):.2f} |",
        f"| next seed, cache already built | {statistics.median(cached):.2f} | {min(cached):.2f} | "
        f"{max(cached):.2f} |", "",
        f"Cached over fresh, median of the per-round ratios: {ratio:.2f}x."
        + (f" Fresh now over fresh at {args.baseline}: "
           f"{statistics.median(f / b for f, b in zip(fresh, before)):.2f}x." if before else "")])
    print(text)
    if not args.no_write:
        replace_section(ROOT / "docs" / "BENCHMARKS.md", "start-to-report", text)


if __name__ == "__main__":
    main()
