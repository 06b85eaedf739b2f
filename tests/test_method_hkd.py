"""HKD (holistic KD with a graph convolution) against hand computations, its k-NN graph builder, its gradients,
and a short end-to-end ``distill run``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.methods import HKD, METHODS, build_method
from distill.methods.graph import cosine_distance, knn_graph, propagation
from distill.methods.hkd import hkd_loss, info_nce
from distill.types import Batch, ModelOutput, SetupContext, StepContext
from helpers import cli, digits_recipe, write_recipe

CTX = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)
EMB = "fc:input"


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _hkd(n: int, s_dim: int = 5, t_dim: int = 6, **kwargs: object) -> HKD:
    method = HKD(student_layers=[EMB], teacher_layers=[EMB], **kwargs)  # defaults are `auto` (engine-resolved)
    method.setup(SetupContext({EMB: (2, s_dim)}, {EMB: (2, t_dim)}, num_samples=n, num_classes=3))
    return method


def _outs(fs: torch.Tensor, ft: torch.Tensor, ls: torch.Tensor, lt: torch.Tensor) -> tuple[ModelOutput, ModelOutput]:
    return ModelOutput(ls, {EMB: fs}), ModelOutput(lt, {EMB: ft})


def _batch(index: list[int]) -> Batch:
    return Batch(torch.zeros(len(index), 1), torch.zeros(len(index), dtype=torch.long), torch.tensor(index))


# ------------------------------------------------------------------------------------------- the graph builder


def test_knn_graph_matches_a_hand_example() -> None:
    # five directions in the plane: 0, 10, 40, 90 and 100 degrees; cosine distance orders them by angle gap
    x = torch.tensor([_unit(a) for a in (0, 10, 40, 90, 100)])
    want2 = [[0, 1], [1, 0], [2, 1], [3, 4], [4, 3]]  # itself, then the nearest other
    want3 = [[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 4, 2], [4, 3, 2]]
    for k, want in ((2, want2), (3, want3)):
        expected = torch.zeros(5, 5)
        for i, row in enumerate(want):
            expected[i, row] = 1.0
        assert torch.equal(knn_graph(x, k), expected)
    scaled = x * torch.tensor([[1.0], [3.0], [0.5], [7.0], [2.0]])  # cosine: every row's scale is irrelevant
    assert torch.equal(knn_graph(scaled, 3), knn_graph(x, 3))
    assert torch.equal(knn_graph(x, 8), torch.ones(5, 5))  # k clamped to B: the complete graph
    assert torch.allclose(cosine_distance(x)[0, 2], torch.tensor(1.0 - math.cos(math.radians(40))))


def test_knn_graph_carries_no_gradient_and_propagation_is_symmetric_normalisation() -> None:
    x = torch.randn(6, 4, requires_grad=True)
    assert not knn_graph(x, 3).requires_grad
    adj = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])  # degrees 2, 3, 2
    p = propagation(adj)
    assert p[0, 0].item() == pytest.approx(1 / 2) and p[0, 1].item() == pytest.approx(1 / math.sqrt(6))
    assert p[1, 1].item() == pytest.approx(1 / 3) and p[0, 2].item() == 0.0
    assert torch.allclose(propagation(knn_graph(x, 3)), knn_graph(x, 3) / 3)  # k-NN: the neighbourhood mean


# ------------------------------------------------------------------------------------------------- the loss


def _nce(a: list[float], p: list[float], negs: list[list[float]], T: float) -> float:
    scores = [_dot(a, p) / T] + [_dot(a, m) / T for m in negs]
    return -(scores[0] - math.log(sum(math.exp(v) for v in scores)))


def _smooth(m: list[float], g: list[float], mom: float) -> list[float]:
    v = [mom * a + (1 - mom) * b for a, b in zip(m, g)]
    norm = math.sqrt(_dot(v, v))
    return [c / norm for c in v]


def test_hkd_loss_matches_hand_computation() -> None:
    T, mom = 0.5, 0.75
    e_s, e_t, g_s, g_t = ([_unit(a), _unit(b)] for a, b in ((0, 80), (20, 100), (30, 60), (10, 130)))
    mem_s = [_unit(a) for a in (5, 90, 200, 270)]
    mem_t = [_unit(a) for a in (15, 120, 180, 300)]
    index, negatives = [0, 1], [[2, 3], [3, 0]]
    want_ind = want_hol = 0.0
    for row, i in enumerate(index):
        negs_s, negs_t = [mem_s[j] for j in negatives[row]], [mem_t[j] for j in negatives[row]]
        want_ind += (_nce(e_s[row], mem_t[i], negs_s, T) + _nce(e_t[row], mem_s[i], negs_t, T)) / 2
        want_hol += (_nce(g_s[row], _smooth(mem_t[i], g_t[row], mom), negs_s, T)
                     + _nce(g_t[row], _smooth(mem_s[i], g_s[row], mom), negs_t, T)) / 2
    t = torch.tensor
    ind, hol = hkd_loss(t(e_s), t(e_t), t(g_s), t(g_t), t(mem_s), t(mem_t), t(index), t(negatives), T, mom)
    assert ind.item() == pytest.approx(want_ind, rel=1e-5)
    assert hol.item() == pytest.approx(want_hol, rel=1e-5)
    one = info_nce(t(e_s), t([mem_t[0], mem_t[1]]), t(mem_s), t(negatives), T)
    assert one.item() == pytest.approx(sum(_nce(e_s[r], mem_t[r], [mem_s[j] for j in negatives[r]], T)
                                           for r in range(2)) / 2, rel=1e-5)


def test_method_is_beta_times_the_loss_and_moves_both_banks() -> None:
    torch.manual_seed(0)
    method = _hkd(10, nce_k=4, beta=2.0, knn=3)
    fs, ft, ls, lt = torch.randn(4, 5), torch.randn(4, 6), torch.randn(4, 3), torch.randn(4, 3)
    index = [7, 2, 5, 0]
    mem_s, mem_t = method.memory_s.clone(), method.memory_t.clone()
    torch.manual_seed(1)
    out = method(*_outs(fs, ft, ls, lt), _batch(index), CTX)
    torch.manual_seed(1)  # the same negatives
    negatives = torch.randint(0, 9, (4, 4))
    negatives = negatives + (negatives >= torch.tensor(index)[:, None]).long()
    e_s, e_t = method.embed_s(fs), method.embed_t(ft)
    g_s = method.gnn_s(e_s, propagation(knn_graph(F.softmax(ls, 1), 3)))
    g_t = method.gnn_t(e_t, propagation(knn_graph(F.softmax(lt, 1), 3)))
    ind, hol = hkd_loss(e_s, e_t, g_s, g_t, mem_s, mem_t, torch.tensor(index), negatives, 0.07, 0.75)
    assert out.terms["hkd_ind"].item() == pytest.approx(2.0 * ind.item(), rel=1e-5)
    assert out.terms["hkd_graph"].item() == pytest.approx(2.0 * hol.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(out.terms["hkd_ind"].item() + out.terms["hkd_graph"].item(), rel=1e-6)
    moved = F.normalize(0.9 * mem_s[index] + 0.1 * e_s.detach(), dim=1)  # momentum 0.9 with the embeddings
    assert torch.allclose(method.memory_s[index], moved, atol=1e-6)
    assert torch.equal(method.memory_s[[1, 3]], mem_s[[1, 3]])  # rows outside the batch stay
    method.eval()
    before = method.memory_t.clone()
    method(*_outs(fs, ft, ls, lt), _batch(index), CTX)
    assert torch.equal(method.memory_t, before)  # evaluation leaves the banks alone


def test_teacher_graph_option_ignores_the_students_own_graph() -> None:
    fs, ft, lt = torch.randn(6, 5), torch.randn(6, 6), torch.randn(6, 3)
    losses = {}
    for graph in ("own", "teacher"):
        torch.manual_seed(0)
        method = _hkd(12, nce_k=5, knn=2, graph=graph).eval()  # eval: banks fixed
        for name, ls in (("a", torch.randn(6, 3)), ("b", -lt)):  # two student outputs, two different graphs
            torch.manual_seed(2)
            losses[graph, name] = method(*_outs(fs, ft, ls, lt), _batch(list(range(6))), CTX).loss.item()
    assert losses["teacher", "a"] == pytest.approx(losses["teacher", "b"], rel=1e-6)
    assert losses["own", "a"] != pytest.approx(losses["own", "b"], rel=1e-6)


def test_gradients_reach_the_student_and_heads_but_never_the_teacher_features() -> None:
    for graph in ("own", "teacher"):
        torch.manual_seed(0)
        method = _hkd(12, nce_k=6, graph=graph)
        fs, ft = torch.randn(5, 5, requires_grad=True), torch.randn(5, 6, requires_grad=True)
        ls, lt = torch.randn(5, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
        method(*_outs(fs, ft, ls, lt), _batch([0, 3, 4, 8, 11]), CTX).loss.backward()
        assert fs.grad is not None and fs.grad.abs().sum() > 0
        assert ft.grad is None and lt.grad is None  # teacher features and logits: detached
        assert ls.grad is None  # the graph is a structure: no gradient through the logits it is built on
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())


def test_registration_validation_and_small_batches() -> None:
    assert METHODS.get("hkd") is HKD and isinstance(build_method("hkd"), HKD)
    assert build_method("hkd").spec() == {"name": "hkd", "student_layers": "auto", "teacher_layers": "auto",
                                          "feat_dim": 128, "knn": 8, "nce_k": 4096, "nce_t": 0.07, "nce_m": 0.9,
                                          "smooth_m": 0.75, "beta": 3.0, "graph": "own"}
    assert build_method("hkd").needs.student_taps == ("auto",)  # placeholder until the engine resolves it
    for bad in ({"graph": "student"}, {"knn": 0}, {"nce_t": 0.0}):
        with pytest.raises(DistillError):
            HKD(**bad)
    with pytest.raises(DistillError, match="one layer each"):
        HKD(student_layers=["a", "b"], teacher_layers=["c", "d"])
    with pytest.raises(DistillError, match="both are 'auto'"):
        HKD(student_layers=["a"])
    with pytest.raises(DistillError, match="setup"):
        HKD()(*_outs(torch.randn(2, 5), torch.randn(2, 6), torch.randn(2, 3), torch.randn(2, 3)), _batch([0, 1]), CTX)
    method = _hkd(4)
    with pytest.raises(DistillError, match="memory banks hold 4"):
        method(*_outs(torch.randn(2, 5), torch.randn(2, 6), torch.randn(2, 3), torch.randn(2, 3)), _batch([0, 4]), CTX)
    one = _hkd(4)(*_outs(torch.randn(1, 5), torch.randn(1, 6), torch.randn(1, 3), torch.randn(1, 3)), _batch([2]), CTX)
    assert torch.isfinite(one.loss)  # a batch of one (smaller than knn): its graph is the vertex itself


# ------------------------------------------------------------------------------------------------ end to end


def test_hkd_runs_end_to_end_through_distill_run(tmp_path: Path, capsys) -> None:
    raw = digits_recipe(tmp_path)
    del raw["method"]
    raw["methods"] = [{"name": "kd", "T": 4, "alpha": 0.5, "beta": 0.5}, {"name": "hkd", "nce_k": 256}]
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 0, err
    root = tmp_path / "out"
    header, *rows = (root / "student" / "log.csv").read_text().splitlines()
    assert {"hkd_ind", "hkd_graph"} <= set(header.split(",")) and len(rows) == 2
    assert all(math.isfinite(float(v)) for row in rows for v in row.split(",")[1:4])
    report = json.loads((root / "report.json").read_text())
    assert report["recipe"]["methods"][1]["name"] == "hkd"
    assert 0.0 <= report["models"]["student"]["top1_last"] <= 1.0
