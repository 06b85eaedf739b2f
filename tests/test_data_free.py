"""Data-free distillation: the generator's losses against their formulas, who receives gradients, that the
student never sees a real training input, kill -9 then --resume, and one-line errors for what cannot run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import distill
from distill.engine.optim import RoleOptimizers, build_optimizer, build_scheduler
from distill.errors import DistillError
from distill.methods import MethodSet
from distill.methods.kd import KD
from distill.models import FrozenTeacher, build_model
from distill.recipe import OptimSpec, ScheduleSpec, recipe_from_dict
from distill.strategies.generator import LatentCodes, build_generator
from distill.strategies.synthesis import (
    DataFreeMethods,
    GeneratorLosses,
    Synthesis,
    activation_loss,
    bn_matching,
    entropy_loss,
    one_hot_loss,
    reverse,
)
from distill.types import Batch, ModelOutput, StepContext
from helpers import cli, digits_recipe, killed_then_resumed, track_dry_run, write_recipe

STEP = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)


# --- the losses on fixed tensors -------------------------------------------------------------------------------
def test_dafl_terms_equal_their_formulas() -> None:
    t = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    p = torch.softmax(t, dim=1)
    assert torch.allclose(one_hot_loss(t), -(torch.log(p[0, 0]) + torch.log(p[1, 1])) / 2)
    feats = torch.tensor([[1.0, -3.0], [0.0, 2.0]])
    assert activation_loss(feats).item() == pytest.approx(-1.5)
    mean = p.mean(dim=0)
    assert entropy_loss(t).item() == pytest.approx(sum(float(q) * math.log10(float(q)) for q in mean), rel=1e-6)
    # a balanced batch has the lowest value: -log10(C)
    assert entropy_loss(torch.eye(3) * 50).item() == pytest.approx(-math.log10(3), rel=1e-5)


def test_bn_matching_compares_batch_statistics_with_running_ones() -> None:
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2)  # (B, C, H, W)
    mean = x.permute(1, 0, 2, 3).reshape(3, -1).mean(1)
    var = x.permute(1, 0, 2, 3).reshape(3, -1).var(1, unbiased=False)
    rm, rv = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0])
    expected = torch.sqrt(((mean - rm) ** 2).sum()) + torch.sqrt(((var - rv) ** 2).sum())
    assert torch.allclose(bn_matching(x, rm, rv), expected)
    assert bn_matching(x, mean, var).item() == pytest.approx(0.0, abs=1e-5)


def test_reverse_is_identity_forward_and_scales_the_gradient_by_minus_scale() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = reverse(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.tensor([3.0, 4.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-1.5, -2.0]))


# --- generator and latent codes --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 5, 7), (1, 40), (64,)])
def test_generator_makes_batches_normalised_per_channel(shape: tuple[int, ...]) -> None:
    g = build_generator(shape, latent=8, width=16, seed=0)
    x = g(torch.randn(32, 8))
    assert x.shape == (32, *shape)
    dims = [0] + list(range(2, x.ndim)) if len(shape) > 1 else [0]
    assert torch.allclose(x.mean(dim=dims), torch.zeros(()), atol=1e-4)  # non-affine BatchNorm last
    assert torch.allclose(build_generator(shape, 8, 16, seed=0)(torch.ones(4, 8)), g(torch.ones(4, 8)))


def test_latent_codes_are_a_function_of_seed_epoch_and_row_and_hold_no_labels() -> None:
    codes = LatentCodes(100, latent=5, seed=3)
    a, b = codes.take(torch.tensor([4, 9, 1])), codes.take(torch.tensor([1, 4]))
    assert torch.equal(a[[2, 0]], b)  # the same rows whichever batch (or rank) takes them
    assert a.shape == (3, 5) and bool((codes.y == -1).all()) and len(codes) == 100
    codes.set_epoch(1)
    assert not torch.equal(codes.take(torch.tensor([4])), a[:1])  # fresh noise every epoch
    assert not torch.equal(LatentCodes(100, 5, seed=4).take(torch.tensor([4])), a[:1])
    many = LatentCodes(20000, 4, seed=0).take(torch.arange(20000))
    assert abs(float(many.mean())) < 0.02 and abs(float(many.std()) - 1) < 0.02
    assert abs(float(torch.corrcoef(many.T)[0, 1])) < 0.03


# --- optimizers of several roles -------------------------------------------------------------------------------
def test_each_group_steps_with_its_own_optimizer_and_schedule() -> None:
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    groups = [(list(b.parameters()), OptimSpec(name="adam", lr=0.1, weight_decay=0.0), ScheduleSpec(name="constant"))]
    opt = build_optimizer([*a.parameters(), *b.parameters()], OptimSpec(name="sgd", lr=0.5, momentum=0.0,
                                                                        weight_decay=0.0), groups)
    assert isinstance(opt, RoleOptimizers)
    assert [type(p).__name__ for p in opt.parts] == ["SGD", "Adam"]
    sched = build_scheduler(opt, ScheduleSpec(name="cosine"), steps_per_epoch=2, epochs=1, groups=groups)
    before = a.weight.detach().clone()
    (a(torch.ones(1, 2)) + b(torch.ones(1, 2))).sum().backward()
    opt.step()
    sched.step()
    assert torch.allclose(a.weight, before - 0.5)  # plain SGD step of gradient 1
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.25, 0.1])  # cosine halfway / constant
    state = opt.state_dict()
    fresh = build_optimizer([*a.parameters(), *b.parameters()], OptimSpec(name="sgd", lr=0.5), groups)
    fresh.load_state_dict(state)
    assert fresh.parts[1].state_dict()["state"][0]["step"] == 1


# --- who learns what -------------------------------------------------------------------------------------------
def _bn_teacher() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 10)).eval()


def _synthesis(adversarial: float = 0.0, bn: float = 1.0) -> tuple[Synthesis, DataFreeMethods]:
    teacher = FrozenTeacher(_bn_teacher())
    student = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), hidden=[16])
    generator = build_generator((1, 8, 8), latent=6, width=8, seed=0)
    losses = GeneratorLosses(bn=bn, adversarial=adversarial)
    synth = Synthesis(generator, student, teacher, losses, "6:input")
    return synth, DataFreeMethods(MethodSet([KD(T=1, alpha=0.0, beta=1.0)]), synth)


def _loss(synth: Synthesis, methods: DataFreeMethods) -> torch.Tensor:
    z = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    logits = synth(z)
    batch = Batch(z, torch.full((16,), -1), torch.arange(16))
    return methods(ModelOutput(logits), None, batch, STEP).loss


def test_generator_and_student_get_gradients_and_the_teacher_never_does() -> None:
    synth, methods = _synthesis()
    loss = _loss(synth, methods)
    assert set(methods.synthesis[0].last[1]) == {"generator.one_hot", "generator.activation", "generator.entropy",
                                                 "generator.bn"}
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in synth.generator.parameters()
               if p.requires_grad and p.ndim > 1)
    assert all(p.grad is not None for p in synth.student.parameters())
    teacher = synth.teacher.model
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert "frozen" not in dict(synth.named_children()) and not any(k.startswith("frozen") for k in synth.state_dict())


def test_adversarial_term_turns_the_students_loss_against_the_generator() -> None:
    """At adversarial 0 the student's loss leaves the generator alone (DAFL); at weight w the generator gets -w
    times the gradient the student's loss would give it (DFAD / ZSKT), and the student's own gradient is unchanged."""
    grads = {}
    for w in (0.0, 1.0, 2.0):
        synth, methods = _synthesis(adversarial=w, bn=0.0)
        synth.losses = GeneratorLosses(one_hot=0.0, activation=0.0, entropy=0.0, adversarial=w)
        _loss(synth, methods).backward()
        grads[w] = (synth.generator.fc.weight.grad, synth.student.fc.weight.grad)
    assert grads[0.0][0] is None or grads[0.0][0].abs().sum() == 0
    assert torch.allclose(grads[2.0][0], 2 * grads[1.0][0], atol=1e-6) and grads[1.0][0].abs().sum() > 0
    assert torch.allclose(grads[0.0][1], grads[1.0][1]) and torch.allclose(grads[1.0][1], grads[2.0][1])


# --- runs ------------------------------------------------------------------------------------------------------
def _pretrained(tmp: Path, model: dict) -> str:
    """A digits teacher trained for a few epochs (weights file) for the data-free runs to start from."""
    raw = digits_recipe(tmp / "teacher", output_dir=str(tmp / "teacher"), teacher={**model, "train": {
        "epochs": 4, "optimizer": {"name": "adam", "lr": 0.003}}})
    plan = distill.plan_from_recipe(recipe_from_dict(raw))
    return str(sys.modules["distill.run"].obtain_teacher(plan, resume=False, log=lambda _: None).weights)


@pytest.fixture(scope="module")
def mlp_teacher(tmp_path_factory: pytest.TempPathFactory) -> dict:
    model = {"name": "mlp", "hidden": [64]}
    return {**model, "weights": _pretrained(tmp_path_factory.mktemp("df"), model)}


def _data_free(tmp: Path, teacher: dict, **changes: object) -> dict:
    strategy = {"name": "data_free", "steps": 10, "generator": {"latent": 16, "width": 32}}
    return digits_recipe(tmp, teacher=teacher, strategy=strategy, method={"name": "kd", "T": 1, "alpha": 0.0,
                                                                          "beta": 1.0}, **changes)


def test_student_never_receives_a_real_training_input(tmp_path: Path, mlp_teacher: dict, monkeypatch) -> None:
    from distill.data import BatchLoader

    seen: list[torch.Tensor] = []
    real_iter, rehearsing = BatchLoader.__iter__, track_dry_run(monkeypatch)

    def spy(self):  # noqa: ANN001, ANN202
        for batch in real_iter(self):
            if not rehearsing[0]:  # the dry run's batches (latent codes too) are not the run's
                seen.append(batch.input)
            yield batch
    monkeypatch.setattr(BatchLoader, "__iter__", spy)
    plan = distill.plan_from_recipe(recipe_from_dict(_data_free(tmp_path, mlp_teacher)))
    student_inputs: list[tuple[int, ...]] = []
    plan.student.register_forward_pre_hook(lambda _, args: student_inputs.append(tuple(args[0].shape[1:])))
    outcome = distill.execute(plan, log=lambda _: None)
    # 2 epochs of 10 generated batches, plus the 2 the loss-scale check peeks at before training: the loader
    # yields latent codes, nothing else
    assert len(seen) == 2 * 10 + 2
    assert all(x.shape[1:] == (16,) for x in seen)
    train_x = plan.data.train.x.flatten(1)
    assert not any((train_x == row).all(dim=1).any() for x in seen for row in x.flatten(1)[:, :1])
    assert (64,) not in {tuple(x.shape[1:]) for x in seen}  # never a digits image
    assert (1, 8, 8) in set(student_inputs) or (64,) in set(student_inputs)
    assert set(outcome.metrics) == {"teacher", "scratch", "student"}
    out = plan.out
    for rel in ("student/model.safetensors", "generator/model.safetensors", "data_free/samples.png",
                "data_free/classes.png"):
        assert (out / rel).is_file(), rel
    counts = json.loads((out / "data_free" / "classes.json").read_text())
    assert sum(counts.values()) == 1000 and len(counts) == 10
    report = (out / "report.md").read_text()
    assert "never saw a training input" in report and "data_free/samples.png" in report


def test_distilled_student_learns_the_teacher_without_data(tmp_path: Path, mlp_teacher: dict) -> None:
    raw = _data_free(tmp_path, mlp_teacher, train={"epochs": 6, "optimizer": {"name": "adam", "lr": 0.003}})
    raw["strategy"]["steps"] = 30
    outcome = distill.execute(distill.plan_from_recipe(recipe_from_dict(raw)), log=lambda _: None)
    m = outcome.metrics
    assert m["student"]["top1"] > m["scratch"]["top1"] + 0.2, {k: v["top1"] for k, v in m.items()}


@pytest.mark.slow
def test_data_free_kill_then_resume_is_bit_identical(tmp_path: Path, mlp_teacher: dict) -> None:
    paths = []
    for sub in ("a", "b"):
        d = tmp_path / sub
        d.mkdir()
        raw = _data_free(d, mlp_teacher, output_dir=str(d / "out"), compare=False,
                         train={"epochs": 12, "optimizer": {"name": "adam", "lr": 0.003}})
        raw["strategy"].update(steps=30, student_steps=2, losses={"adversarial": 0.5})
        paths.append(write_recipe(d, raw))
    killed_then_resumed(paths[0], paths[1], tmp_path / "a" / "out", tmp_path / "b" / "out", role="data_free",
                        weights=("student/model.safetensors", "generator/model.safetensors"))


@pytest.mark.parametrize("changes, message", [
    ({"strategy": {"name": "data_free", "losses": {"bn": 1.0}}}, "has no BatchNorm layer: set losses.bn: 0"),
    ({"teacher": {"name": "mlp", "hidden": [64], "train": {"epochs": 1}}}, "give teacher.weights"),
    ({"teacher": None}, "add a 'teacher' section"),
    ({"method": {"name": "ce"}}, "learns from labels, and strategy data_free has none"),
    ({"method": {"name": "fitnet", "student_layers": ["fc:input"], "teacher_layers": ["fc:input"]}},
     "taps features; strategy data_free takes logit methods"),
    ({"data": {"name": "digits", "augment": {"shift": 1}}}, "remove data.augment"),
    ({"strategy": {"name": "data_free", "steps": 0}}, "steps must be an integer >= 1"),
    ({"strategy": {"name": "data_free", "losses": {"onehot": 1.0}}}, "unknown key 'strategy.losses.onehot'"),
    ({"strategy": {"name": "data_free", "generator": {"width": "wide"}}}, "strategy.generator.width"),
])
def test_what_data_free_cannot_run_is_one_line_and_exit_2(tmp_path: Path, capsys, mlp_teacher: dict,
                                                           changes: dict, message: str) -> None:
    raw = {**_data_free(tmp_path, mlp_teacher), **changes}
    raw = {k: v for k, v in raw.items() if v is not None}
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and err.startswith("error:")
    assert not (tmp_path / "out" / "data_free").exists()


def test_bn_matching_on_a_teacher_without_batchnorm_is_refused_from_python(tmp_path: Path, mlp_teacher: dict) -> None:
    raw = _data_free(tmp_path, mlp_teacher)
    raw["strategy"]["losses"] = {"bn": 0.1}
    with pytest.raises(DistillError, match="has no BatchNorm layer"):
        distill.execute(distill.plan_from_recipe(recipe_from_dict(raw)), log=lambda _: None)


def test_fit_runs_data_free_from_python_with_a_teacher_module(tmp_path: Path) -> None:
    teacher = _bn_teacher()  # a module is taken as pretrained; it has BatchNorm, so bn matching applies
    result = distill.fit(teacher, {"name": "mlp", "hidden": [16]}, "digits", methods=["kd"], epochs=1,
                         strategy={"name": "data_free", "steps": 3, "losses": {"bn": 0.1}}, batch_size=32,
                         output_dir=tmp_path / "out", latency=False, log=lambda _: None)
    assert set(result.metrics) == {"teacher", "scratch", "student"}
    assert (tmp_path / "out" / "generator" / "model.safetensors").is_file()
    assert result.history[-1]["generator.bn"] != 0.0
