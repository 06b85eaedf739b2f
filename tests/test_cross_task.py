"""strategy: cross_task with an adapted teacher (adapt: finetune) and the student-size fine-tuning baseline
(student_source): what each model starts from, what it learns from, and the refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import distill
from distill.errors import DistillError
from distill.io import load_weights
from distill.recipe import recipe_from_dict
from helpers import cli, digits_recipe, write_recipe

SOURCE = {"name": "digits", "classes": [0, 1, 2, 3, 4], "batch_size": 64}
TARGET = {"name": "digits", "classes": [5, 6, 7, 8, 9], "labels_per_class": 5, "batch_size": 64}
STUDENT = {"name": "mlp", "hidden": [16]}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A teacher (MLP 64) and the student's architecture (MLP 16), each trained on digits 0-4: the source task."""
    tmp = tmp_path_factory.mktemp("source")
    raw = digits_recipe(tmp, data=SOURCE, teacher={"name": "mlp", "hidden": [64], "train": {
        "epochs": 5, "optimizer": {"name": "adam", "lr": 0.003}}}, student=STUDENT,
        train={"epochs": 5, "optimizer": {"name": "adam", "lr": 0.003}})
    outcome = distill.execute(distill.plan_from_recipe(recipe_from_dict(raw)), log=lambda _: None)
    return {"teacher": str(outcome.trained["teacher"].weights), "student": str(tmp / "out" / "scratch" /
                                                                             "model.safetensors")}


def _target(tmp: Path, source: dict[str, str], strategy: dict, **changes: object) -> dict:
    teacher = {"name": "mlp", "hidden": [64], "classes": 5, "weights": source["teacher"]}
    raw = {"data": TARGET, "teacher": teacher, "student": STUDENT, "method": {"name": "kd"},
           "strategy": {"name": "cross_task", **strategy},
           "train": {"epochs": 20, "optimizer": {"name": "adam", "lr": 0.003}}}
    return digits_recipe(tmp, **{**raw, **changes})


def test_adapted_teacher_is_fine_tuned_from_the_source_weights_and_teaches_logits(tmp_path: Path,
                                                                                   source: dict) -> None:
    plan = distill.plan_from_recipe(recipe_from_dict(_target(tmp_path, source, {"adapt": "finetune"})))
    source_body = {k: v.clone() for k, v in plan.teacher.model.state_dict().items() if not k.startswith("fc.")}
    outcome = distill.execute(plan, log=lambda _: None)
    assert list(outcome.metrics) == ["teacher", "scratch", "student"]
    adapted = outcome.trained["teacher"].model
    assert adapted.fc.out_features == 5 and not any(p.requires_grad for p in adapted.parameters())
    assert any(not torch.equal(adapted.state_dict()[k], v) for k, v in source_body.items())  # fine-tuned body
    saved = load_weights(tmp_path / "out" / "teacher" / "model.safetensors")
    assert all(torch.equal(saved[f"model.{k}"], v) for k, v in adapted.state_dict().items())
    m = outcome.metrics
    assert m["teacher"]["top1"] > m["scratch"]["top1"] and m["student"]["top1"] > m["scratch"]["top1"]
    assert m["student"]["agreement"] > m["scratch"]["agreement"]  # it learned from the adapted teacher
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("read from the cache" in n for n in report["notes"])  # kd from the adapted teacher's logits


def test_student_source_baseline_keeps_the_source_body_and_a_fresh_head(tmp_path: Path, source: dict) -> None:
    from distill.strategies.finetune import from_source

    plan = distill.plan_from_recipe(recipe_from_dict(_target(tmp_path, source, {
        "adapt": "finetune", "student_source": source["student"]})))
    model = from_source(plan.student, source["student"], 5, seed=0)
    body = {k: v for k, v in load_weights(source["student"]).items() if not k.startswith("fc.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in body.items())
    assert not torch.equal(model.fc.weight, load_weights(source["student"])["fc.weight"])
    assert torch.equal(model.fc.weight, from_source(plan.student, source["student"], 5, seed=0).fc.weight)
    outcome = distill.execute(plan, log=lambda _: None)
    assert list(outcome.metrics) == ["teacher", "scratch", "student_finetuned", "student"]
    assert outcome.metrics["student_finetuned"]["params"] == outcome.metrics["student"]["params"]


def test_student_source_of_another_architecture_is_one_line(tmp_path: Path, capsys, source: dict) -> None:
    from distill.strategies.finetune import from_source

    wrong = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in nn.Sequential(nn.Flatten(), nn.Linear(64, 7)).state_dict().items()},
              str(wrong))
    plan = distill.plan_from_recipe(recipe_from_dict(_target(tmp_path, source, {"adapt": "finetune"})))
    with pytest.raises(DistillError, match=r"student_source .*does not match the model: missing keys"):
        from_source(plan.student, str(wrong), 5, seed=0)
    raw = _target(tmp_path, source, {"adapt": "finetune", "student_source": str(wrong)})
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 2 and "does not match the model" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "teacher").exists()  # refused before the teacher's adaptation trained


