"""One training step of the language-model student: plain cross-entropy against distillation from the top-32
teacher cache, the recipe's loss (``recipes/shakespeare-smollm2.yaml``: half cross-entropy, half forward KL).

Both variants run the same student (a fresh copy per variant, the recipe's config), the same batches of 8 blocks
of 128 tokens, AdamW; the distilled step also reads its teacher outputs from the cache (as the engine does, per
step). Rounds interleave the variants; each round times ``--steps`` steps after one warm-up step; the ratio is
the median over rounds of the distilled step's time over the plain step's. Needs the cache that
``benchmarks/lm.py`` builds (``runs/lm/cache``).

    python benchmarks/lm_step.py [--rounds 5] [--steps 10] [--no-write]

Writes the result into docs/BENCHMARKS.md (section ``lm-step``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/shakespeare-smollm2.yaml"


def timed(model: torch.nn.Module, methods: torch.nn.Module, opt: torch.optim.Optimizer, batches: list, cache) -> float:
    """Seconds per step over ``batches`` (the first one is a warm-up, not timed)."""
    from distill.types import ModelOutput, StepContext

    ctx = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=len(batches))
    start = 0.0
    for i, batch in enumerate(batches):
        if i == 1:
            start = time.perf_counter()
        t_out = cache.lookup(batch.index, 0) if cache is not None else None
        out = methods(ModelOutput(model(**batch.input)), t_out, batch, ctx)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    return (time.perf_counter() - start) / (len(batches) - 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cache", default="runs/lm/cache")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    from distill.build import build_arch, load_data
    from distill.cache.build import open_cache
    from distill.methods import MethodSet, build_method
    from distill.recipe import load_recipe
    from distill.types import Batch

    recipe = load_recipe(ROOT / RECIPE)
    data = load_data(recipe)
    cache = open_cache(ROOT / a.cache)
    torch.manual_seed(0)
    student = build_arch(recipe.student, data, recipe.seed)
    spec = recipe.methods[0]  # the recipe's token_kd entry, with its weight
    variants = {"plain": (MethodSet([build_method("ce")]), None),
                "cached": (MethodSet([build_method(spec.name, **spec.kwargs)], [spec.weight]), cache)}
    index = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[: 8 * (a.steps + 1)]
    batches = [Batch(data.train.take(i), data.train.y[i], i) for i in index.split(8)]
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for name, (methods, source) in variants.items():
            model = copy.deepcopy(student).train()
            opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
            times[name].append(timed(model, methods, opt, batches, source))
    ratios = [c / p for c, p in zip(times["cached"], times["plain"])]
    text = (f"Command: `OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lm_step.py --rounds {a.rounds} --steps "
            f"{a.steps}` ({torch.get_num_threads()} threads).\n\n"
            f"| step | median seconds | per round |\n|---|---:|---|\n"
            + "".join(f"| {k} | {statistics.median(v):.3f} | {', '.join(f'{x:.3f}' for x in v)} |\n"
                      for k, v in times.items())
            + f"\nCached-teacher step over plain step: **{statistics.median(ratios):.3f}x** (median of the "
              f"{a.rounds} rounds' ratios: {', '.join(f'{r:.3f}' for r in ratios)}).")
    print(text)
    if not a.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from docs_section import replace_section

        replace_section(ROOT / "docs" / "BENCHMARKS.md", "lm-step", text)


if __name__ == "__main__":
    main()
