"""CRD (memory banks, NCE loss, Z) and ReviewKD (ABF shapes, HCL) against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distill.methods.crd as crd_mod
import distill.methods.reviewkd as reviewkd_mod
from distill.errors import DistillError
from distill.methods import METHODS
from distill.types import Batch, ModelOutput, SetupContext, StepContext

CTX = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)
EMB = "fc:input"


def _crd(n: int, s_dim: int = 5, t_dim: int = 6, **kwargs: object) -> crd_mod.CRD:
    method = crd_mod.CRD(student_layers=[EMB], teacher_layers=[EMB], **kwargs)  # defaults are `auto` (engine-resolved)
    method.setup(SetupContext({EMB: (2, s_dim)}, {EMB: (2, t_dim)}, num_samples=n, num_classes=3))
    return method


def _outs(fs: torch.Tensor, ft: torch.Tensor) -> tuple[ModelOutput, ModelOutput]:
    return ModelOutput(torch.zeros(len(fs), 3), {EMB: fs}), ModelOutput(torch.zeros(len(ft), 3), {EMB: ft})


def _batch(index: list[int]) -> Batch:
    return Batch(torch.zeros(len(index), 1), torch.zeros(len(index), dtype=torch.long), torch.tensor(index))


# ----------------------------------------------------------------------------------------------- CRD


def test_crd_and_reviewkd_are_registered() -> None:
    assert METHODS.get("crd") is crd_mod.CRD and METHODS.get("reviewkd") is reviewkd_mod.ReviewKD


def test_momentum_update_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    mem = rng.normal(size=(6, 4)).astype(np.float32)
    val = rng.normal(size=(2, 4)).astype(np.float32)
    memory = torch.tensor(mem)
    crd_mod.momentum_update(memory, torch.tensor([4, 1]), torch.tensor(val), 0.3)
    expected = mem.copy()
    for row, i in enumerate([4, 1]):
        mixed = [0.3 * mem[i, d] + 0.7 * val[row, d] for d in range(4)]
        norm = math.sqrt(sum(x * x for x in mixed))
        expected[i] = [x / norm for x in mixed]
    np.testing.assert_allclose(memory.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_crd_forward_updates_both_banks_with_the_batch_embeddings() -> None:
    torch.manual_seed(0)
    method = _crd(10, nce_k=4, nce_m=0.5)
    old_s, old_t = method.memory_s.clone(), method.memory_t.clone()
    fs, ft = torch.randn(3, 5), torch.randn(3, 6)
    method(*_outs(fs, ft), _batch([7, 0, 3]), CTX)
    # the embeddings recomputed by hand: linear head, then unit length
    for memory, old, x, lin in ((method.memory_s, old_s, fs, method.embed_s.linear),
                                (method.memory_t, old_t, ft, method.embed_t.linear)):
        with torch.no_grad():
            v = x @ lin.weight.T + lin.bias
            v = v / v.norm(dim=1, keepdim=True)
        for row, i in enumerate([7, 0, 3]):
            mixed = 0.5 * old[i] + 0.5 * v[row]
            assert torch.allclose(memory[i], mixed / mixed.norm(), atol=1e-6)
            assert memory[i].norm().item() == pytest.approx(1.0, abs=1e-6)
        untouched = [i for i in range(10) if i not in (7, 0, 3)]
        assert torch.equal(memory[untouched], old[untouched])


def test_crd_eval_mode_leaves_banks_alone() -> None:
    method = _crd(10, nce_k=4).eval()
    before = method.memory_s.clone()
    method(*_outs(torch.randn(2, 5), torch.randn(2, 6)), _batch([1, 2]), CTX)
    assert torch.equal(method.memory_s, before)


def test_nce_loss_matches_paper_ratio_form() -> None:
    torch.manual_seed(1)
    n, logits = 50, torch.randn(3, 1 + 4) * 3  # log-scores <v, m>/T - log Z
    k, pn = 4, 1.0 / n
    expected = 0.0
    for b in range(3):
        p = [math.exp(x) for x in logits[b].tolist()]
        expected -= math.log(p[0] / (p[0] + k * pn))
        expected -= sum(math.log(k * pn / (q + k * pn)) for q in p[1:])
    expected /= 3
    assert crd_mod.nce_loss(logits, n).item() == pytest.approx(expected, rel=1e-5)


def test_contrast_indices_exclude_the_positive_and_are_reproducible() -> None:
    pos = torch.tensor([0, 5, 9, 3])
    torch.manual_seed(3)
    idx = crd_mod.sample_contrast_indices(pos, 10, 200)
    torch.manual_seed(3)
    assert torch.equal(idx, crd_mod.sample_contrast_indices(pos, 10, 200))
    assert idx.shape == (4, 201) and torch.equal(idx[:, 0], pos)
    for row, p in enumerate(pos.tolist()):
        assert set(idx[row, 1:].tolist()) == set(range(10)) - {p}  # uniform over all the others


def test_z_is_estimated_on_the_first_batch_and_then_kept() -> None:
    torch.manual_seed(0)
    n, T = 20, 0.07
    method = _crd(n, nce_k=5, nce_t=T, feat_dim=8).eval()  # eval: banks fixed, so the logits are known
    u = torch.nn.functional.normalize(torch.randn(8), dim=0)
    method.memory_s[:] = u
    method.memory_t[:] = u  # every bank row equal: each sample's logits do not depend on the negatives drawn
    fs, ft = torch.randn(4, 5), torch.randn(4, 6)
    method(*_outs(fs, ft), _batch([0, 1, 2, 3]), CTX)
    with torch.no_grad():
        v_s, v_t = method.embed_s(fs), method.embed_t(ft)
    for z, v in zip(method.nce_z.tolist(), (v_s, v_t)):
        expected = n * float(torch.exp(v @ u / T).mean())
        assert z == pytest.approx(expected, rel=1e-4)
    first = method.nce_z.clone()
    method(*_outs(fs * 3, ft * 2), _batch([4, 5, 6, 7]), CTX)
    assert torch.equal(method.nce_z, first)
    assert {"memory_s", "memory_t", "nce_z"} <= set(method.state_dict())  # checkpointed
    assert method.state_dict()["memory_s"].shape == (n, 8)


def test_crd_loss_finite_and_decreasing_when_training_a_student_toward_a_fixed_teacher() -> None:
    torch.manual_seed(0)
    n = 32
    x = torch.randn(n, 8)
    teacher = nn.Linear(8, 6).requires_grad_(False)
    student = nn.Linear(8, 5)
    method = _crd(n, nce_k=16, feat_dim=16)
    params = list(student.parameters()) + list(method.parameters())
    epochs = []
    for _ in range(8):
        losses = []
        for chunk in torch.arange(n).split(8):
            out = method(*_outs(student(x[chunk]), teacher(x[chunk])), Batch(x[chunk], chunk * 0, chunk), CTX)
            assert torch.isfinite(out.loss) and out.terms["crd"] is out.loss
            grads = torch.autograd.grad(out.loss, params)
            with torch.no_grad():  # plain SGD (torch.optim's first use imports torch._dynamo: seconds)
                for p, g in zip(params, grads):
                    p -= 2.0 * g
            losses.append(out.loss.item())
        epochs.append(sum(losses) / len(losses))
    assert epochs[-1] < 0.6 * epochs[0], epochs  # without the updates it stays at ~14.6 (banks alone)
    with torch.no_grad():  # the student embedding now retrieves its own sample's teacher entry
        hits = (method.embed_s(student(x)) @ method.memory_t.T).argmax(dim=1) == torch.arange(n)
    assert hits.float().mean() > 0.25  # chance: 1/32


def test_crd_gradients_reach_student_and_heads_but_not_the_teacher() -> None:
    method = _crd(12, nce_k=6)
    fs = torch.randn(3, 5, requires_grad=True)
    ft = torch.randn(3, 6, requires_grad=True)  # as if the engine forgot to detach: CRD must not backprop
    method(*_outs(fs, ft), _batch([0, 4, 11]), CTX).loss.backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    assert ft.grad is None
    assert all(p.grad is not None for p in method.parameters())


def test_crd_flattens_maps_clamps_k_and_reports_bad_input() -> None:
    method = crd_mod.CRD(student_layers=["layer3"], teacher_layers=["block3"], nce_k=4096)
    assert method.needs.student_taps == ("layer3",) and method.needs.teacher_taps == ("block3",)
    with pytest.raises(DistillError, match="setup"):
        method(*_outs(torch.randn(2, 5), torch.randn(2, 6)), _batch([0, 1]), CTX)
    method.setup(SetupContext({"layer3": (2, 4, 2, 2)}, {"block3": (2, 6)}, num_samples=5, num_classes=3))
    s = ModelOutput(torch.zeros(2, 3), {"layer3": torch.randn(2, 4, 2, 2)})
    t = ModelOutput(torch.zeros(2, 3), {"block3": torch.randn(2, 6)})
    assert torch.isfinite(method(s, t, _batch([0, 4]), CTX).loss)  # k clamped to 4 = N - 1
    with pytest.raises(DistillError, match="batch.index"):
        _crd(5)(*_outs(torch.randn(2, 5), torch.randn(2, 6)), _batch([0, 5]), CTX)
    with pytest.raises(DistillError, match="one layer"):
        crd_mod.CRD(student_layers=["a", "b"], teacher_layers=["t"])


# ------------------------------------------------------------------------------------------ ReviewKD

S_SHAPES = {"s1": (2, 8, 16, 16), "s2": (2, 16, 8, 8), "s3": (2, 32, 4, 4)}
T_SHAPES = {"t1": (2, 16, 32, 32), "t2": (2, 32, 8, 8), "t3": (2, 64, 4, 4)}  # stage 1: other resolution


def _reviewkd(s_shapes: dict, t_shapes: dict, **kwargs: object) -> reviewkd_mod.ReviewKD:
    method = reviewkd_mod.ReviewKD(student_layers=list(s_shapes), teacher_layers=list(t_shapes), **kwargs)
    method.setup(SetupContext(s_shapes, t_shapes, num_samples=10, num_classes=3))
    return method


def _feats(shapes: dict, grad: bool = False) -> dict[str, torch.Tensor]:
    return {k: torch.randn(*v, requires_grad=grad) for k, v in shapes.items()}


def test_reviewkd_abf_outputs_take_teacher_shapes_and_grads_reach_every_abf() -> None:
    torch.manual_seed(0)
    method = _reviewkd(S_SHAPES, T_SHAPES)
    assert [abf.att is not None for abf in method.abfs] == [True, True, False]  # the deepest does not fuse
    assert method.abfs[0].conv1[0].out_channels == 32  # mid_channel 256 clamped to the deepest student width
    fs, ft = _feats(S_SHAPES, grad=True), _feats(T_SHAPES)
    fused = method.review([fs[k] for k in S_SHAPES])
    assert [tuple(f.shape) for f in fused] == list(T_SHAPES.values())
    out = method(ModelOutput(torch.zeros(2, 3), fs), ModelOutput(torch.zeros(2, 3), ft), _batch([0, 1]),
                 StepContext(epoch=30, step=0, epochs=240, steps_per_epoch=1))
    assert torch.isfinite(out.loss) and out.terms["reviewkd"] is out.loss
    out.loss.backward()
    assert all(fs[k].grad is not None and fs[k].grad.abs().sum() > 0 for k in S_SHAPES)
    for abf in method.abfs:
        assert all(p.grad is not None for p in abf.parameters())
    assert method.abfs[0].att[0].weight.grad.abs().sum() > 0  # the attention maps learn


def test_reviewkd_treats_vector_stages_as_1x1_maps() -> None:
    torch.manual_seed(0)
    s_shapes, t_shapes = {**S_SHAPES, EMB: (2, 32)}, {**T_SHAPES, "t_emb": (2, 64)}
    method = _reviewkd(s_shapes, t_shapes)
    fs = _feats(s_shapes, grad=True)
    fused = method.review([reviewkd_mod.as_map(fs[k], k) for k in s_shapes])
    assert tuple(fused[-1].shape) == (2, 64, 1, 1)
    out = method(ModelOutput(torch.zeros(2, 3), fs), ModelOutput(torch.zeros(2, 3), _feats(t_shapes)),
                 _batch([0, 1]), CTX)
    out.loss.backward()
    assert fs[EMB].grad is not None
    with pytest.raises(DistillError, match="'tokens'"):
        _reviewkd({"tokens": (2, 5, 8, 3, 3)}, {"t": (2, 8)})


def test_reviewkd_accepts_1d_sequence_stages() -> None:
    # (B, C, L) maps of 1-D conv nets are treated as (B, C, L, 1); the pyramid pools along L only
    s_shapes = {"l1": (2, 4, 16), "l2": (2, 8, 8)}
    t_shapes = {"m1": (2, 6, 16), "m2": (2, 12, 8)}
    method = _reviewkd(s_shapes, t_shapes)
    fs = _feats(s_shapes, grad=True)
    out = method(ModelOutput(torch.zeros(2, 3), fs), ModelOutput(torch.zeros(2, 3), _feats(t_shapes)),
                 _batch([0, 1]), CTX)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert fs["l1"].grad is not None and fs["l2"].grad is not None
    a, b = torch.randn(2, 3, 8, 1), torch.randn(2, 3, 8, 1)
    expected = (F.mse_loss(a, b) + 0.5 * F.mse_loss(a.reshape(2, 3, 4, 2, 1).mean(3), b.reshape(2, 3, 4, 2, 1).mean(3))
                + 0.25 * F.mse_loss(a.reshape(2, 3, 2, 4, 1).mean(3), b.reshape(2, 3, 2, 4, 1).mean(3))
                + 0.125 * F.mse_loss(a.mean(2, keepdim=True), b.mean(2, keepdim=True))) / 1.875
    assert reviewkd_mod.hcl_loss([a], [b]).item() == pytest.approx(expected.item(), rel=1e-5)


def test_reviewkd_teacher_features_get_no_gradient() -> None:
    method = _reviewkd(S_SHAPES, T_SHAPES)
    ft = _feats(T_SHAPES, grad=True)
    method(ModelOutput(torch.zeros(2, 3), _feats(S_SHAPES, grad=True)), ModelOutput(torch.zeros(2, 3), ft),
           _batch([0, 1]), CTX).loss.backward()
    assert all(v.grad is None for v in ft.values())


def _pool(a: np.ndarray, size: int) -> np.ndarray:
    b, c, h, w = a.shape
    return a.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def test_hcl_loss_matches_numpy_pyramid() -> None:
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=(2, 3, h, h)), rng.normal(size=(2, 3, h, h))) for h in (8, 4, 1)]
    expected = 0.0
    for (fs, ft), levels in zip(pairs, ([8, 4, 2, 1], [4, 2, 1], [1])):
        # weights 1, 1/2, 1/4, 1/8 for full resolution then each smaller level, normalised to sum to 1
        ws = [0.5**i for i in range(len(levels))]
        mses = [np.mean((_pool(fs, lv) - _pool(ft, lv)) ** 2) for lv in levels]
        expected += sum(w * m for w, m in zip(ws, mses)) / sum(ws)
    got = reviewkd_mod.hcl_loss([torch.tensor(a, dtype=torch.float32) for a, _ in pairs],
                                [torch.tensor(b, dtype=torch.float32) for _, b in pairs])
    assert got.item() == pytest.approx(expected, rel=1e-5)
    same = torch.randn(2, 3, 8, 8)
    assert reviewkd_mod.hcl_loss([same], [same.clone()]).item() == 0.0


def test_reviewkd_warmup_schedule() -> None:
    assert reviewkd_mod.warmup_factor(0, 240, 20) == pytest.approx(1 / 20)
    assert reviewkd_mod.warmup_factor(18, 240, 20) == pytest.approx(19 / 20)
    assert reviewkd_mod.warmup_factor(19, 240, 20) == 1.0
    assert reviewkd_mod.warmup_factor(0, 24, 20) == pytest.approx(0.5)  # shrunk to epochs / 12 = 2
    assert reviewkd_mod.warmup_factor(0, 1, 20) == 1.0
    assert reviewkd_mod.warmup_factor(0, 240, 0) == 1.0


def test_reviewkd_rejects_unpaired_layers_and_missing_setup() -> None:
    with pytest.raises(DistillError, match="paired"):
        reviewkd_mod.ReviewKD(student_layers=["a", "b"], teacher_layers=["a"])
    # layers default to `auto`: placeholder taps until the engine resolves them (the pairs: test_stages.py)
    assert reviewkd_mod.ReviewKD().needs.student_taps == ("auto",)
    layers = ["layer1", "layer2", "layer3", "fc:input"]
    method = reviewkd_mod.ReviewKD(student_layers=layers, teacher_layers=layers)
    assert method.needs.student_taps == tuple(layers) and method.needs.teacher_taps == tuple(layers)
    with pytest.raises(DistillError, match="setup"):
        method(ModelOutput(torch.zeros(2, 3)), ModelOutput(torch.zeros(2, 3)), _batch([0, 1]), CTX)
    with pytest.raises(DistillError, match="'layer9'"):
        _reviewkd({"layer9": (2, 4, 2, 2)}, {"t": (2, 4, 2, 2)}).setup(
            SetupContext({}, {"t": (2, 4, 2, 2)}, num_samples=1, num_classes=2))
