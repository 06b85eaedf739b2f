"""DistillationModel: distillation inside a hand-written loop, computing what the engine computes."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import distill
from distill.errors import DistillError
from distill.evaluate import predict, topk_accuracy
from distill.methods.kd import kd_loss
from distill.plan import plan_from_recipe

DIGITS = Path(__file__).parents[1] / "recipes" / "digits-kd.yaml"


def _hand_loop(teacher: nn.Module, data, seed: int) -> float:
    """The digits recipe's student, trained by a plain 20-line loop around DistillationModel."""
    torch.manual_seed(seed)
    student = distill.models.build_model("mlp", num_classes=10, input_shape=(1, 8, 8), hidden=[16])
    dm = distill.DistillationModel(student, teacher, methods=[distill.methods.KD(T=4, alpha=0.5, beta=0.5)])
    loader = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(dm.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20 * len(loader))
    dm.train()
    for _ in range(20):
        for x, y in loader:  # y is -1 for the unlabelled transfer samples
            dm(x)
            loss = dm.loss(y).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return topk_accuracy(predict(dm.student, data.test.x), data.test.y)


def test_hand_loop_reaches_the_accuracy_of_fit_on_the_digits_recipe(tmp_path: Path) -> None:
    fitted, hand = [], []
    for seed in range(3):  # one test sample is 0.28 points: compare means over seeds, not single runs
        recipe = distill.load_recipe(DIGITS, [f"output_dir={tmp_path / str(seed)}", f"seed={seed}",
                                              "eval.latency=false", "compare=false"])
        plan = plan_from_recipe(recipe)
        out = distill.execute(plan, log=lambda _: None)
        fitted.append(out.metrics["student"]["top1"])
        hand.append(_hand_loop(out.trained["teacher"].model, plan.data, seed))
    print(f"fit {[round(100 * a, 2) for a in fitted]} mean {100 * statistics.mean(fitted):.2f}; hand loop "
          f"{[round(100 * a, 2) for a in hand]} mean {100 * statistics.mean(hand):.2f}")  # shown with pytest -s
    assert abs(statistics.mean(fitted) - statistics.mean(hand)) <= 0.005, (fitted, hand)
    assert min(hand) > 0.85


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    teacher = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 3))
    return student, teacher


def test_loss_is_the_method_on_the_last_forward_and_the_teacher_stays_frozen() -> None:
    student, teacher = _pair()
    dm = distill.DistillationModel(student, teacher, methods=[distill.methods.KD(T=2, alpha=0.0, beta=1.0)])
    modes: list[bool] = []
    teacher.register_forward_hook(lambda m, i, o: modes.append(m.training))
    dm.train()
    x = torch.randn(5, 8)
    out = dm(x)
    assert torch.equal(out, student(x))  # the forward returns what the student returns
    loss = dm.loss()
    with torch.no_grad():
        want = kd_loss(student(x), teacher(x), 2.0)
    assert torch.allclose(loss.loss, want) and set(loss.terms) == {"ce", "kd"}
    loss.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert modes and not any(modes) and not dm.teacher.training  # dm.train() never reaches the teacher
    names = [n for n, _ in dm.named_parameters()]
    assert names and not any(n.startswith("teacher.") for n in names)
    assert dm.student is student


def test_connectors_exist_before_the_optimizer_and_train(tmp_path: Path) -> None:
    student, teacher = _pair()
    x = torch.randn(4, 8)
    methods = [distill.methods.CE(), distill.methods.FitNet(student_layers=["1"], teacher_layers=["1"])]
    with pytest.raises(DistillError, match="pass example="):
        distill.DistillationModel(student, teacher, methods=methods)
    dm = distill.DistillationModel(student, teacher, methods=methods, example=x)
    connector = [n for n, _ in dm.named_parameters() if n.startswith("methods.")]
    assert connector, "the FitNet regressor (6 -> 12 channels) is trained with the student"
    before = {n: p.detach().clone() for n, p in dm.named_parameters() if n.startswith("methods.")}
    opt = torch.optim.SGD(dm.parameters(), lr=0.1)
    dm.train()
    dm(x)
    out = dm.loss(torch.tensor([0, 1, 2, 0]))
    assert set(out.terms) == {"ce", "fitnet"}
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    assert any(not torch.equal(before[n], p) for n, p in dm.named_parameters() if n in before)
    dm.remove_hooks()
    assert not student._forward_hooks and not teacher._forward_hooks


def test_loss_without_a_training_forward_is_one_clear_error() -> None:
    student, teacher = _pair()
    dm = distill.DistillationModel(student, teacher, methods=["kd"])
    with pytest.raises(DistillError, match="needs a forward in training mode"):
        dm.loss()
    dm.eval()
    dm(torch.randn(2, 8))  # evaluation: no teacher pass, nothing to distil
    with pytest.raises(DistillError, match="needs a forward in training mode"):
        dm.loss()
