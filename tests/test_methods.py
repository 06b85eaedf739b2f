"""Losses against hand computations on fixed tensors, and the teacher contract for every method."""

from __future__ import annotations

import math

import pytest
import torch

from distill.engine import setup_methods
from distill.methods import METHODS, MethodSet, build_method
from distill.methods.kd import kd_loss, standardize_logits
from distill.models import FrozenTeacher, build_model, feed
from distill.taps import FeatureTaps
from distill.types import UNLABELLED, Batch, ModelOutput, StepContext

CTX = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)


def _batch(target: list[int]) -> Batch:
    t = torch.tensor(target)
    return Batch(torch.zeros(len(t), 3), t, torch.arange(len(t)))


def _manual_kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _softmax(v: list[float], T: float) -> list[float]:
    e = [math.exp(x / T) for x in v]
    return [x / sum(e) for x in e]


def test_kd_loss_matches_hand_computation() -> None:
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    T = 2.0
    expected = sum(_manual_kl(_softmax(ti, T), _softmax(si, T)) for si, ti in zip(s, t)) / 2 * T * T
    got = kd_loss(torch.tensor(s), torch.tensor(t), T)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # batch mean, not a mean over classes too (a known bug in the field divides by C as well)
    assert got.item() != pytest.approx(expected / 3, rel=1e-3)


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    x = torch.randn(4, 10)
    assert kd_loss(x, x.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(x, torch.randn(4, 10), 4.0).item() > 0


def test_t_squared_scaling_keeps_gradient_magnitude() -> None:
    # For large T, d/ds of T^2 KL -> (s - t)/C (zero-mean logits), independent of T: the T^2 factor is there.
    torch.manual_seed(0)
    t = torch.randn(8, 5)
    t = t - t.mean(dim=1, keepdim=True)
    s0 = torch.randn(8, 5)
    s0 = s0 - s0.mean(dim=1, keepdim=True)
    grads = []
    for T in (50.0, 100.0):
        s = s0.clone().requires_grad_(True)
        kd_loss(s, t, T).backward()
        grads.append(s.grad.clone())
    expected = (s0 - t) / 5 / 8  # / C, / batch size
    for g in grads:
        assert torch.allclose(g, expected, atol=2e-3)
    # without the T^2 factor the gradient would shrink like 1/T^2: the two temperatures would differ 4x
    assert torch.allclose(grads[0], grads[1], atol=2e-3)


def test_kd_method_weights_terms_and_skips_ce_on_unlabelled() -> None:
    s = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    method = build_method("kd", T=3.0, alpha=0.4, beta=0.6)
    out = method(ModelOutput(s), ModelOutput(t), _batch([0, UNLABELLED, 2]), CTX)
    p0, p2 = _softmax(s[0].tolist(), 1.0), _softmax(s[2].tolist(), 1.0)
    ce = -(math.log(p0[0]) + math.log(p2[2])) / 2  # only the two labelled samples
    kd = sum(_manual_kl(_softmax(ti, 3.0), _softmax(si, 3.0)) for si, ti in zip(s.tolist(), t.tolist())) / 3 * 9
    assert out.terms["ce"].item() == pytest.approx(0.4 * ce, rel=1e-6)
    assert out.terms["kd"].item() == pytest.approx(0.6 * kd, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.4 * ce + 0.6 * kd, rel=1e-6)


def test_ce_is_zero_with_gradient_graph_when_batch_has_no_labels() -> None:
    s = torch.randn(3, 4, requires_grad=True)
    out = build_method("ce")(ModelOutput(s), None, _batch([UNLABELLED] * 3), CTX)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert s.grad is not None and torch.all(s.grad == 0)


def test_standardize_logits_zero_mean_unit_std() -> None:
    z = standardize_logits(torch.tensor([[1.0, 2.0, 3.0, 10.0]]) * 7 + 3)
    assert z.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert z.std().item() == pytest.approx(1.0, rel=1e-5)


def test_kd_diagnose_warns_on_one_hot_teacher() -> None:
    method = build_method("kd", T=4.0)
    confident = torch.tensor([[160.0, 0.0, 0.0]] * 4)
    assert method.diagnose(confident) and "one-hot" in method.diagnose(confident)[0]
    assert method.diagnose(torch.zeros(4, 3)) == []
    assert build_method("kd", standardize=True).diagnose(confident) == []


def test_method_set_sums_weighted_terms() -> None:
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    kd = build_method("kd")
    ms = MethodSet([kd, build_method("ce")], [0.5, 2.0])
    out = ms(ModelOutput(s), ModelOutput(t), _batch([0, 1, 2, 0]), CTX)
    single = kd(ModelOutput(s), ModelOutput(t), _batch([0, 1, 2, 0]), CTX)
    ce = build_method("ce")(ModelOutput(s), None, _batch([0, 1, 2, 0]), CTX)
    assert out.loss.item() == pytest.approx(0.5 * single.loss.item() + 2.0 * ce.loss.item(), rel=1e-6)
    assert sum(v.item() for v in out.terms.values()) == pytest.approx(out.loss.item(), rel=1e-6)


# methods made for transformers (their default taps are a transformer's layers and pooled embedding): their
# contract runs on a config-built BERT pair (6-layer teacher, 3-layer student, eager attention)
TEXT_METHODS = {"embedding", "tinybert"}


def _pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module, object]:
    """(student, teacher, a batch of 6 inputs) for the contract test of method ``name``."""
    if name not in TEXT_METHODS:
        return (build_model("resnet8", num_classes=4, input_shape=(3, 16, 16)),
                build_model("resnet14", num_classes=4, input_shape=(3, 16, 16)), torch.randn(6, 3, 16, 16))
    pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    bert = {"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 6,
            "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16}
    student = build_model("hf", num_classes=4, input_shape=(1,), config={**bert, "num_hidden_layers": 3},
                          attn_implementation="eager")
    teacher = build_model("hf", num_classes=4, input_shape=(1,), config={**bert, "hidden_size": 32},
                          attn_implementation="eager")
    return student, teacher, {"input_ids": torch.randint(1, 50, (6, 8)), "attention_mask": torch.ones(6, 8).long()}


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_contract_on_zoo_models(name: str) -> None:
    """Default kwargs on unmodified zoo models (transformers for the text methods): finite loss, gradients reach
    the student and the method's connectors, none reach the teacher, and the teacher stays in eval mode."""
    torch.manual_seed(0)
    student, raw_teacher, x = _pair(name)
    teacher = FrozenTeacher(raw_teacher)
    methods = MethodSet([build_method("ce"), build_method(name)])
    first = {k: v[:2] for k, v in x.items()} if isinstance(x, dict) else x[:2]
    setup_methods(methods, student, teacher, first, num_samples=6, num_classes=4)
    student.train()
    methods.train()
    teacher.train()  # an engine calling .train() on everything must not flip the teacher
    batch = Batch(x, torch.tensor([0, 1, UNLABELLED, 3, 2, 1]), torch.arange(6))
    with FeatureTaps(student, methods.student_taps) as s_taps, FeatureTaps(raw_teacher, methods.teacher_taps) as t_taps:
        s_out = ModelOutput(feed(student, x), dict(s_taps.feats))
        t_out = ModelOutput(teacher(x), dict(t_taps.feats)) if methods.needs_teacher else None
    out = methods(s_out, t_out, batch, CTX)
    assert torch.isfinite(out.loss)
    assert sum(v.item() for v in out.terms.values()) == pytest.approx(out.loss.item(), rel=1e-4, abs=1e-5)
    out.loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert sum(p.numel() for p in student.parameters() if p.requires_grad) > 0.9 * sum(
        p.numel() for p in student.parameters())  # (a transformer's unused CLS pooler is frozen)
    trainable = [(n, p) for n, p in methods.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable), [n for n, p in trainable if p.grad is None]
    assert all(p.grad is None for p in raw_teacher.parameters())
    assert not raw_teacher.training