@pytest.mark.parametrize("strategy, changes, message", [
    ({"adapt": "finetune", "finetune": True}, {}, "would train the same model again"),
    ({"adapt": "distil"}, {}, "strategy.adapt: input should be 'none' or 'finetune'"),
    ({"adapt": "finetune"}, {"data": {**TARGET, "labels_per_class": 0}}, "labels_per_class is 0"),
    ({"adapt": "finetune", "student_source": "no/such.safetensors"}, {}, "student_source: weights file not found"),
    ({}, {}, r"methods.0 \(kd\) compares the teacher's class outputs.*adapt: finetune"),
])
def test_bad_cross_task_settings_are_one_line_before_anything_is_written(
        tmp_path: Path, capsys, source: dict, strategy: dict, changes: dict, message: str) -> None:
    raw = _target(tmp_path, source, strategy, **changes)
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_bench_records_the_adapted_teacher_of_every_seed(tmp_path: Path, capsys, source: dict) -> None:
    raw = _target(tmp_path, source, {"adapt": "finetune"}, train={"epochs": 1, "optimizer": {"name": "adam"}})
    raw["teacher"] = {**raw["teacher"], "resize": [8, 8], "resize_margin": 1}  # its own preprocessing
    code, _, err = cli(capsys, "bench", str(write_recipe(tmp_path, raw)), "--strategies", "cross_task:adapt=finetune",
                       "--seeds", "2")
    assert code == 0, err
    bench = tmp_path / "out" / "bench"
    rows = {r["method"]: r for r in json.loads((bench / "bench.json").read_text())["rows"]}
    assert set(rows) == {"scratch", "cross_task:adapt=finetune", "cross_task:adapt=finetune:teacher"}
    teacher = rows["cross_task:adapt=finetune:teacher"]["top1_last"]
    assert len(teacher) == 2  # one adapted teacher per seed, scored as its run's report scores it
    for seed in (0, 1):
        report = json.loads((bench / "cross_task:adapt=finetune" / f"seed{seed}" / "report.json").read_text())
        assert teacher[str(seed)] == pytest.approx(report["models"]["teacher"]["top1"])


def test_resize_margin_frames_the_resized_content_in_black_as_the_teacher_sees_it() -> None:
    from distill.models import FrozenTeacher

    seen = []
    net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    net.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    norm = ((0.1307,), (0.3081,))
    teacher = FrozenTeacher(net, student_norm=((0.5,), (0.25,)), teacher_norm=norm, resize=(28, 28), margin=4)
    x = torch.rand(3, 1, 8, 8)
    teacher(x)
    raw = x * 0.25 + 0.5  # the pixels the student's normalisation came from
    inner = nn.functional.interpolate((raw - 0.1307) / 0.3081, size=(20, 20), mode="bilinear", align_corners=False)
    assert torch.allclose(seen[0][:, :, 4:24, 4:24], inner, atol=1e-6)
    border = seen[0].clone()
    border[:, :, 4:24, 4:24] = -0.1307 / 0.3081
    assert torch.allclose(border, torch.full_like(border, -0.1307 / 0.3081), atol=1e-6)  # raw 0: black


@pytest.mark.parametrize("teacher, message", [
    ({"resize_margin": 4}, "needs teacher.resize"),
    ({"resize": [8, 8], "resize_margin": 4}, "more than twice the margin"),
])
def test_a_resize_margin_that_cannot_apply_is_one_line(tmp_path: Path, capsys, source: dict, teacher: dict,
                                                       message: str) -> None:
    raw = _target(tmp_path, source, {"adapt": "finetune"})
    raw["teacher"] = {**raw["teacher"], **teacher}
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 2 and message in err and err.count("\n") == 1


