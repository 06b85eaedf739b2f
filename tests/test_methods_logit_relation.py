"""DKD and DIST (logit methods), RKD, SP, CC, PKT and KD-SVD (relation methods) against independent
re-derivations (loops, numpy) and the properties their papers claim."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

import distill.methods.cc as cc_mod
import distill.methods.dist as dist_mod
import distill.methods.dkd as dkd_mod
import distill.methods.kdsvd as kdsvd_mod
import distill.methods.pkt as pkt_mod
import distill.methods.rkd as rkd_mod
import distill.methods.sp as sp_mod
from distill.errors import DistillError
from distill.methods import METHODS
from distill.methods.kd import kd_loss
from distill.spec_check import check_kwargs
from distill.types import UNLABELLED, Batch, ModelOutput, SetupContext, StepContext

CTX = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)
EMB = "fc:input"
KEYS = {"dkd": dkd_mod.DKD, "dist": dist_mod.DIST, "rkd": rkd_mod.RKD, "sp": sp_mod.SP, "cc": cc_mod.CC,
        "pkt": pkt_mod.PKT, "kdsvd": kdsvd_mod.KDSVD}


def _batch(target: list[int]) -> Batch:
    t = torch.tensor(target)
    return Batch(torch.zeros(len(t), 1), t, torch.arange(len(t)))


def _softmax(v: np.ndarray, T: float = 1.0) -> np.ndarray:
    e = np.exp(v / T - np.max(v / T))
    return e / e.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


def _feats(fs: torch.Tensor, ft: torch.Tensor, layer: str = EMB) -> tuple[ModelOutput, ModelOutput]:
    return ModelOutput(torch.zeros(len(fs), 3), {layer: fs}), ModelOutput(torch.zeros(len(ft), 3), {layer: ft})


def _rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))
    return q


def test_all_registered_constructible_with_defaults_and_annotated_kwargs() -> None:
    for key, cls in KEYS.items():
        assert METHODS.get(key) is cls
        assert isinstance(cls(), cls)
        params = inspect.signature(cls.__init__).parameters
        assert all(p.annotation is not p.empty for n, p in params.items() if n != "self"), key
    check_kwargs(dkd_mod.DKD, {"T": 2.0, "dkd_beta": 2.0, "warmup_epochs": 5}, "method", "dkd")
    check_kwargs(rkd_mod.RKD, {"student_layers": ["layer3"], "w_angle": 0.0}, "method", "rkd")
    check_kwargs(kdsvd_mod.KDSVD, {"student_layers": "auto", "teacher_layers": "auto"}, "method", "kdsvd")
    with pytest.raises(DistillError, match="student_layers"):  # layers: a list of paths or 'auto', nothing else
        check_kwargs(kdsvd_mod.KDSVD, {"student_layers": 3}, "method", "kdsvd")
    with pytest.raises(DistillError, match="w_angle"):
        check_kwargs(rkd_mod.RKD, {"w_angle": "big"}, "method", "rkd")


# ----------------------------------------------------------------------------------------------- DKD


def _dkd_by_hand(s: np.ndarray, t: np.ndarray, gt: np.ndarray, T: float) -> tuple[float, float]:
    tckd = nckd = 0.0
    for si, ti, g in zip(s, t, gt):
        ps, pt = _softmax(si, T), _softmax(ti, T)
        tckd += _kl(np.array([pt[g], 1 - pt[g]]), np.array([ps[g], 1 - ps[g]]))
        rest = [j for j in range(len(si)) if j != g]  # non-target distribution: renormalised probabilities
        nckd += _kl(pt[rest] / pt[rest].sum(), ps[rest] / ps[rest].sum())
    return tckd / len(s) * T * T, nckd / len(s) * T * T


def test_dkd_loss_matches_hand_computation() -> None:
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(4, 5)) * 2, rng.normal(size=(4, 5)) * 2
    gt = np.array([0, 3, 4, 1])
    tckd, nckd = dkd_mod.dkd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(gt), 3.0)
    exp_t, exp_n = _dkd_by_hand(s, t, gt, 3.0)
    assert tckd.item() == pytest.approx(exp_t, rel=1e-5)
    assert nckd.item() == pytest.approx(exp_n, rel=1e-5)


def test_dkd_decomposition_reproduces_classical_kd() -> None:
    # The paper's Eq. (4): KD = TCKD + (1 - p_gt^t) * NCKD, per sample.
    torch.manual_seed(1)
    s, t = torch.randn(1, 6) * 3, torch.randn(1, 6) * 3
    gt, T = torch.tensor([2]), 2.0
    tckd, nckd = dkd_mod.dkd_loss(s, t, gt, T)
    p_gt = torch.softmax(t / T, dim=1)[0, 2].item()
    assert (tckd + (1 - p_gt) * nckd).item() == pytest.approx(kd_loss(s, t, T).item(), rel=1e-5)


def test_dkd_zero_for_identical_logits_and_finite_for_confident_ones() -> None:
    x = torch.randn(3, 4)
    tckd, nckd = dkd_mod.dkd_loss(x, x.clone(), torch.tensor([0, 1, 2]), 4.0)
    assert tckd.item() == pytest.approx(0.0, abs=1e-6) and nckd.item() == pytest.approx(0.0, abs=1e-6)
    s = torch.tensor([[300.0, 0.0, 0.0]], requires_grad=True)
    tckd, nckd = dkd_mod.dkd_loss(s, torch.tensor([[0.0, 300.0, 0.0]]), torch.tensor([0]), 1.0)
    (tckd + nckd).backward()
    assert torch.isfinite(tckd) and torch.isfinite(nckd) and torch.isfinite(s.grad).all()


def test_dkd_warmup_ramps_per_step_and_shrinks_for_short_runs() -> None:
    w = dkd_mod.warmup_weight
    assert w(StepContext(0, 0, 240, 10), 20) == pytest.approx(1 / 200)
    assert w(StepContext(0, 9, 240, 10), 20) == pytest.approx(1 / 20)  # end of epoch 1 = mdistiller's 1/20
    assert w(StepContext(18, 189, 240, 10), 20) == pytest.approx(19 / 20)
    assert w(StepContext(19, 199, 240, 10), 20) == 1.0 and w(StepContext(100, 1000, 240, 10), 20) == 1.0
    assert w(StepContext(0, 4, 12, 10), 20) == pytest.approx(0.5)  # 12 epochs -> a one-epoch ramp
    assert w(StepContext(0, 9, 12, 10), 20) == 1.0
    assert w(StepContext(0, 0, 1, 1), 20) == 1.0  # a single step still gets full weight
    assert w(StepContext(0, 0, 240, 10), 0) == 1.0


def test_dkd_method_terms_use_teacher_top1_for_unlabelled_samples() -> None:
    torch.manual_seed(2)
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    t[2] = torch.tensor([0.0, 0.0, 5.0, 0.0])  # unlabelled sample: its teacher top-1 is class 2
    method = dkd_mod.DKD(T=2.0, alpha=0.5, dkd_alpha=2.0, dkd_beta=3.0, warmup_epochs=20)
    ctx = StepContext(epoch=0, step=4, epochs=240, steps_per_epoch=10)  # warm-up weight 5/200
    out = method(ModelOutput(s), ModelOutput(t), _batch([1, 3, UNLABELLED]), ctx)
    exp_t, exp_n = _dkd_by_hand(s.numpy().astype(np.float64), t.numpy().astype(np.float64), np.array([1, 3, 2]), 2.0)
    ce = -(math.log(_softmax(s[0].double().numpy())[1]) + math.log(_softmax(s[1].double().numpy())[3])) / 2
    assert out.terms["ce"].item() == pytest.approx(0.5 * ce, rel=1e-5)
    assert out.terms["tckd"].item() == pytest.approx(0.025 * 2.0 * exp_t, rel=1e-5)
    assert out.terms["nckd"].item() == pytest.approx(0.025 * 3.0 * exp_n, rel=1e-5)
    assert out.loss.item() == pytest.approx(sum(v.item() for v in out.terms.values()), rel=1e-6)


def test_dkd_standardize_uses_z_scored_logits_and_ignores_teacher_scale() -> None:
    torch.manual_seed(3)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    batch, ctx = _batch([0, 1, 2, 3]), StepContext(epoch=0, step=10**6, epochs=1, steps_per_epoch=1)
    method = dkd_mod.DKD(T=2.0, standardize=True)
    out = method(ModelOutput(s), ModelOutput(t), batch, ctx)

    def z(v: np.ndarray) -> np.ndarray:  # row z-score with the sample std (ddof=1), as in the paper's code
        return (v - v.mean(1, keepdims=True)) / v.std(1, ddof=1, keepdims=True)

    exp_t, exp_n = _dkd_by_hand(z(s.double().numpy()), z(t.double().numpy()), np.arange(4), 2.0)
    assert out.terms["tckd"].item() == pytest.approx(exp_t, rel=1e-4)
    assert out.terms["nckd"].item() == pytest.approx(8.0 * exp_n, rel=1e-4)
    scaled = method(ModelOutput(s), ModelOutput(30.0 * t + 7.0), batch, ctx)  # a teacher with huge logits
    assert scaled.loss.item() == pytest.approx(out.loss.item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------- DIST


def test_dist_loss_matches_numpy_corrcoef() -> None:
    rng = np.random.default_rng(3)
    s, t, T = rng.normal(size=(5, 4)), rng.normal(size=(5, 4)), 2.0
    ys = np.stack([_softmax(r, T) for r in s])
    yt = np.stack([_softmax(r, T) for r in t])
    inter = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ys, yt)])
    intra = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ys.T, yt.T)])
    got_inter, got_intra = dist_mod.dist_loss(torch.tensor(s), torch.tensor(t), T)
    assert got_inter.item() == pytest.approx(T * T * inter, rel=1e-4)
    assert got_intra.item() == pytest.approx(T * T * intra, rel=1e-4)


def test_dist_relations_are_invariant_to_positive_affine_maps() -> None:
    torch.manual_seed(4)
    y_s, y_t = torch.rand(6, 5), torch.rand(6, 5)
    inter, intra = dist_mod.inter_class_relation(y_s, y_t), dist_mod.intra_class_relation(y_s, y_t)
    assert dist_mod.inter_class_relation(3.0 * y_s + 0.7, y_t).item() == pytest.approx(inter.item(), rel=1e-5)
    assert dist_mod.intra_class_relation(y_s, 0.2 * y_t - 1.0).item() == pytest.approx(intra.item(), rel=1e-5)
    # a perfectly anti-correlated prediction costs the maximum, 2
    assert dist_mod.inter_class_relation(-y_t, y_t).item() == pytest.approx(2.0, rel=1e-5)
    # logits: a per-sample shift does not change the softmax, so neither relation moves
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    base = dist_mod.dist_loss(s, t, 4.0)
    shifted = dist_mod.dist_loss(s + torch.randn(6, 1) * 5, t, 4.0)
    assert all(a.item() == pytest.approx(b.item(), rel=1e-4, abs=1e-6) for a, b in zip(base, shifted))


def test_dist_zero_for_identical_logits_and_method_terms() -> None:
    x = torch.randn(4, 5)
    inter, intra = dist_mod.dist_loss(x, x.clone(), 1.0)
    assert inter.item() == pytest.approx(0.0, abs=1e-6) and intra.item() == pytest.approx(0.0, abs=1e-6)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    out = dist_mod.DIST(T=2.0, alpha=0.3, beta=2.0, gamma=0.5)(ModelOutput(s), ModelOutput(t),
                                                              _batch([0, UNLABELLED, 2, 1]), CTX)
    inter, intra = dist_mod.dist_loss(s, t, 2.0)
    labelled = torch.tensor([0, 2, 3])
    ce = torch.nn.functional.cross_entropy(s[labelled], torch.tensor([0, 2, 1]))
    assert out.terms["ce"].item() == pytest.approx(0.3 * ce.item(), rel=1e-6)
    assert out.terms["inter"].item() == pytest.approx(2.0 * inter.item(), rel=1e-6)
    assert out.terms["intra"].item() == pytest.approx(0.5 * intra.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(sum(v.item() for v in out.terms.values()), rel=1e-6)


# ----------------------------------------------------------------------------------------------- RKD


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def _rkd_by_hand(s: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    n = len(s)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]

    def dists(x: np.ndarray) -> dict:
        d = {(i, j): float(np.linalg.norm(x[i] - x[j])) for i, j in pairs}
        mu = sum(d.values()) / len(d)
        return {p: v / mu for p, v in d.items()}

    ds, dt = dists(s), dists(t)
    dist = sum(_huber(ds[p] - dt[p]) for p in pairs) / n**2  # mean over all n^2 (diagonal terms are 0)

    def cos(x: np.ndarray, i: int, j: int, k: int) -> float:  # angle at anchor j
        a, b = x[i] - x[j], x[k] - x[j]
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    triplets = [(i, j, k) for i in range(n) for j in range(n) for k in range(n) if j not in (i, k)]
    angle = sum(_huber(cos(s, *tr) - cos(t, *tr)) for tr in triplets) / n**3
    return dist, angle


def test_rkd_losses_match_loops_over_pairs_and_triplets() -> None:
    rng = np.random.default_rng(5)
    s, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 4)) * 4  # widths and scales differ
    dist, angle = _rkd_by_hand(s, t)
    assert rkd_mod.rkd_distance_loss(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(dist, rel=1e-5)
    assert rkd_mod.rkd_angle_loss(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(angle, rel=1e-5)


def test_rkd_invariant_to_scale_rotation_translation_and_zero_for_same_structure() -> None:
    torch.manual_seed(6)
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    moved = 7.5 * s @ _rotation(4, 0) + torch.randn(1, 4)
    for fn in (rkd_mod.rkd_distance_loss, rkd_mod.rkd_angle_loss):
        assert fn(moved, t).item() == pytest.approx(fn(s, t).item(), rel=1e-4)
        # a student that is a scaled, rotated copy of the teacher embedded in a wider space costs nothing
        wide = torch.cat([0.1 * t @ _rotation(4, 1), torch.zeros(6, 3)], dim=1)
        assert fn(wide, t).item() == pytest.approx(0.0, abs=1e-6)


def test_rkd_method_weights_and_finite_gradients_with_duplicate_samples() -> None:
    torch.manual_seed(7)
    fs = torch.randn(4, 3)
    fs = torch.cat([fs, fs[:1]]).requires_grad_(True)  # sample 4 duplicates sample 0: a zero distance
    ft = torch.randn(5, 6)
    out = rkd_mod.RKD(w_dist=2.0, w_angle=3.0, student_layers=[EMB], teacher_layers=[EMB])(
        *_feats(fs, ft), _batch([0] * 5), CTX)
    assert out.terms["rkd_dist"].item() == pytest.approx(2.0 * rkd_mod.rkd_distance_loss(fs, ft).item(), rel=1e-6)
    assert out.terms["rkd_angle"].item() == pytest.approx(3.0 * rkd_mod.rkd_angle_loss(fs, ft).item(), rel=1e-6)
    out.loss.backward()
    assert torch.isfinite(fs.grad).all() and fs.grad.abs().sum() > 0


def test_relation_methods_report_missing_taps_and_unpaired_layers() -> None:
    with pytest.raises(DistillError, match="paired"):
        rkd_mod.RKD(student_layers=["a", "b"], teacher_layers=["a"])
    with pytest.raises(DistillError, match="length >= 2"):
        kdsvd_mod.KDSVD(student_layers=["layer3"], teacher_layers=["layer3"])
    for cls in (rkd_mod.RKD, sp_mod.SP, pkt_mod.PKT, cc_mod.CC):
        with pytest.raises(DistillError, match="has no feature 'fc:input'"):
            cls(student_layers=[EMB], teacher_layers=[EMB])(
                *_feats(torch.randn(3, 2), torch.randn(3, 2), layer="other"), _batch([0, 0, 0]), CTX)
    with pytest.raises(DistillError, match="both are 'auto'"):  # one side given, the other left to `auto`
        rkd_mod.RKD(student_layers=["layer3"])
    method = rkd_mod.RKD(student_layers=["layer3"], teacher_layers=["block3"])
    assert method.needs.student_taps == ("layer3",) and method.needs.teacher_taps == ("block3",)
    assert rkd_mod.RKD().needs.live_teacher and rkd_mod.RKD().needs.student_taps == ("auto",)


# ------------------------------------------------------------------------------------------------ SP


def test_sp_loss_matches_loops_and_accepts_maps_of_different_shapes() -> None:
    rng = np.random.default_rng(8)
    s, t = rng.normal(size=(3, 2, 2, 2)), rng.normal(size=(3, 5, 1, 1))
    def g(x: np.ndarray) -> np.ndarray:
        q = x.reshape(len(x), -1)
        m = np.array([[q[i] @ q[j] for j in range(len(q))] for i in range(len(q))])
        return m / np.sqrt((m * m).sum(axis=1, keepdims=True))
    expected = ((g(t) - g(s)) ** 2).sum() / 9
    assert sp_mod.sp_loss(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(expected, rel=1e-5)


def test_sp_zero_for_same_similarities_and_invariant_to_feature_scale() -> None:
    torch.manual_seed(9)
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    assert sp_mod.sp_loss(t @ _rotation(6, 2), t).item() == pytest.approx(0.0, abs=1e-6)
    assert sp_mod.sp_loss(5.0 * s, t).item() == pytest.approx(sp_mod.sp_loss(s, t).item(), rel=1e-5)
    fs = s.clone().requires_grad_(True)
    method = sp_mod.SP(beta=10.0, student_layers=["layer3", EMB], teacher_layers=["block3", EMB])
    s_out = ModelOutput(torch.zeros(4, 3), {"layer3": torch.randn(4, 2, 3, 3), EMB: fs})
    t_out = ModelOutput(torch.zeros(4, 3), {"block3": torch.randn(4, 5, 3, 3), EMB: t})
    out = method(s_out, t_out, _batch([0] * 4), CTX)
    expected = 10.0 * (sp_mod.sp_loss(s_out.feats["layer3"], t_out.feats["block3"]) + sp_mod.sp_loss(s, t))
    assert out.terms["sp"].item() == pytest.approx(expected.item(), rel=1e-5)
    out.loss.backward()
    assert fs.grad is not None and torch.isfinite(fs.grad).all()


# ----------------------------------------------------------------------------------------------- PKT


def test_pkt_loss_matches_loops_over_neighbours() -> None:
    rng = np.random.default_rng(10)
    s, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 7))
    def cond(x: np.ndarray) -> np.ndarray:
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        k = np.array([[(u[i] @ u[j] + 1) / 2 for j in range(4)] for i in range(4)])  # self-pairs kept (reference)
        return k / k.sum(axis=1, keepdims=True)
    p, q = cond(t), cond(s)
    expected = sum(p[i, j] * math.log(p[i, j] / q[i, j]) for i in range(4) for j in range(4)) / 16
    assert pkt_mod.pkt_loss(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(expected, rel=1e-4)


def test_pkt_zero_for_same_cosines_invariant_to_per_sample_scale_and_weighted() -> None:
    torch.manual_seed(11)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    assert pkt_mod.pkt_loss(t @ _rotation(4, 3), t).item() == pytest.approx(0.0, abs=1e-6)
    scaled = s * torch.rand(5, 1).add(0.5)
    assert pkt_mod.pkt_loss(scaled, t).item() == pytest.approx(pkt_mod.pkt_loss(s, t).item(), rel=1e-4)
    fs = s.clone().requires_grad_(True)
    out = pkt_mod.PKT(beta=100.0, student_layers=[EMB], teacher_layers=[EMB])(*_feats(fs, t), _batch([0] * 5), CTX)
    assert out.terms["pkt"].item() == pytest.approx(100.0 * pkt_mod.pkt_loss(s, t).item(), rel=1e-5)
    out.loss.backward()
    assert torch.isfinite(fs.grad).all() and fs.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ CC


def test_cc_kernel_is_the_taylor_expanded_rbf_of_unit_vectors() -> None:
    rng = np.random.default_rng(12)
    f, gamma = rng.normal(size=(4, 3)), 0.4
    u = f / np.linalg.norm(f, axis=1, keepdims=True)
    got = cc_mod.taylor_rbf_kernel(torch.tensor(f), gamma, 2).numpy()
    for i in range(4):
        for j in range(4):
            c = float(u[i] @ u[j])
            taylor = math.exp(-2 * gamma) * (1 + 2 * gamma * c + (2 * gamma * c) ** 2 / 2)
            assert got[i, j] == pytest.approx(taylor, rel=1e-5)
            exact = math.exp(-gamma * float(np.sum((u[i] - u[j]) ** 2)))
            assert got[i, j] == pytest.approx(exact, abs=0.06)  # third-order remainder at |2 gamma c| <= 0.8
    assert cc_mod.taylor_rbf_kernel(torch.tensor(f), 0.05, 8).numpy()[0, 1] == pytest.approx(
        math.exp(-0.05 * float(np.sum((u[0] - u[1]) ** 2))), rel=1e-6)


def test_cc_loss_by_hand_and_zero_for_same_structure() -> None:
    torch.manual_seed(13)
    s, t = torch.randn(3, 4), torch.randn(3, 6)
    ks, kt = cc_mod.taylor_rbf_kernel(s, 0.4, 2), cc_mod.taylor_rbf_kernel(t, 0.4, 2)
    expected = sum((kt[i, j] - ks[i, j]).item() ** 2 for i in range(3) for j in range(3)) / 9
    assert cc_mod.cc_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert cc_mod.cc_loss(3.0 * t @ _rotation(6, 4), t).item() == pytest.approx(0.0, abs=1e-7)


def test_cc_setup_builds_a_connector_that_trains_with_the_student() -> None:
    method = cc_mod.CC(beta=1.0, student_layers=[EMB], teacher_layers=[EMB])
    method.setup(SetupContext({EMB: (2, 5)}, {EMB: (2, 8)}, num_samples=10, num_classes=3))
    assert isinstance(method.connectors[0], torch.nn.Linear) and method.connectors[0].weight.shape == (8, 5)
    fs = torch.randn(4, 5, requires_grad=True)
    out = method(*_feats(fs, torch.randn(4, 8)), _batch([0] * 4), CTX)
    out.loss.backward()
    assert torch.isfinite(out.loss) and fs.grad.abs().sum() > 0
    assert method.connectors[0].weight.grad.abs().sum() > 0
    same = cc_mod.CC(student_layers=[EMB], teacher_layers=[EMB])
    same.setup(SetupContext({EMB: (2, 8)}, {EMB: (2, 8)}, num_samples=10, num_classes=3))
    assert isinstance(same.connectors[0], torch.nn.Identity) and not list(same.parameters())


def test_cc_without_setup_needs_equal_widths_unless_connector_is_off() -> None:
    fs, ft = torch.randn(3, 5), torch.randn(3, 8)
    with pytest.raises(DistillError, match="setup"):
        cc_mod.CC(student_layers=[EMB], teacher_layers=[EMB])(*_feats(fs, ft), _batch([0] * 3), CTX)
    out = cc_mod.CC(connector=False, beta=2.0, student_layers=[EMB], teacher_layers=[EMB])(
        *_feats(fs, ft), _batch([0] * 3), CTX)
    assert out.loss.item() == pytest.approx(2.0 * cc_mod.cc_loss(fs, ft).item(), rel=1e-6)


# --------------------------------------------------------------------------------------------- KD-SVD


def test_top_eigh_gradient_matches_full_eigh_autograd() -> None:
    gen = torch.Generator().manual_seed(14)
    a = torch.randn(2, 5, 5, generator=gen, dtype=torch.float64)
    weight = torch.randn(5, 5, generator=gen, dtype=torch.float64)

    def objective(lam: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:  # sign-independent in vec
        return 0.3 * lam.sum() + ((vec @ vec.transpose(1, 2)) * weight).sum() + (vec[:, :, 0] ** 4).sum()

    g1 = (a @ a.transpose(1, 2)).requires_grad_(True)
    objective(*kdsvd_mod._TopEigh.apply(g1, 2)).backward()
    g2 = (a @ a.transpose(1, 2)).requires_grad_(True)
    lam, vec = torch.linalg.eigh(g2)
    objective(lam[:, -2:].flip(-1), vec[:, :, -2:].flip(-1)).backward()
    assert torch.allclose(g1.grad, (g2.grad + g2.grad.transpose(1, 2)) / 2, atol=1e-10)


def test_top_right_singular_matches_numpy_svd_on_both_paths_and_survives_dead_channels() -> None:
    rng = np.random.default_rng(15)
    for m, c in ((6, 3), (2, 5)):  # X^T X path, then X X^T path
        x = rng.normal(size=(2, m, c))
        v, lam = kdsvd_mod.top_right_singular(torch.tensor(x), 2)
        for b in range(2):
            _, sv, vt = np.linalg.svd(x[b])
            assert lam[b].numpy() == pytest.approx(sv[:2] ** 2, rel=1e-4)
            for n in range(2):
                assert abs(float(v[b, :, n].numpy() @ vt[n])) == pytest.approx(1.0, abs=1e-5)
    x = torch.randn(2, 8, 6)
    x[:, :, 3:] = 0.0  # three dead channels: repeated zero singular values
    x.requires_grad_(True)
    v, _ = kdsvd_mod.top_right_singular(x, 2)
    (v[:, :, 0] ** 3).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_align_signs_recovers_permuted_flipped_vectors() -> None:
    v_t, _ = torch.linalg.qr(torch.randn(2, 6, 4))  # orthonormal columns
    v_s = torch.stack([-v_t[:, :, 1], v_t[:, :, 3], v_t[:, :, 0], -v_t[:, :, 2]], dim=2)
    assert torch.allclose(kdsvd_mod.align_signs(v_s, v_t[:, :, :2]), v_t[:, :, :2], atol=1e-6)


def test_kdsvd_loss_on_vectors_matches_hand_derivation() -> None:
    # (B, D) taps are rank 1: V = x / |x|, the teacher's with its largest |entry| positive, the student's
    # sign-aligned to the teacher's; weight 1.
    rng = np.random.default_rng(16)
    s1, s2, t1, t2 = (rng.normal(size=(2, d)) for d in (3, 4, 3, 4))
    unit = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in (s1, s2, t1, t2)]
    expected = 0.0
    for b in range(2):
        vs1, vs2, vt1, vt2 = (x[b] for x in unit)
        vt1, vt2 = (v * np.sign(v[np.argmax(np.abs(v))]) for v in (vt1, vt2))
        vs1, vs2 = vs1 * np.sign(vs1 @ vt1), vs2 * np.sign(vs2 @ vt2)
        rbf_s = np.exp(-((vs2[:, None] - vs1[None, :]) ** 2) / 8)  # (4, 3)
        rbf_t = np.exp(-((vt2[:, None] - vt1[None, :]) ** 2) / 8)
        expected += ((rbf_s - rbf_t) ** 2).sum() / 2
    got = kdsvd_mod.kdsvd_loss([kdsvd_mod.as_matrix(torch.tensor(x)) for x in (s1, s2)],
                               [kdsvd_mod.as_matrix(torch.tensor(x)) for x in (t1, t2)])
    assert got.item() == pytest.approx(expected, rel=1e-4)


def test_kdsvd_zero_for_teacher_features_and_invariant_to_student_sign_and_positions() -> None:
    torch.manual_seed(17)
    t = [torch.randn(2, 8, 4), torch.randn(2, 3, 6)]
    s = [torch.randn(2, 8, 4), torch.randn(2, 5, 6)]
    assert kdsvd_mod.kdsvd_loss(t, t).item() == pytest.approx(0.0, abs=1e-8)
    base = kdsvd_mod.kdsvd_loss(s, t).item()
    assert base > 0
    moved = [-s[0][:, torch.randperm(8)], 2.0 * s[1][:, torch.randperm(5)]]
    assert kdsvd_mod.kdsvd_loss(moved, t).item() == pytest.approx(base, rel=1e-3)


def test_kdsvd_setup_forward_backward_with_different_widths() -> None:
    s_shapes = {"layer1": (4, 4, 6, 6), "layer2": (4, 8, 3, 3), "layer3": (4, 16, 2, 2)}
    t_shapes = {"layer1": (4, 8, 6, 6), "layer2": (4, 8, 3, 3), "layer3": (4, 32, 2, 2)}
    layers = {"student_layers": list(s_shapes), "teacher_layers": list(t_shapes)}
    method = kdsvd_mod.KDSVD(**layers)
    method.setup(SetupContext(s_shapes, t_shapes, num_samples=10, num_classes=3))
    assert [type(m).__name__ for m in method.connectors] == ["Linear", "Identity", "Linear"]
    torch.manual_seed(18)
    fs = {k: torch.randn(*v, requires_grad=True) for k, v in s_shapes.items()}
    ft = {k: torch.randn(*v) for k, v in t_shapes.items()}
    out = method(ModelOutput(torch.zeros(4, 3), fs), ModelOutput(torch.zeros(4, 3), ft), _batch([0] * 4), CTX)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss.item() > 0 and out.terms["kdsvd"] is out.loss
    assert all(torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0 for f in fs.values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())
    with pytest.raises(DistillError, match="setup"):
        kdsvd_mod.KDSVD(**layers)(ModelOutput(torch.zeros(4, 3), fs), ModelOutput(torch.zeros(4, 3), ft),
                          _batch([0] * 4), CTX)
    with pytest.raises(DistillError, match="connector"):
        kdsvd_mod.KDSVD(connector=False, **layers).setup(
            SetupContext(s_shapes, t_shapes, num_samples=10, num_classes=3))


def test_logit_matching_is_mean_absolute_or_squared_logit_error() -> None:
    s = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    t = torch.tensor([[0.0, 1.0], [2.5, 3.0]])
    batch = Batch(s, torch.tensor([0, UNLABELLED]), torch.arange(2))
    ctx = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)
    l1 = METHODS.get("logits")(p=1)(ModelOutput(s), ModelOutput(t), batch, ctx)
    assert l1.loss.item() == pytest.approx((1 + 3 + 2 + 0) / 4)
    l2 = METHODS.get("logits")(p=2, alpha=0.5, beta=2.0)(ModelOutput(s), ModelOutput(t), batch, ctx)
    ce = -torch.log_softmax(s[0], 0)[0].item()
    assert l2.loss.item() == pytest.approx(2.0 * (1 + 9 + 4 + 0) / 4 + 0.5 * ce, rel=1e-6)
    with pytest.raises(ValueError, match="p must be 1"):
        METHODS.get("logits")(p=3)


def test_kdsvd_eigh_survives_a_solver_that_fails_to_converge(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 eigh fails on some ill-conditioned Gram matrices (seen on MNIST-1D, kd + kdsvd); training must go on
    with the fp64 answer, and a non-finite Gram matrix must come out as NaN for the engine's non-finite check."""
    from distill.methods import kdsvd

    torch.manual_seed(0)
    x = torch.randn(3, 6, 4)
    gram = x.transpose(1, 2) @ x  # (3, 4, 4)
    expected = torch.linalg.eigh(gram.double())
    real = torch.linalg.eigh

    def fp32_fails(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if a.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge (error code: 19)")
        return real(a)

    monkeypatch.setattr(torch.linalg, "eigh", fp32_fails)
    lam, vec = kdsvd.robust_eigh(gram)
    assert lam.dtype == torch.float32 and torch.allclose(lam, expected[0].float())
    assert torch.allclose(vec.abs(), expected[1].float().abs(), atol=1e-5)
    lam, vec = kdsvd.robust_eigh(gram.masked_fill(torch.eye(4, dtype=torch.bool), float("nan")))
    assert torch.isnan(lam).all() and torch.isnan(vec).all()


def test_kdsvd_eigh_survives_a_solver_that_returns_nan_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 eigh can also return NaN without raising (a rank-6 Gram with subnormal eigenvalues stopped ce + kdsvd
    at epoch 8 of recipes/mnist1d-cnn3.yaml, seed 0): the fp64 answer must be used, the fp32 one when finite."""
    from distill.methods import kdsvd

    torch.manual_seed(0)
    x = torch.randn(3, 6, 4)
    gram = x.transpose(1, 2) @ x  # (3, 4, 4)
    expected = torch.linalg.eigh(gram.double())
    real = torch.linalg.eigh
    calls: list[torch.dtype] = []

    def fp32_nan(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(a.dtype)
        lam, vec = real(a)
        if a.dtype == torch.float32:
            lam = lam.clone()
            lam[0, -1] = float("nan")  # one sample's top eigenvalue, as LAPACK's fp32 solver gave it
        return lam, vec

    monkeypatch.setattr(torch.linalg, "eigh", fp32_nan)
    lam, vec = kdsvd.robust_eigh(gram)
    assert calls == [torch.float32, torch.float64]
    assert lam.dtype == torch.float32 and torch.isfinite(lam).all() and torch.isfinite(vec).all()
    assert torch.allclose(lam, expected[0].float())
    assert torch.allclose(vec.abs(), expected[1].float().abs(), atol=1e-5)
