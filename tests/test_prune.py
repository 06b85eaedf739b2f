"""Pruning-initialised students (``student: {from_teacher: prune, ...}``): size, shapes the methods tap,
determinism, init, a recipe end to end (resume, evaluate), and one-line refusals."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from distill.errors import DistillError
from distill.models import build_model
from distill.models.prune import mac_count, param_count, pruned_student
from distill.plan import fingerprint, plan_from_recipe, recipe_identity
from distill.recipe import recipe_from_dict
from distill.stages import find_layout
from helpers import cli, digits_recipe, write_recipe

# (model, its arguments, input shape, target params, how far below the target the result may fall)
ZOO = [("resnet14", {}, (1, 40), 15_000, 0.04), ("mlp", {"hidden": [128, 64]}, (1, 40), 3_000, 0.04),
       ("cnn", {"channels": [16, 32], "hidden": 32}, (1, 12, 12), 2_000, 0.10)]


def _teacher(name: str, args: dict, shape: tuple[int, ...]) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=shape, **args)
    with torch.no_grad():  # BatchNorm statistics of a trained net, not the fresh ones (mean 0, var 1)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model


@pytest.mark.parametrize(("name", "args", "shape", "target", "tolerance"), ZOO, ids=[z[0] for z in ZOO])
def test_pruned_student_has_the_target_size_and_the_teachers_tapped_stages(name: str, args: dict, shape: tuple,
                                                                           target: int, tolerance: float) -> None:
    teacher = _teacher(name, args, shape)
    before = copy.deepcopy(teacher.state_dict())
    x = torch.randn(4, *shape)
    student = pruned_student(teacher, x, target_params=target)
    size = param_count(student)
    assert (1 - tolerance) * target <= size <= target < param_count(teacher), size
    assert student.training and teacher.training  # modes as they were (a student trains; the teacher untouched)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN statistics too
    assert student(x).shape == (4, 10)
    t, s = find_layout(teacher, x), find_layout(student, x)
    assert [st.path for st in s.stages] == [st.path for st in t.stages] and len(s.stages) >= 2
    assert s.embedding == t.embedding
    for ts, ss in zip(t.stages, s.stages):
        assert ss.shape[2:] == ts.shape[2:] and len(ss.shape) == len(ts.shape)  # same spatial sizes
        assert ss.shape[1] < ts.shape[1]  # fewer channels in every stage: uniform pruning


def test_pruning_is_deterministic_and_keeps_the_teachers_weights() -> None:
    teacher = _teacher("mlp", {"hidden": [64, 32]}, (1, 40))
    a = pruned_student(teacher, torch.randn(2, 1, 40), target_params=1_200)
    b = pruned_student(teacher, torch.randn(2, 1, 40), target_params=1_200)  # other example values: same result
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    # the first layer's inputs are the data's, never pruned: each kept unit is one of the teacher's, whole
    rows = teacher.layers[0].weight
    assert all(any(torch.equal(r, t) for t in rows) for r in a.layers[0].weight)
    assert a.fc.out_features == 10  # the classifier keeps its classes


def test_init_random_has_the_same_structure_with_seeded_weights() -> None:
    teacher, x = _teacher("resnet8", {}, (1, 24)), torch.randn(2, 1, 24)
    pruned = pruned_student(teacher, x, target_params=8_000)
    r0, r0b, r1 = (pruned_student(teacher, x, target_params=8_000, init="random", seed=s) for s in (0, 0, 1))
    shapes = {k: v.shape for k, v in pruned.state_dict().items()}
    assert all({k: v.shape for k, v in r.state_dict().items()} == shapes for r in (r0, r1))
    weights = [k for k in shapes if k.endswith("conv1.weight")]
    assert all(not torch.equal(pruned.state_dict()[k], r0.state_dict()[k]) for k in weights)
    assert all(torch.equal(r0.state_dict()[k], r0b.state_dict()[k]) for k in shapes)  # the seed decides
    assert any(not torch.equal(r0.state_dict()[k], r1.state_dict()[k]) for k in weights)
    assert torch.equal(r0.bn1.running_var, torch.ones_like(r0.bn1.running_var))  # no teacher statistic kept


def test_a_macs_target() -> None:
    teacher, x = _teacher("cnn", {"channels": [8, 16]}, (1, 12, 12)), torch.randn(2, 1, 12, 12)
    full = mac_count(teacher, x)
    student = pruned_student(teacher, x, target_macs=full // 4)
    assert 0.8 * full // 4 <= mac_count(student, x) <= full // 4


def test_bad_targets_are_one_line_errors(monkeypatch) -> None:
    teacher, x = _teacher("mlp", {"hidden": [32]}, (1, 40)), torch.randn(2, 1, 40)
    for kwargs, needle in (({"target_params": 10**6}, "not below the teacher's 1,642 parameters"),
                           ({"target_params": 20}, "below the smallest uniform pruning"),
                           ({"target_params": 500, "target_macs": 500}, "exactly one of")):
        with pytest.raises(DistillError, match=needle) as e:
            pruned_student(teacher, x, **kwargs)
        assert "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # as if the extra were not installed
    with pytest.raises(DistillError, match=r"needs torch-pruning: pip install 'distill\[auto\]'"):
        pruned_student(teacher, x, target_params=500)


def _pruned_recipe(tmp: Path, **student: object) -> dict:
    """digits: a CNN teacher (trained here) and a student pruned from it, distilled by KD and attention transfer
    with automatic layer pairs (the teacher's stages against the student's)."""
    raw = digits_recipe(tmp, teacher={"name": "cnn", "channels": [16, 32], "hidden": 32,
                                      "train": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.003}}},
                        student={"from_teacher": "prune", "target_params": 2_000, **student},
                        methods=[{"name": "kd", "T": 4}, {"name": "at"}])
    raw.pop("method")
    return raw


def test_recipe_end_to_end_resume_and_evaluate(tmp_path: Path, capsys) -> None:
    path = write_recipe(tmp_path, _pruned_recipe(tmp_path))
    code, _, err = cli(capsys, "run", str(path))
    assert code == 2 and "distill teacher RECIPE" in err and len(err.strip().splitlines()) == 1  # no weights yet
    assert cli(capsys, "teacher", str(path))[0] == 0
    code, out, err = cli(capsys, "run", str(path))
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["models"]["student"]["params"] <= 2_000 < report["models"]["teacher"]["params"]
    assert "prune, then fine-tune" in (tmp_path / "out" / "report.md").read_text()
    code, out, err = cli(capsys, "run", str(path), "--resume")
    assert code == 0 and "student: already complete" in out, err
    code, out, err = cli(capsys, "eval", str(path), "--checkpoint", str(tmp_path / "out/student/model.safetensors"))
    assert code == 0, err
    assert json.loads(out)["top1"] == pytest.approx(report["models"]["student"]["top1"])


def test_recipe_schema_refusals_and_serialisation(tmp_path: Path) -> None:
    weights = tmp_path / "teacher.safetensors"
    teacher = {"name": "mlp", "hidden": [64], "weights": str(weights)}
    plain = recipe_from_dict(digits_recipe(tmp_path))
    assert not {"from_teacher", "target_params", "target_macs"} & set(plain.model_dump()["student"])
    for student, needle in (({"from_teacher": "prune", "target_params": 9, "target_macs": 9}, "exactly one of"),
                            ({"from_teacher": "prune", "target_param": 9}, "did you mean 'target_params'"),
                            ({"from_teacher": "prune", "target_params": 9, "hidden": [4]}, "student.hidden"),
                            ({"from_teacher": "prune", "target_params": 9, "init": "zeros"}, "student.init"),
                            ({"name": "mlp", "target_params": 9}, "add student.from_teacher: prune")):
        with pytest.raises(DistillError, match=needle):
            recipe_from_dict(digits_recipe(tmp_path, teacher=teacher, student=student))
    raw = digits_recipe(tmp_path, student={"from_teacher": "prune", "target_params": 9})
    raw.pop("teacher")
    with pytest.raises(DistillError, match="needs the recipe's 'teacher'"):
        recipe_from_dict(raw)
    pruned = recipe_from_dict(digits_recipe(tmp_path, teacher=teacher,
                                            student={"from_teacher": "prune", "target_params": 900, "init": "random"}))
    assert pruned.student.name == "mlp"  # the teacher's architecture
    assert recipe_from_dict(pruned.model_dump(mode="json")) == pruned  # a report's recipe rebuilds the same
    # the scratch baseline starts from the teacher's weights, so another teacher is another scratch run
    other = pruned.model_copy(update={"teacher": pruned.teacher.model_copy(update={"weights": "other.safetensors"})})
    assert fingerprint(recipe_identity(pruned), "scratch") != fingerprint(recipe_identity(other), "scratch")


def test_a_target_larger_than_the_teacher_exits_2_before_training(tmp_path: Path, capsys) -> None:
    from safetensors.torch import save_file

    save_file(_teacher("mlp", {"hidden": [64]}, (1, 8, 8)).state_dict(), str(tmp_path / "t.safetensors"))
    raw = digits_recipe(tmp_path, teacher={"name": "mlp", "hidden": [64], "weights": str(tmp_path / "t.safetensors")},
                        student={"from_teacher": "prune", "target_params": 100_000})
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 2 and err.strip().splitlines() == [
        "error: student.target_params 100,000 is not below the teacher's 4,810 parameters: nothing to prune "
        "(choose a smaller target)"]
    assert not (tmp_path / "out" / "scratch").exists()
    raw["student"]["target_params"] = 1_000
    plan = plan_from_recipe(recipe_from_dict(raw))
    assert param_count(plan.student) <= 1_000 and plan.teacher is not None and plan.teacher.train is None
