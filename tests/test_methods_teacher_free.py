"""Teacher-free methods against hand computations: Tf-KD's virtual teacher (Yuan et al. 2020) and label
smoothing (Szegedy et al. 2016)."""

from __future__ import annotations

import math

import pytest
import torch

from distill.methods import build_method
from distill.methods.tfkd import tfkd_loss, virtual_teacher
from distill.types import UNLABELLED, Batch, ModelOutput, StepContext

CTX = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)
S = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [0.3, 0.1, -0.2]]


def _softmax(v: list[float], T: float = 1.0) -> list[float]:
    e = [math.exp(x / T) for x in v]
    return [x / sum(e) for x in e]


def _batch(target: list[int]) -> Batch:
    t = torch.tensor(target)
    return Batch(torch.zeros(len(t), 3), t, torch.arange(len(t)))


def test_virtual_teacher_is_the_reference_distribution() -> None:
    u = virtual_teacher(torch.tensor([2, 0]), 4, 0.99)
    assert torch.allclose(u, torch.tensor([[0.01 / 3, 0.01 / 3, 0.99, 0.01 / 3], [0.99, 0.01 / 3, 0.01 / 3, 0.01 / 3]]))


def test_tfkd_loss_matches_hand_computation_and_skips_unlabelled() -> None:
    T, cp, target = 20.0, 0.99, [1, UNLABELLED, 2]
    expected = 0.0
    for s, y in ((S[0], 1), (S[2], 2)):  # the unlabelled row has no virtual teacher
        u = [cp if k == y else (1 - cp) / 2 for k in range(3)]
        p_v, p_s = _softmax(u, T), _softmax(s)
        expected += sum(p * math.log(p / q) for p, q in zip(p_v, p_s))
    got = tfkd_loss(torch.tensor(S), torch.tensor(target), T, cp)
    assert got.item() == pytest.approx(expected / 2, rel=1e-6)


def test_tfkd_method_weights_its_terms_like_the_reference() -> None:
    method = build_method("tfkd", T=20.0, alpha=0.3, beta=2.0)
    assert not method.needs.teacher
    out = method(ModelOutput(torch.tensor(S)), None, _batch([1, 0, 2]), CTX)
    ce = -sum(math.log(_softmax(s)[y]) for s, y in zip(S, [1, 0, 2])) / 3
    reg = tfkd_loss(torch.tensor(S), torch.tensor([1, 0, 2]), 20.0, 0.99).item()
    assert out.terms["ce"].item() == pytest.approx(0.7 * ce, rel=1e-6)
    assert out.terms["tfkd"].item() == pytest.approx(0.3 * 2.0 * reg, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.7 * ce + 0.6 * reg, rel=1e-6)
    # beta = multiplier / C: the reference's elementwise-mean KLDivLoss times its multiplier is the same number
    reference = torch.nn.KLDivLoss()(torch.log_softmax(torch.tensor(S), 1),
                                     torch.softmax(virtual_teacher(torch.tensor([1, 0, 2]), 3, 0.99) / 20.0, 1)) * 6.0
    assert reference.item() == pytest.approx(2.0 * reg, rel=1e-6)


def test_lsr_is_cross_entropy_against_smoothed_labels() -> None:
    eps, target = 0.2, [1, UNLABELLED, 2]
    out = build_method("lsr", eps=eps)(ModelOutput(torch.tensor(S)), None, _batch(target), CTX)
    expected = 0.0
    for s, y in ((S[0], 1), (S[2], 2)):
        q = [(1 - eps) * (k == y) + eps / 3 for k in range(3)]
        expected -= sum(qk * math.log(pk) for qk, pk in zip(q, _softmax(s)))
    assert out.loss.item() == pytest.approx(expected / 2, rel=1e-6)
    with pytest.raises(ValueError):
        build_method("lsr", eps=1.0)


# ------------------------------------------------------------------------------------------ irg (graphs)


def test_distance_graph_and_transition_match_hand_computation() -> None:
    from distill.methods.graph import distance_graph, transition

    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    d = distance_graph(x)
    assert torch.allclose(d, torch.tensor([[0, 25, 100], [25, 0, 25], [100, 25, 0]]) / 100.0)
    assert torch.allclose(distance_graph(7.0 * x), d)  # scale-free: student and teacher widths may differ
    f1 = torch.arange(16.0).reshape(1, 2, 8).repeat(2, 1, 1)  # (B=2, C=2, L=8)
    f1[1] *= 2
    f2 = torch.zeros(2, 4, 4)  # (B, 4, 4): pooled f1 (B, 2, 4) against channel pairs averaged (B, 2, 4)
    pooled = torch.nn.functional.adaptive_avg_pool1d(f1, 4)
    want = (pooled ** 2).flatten(1).sum(1)
    assert torch.allclose(transition(f1, f2), want / want.max())


def test_irg_terms_and_a_perfect_student() -> None:
    torch.manual_seed(0)
    method = build_method("irg", student_layers=["a", "b", "e"], teacher_layers=["a", "b", "e"])
    feats = {"a": torch.randn(5, 4, 8), "b": torch.randn(5, 8, 4), "e": torch.randn(5, 6)}
    logits = torch.randn(5, 3)
    same = method(ModelOutput(logits, feats), ModelOutput(logits, feats), _batch([0, 1, 2, 0, 1]), CTX)
    assert same.loss.item() == pytest.approx(0.0, abs=1e-7)  # a student that is its teacher has nothing to learn
    scaled = {k: 3.0 * v for k, v in feats.items()}  # wider scale: edges and transformations are normalised
    out = method(ModelOutput(logits + 1.0, scaled), ModelOutput(logits, feats), _batch([0, 1, 2, 0, 1]), CTX)
    assert out.terms["irg_edge"].item() == pytest.approx(0.0, abs=1e-6)
    assert out.terms["irg_tran"].item() == pytest.approx(0.0, abs=1e-6)
    assert out.terms["irg_vert"].item() == pytest.approx(0.1 * 1.0, rel=1e-6)  # w_vert * MSE of a +1 shift
    other = {k: torch.randn_like(v) for k, v in feats.items()}
    moved = method(ModelOutput(logits, other), ModelOutput(logits, feats), _batch([0, 1, 2, 0, 1]), CTX)
    assert moved.terms["irg_edge"].item() > 0 and moved.terms["irg_tran"].item() > 0