def test_student_init_source_starts_the_distilled_student_from_the_source_body(tmp_path: Path, source: dict) -> None:
    raw = _target(tmp_path, source, {"adapt": "finetune", "student_source": source["student"],
                                     "student_init": "source"}, train={"epochs": 1, "optimizer": {"name": "adam"}})
    plan = distill.plan_from_recipe(recipe_from_dict(raw))
    start = plan.strategy.initial_student(plan, [])
    body = {k: v for k, v in load_weights(source["student"]).items() if not k.startswith("fc.")}
    assert all(torch.equal(start.state_dict()[k], v) for k, v in body.items())
    assert plan.strategy.initial_student(plan, []) is not plan.student
    outcome = distill.execute(plan, log=lambda _: None)
    assert list(outcome.metrics) == ["teacher", "scratch", "student_finetuned", "student"]
    with pytest.raises(DistillError, match="student_init: source needs student_source"):
        distill.plan_from_recipe(recipe_from_dict(_target(tmp_path, source, {"adapt": "finetune",
                                                                             "student_init": "source"})))


def test_the_students_own_source_network_as_teacher_is_adapted_exactly_like_the_baseline(tmp_path: Path,
                                                                                           source: dict) -> None:
    """recipes/mnist-cross-task-5to9-self.yaml's set-up: adapted teacher and ``student_finetuned`` are one model
    trained twice (same start, labels, steps, seed), so the distilled student is compared with its own teacher."""
    raw = _target(tmp_path, source, {"adapt": "finetune", "student_source": source["student"],
                                     "student_init": "source"}, method={"name": "kd", "T": 1},
                  train={"epochs": 3, "optimizer": {"name": "adam", "lr": 0.003}})
    raw["teacher"] = {**STUDENT, "classes": 5, "weights": source["student"]}
    outcome = distill.execute(distill.plan_from_recipe(recipe_from_dict(raw)), log=lambda _: None)
    def weights(role: str) -> dict[str, torch.Tensor]:  # the teacher's file holds its frozen wrapper ("model.")
        return {k.removeprefix("model."): v for k, v in load_weights(tmp_path / "out" / role /
                                                                        "model.safetensors").items()}
    teacher, baseline = weights("teacher"), weights("student_finetuned")
    assert teacher.keys() == baseline.keys() and all(torch.equal(teacher[k], baseline[k]) for k in teacher)
    m = outcome.metrics
    assert m["teacher"]["top1"] == m["student_finetuned"]["top1"] and m["student_finetuned"]["agreement"] == 1.0
    student = weights("student")
    assert any(not torch.equal(student[k], baseline[k]) for k in baseline)  # it trained on the teacher's logits


@pytest.mark.slow
def test_kill_during_the_teacher_adaptation_then_resume_is_bit_identical(tmp_path: Path, source: dict) -> None:
    from helpers import killed_then_resumed

    paths = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        raw = _target(tmp_path / sub, source, {"adapt": "finetune", "student_source": source["student"]},
                      train={"epochs": 40, "optimizer": {"name": "adam", "lr": 0.003}})
        paths.append(write_recipe(tmp_path / sub, raw))
    killed_then_resumed(paths[0], paths[1], tmp_path / "a" / "out", tmp_path / "b" / "out", role="teacher",
                        weights=("teacher/model.safetensors", "student_finetuned/model.safetensors",
                                 "student/model.safetensors"))


def test_export_keeps_the_adapted_teacher_with_its_preprocessing(tmp_path: Path, capsys, source: dict) -> None:
    raw = _target(tmp_path, source, {"adapt": "finetune"}, train={"epochs": 4, "optimizer": {"name": "adam"}})
    raw["teacher"] = {**raw["teacher"], "resize": [8, 8], "resize_margin": 1}
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 0, err
    code, _, err = cli(capsys, "export", str(tmp_path / "out"), "--format", "safetensors")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = {r["model"]: r for r in report["deployment"]["rows"]}
    assert "teacher" in rows, report["deployment"]["notes"]
    # the adapted network with its new head, fed as in training: its accuracy, not a 5-class source model's
    assert rows["teacher"]["top1"] == pytest.approx(report["models"]["teacher"]["top1"], abs=0.05)
