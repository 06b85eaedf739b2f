"""Defensive distillation (Papernot et al. 2016): the loss against its formula, and the student's logits it leads to."""

from __future__ import annotations

import pytest
import torch

from distill.methods import METHODS, DefensiveDistillation
from distill.methods.defensive import defensive_loss
from distill.types import Batch, ModelOutput, StepContext


def test_the_loss_is_the_soft_label_cross_entropy_at_the_students_temperature() -> None:
    s = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    t = torch.tensor([[4.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    q = torch.exp(t) / torch.exp(t).sum(1, keepdim=True)  # teacher_T = 1
    p = torch.exp(s / 20) / torch.exp(s / 20).sum(1, keepdim=True)
    want = -(q * p.log()).sum(1).mean()
    assert defensive_loss(s, t, 20.0) == pytest.approx(want.item(), rel=1e-6)
    q2 = torch.softmax(t / 2, dim=1)
    assert defensive_loss(s, t, 20.0, 2.0) == pytest.approx(-(q2 * p.log()).sum(1).mean().item(), rel=1e-6)


def test_the_student_ends_with_logits_t_times_the_teachers() -> None:
    """The optimum is softmax(s / T) = softmax(t): s = T * t up to a constant per row, which saturates at T=1."""
    t = torch.tensor([[3.0, 1.0, -1.0, 0.0]])
    s = torch.zeros_like(t, requires_grad=True)
    opt = torch.optim.Adam([s], lr=0.5)
    for _ in range(2000):
        opt.zero_grad()
        defensive_loss(s, t, 50.0).backward()
        opt.step()
    centred = (s - s.mean()).detach()
    assert torch.allclose(centred / 50.0, t - t.mean(), atol=0.02)
    assert torch.softmax(centred, dim=1).max() > 0.999999  # at T=1 the student's softmax is saturated


def test_the_module_weights_its_terms_and_refuses_a_top_k_cache() -> None:
    m = METHODS.get("defensive")(T=10.0, alpha=0.5)
    assert isinstance(m, DefensiveDistillation) and not m.accepts_topk()
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    batch = Batch(input=torch.zeros(4, 1), target=y, index=torch.arange(4))
    out = m(ModelOutput(logits=s), ModelOutput(logits=t), batch, StepContext(epoch=0, step=0, epochs=1,
                                                                              steps_per_epoch=1))
    ce = torch.nn.functional.cross_entropy(s, y)
    assert out.terms["ce"] == pytest.approx(0.5 * ce.item(), rel=1e-5)
    assert out.terms["defensive"] == pytest.approx(defensive_loss(s, t, 10.0).item(), rel=1e-6)
    with pytest.raises(ValueError, match="positive"):
        DefensiveDistillation(T=0)
