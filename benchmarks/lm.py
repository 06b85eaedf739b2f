"""A real LLM distilled on CPU: SmolLM2-135M-Instruct into a 16M-parameter Llama on Shakespeare, 3 seeds.

For each seed, ``distill run recipes/shakespeare-smollm2.yaml`` (scratch student and distilled student, the same
student tokens; the recipe's teacher cache of 32 sampled tokens per position is built by the first seed and
shared by the others); then, for ``--live-seeds``, the same distillation from the live teacher (every logit,
``cache=off``), for ``--top-seeds`` from a cache of the teacher's 32 most probable tokens instead
(``cache.select=top``, its cache built once and shared too), and for ``--gkd-seeds`` on-policy distillation
(``strategy=gkd``, generalized JSD alone as in TRL; its off-policy batches from the top-32 cache, since JSD is
not linear in the teacher's probabilities), and for ``--gkd-ce-seeds`` the same with the recipe's label term
(0.5 JSD + 0.5 cross-entropy; on-policy batches carry no labels, so the cross-entropy counts the dataset's
batches only); ``--gkd-ft-seeds`` starts GKD (JSD alone) from the scratch student of the same seed
(``student.weights``, as the paper and TRL start from a fine-tuned student) against as many more epochs of
cross-entropy from the same weights (the run's scratch baseline). For ``--uld-seeds``, the cross-tokenizer
recipe (``recipes/shakespeare-smollm2-uld.yaml``: a WordPiece student, method ``uld``) with its own scratch
student. Reads each run's ``report.json`` and the
caches' manifests, prints the table and writes it into docs/BENCHMARKS.md (section ``lm``). Run
``make shakespeare`` first.

    python benchmarks/lm.py [--seeds 3] [--live-seeds 1] [--top-seeds 1] [--gkd-seeds 0] [--gkd-ce-seeds 0]
                            [--gkd-ft-seeds 0] [--uld-seeds 1] [--out runs/lm] [--no-write]

``--sparse-seeds N`` runs only the sparse cache's check, seed for seed: the distillation from 32 sampled tokens
per position against the same distillation from every live teacher logit, for seeds 0..N-1, into the section
``lm-sparse``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/shakespeare-smollm2.yaml"


def run(out: Path, seed: int, *extra: str, recipe: str = RECIPE) -> tuple[dict, float]:
    """One `distill run` (skipped when its report exists); its report and wall seconds."""
    report = out / "report.json"
    start = time.perf_counter()
    if not report.is_file():
        cmd = [sys.executable, "-m", "distill.cli", "run", recipe, f"seed={seed}", f"output_dir={out}", *extra]
        print("$", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads(report.read_text()), time.perf_counter() - start


def epoch_seconds(report: dict, role: str) -> float:
    """Mean training seconds per epoch of a role (evaluation excluded)."""
    return statistics.fmean(float(h["seconds"]) for h in report["histories"][role])


def ms(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """'mean ± std' of values (std 0 for one)."""
    v = [x * scale for x in values]
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.fmean(v):.{digits}f} ± {sd:.{digits}f}"


def table(seeds: list[dict], live: list[dict], top: list[dict], gkd: list[dict], gkd_ce: list[dict],
          caches: dict[str, dict], n: int) -> str:
    """The Markdown section: rows teacher / scratch / distilled (the recipe's sampled cache) / distilled (live) /
    distilled (top-32 cache) / GKD, then the ratios and the caches' costs. ``caches``: manifests by name."""
    rows = [("teacher: SmolLM2-135M-Instruct (Q4_1, dequantised)", [r["models"]["teacher"] for r in seeds]),
            ("scratch student (cross-entropy)", [r["models"]["scratch"] for r in seeds]),
            ("distilled student, k = 32 sampled cache (the recipe)", [r["models"]["student"] for r in seeds])]
    for name, runs in (("distilled student, live teacher (every logit, `cache=off`)", live),
                       ("distilled student, top-32 cache (`cache.select=top`)", top),
                       ("distilled student, GKD (on-policy lmbda 0.5, JSD beta 0.5 alone: TRL's loss)", gkd),
                       ("distilled student, GKD with the recipe's label term (0.5 JSD + 0.5 CE on dataset batches)",
                        gkd_ce)):
        if runs:
            rows.append((name, [r["models"]["student"] for r in runs]))
    lines = ["| model | params | perplexity | next-token top-1 (%) | agreement w/ teacher (%) | generation "
             "(tokens/s) | seeds |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, ms_ in rows:
        gen = [m["tokens_per_s"] for m in ms_ if m.get("tokens_per_s")]
        lines.append(f"| {name} | {ms_[0]['params']:,} | {ms([m['ppl'] for m in ms_])} | "
                     f"{ms([m['top1_last'] for m in ms_], 100)} | {ms([m['agreement'] for m in ms_], 100)} | "
                     f"{ms(gen, 1, 1) if gen else '-'} | {len(ms_)} |")
    ratio = [r["models"]["student"]["ppl"] / r["models"]["scratch"]["ppl"] for r in seeds]
    lines += ["", f"- Distilled / scratch perplexity: **{ms(ratio, 1, 3)}x** (per seed: {_per(ratio)})."]
    for name, cache in caches.items():
        per_token = cache["bytes_per_sample_view"] / cache["tokens_per_sample"]
        lines.append(f"- The {name} cache: k = {cache['k']} of {cache['num_classes']:,} tokens, {per_token:.0f} bytes "
                     f"per token ({n:,} training tokens), built in {cache['build_seconds']:.0f} s.")
    ppl = lambda rs: [r["models"]["student"]["ppl"] for r in rs]  # noqa: E731
    for name, runs in (("k = 32 sampled cache", seeds), ("top-32 cache", top)):
        if live and runs:
            vs = [c / v for c, v in zip(ppl(runs), ppl(live))]
            lines.append(f"- The {name} against every live teacher logit, same seeds: perplexity ratio "
                         f"**{ms(vs, 1, 3)}x** (per seed: {_per(vs)}).")
    if top:
        vs = [t / c for t, c in zip(ppl(top), ppl(seeds))]
        lines.append(f"- The top-32 cache against the sampled one, same seeds: perplexity ratio {ms(vs, 1, 3)}x.")
    for name, runs in (("GKD (JSD alone)", gkd), ("GKD with the label term", gkd_ce)):
        if runs:
            vs = [g / r["models"]["scratch"]["ppl"] for g, r in zip(ppl(runs), seeds)]
            lines.append(f"- {name} / scratch perplexity, same seeds: **{ms(vs, 1, 3)}x** (per seed: {_per(vs)}); "
                         f"an epoch takes {ms([epoch_seconds(r, 'student') for r in runs], 1, 0)} s.")
    if live:
        lines.append(f"- A live-teacher epoch takes {ms([epoch_seconds(r, 'student') for r in live], 1, 0)} s against "
                     f"{ms([epoch_seconds(r, 'student') for r in seeds[:len(live)]], 1, 0)} s from the cache.")
    return "\n".join(lines)


def _per(values: list[float]) -> str:
    return ", ".join(f"{x:.3f}" for x in values)


def uld_table(runs: list[dict]) -> str:
    """Cross-tokenizer rows: the WordPiece student trained alone and distilled through ULD (same tokens)."""
    lines = ["| model (student tokenizer: all-MiniLM-L6-v2's WordPiece, 30,522) | params | perplexity | next-token "
             "top-1 (%) | seeds |", "|---|---:|---:|---:|---:|"]
    for name, role in (("scratch student (cross-entropy)", "scratch"), ("ULD student (SmolLM2 teacher)", "student")):
        ms_ = [r["models"][role] for r in runs]
        lines.append(f"| {name} | {ms_[0]['params']:,} | {ms([m['ppl'] for m in ms_])} | "
                     f"{ms([m['top1_last'] for m in ms_], 100)} | {len(ms_)} |")
    ratio = [r["models"]["student"]["ppl"] / r["models"]["scratch"]["ppl"] for r in runs]
    cost = [f"{ms([epoch_seconds(r, role) for r in runs], 1, 0)} s" for role in ("student", "scratch")]
    return "\n".join(lines + ["", f"- ULD / scratch perplexity: **{ms(ratio, 1, 3)}x** (per seed: {_per(ratio)}).",
                              f"- A ULD epoch (the teacher live) takes {cost[0]} against {cost[1]} for the scratch "
                              "student's."])


def ft_table(runs: list[dict], seeds: list[dict]) -> str:
    """GKD from the trained scratch student against cross-entropy continued from it, same extra tokens."""
    start = [r["models"]["scratch"] for r in seeds[:len(runs)]]  # the same seeds' starting weights
    rows = [("start: the scratch student after 3 epochs of cross-entropy", start),
            ("+ 3 epochs of cross-entropy", [r["models"]["scratch"] for r in runs]),
            ("+ 3 epochs of GKD (on-policy lmbda 0.5, JSD beta 0.5 alone)", [r["models"]["student"] for r in runs])]
    lines = ["| student | perplexity | next-token top-1 (%) | agreement w/ teacher (%) | seeds |",
             "|---|---:|---:|---:|---:|"]
    for name, m in rows:
        lines.append(f"| {name} | {ms([x['ppl'] for x in m])} | {ms([x['top1_last'] for x in m], 100)} | "
                     f"{ms([x['agreement'] for x in m], 100)} | {len(m)} |")
    ratio = [r["models"]["student"]["ppl"] / r["models"]["scratch"]["ppl"] for r in runs]
    cost = [ms([epoch_seconds(r, role) for r in runs], 1, 0) for role in ("student", "scratch")]
    return "\n".join(lines + ["", f"- GKD / cross-entropy, both from the scratch student: **{ms(ratio, 1, 3)}x** "
                              f"(per seed: {_per(ratio)}); an epoch takes {cost[0]} s against {cost[1]} s."])


def sparse_table(sampled: list[dict], live: list[dict], cache: dict) -> str:
    """Seed for seed: the student distilled from the k = 32 sampled cache against every live teacher logit."""
    lines = ["| seed | perplexity, live teacher (every logit) | perplexity, 32 sampled tokens | sampled / live | "
             "agreement w/ teacher, live (%) | agreement, sampled (%) |", "|---:|---:|---:|---:|---:|---:|"]
    ratio = []
    for seed, (s, v) in enumerate(zip(sampled, live)):
        s, v = s["models"]["student"], v["models"]["student"]
        ratio.append(s["ppl"] / v["ppl"])
        lines.append(f"| {seed} | {v['ppl']:.2f} | {s['ppl']:.2f} | {ratio[-1]:.3f} | {100 * v['agreement']:.2f} | "
                     f"{100 * s['agreement']:.2f} |")
    per_token = cache["bytes_per_sample_view"] // cache["tokens_per_sample"]
    return "\n".join(lines + ["", f"- Sampled / live perplexity over {len(ratio)} seeds: **{ms(ratio, 1, 3)}x**; "
                              f"the cache: k = {cache['k']} of {cache['num_classes']:,} tokens, {per_token} bytes per "
                              f"token, built in {cache['build_seconds']:.0f} s."])


def live_runs(out: Path, n: int) -> list[dict]:
    """Reports of the recipe's distillation from every live teacher logit, seeds 0..n-1."""
    return [run(out / f"live-seed{s}", s, "cache=off", "compare=false")[0] for s in range(n)]


def sampled_runs(out: Path, n: int) -> list[dict]:
    """Reports of the recipe's distillation (its cache of 32 sampled tokens, shared with the main seeds' runs),
    seeds 0..n-1, without the scratch student."""
    return [run(out / f"sampled-seed{s}", s, f"cache.path={out / 'cache'}", "compare=false")[0] for s in range(n)]


def sparse_only(out: Path, n: int) -> str:
    """The runs of ``--sparse-seeds`` (sampled cache, then live teacher) and their section's text."""
    sampled, live = sampled_runs(out, n), live_runs(out, n)
    cache = json.loads((out / "cache" / "manifest.json").read_text())
    return (f"```bash\nmake shakespeare\nOMP_NUM_THREADS=2 .venv/bin/python benchmarks/lm.py --sparse-seeds {n}\n```"
            "\n\n" + sparse_table(sampled, live, cache))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--live-seeds", type=int, default=1)
    p.add_argument("--top-seeds", type=int, default=1)
    p.add_argument("--gkd-seeds", type=int, default=0)
    p.add_argument("--gkd-ce-seeds", type=int, default=0)
    p.add_argument("--gkd-ft-seeds", type=int, default=0)
    p.add_argument("--uld-seeds", type=int, default=1)
    p.add_argument("--out", default="runs/lm")
    p.add_argument("--sparse-seeds", type=int, default=0, help="run only the sampled-cache vs live check")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    out = ROOT / a.out
    if a.sparse_seeds:
        return _write("lm-sparse", sparse_only(out, a.sparse_seeds), a.no_write)
    seeds = [run(out / f"seed{s}", s, f"cache.path={out / 'cache'}")[0] for s in range(a.seeds)]
    live = live_runs(out, a.live_seeds)
    top_cache = (f"cache.path={out / 'cache-top'}", "cache.select=top", "compare=false")
    top = [run(out / f"top-seed{s}", s, *top_cache)[0] for s in range(a.top_seeds)]
    gkd = [run(out / f"gkd-seed{s}", s, *top_cache, "strategy=gkd",
               "method={name: token_kd, divergence: jsd, beta: 0.5}")[0]
           for s in range(a.gkd_seeds)]
    gkd_ce = [run(out / f"gkd-ce-seed{s}", s, *top_cache, "strategy=gkd",
                  "method={name: token_kd, divergence: jsd, beta: 0.5, alpha: 1.0, weight: 0.5}")[0]
              for s in range(a.gkd_ce_seeds)]
    gkd_ft = [run(out / f"gkd-ft-seed{s}", s, *top_cache[:2], "strategy=gkd", "compare=true",
                  f"student.weights={out / f'seed{s}' / 'scratch' / 'model.safetensors'}",
                  "method={name: token_kd, divergence: jsd, beta: 0.5}")[0] for s in range(a.gkd_ft_seeds)]
    uld = [run(out / f"uld-seed{s}", s, recipe="recipes/shakespeare-smollm2-uld.yaml")[0]
           for s in range(a.uld_seeds)]
    sampled_name = "recipe's k = 32 sampled"
    used = [(sampled_name, "cache")] + ([("top-32", "cache-top")] if top or gkd or gkd_ce else [])
    caches = {name: json.loads((out / folder / "manifest.json").read_text()) for name, folder in used}
    tokens = caches[sampled_name]["fingerprint"]["num_samples"] * caches[sampled_name]["tokens_per_sample"]
    text = (f"```bash\nmake shakespeare\nOMP_NUM_THREADS=2 .venv/bin/python benchmarks/lm.py --seeds {a.seeds} "
            f"--live-seeds {a.live_seeds} --top-seeds {a.top_seeds} --gkd-seeds {a.gkd_seeds} "
            f"--gkd-ce-seeds {a.gkd_ce_seeds} --gkd-ft-seeds {a.gkd_ft_seeds} --uld-seeds {a.uld_seeds}\n```\n\n"
            + table(seeds, live, top, gkd, gkd_ce, caches, tokens)
            + ("\n\n" + ft_table(gkd_ft, seeds) if gkd_ft else "") + ("\n\n" + uld_table(uld) if uld else ""))
    _write("lm", text, a.no_write)


def _write(section: str, text: str, no_write: bool) -> None:
    """Print ``text`` and, unless ``no_write``, put it into docs/BENCHMARKS.md's ``section``."""
    print(text)
    if not no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from docs_section import replace_section

        replace_section(ROOT / "docs" / "BENCHMARKS.md", section, text)


if __name__ == "__main__":
    main()
