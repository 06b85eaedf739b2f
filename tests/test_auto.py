"""distill auto: the search space, budgets, pruning of weak trials, kill -9 resume, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import distill
from distill.errors import DistillError
from distill.recipe import recipe_from_dict
from distill.search.space import default_space, parse, recipe_params, scale_student, temperatures, trial_recipe
from distill.search.study import Budget, _pruning_hook
from helpers import cli, digits_recipe, write_recipe

SPACE = {"method": {"kd": {"T": [2, 4]}}, "train.optimizer.lr": {"low": 0.001, "high": 0.01, "log": True}}


def _recipe(tmp: Path, **search: object) -> Path:
    raw = digits_recipe(tmp, search={"space": SPACE, "epochs": 1, **search})
    raw["teacher"]["train"]["epochs"] = 2
    return write_recipe(tmp, raw)


def test_trial_recipe_applies_the_method_choice_and_paths() -> None:
    raw = digits_recipe(Path("/tmp/x"), method={"name": "kd", "T": 4, "alpha": 0.5, "beta": 0.5})
    same = trial_recipe(raw, {"method": "kd", "method.kd.T": 2, "train.optimizer.lr": 0.01})
    assert same["methods"] == [{"name": "kd", "T": 2, "alpha": 0.5, "beta": 0.5}]  # its other arguments kept
    assert same["train"]["optimizer"]["lr"] == 0.01 and "method" not in same
    other = trial_recipe(raw, {"method": "dkd", "method.dkd.T": 8})
    assert other["methods"] == [{"name": "dkd", "T": 8}]  # kd's alpha/beta mean something else for dkd


def test_student_width_and_depth_scale_zoo_families() -> None:
    assert scale_student({"name": "mlp", "hidden": [32]}, 1.5, 2.0)["hidden"] == [48, 48]
    assert scale_student({"name": "mlp", "hidden": [64, 32]}, 0.5, 0.5)["hidden"] == [32]
    cnn = scale_student({"name": "cnn"}, 2.0, 1.0)  # the builder's defaults: channels (16, 32), hidden 64
    assert cnn["channels"] == [32, 64] and cnn["hidden"] == 128
    assert scale_student({"name": "resnet8"}, 1.0, 2.0)["name"] == "resnet14"
    wrn = scale_student({"name": "wrn", "depth": 16, "width": 2}, 2.0, 0.5)
    assert wrn == {"name": "wrn", "depth": 10, "width": 4}
    with pytest.raises(DistillError, match="zoo families mlp, cnn, wrn and resnet<N>, not 'lenet5'"):
        scale_student({"name": "lenet5"}, 2.0, 1.0)
    with pytest.raises(DistillError, match="search.space: student.width / student.depth: .* own arguments"):
        trial_recipe({"student": {"name": "lenet5"}}, {"student.width": 2.0})


def test_a_student_scaled_from_the_teacher_is_a_named_zoo_student() -> None:
    raw = digits_recipe(Path("/tmp/x"), student={"from_teacher": "scale", "width": 0.25, "depth": 0.5})
    raw["teacher"]["hidden"] = [64, 64]
    student = recipe_from_dict(raw).student
    assert (student.name, student.kwargs, student.from_teacher) == ("mlp", {"hidden": [16]}, None)
    raw["student"]["width"] = 0
    with pytest.raises(DistillError, match="student.width: a positive multiplier"):
        recipe_from_dict(raw)
    raw["student"]["width"], raw["teacher"] = 0.5, {"name": "lenet5"}
    with pytest.raises(DistillError, match="student.from_teacher: scale: width / depth multipliers apply"):
        recipe_from_dict(raw)


def test_default_space_and_shared_temperatures() -> None:
    space = default_space(digits_recipe(Path("/tmp/x")))
    assert set(space["method"]) == {"kd", "dkd", "dist"} and "student.width" in space
    assert temperatures(space) == [1.0, 2.0, 4.0, 8.0]
    assert temperatures(parse({"method": {"kd": {"T": {"low": 1, "high": 8}}}})) is None  # continuous: no sharing


def test_the_first_trial_is_the_recipe_as_written() -> None:
    raw = digits_recipe(Path("/tmp/x"))  # kd T=4 alpha 0.5, adam lr 0.003, mlp [16]
    params = recipe_params(raw, default_space(raw))
    assert params == {"method": "kd", "kd.T": "4", "kd.alpha": 0.5, "kd.standardize": "false",
                      "train.optimizer.lr": 0.003, "student.width": 1.0, "student.depth": "1.0"}
    assert trial_recipe(raw, {"method": "kd", "method.kd.T": 4, "method.kd.alpha": 0.5, "train.optimizer.lr": 0.003,
                              "student.width": 1.0, "student.depth": 1.0})["student"] == raw["student"]
    other = parse({"method": {"dkd": {"T": [1, 2]}}, "train.optimizer.lr": {"low": 0.1, "high": 1.0}})
    assert recipe_params(raw, other) == {}  # what the space cannot express is left to the sampler


def test_budget_text_is_parsed_or_refused() -> None:
    assert Budget.parse("latency_ms_b1<=0.5") == Budget("latency_ms_b1", 0.5)
    assert Budget.parse(" params <= 20000 ") == Budget("params", 20000.0)
    for bad in ("latency<=1", "params<=-3", "params>=5", "params<=x"):
        with pytest.raises(DistillError, match="give latency_ms_b1<=X"):
            Budget.parse(bad)


def test_the_hook_prunes_the_student_only() -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.9))
    trial = study.ask()
    _pruning_hook(trial, lambda _: None)("teacher", 0, {"val_top1": 0.1})  # a teacher's epochs never count
    with pytest.raises(optuna.TrialPruned):
        _pruning_hook(trial, lambda _: None)("student", 0, {"val_top1": 0.5})
    assert trial.user_attrs["pruned_at_epoch"] == 1


@pytest.mark.slow
def test_a_killed_search_resumes_without_repeating_finished_trials(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    args = ["auto", str(recipe), "--trials", "3"]
    # killed as trial 1 finishes its student (trial 0 is finished; the teacher and the cache are built)
    kill = ("import sys; sys.path.insert(0, 'tests'); import kill_at; "
            "kill_at.MOMENTS['t1'] = ('trials/001/student/model.json', 1, True); kill_at.arm('t1'); "
            f"from distill.cli import main; sys.exit(main({args!r}))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", kill], capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    out = tmp_path / "out"
    first = (out / "trials/000/student/model.json").stat().st_mtime_ns
    teacher = (out / "teacher/model.safetensors").stat().st_mtime_ns
    resumed = subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True, text=True,
                             env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "trial 1 was interrupted" in resumed.stdout
    assert (out / "trials/000/student/model.json").stat().st_mtime_ns == first  # not trained again
    table = json.loads((out / "auto.json").read_text())["trials"]
    assert [r["state"] for r in table].count("complete") == 3 and len(table) == 4  # + the interrupted one
    assert (out / "teacher/model.safetensors").stat().st_mtime_ns == teacher  # trained once, for every trial
    chosen = (out / "chosen.yaml").read_text()
    assert "search:" not in chosen and (out / "pareto.png").stat().st_size > 0
    assert list(out.glob("final-trial*/seed0/report.md"))


@pytest.mark.slow
def test_python_auto_with_a_params_budget_and_the_pareto_objective(tmp_path: Path) -> None:
    space = {**SPACE, "student.hidden": [[16], [64, 64]]}
    res = distill.auto(_recipe(tmp_path, space=space), trials=4, budget="params<=2000", objective="pareto",
                       log=lambda _: None)
    over = [r for r in res.trials if r["state"] == "over budget"]
    assert all(r["params"] > 2000 and r["values"]["student.hidden"] == [64, 64] for r in over)
    assert not any((Path(r["folder"]) / "student").exists() for r in over)  # never trained
    assert res.chosen["params"] <= 2000 and res.chosen["state"] == "complete"
    assert res.trials[0]["values"]["student.hidden"] == [16]  # trial 0: the recipe as written
    assert res.reports[0].is_file() and res.pareto.stat().st_size > 0


def test_an_unsatisfiable_budget_names_the_closest_trial(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = cli(capsys, "auto", str(_recipe(tmp_path)), "--trials", "2", "--budget", "params<=10")
    assert code == 2
    assert err.startswith("error: no trial fits the budget params<=10: the closest was trial ")
    assert len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "out").glob("trials/*/student"))  # nothing trained for nothing
    assert (tmp_path / "out/auto.md").is_file()


@pytest.mark.parametrize("search, message", [
    ({"space": {}}, "search.space is empty: nothing to search"),
    ({"space": {"method": {"kd": {"T": []}}}}, "search.space.method.kd.T: an empty list of choices"),
    ({"space": {"train.optimizer.lr": {"low": 1, "high": 2, "lg": 1}}},
     "unknown key 'search.space.train.optimizer.lr.lg'"),
    ({"space": {"train.optimizer.lr": {"low": 1, "high": 0.1}}}, "needs low <= high"),
    ({"spaces": {}}, "unknown key 'search.spaces'"),
])
def test_bad_search_sections_fail_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       search: dict, message: str) -> None:
    raw = digits_recipe(tmp_path, search=search)
    code, _, err = cli(capsys, "auto", str(write_recipe(tmp_path, raw)), "--trials", "1")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_auto_searches_the_size_of_a_student_pruned_from_a_teacher_trained_here(tmp_path: Path) -> None:
    raw = digits_recipe(tmp_path, student={"from_teacher": "prune", "target_params": 2000},
                        search={"space": {"student.target_params": [1500, 3000], **SPACE}, "epochs": 1})
    res = distill.auto(write_recipe(tmp_path, raw), trials=2, log=lambda _: None)
    assert (tmp_path / "out/teacher/model.safetensors").is_file()  # trained once, then pruned by every trial
    for row in res.trials:
        assert row["params"] <= row["values"]["student.target_params"]
    assert res.reports[0].is_file()


def test_a_budget_of_the_recipes_own_student_lets_that_student_fit(tmp_path: Path) -> None:
    """`<=recipe`: the recipe's student is measured once, and every trial with that architecture reuses it."""
    space = {"student.hidden": [[16], [16, 16]], "train.optimizer.lr": [0.003]}
    raw = digits_recipe(tmp_path, search={"space": space, "epochs": 1}, compare=False)
    raw["teacher"]["train"]["epochs"] = 1
    res = distill.auto(write_recipe(tmp_path, raw), trials=3, budget="params<=recipe", log=lambda _: None)
    assert all(r["state"] == ("complete" if r["values"]["student.hidden"] == [16] else "over budget")
               for r in res.trials)
    assert Budget.parse("latency_ms_b1<=recipe").of_recipe
