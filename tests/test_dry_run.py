"""The dry run (``distill.dry_run``): every role rehearsed on a few samples before anything trains, with no effect
on the real run; and the resume fingerprints it checks up front."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
import torch

import distill
from distill.dry_run import FOLDER, tiny_splits
from distill.io import load_weights
from distill.plan import fingerprint, recipe_identity
from distill.recipe import recipe_from_dict
from helpers import cli, digits_recipe, write_recipe

run_module = importlib.import_module("distill.run")  # the module: `distill.run` is also the function


def test_the_dry_run_leaves_the_real_run_bit_identical(tmp_path: Path, monkeypatch, capsys) -> None:
    """Same weights with and without it: it restores every random state and trains copies only."""
    with_it = write_recipe(tmp_path, digits_recipe(tmp_path / "a"), "a.yaml")
    code, out, _ = cli(capsys, "run", str(with_it))
    assert code == 0 and "dry run: 3 role(s) built and stepped once" in out
    monkeypatch.setattr(run_module, "dry_run", lambda plan, strategy: [])
    without = write_recipe(tmp_path, digits_recipe(tmp_path / "b"), "b.yaml")
    assert cli(capsys, "run", str(without))[0] == 0
    for role in ("teacher", "scratch", "student"):
        a, b = (load_weights(tmp_path / r / "out" / role / "model.safetensors") for r in "ab")
        assert all(torch.equal(a[k], b[k]) for k in a), role
    assert not (tmp_path / "a" / "out" / FOLDER).exists()


@pytest.mark.parametrize(("strategy", "roles"), [
    ("offline", ["teacher", "scratch", "student"]),
    ({"name": "born_again", "generations": 2}, ["scratch", "gen1", "gen2"]),
])
def test_the_dry_run_names_every_role_the_run_trains(tmp_path: Path, strategy: object, roles: list[str]) -> None:
    raw = digits_recipe(tmp_path, strategy=strategy)
    if strategy != "offline":
        raw.pop("teacher")
    plan = distill.plan_from_recipe(recipe_from_dict(raw))
    from distill.strategies import build_strategy

    got = run_module.dry_run(plan, plan.strategy or build_strategy("offline"))
    assert [r for r, _ in got] == roles
    if strategy == "offline":  # born_again's generations fingerprint an identity of their own
        assert all(fp == fingerprint(plan.identity, r) for r, fp in got)
    assert not plan.out.exists()  # nothing left: not its folder, not the output folder it made


def test_tiny_splits_keep_labelled_samples_and_the_full_labels(tmp_path: Path) -> None:
    plan = distill.plan_from_recipe(recipe_from_dict(digits_recipe(tmp_path)))  # 10 labels per class
    small = tiny_splits(plan.data)
    assert len(small.train) == 16 and len(small.val) == 16 and len(small.test) == 16
    assert len(small.labelled_train()) == 8 and small.full_y is not None and len(small.full_y) == 16
    assert (small.full_y >= 0).all()


def test_the_teachers_fingerprint_covers_only_what_the_teacher_depends_on(tmp_path: Path) -> None:
    raw = digits_recipe(tmp_path)  # the teacher has a train section of its own
    base = recipe_identity(recipe_from_dict(raw))

    def changed(**changes: object) -> dict:
        return recipe_identity(recipe_from_dict({**raw, **changes}))

    same = [changed(train={"epochs": 5, "optimizer": {"name": "sgd", "lr": 0.1}}),
            changed(data={**raw["data"], "labels_per_class": 3}),
            changed(method={"name": "dkd"}), changed(student={"name": "mlp", "hidden": [8]})]
    assert all(fingerprint(i, "teacher") == fingerprint(base, "teacher") for i in same)
    other = [changed(teacher={**raw["teacher"], "hidden": [32]}), changed(seed=1),
             changed(data={**raw["data"], "batch_size": 32})]
    assert all(fingerprint(i, "teacher") != fingerprint(base, "teacher") for i in other)
    # a teacher without its own train section trains with the top-level one, which then counts
    own = {k: v for k, v in raw["teacher"].items() if k != "train"}
    a = recipe_identity(recipe_from_dict({**raw, "teacher": own}))
    b = recipe_identity(recipe_from_dict({**raw, "teacher": own, "train": {"epochs": 5}}))
    assert fingerprint(a, "teacher") != fingerprint(b, "teacher")


def test_a_changed_student_keeps_the_finished_teacher_on_resume(tmp_path: Path, capsys) -> None:
    raw = digits_recipe(tmp_path)
    assert cli(capsys, "run", str(write_recipe(tmp_path, raw)))[0] == 0
    raw["train"] = {"epochs": 3, "optimizer": {"name": "adam", "lr": 0.001}}
    write_recipe(tmp_path, raw)
    code, _, err = cli(capsys, "run", str(tmp_path / "recipe.yaml"), "--resume")
    assert code == 2 and "scratch changed" in err  # the first role that changed, named, before any training
    for role in ("scratch", "student"):  # what the message advises
        shutil.rmtree(tmp_path / "out" / role)
    code, out, err = cli(capsys, "run", str(tmp_path / "recipe.yaml"), "--resume")
    assert code == 0, err
    assert "teacher: already complete" in out and "student epoch 3/3" in out
