"""``distill bench``: one digits bench (kd, dkd, rkd and a method that cannot tap an MLP) over two seeds."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import statistics
from pathlib import Path

import pytest

from distill.bench import method_specs, select_methods
from distill.bench_write import mean_std
from distill.cli import main
from distill.errors import DistillError
from distill.recipe import recipe_from_dict
from helpers import cli, digits_recipe, write_recipe

METHODS = "kd,dkd,rkd,at"


def _recipe(tmp: Path) -> dict:
    raw = digits_recipe(tmp)
    raw["teacher"]["train"]["epochs"] = 2
    raw["train"]["epochs"] = 1
    return raw


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(recipe path, bench folder, stdout) of one two-seed bench."""
    tmp = tmp_path_factory.mktemp("bench")
    recipe = write_recipe(tmp, _recipe(tmp))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["bench", str(recipe), "--methods", METHODS, "--seeds", "2"])
    assert code == 0
    return recipe, tmp / "out" / "bench", out.getvalue()


def _table(md: str) -> list[list[str]]:
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[1:]]  # without the header


def _csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def test_bench_writes_every_file_and_run(bench_run: tuple[Path, Path, str]) -> None:
    recipe, root, stdout = bench_run
    for name in ("bench.md", "bench.csv", "bench.png", "bench.json"):
        assert (root / name).is_file(), name
    assert str((root / "bench.md").resolve()) in stdout
    assert (root / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (root / "teacher" / "model.json").is_file()
    for seed in (0, 1):
        assert (root / "scratch" / f"seed{seed}" / "scratch" / "model.json").is_file()
        for name in ("kd", "dkd", "rkd"):
            assert (root / name / f"seed{seed}" / "student" / "model.json").is_file()
    assert not (root / "at").exists()
    md = (root / "bench.md").read_text()
    assert f"distill bench {recipe} --methods {METHODS} --seeds 2" in md
    report = json.loads((root / "bench.json").read_text())
    assert report["seeds"] == [0, 1]
    # kd and dkd carry their own cross-entropy; rkd is combined with ce
    assert [[s["name"] for s in specs] for specs in report["methods"].values()] == [["kd"], ["dkd"], ["ce", "rkd"]]


def test_bench_table_matches_per_seed_values(bench_run: tuple[Path, Path, str]) -> None:
    _, root, _ = bench_run
    table = _table((root / "bench.md").read_text())
    names = [row[0] for row in table]
    assert names[:2] == ["teacher", "scratch"] and sorted(names) == sorted(["teacher", "scratch", *METHODS.split(",")])
    rows = _csv(root / "bench.csv")
    scratch_last = statistics.fmean(float(rows["scratch"][f"top1_last_seed{s}"]) for s in (0, 1))
    ranked = []
    for row in table:
        name, runs = row[0], row[1]
        if name == "at":
            continue
        seeds = (0,) if name == "teacher" else (0, 1)
        assert int(runs) == len(seeds) == int(rows[name]["runs"])
        for key, cell in (("top1_last", row[2]), ("top1_best", row[3])):
            values = [float(rows[name][f"{key}_seed{s}"]) for s in seeds]
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            assert float(rows[name][f"{key}_mean"]) == pytest.approx(mean)
            assert float(rows[name][f"{key}_std"]) == pytest.approx(std)
            assert cell == f"{100 * mean:.2f} ± {100 * std:.2f}"
        if name != "scratch":
            assert row[4] == f"{100 * (float(rows[name]['top1_last_mean']) - scratch_last):+.2f}"
            ranked.append(float(rows[name]["top1_last_mean"]))
    assert ranked[1:] == sorted(ranked[1:], reverse=True)  # methods by top-1 (last), best first


def test_bench_reports_a_method_that_cannot_tap_the_pair_as_skipped(bench_run: tuple[Path, Path, str]) -> None:
    _, root, _ = bench_run
    at = next(row for row in _table((root / "bench.md").read_text()) if row[0] == "at")
    assert at[1] == "0" and at[2].startswith("skipped: ") and "avgpool" in at[2]
    assert _table((root / "bench.md").read_text())[-1][0] == "at"
    assert _csv(root / "bench.csv")["at"]["status"].startswith("skipped: ")


def test_bench_resume_skips_finished_runs(bench_run: tuple[Path, Path, str], capsys) -> None:
    recipe, root, _ = bench_run
    before = (root / "bench.csv").read_text()
    code, out, _ = cli(capsys, "bench", str(recipe), "--methods", METHODS, "--seeds", "2", "--resume")
    assert code == 0
    assert out.count("already complete") == 1 + 2 * 4  # teacher + 2 seeds x (scratch, kd, dkd, rkd)
    assert (root / "bench.csv").read_text() == before


def test_bench_bad_method_name_exits_2_with_a_suggestion(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, _recipe(tmp_path))
    code, _, err = cli(capsys, "bench", str(recipe), "--methods", "kd,dkdd")
    assert code == 2
    assert err.count("\n") == 1 and "unknown method 'dkdd'" in err and "did you mean 'dkd'" in err
    assert not (tmp_path / "out").exists()


def test_bench_bad_method_args_exit_2(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, _recipe(tmp_path))
    args = tmp_path / "args.yaml"
    args.write_text("rkd: {student_layer: [fc:input]}\n")
    code, _, err = cli(capsys, "bench", str(recipe), "--methods", "rkd", "--method-args", str(args))
    assert code == 2 and "rkd.student_layer" in err and "did you mean 'student_layers'" in err
    code, _, err = cli(capsys, "bench", str(recipe), "--seeds", "0")
    assert code == 2 and "--seeds" in err


def test_method_specs_compose_and_take_arguments(tmp_path: Path) -> None:
    recipe = recipe_from_dict(_recipe(tmp_path))
    kd = method_specs(recipe, "kd", {"kd": {"T": 2.0}})  # the recipe's own kd arguments, updated
    assert kd == [{"name": "kd", "weight": 1.0, "T": 2.0, "alpha": 0.5, "beta": 0.5}]
    assert method_specs(recipe, "rkd", {"rkd": {"weight": 0.5}}) == [{"name": "ce"}, {"name": "rkd", "weight": 0.5}]
    # a combination is the methods themselves (kd brings its own cross-entropy), each with its arguments
    combo = method_specs(recipe, "kd+rkd", {"rkd": {"w_dist": 1.0}})
    assert combo == [kd[0] | {"T": 4.0}, {"name": "rkd", "w_dist": 1.0}]
    assert select_methods("kd, kd+rkd") == ["kd", "kd+rkd"]
    with pytest.raises(DistillError, match="unknown method 'rdk'"):
        select_methods("kd+rdk")


def test_mean_std_uses_sample_std() -> None:
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, statistics.stdev([0.5, 0.7])))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert mean_std([]) == (None, None)


def test_a_bug_in_one_run_is_shown_and_recorded_and_the_bench_goes_on(tmp_path: Path, capsys,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import distill.bench as bench_mod

    real = bench_mod.train_student

    def buggy(plan, *args, **kwargs):
        if any(m.name == "dkd" for m in plan.recipe.methods):
            raise ZeroDivisionError("division by zero")
        return real(plan, *args, **kwargs)

    monkeypatch.setattr(bench_mod, "train_student", buggy)
    recipe = write_recipe(tmp_path, _recipe(tmp_path))
    code, out, err = cli(capsys, "bench", str(recipe), "--methods", "kd,dkd", "--seeds", "1")
    assert code == 0, err
    rows = _csv(tmp_path / "out" / "bench" / "bench.csv")
    assert rows["kd"]["status"] == "ok"
    assert rows["dkd"]["status"] == "failed: internal error, a bug in distill: ZeroDivisionError: division by zero"
    assert "dkd failed (seed 0) with an internal error" in out and "Traceback" in out
    assert "ZeroDivisionError: division by zero" in out
