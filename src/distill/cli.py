"""``distill run|teacher|eval|inspect|bench|cache|export|list``.

Bad input: one ``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from distill.errors import DistillError, known_failure, single_line


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one ``error:`` line (and exit code 2) like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="distill", description="Knowledge distillation for PyTorch.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="train teacher (if needed), scratch baseline and distilled student; report")
    r.add_argument("recipe")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 method.T=2")
    r.add_argument("--resume", action="store_true", help="continue from the last complete checkpoints")
    t = sub.add_parser("teacher", help="train only the recipe's teacher")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*")
    t.add_argument("--resume", action="store_true")
    e = sub.add_parser("eval", help="evaluate a weights file of the recipe's student (or teacher)")
    e.add_argument("recipe")
    e.add_argument("overrides", nargs="*")
    e.add_argument("--checkpoint", required=True, help="model.safetensors, or a checkpoint directory")
    e.add_argument("--role", choices=["student", "teacher"], default="student")
    i = sub.add_parser("inspect", help="module paths and output shapes of a model, from a dry run")
    i.add_argument("model", help="a recipe (.yaml), a zoo model name, or an import path 'pkg.mod:Class'")
    i.add_argument("overrides", nargs="*", help="model arguments key=value, or recipe overrides")
    i.add_argument("--role", choices=["student", "teacher"], default="teacher")
    i.add_argument("--input-shape", default="1,28,28", help="per-sample input shape, e.g. 1,28,28")
    i.add_argument("--num-classes", type=int, default=10)
    i.add_argument("--pairs", action="store_true", help="the layers `layers: auto` pairs: `inspect --pairs TEACHER "
                   "STUDENT` (zoo names or import paths), or `inspect RECIPE --pairs`")
    sub.add_parser("list", help="registered methods, models and datasets")
    b = sub.add_parser("bench", help="scratch + many methods on one teacher/student pair over several seeds")
    b.add_argument("recipe")
    b.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3")
    b.add_argument("--methods", default="all", help="'all' (every method but ce) or a list like kd,dkd,rkd")
    b.add_argument("--strategies", help="compare strategies instead of methods: e.g. offline,mutual,born_again, "
                   "multi_teacher:weighting=entropy, offline:teacher=<name>")
    b.add_argument("--seeds", type=int, default=1, help="number of seeds, from the recipe's seed up")
    b.add_argument("--method-args", help="YAML file: method name -> keyword arguments (e.g. layer paths)")
    b.add_argument("--resume", action="store_true", help="skip finished runs, continue interrupted ones")
    a = sub.add_parser("auto", help="search method, T, weights, lr and student size under a budget (Optuna), then "
                       "run the chosen recipe")
    a.add_argument("recipe")
    a.add_argument("overrides", nargs="*", help="dotted overrides of the base recipe, e.g. train.epochs=5")
    a.add_argument("--trials", type=int, help="number of trials (default: the recipe's search.trials, 20)")
    a.add_argument("--budget", help="latency_ms_b1<=X (ms at batch 1) or params<=N: students over it never train")
    a.add_argument("--objective", choices=["accuracy", "pareto"], default="accuracy",
                   help="accuracy: best validation top-1, weak trials pruned; pareto: accuracy and cost")
    a.add_argument("--seeds", type=int, default=1, help="seeds of the chosen recipe's final run")
    c = sub.add_parser("cache", help="build or verify the teacher-output cache")
    csub = c.add_subparsers(dest="cache_command", required=True, parser_class=_Parser)
    cb = csub.add_parser("build", help="run the teacher once over the training data and store its top-k logits")
    cb.add_argument("recipe")
    cb.add_argument("overrides", nargs="*", help="dotted overrides, e.g. cache.k=5 cache.path=/data/cache")
    cv = csub.add_parser("verify", help="check a cache's shards (sizes, sha256) and, with --recipe, its fingerprint")
    cv.add_argument("path")
    cv.add_argument("--recipe", help="also check that the cache matches this recipe's teacher, data and settings")
    cv.add_argument("overrides", nargs="*")
    x = sub.add_parser("export", help="export a finished run's student (parity-checked) and add a deployment table")
    x.add_argument("run_dir", help="a finished run's output directory (holds report.json and student/)")
    x.add_argument("--format", required=True,
                   choices=["safetensors", "torchscript", "onnx", "transformers"])  # export.FORMATS + transformers
    x.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of the Linear layers")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``distill`` console script."""
    parser = _parser()
    # overrides may follow options (`run R --resume a.b=1`): argparse leaves those as extras
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = list(getattr(args, "overrides", None) or []) + extra
    try:
        return _dispatch(args)
    except DistillError as e:
        print(f"error: {single_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        known = known_failure(e)  # the file system said no, an unreadable file, the user's own code raised
        if known is not None:
            print(f"error: {single_line(known)}", file=sys.stderr)
            return 2
        # not a known failure kind: show where, and say it is ours to fix
        print("error: internal error, a bug in distill; please report it with the traceback below", file=sys.stderr)
        traceback.print_exc()
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    from distill import commands

    if args.command == "list":
        print(commands.list_registered())
        return 0
    if args.command == "inspect" and args.pairs:
        print(commands.inspect_pairs(args.model, args.overrides, input_shape=args.input_shape,
                                     num_classes=args.num_classes))
        return 0
    if args.command == "inspect":
        print(commands.inspect(args.model, args.overrides, role=args.role, input_shape=args.input_shape,
                               num_classes=args.num_classes))
        return 0
    if args.command == "export":
        from distill.export import export_student

        e = export_student(args.run_dir, args.format, int8=args.int8)
        where = "" if e["format"] == "transformers" else f"; deployment table in {Path(args.run_dir) / 'report.md'}"
        print(f"exported {Path(args.run_dir) / 'export' / e['file']} ({e['bytes']:,} bytes): top-1 agreement "
              f"{e['agreement']:.2%} with the PyTorch student on {e['n']} test samples, max |logit diff| "
              f"{e['max_abs_diff']:.3g}{where}")
        return 0
    if args.command == "cache" and args.cache_command == "verify":
        print(commands.verify_cache(args.path, args.recipe, args.overrides))
        return 0
    if args.command == "auto":
        from distill.search import auto

        res = auto(args.recipe, overrides=args.overrides, trials=args.trials, budget=args.budget,
                   objective=args.objective, seeds=args.seeds)
        print(f"chosen recipe written to {res.recipe.resolve()} (trial {res.chosen['trial']}); trials in "
              f"{res.table.resolve()}")
        for path in res.reports:
            print(f"report written to {Path(path).resolve()}")
        return 0
    from distill.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.command == "cache":
        print(commands.build_cache(recipe))
        return 0
    if args.command == "run":
        from distill.run import run

        path = run(recipe, resume=args.resume)
        print(f"report written to {Path(path).resolve()}")
    elif args.command == "teacher":
        print(f"teacher weights written to {commands.train_teacher(recipe, resume=args.resume)}")
    elif args.command == "eval":
        print(json.dumps(commands.evaluate_weights(recipe, args.checkpoint, role=args.role), indent=2))
    elif args.command == "bench":
        from distill.bench import bench, format_command

        command = format_command(args.recipe, args.overrides, methods=args.methods, seeds=args.seeds,
                                 method_args=args.method_args, resume=args.resume, strategies=args.strategies)
        if args.strategies is not None:
            from distill.bench_strategies import bench_strategies

            path = bench_strategies(recipe, strategies=args.strategies, seeds=args.seeds, resume=args.resume,
                                    command=command)
        else:
            path = bench(recipe, methods=args.methods, seeds=args.seeds, method_args=args.method_args,
                         resume=args.resume, command=command)
        print(f"bench written to {Path(path).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
