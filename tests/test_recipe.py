"""Recipe schema: strict keys and types, overrides, component arguments checked against the registries."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from distill.errors import DistillError
from distill.recipe import apply_overrides, load_recipe, recipe_from_dict

BASE = {
    "data": {"name": "digits", "labels_per_class": 20},
    "teacher": {"name": "mlp", "hidden": [64]},
    "student": {"name": "mlp", "hidden": [16]},
    "method": {"name": "kd", "T": 4},
    "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4}},
}


def _raw(**changes: object) -> dict:
    import copy

    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return raw


def test_valid_recipe_is_frozen_and_typed() -> None:
    r = recipe_from_dict(_raw())
    assert r.methods[0].name == "kd" and r.methods[0].kwargs == {"T": 4}
    assert r.student.kwargs == {"hidden": [16]}
    assert r.train.optimizer.weight_decay == pytest.approx(5e-4)
    with pytest.raises(ValidationError):
        r.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(("change", "needle"), [
    ({"trian": {}}, "unknown key 'trian'; did you mean 'train'"),
    ({"train": {"epochs": "ten"}}, "train.epochs"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"train": {"optimizer": {"name": "lbfgs"}}}, "train.optimizer.name"),
    ({"train": {"optimizer": {"lr": 0.1, "momentun": 0.9}}}, "unknown key 'train.optimizer.momentun'"),
    ({"data": {"name": "digitz"}}, "did you mean 'digits'"),
    ({"data": {"name": "digits", "bogus": 1}}, "data.bogus: unknown key for dataset 'digits'"),
    ({"student": {"name": "mlp", "hiden": [3]}}, "student.hiden: unknown key for model 'mlp'; did you mean 'hidden'"),
    ({"student": {"name": "mlp", "hidden": "wide"}}, "student.hidden"),
    ({"student": {"name": "resnet99"}}, "unknown model 'resnet99'"),
    ({"method": {"name": "kd", "Tx": 2}}, "method.Tx: unknown key for method 'kd'"),
    ({"method": {"name": "kd", "T": "hot"}}, "method.T"),
    ({"method": {"name": "kdd"}}, "unknown method 'kdd'; did you mean 'kd'"),
    # numbers that would train silently wrong: gradient ascent on a term, a temperature that divides by zero, NaN
    ({"method": {"name": "kd", "alpha": -1}}, "method.alpha: a negative loss weight (-1.0)"),
    ({"method": {"name": "rkd", "w_angle": -50}}, "method.w_angle: a negative loss weight"),
    ({"method": {"name": "at", "weight": -2}}, "method.weight: a negative loss weight"),
    ({"method": {"name": "kd", "T": 0}}, "method.T: a temperature must be > 0"),
    ({"method": {"name": "crd", "nce_t": -0.07}}, "method.nce_t: a temperature must be > 0"),
    ({"method": {"name": "kd", "T": float("inf")}}, "method.T: must be a finite number for method 'kd', got inf"),
    ({"method": {"name": "kd", "T": float("nan")}}, "method.T: NaN is not a usable value"),
    ({"train": {"optimizer": {"lr": float("nan")}}}, "train.optimizer.lr: NaN is not a usable value"),
])
def test_bad_recipes_name_the_key(change: dict, needle: str) -> None:
    with pytest.raises(DistillError) as e:
        recipe_from_dict(_raw(**change))
    assert needle in str(e.value)


def test_negative_weight_is_an_explicit_choice() -> None:
    r = recipe_from_dict(_raw(method={"name": "kd", "alpha": -1, "allow_negative": True}))
    assert r.methods[0].kwargs == {"alpha": -1} and r.methods[0].allow_negative
    # the opt-in is not a method argument, and leaves the fingerprint of every run that does not use it alone
    from distill.plan import recipe_identity

    assert "allow_negative" not in recipe_identity(recipe_from_dict(_raw()))["methods"][0]


def test_missing_student_and_missing_teacher() -> None:
    raw = _raw()
    del raw["student"]
    with pytest.raises(DistillError, match="missing required key 'student'"):
        recipe_from_dict(raw)
    raw = _raw()
    del raw["teacher"]
    with pytest.raises(DistillError, match="need a teacher"):
        recipe_from_dict(raw)


def test_overrides_parse_yaml_values_and_reach_nested_keys() -> None:
    raw = apply_overrides(_raw(), ["train.epochs=3", "method.T=2", "student.hidden=[8, 8]",
                                   "train.optimizer.lr=1e-3", "output_dir=/tmp/x"])
    r = recipe_from_dict(raw)
    assert r.train.epochs == 3 and r.methods[0].kwargs["T"] == 2
    assert r.student.kwargs["hidden"] == [8, 8] and r.train.optimizer.lr == pytest.approx(1e-3)
    assert str(r.out) == "/tmp/x"
    with pytest.raises(DistillError, match="key.path=value"):
        apply_overrides(_raw(), ["train.epochs"])


def test_load_recipe_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DistillError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {name: digits\nstudent: [")
    with pytest.raises(DistillError, match="malformed YAML at line"):
        load_recipe(bad)
    # a key given twice: plain YAML keeps the second block and drops the first without a word
    twice = tmp_path / "twice.yaml"
    twice.write_text("data: {name: digits}\ntrain: {epochs: 3, optimizer: {lr: 0.01}}\nstudent: {name: mlp}\n"
                     "train: {epochs: 5}\n")
    with pytest.raises(DistillError, match=r"at line 4, column 1: duplicate key 'train' \(first given at line 2\)"):
        load_recipe(twice)
    nested = tmp_path / "nested.yaml"
    nested.write_text("data: {name: digits}\nstudent: {name: mlp, hidden: [8], hidden: [16]}\n")
    with pytest.raises(DistillError, match="duplicate key 'hidden'"):
        load_recipe(nested)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(DistillError, match="must be a mapping"):
        load_recipe(scalar)


def test_every_shipped_recipe_validates() -> None:
    recipes = sorted(Path(__file__).parents[1].joinpath("recipes").glob("*.yaml"))
    assert recipes, "recipes/ must hold example recipes"
    for path in recipes:
        load_recipe(path)


def test_hostile_recipe_files_are_one_line_and_fast(tmp_path: Path) -> None:
    import time

    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(DistillError, match=r"not UTF-8 text \(byte 9: b'\\xe9'\); save it as UTF-8"):
        load_recipe(latin)
    # "billion laughs": nine levels of nine aliases stand for 9^9 values in a few hundred bytes
    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"] + [
        f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\n")
    start = time.perf_counter()
    with pytest.raises(DistillError, match="expands to more than 1,000,000 values"):
        load_recipe(bomb)
    assert time.perf_counter() - start < 10


def test_method_args_file_refuses_a_duplicate_method(tmp_path: Path) -> None:
    from distill.bench import load_method_args

    args = tmp_path / "args.yaml"
    args.write_text("at: {beta: 1000}\nsp: {beta: 3000}\nat: {beta: 10}\n")
    with pytest.raises(DistillError, match="line 3, column 1: duplicate key 'at' \\(first given at line 1\\)"):
        load_method_args(str(args))


def test_a_key_holding_a_newline_stays_on_the_errors_one_line() -> None:
    """Found by tests/test_fuzz.py: a NaN under a key with a newline gave a two-line message."""
    from distill.spec_check import check_method_numbers

    with pytest.raises(DistillError) as e:
        recipe_from_dict({"name.\n": float("nan")})
    assert "\n" not in str(e.value) and "name.\\n" in str(e.value)
    with pytest.raises(DistillError) as e:
        check_method_numbers({"w_a\nb": -1.0}, 1.0, "method", "kd")
    assert "\n" not in str(e.value) and "w_a\\nb" in str(e.value)
