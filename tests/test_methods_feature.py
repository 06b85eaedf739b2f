"""Feature methods: each loss against a re-derivation written differently (loops / numpy), the papers'
properties, and setup -> forward -> backward with realistic probed shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.methods import METHODS, build_method
from distill.methods.ab import ab_loss  # importing each module registers its method
from distill.methods.at import at_loss
from distill.methods.fitnet import hint_loss
from distill.methods.fsp import fsp_matrix
from distill.methods.ft import factor_loss
from distill.methods.nst import nst_loss
from distill.methods.ofd import batch_margin, ofd_loss
from distill.methods.vid import VIDRegressor, vid_loss
from distill.spec_check import check_kwargs
from distill.types import Batch, ModelOutput, SetupContext, StepContext

CTX = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)
KEYS = ["fitnet", "at", "nst", "fsp", "ab", "vid", "ofd", "ft"]
BATCH = Batch(torch.zeros(4, 3), torch.tensor([0, 1, -1, 2]), torch.arange(4))


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


# --- pure losses against independent re-derivations ---


def test_cosine_hint_loss_matches_only_the_direction_of_each_samples_features() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    expected = ((1 - 1.0) + (1 - 2 / (2 * 2**0.5))) / 2
    assert hint_loss(s, t, "cosine").item() == pytest.approx(expected, rel=1e-6)
    assert hint_loss(5 * s, t, "cosine").item() == pytest.approx(expected, rel=1e-6)  # scale does not count
    with pytest.raises(ValueError, match="distance must be"):
        METHODS.get("fitnet")(distance="l1")


def test_hint_loss_is_elementwise_mean_square() -> None:
    s, t = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    assert hint_loss(s, t).item() == pytest.approx(float(((_np(s) - _np(t)) ** 2).mean()), rel=1e-6)


def _np_attention(f: np.ndarray) -> np.ndarray:
    b, c = f.shape[:2]
    out = np.zeros((b, f[0, 0].size))
    for i in range(b):
        q = sum(np.abs(f[i, k]).ravel() ** 2 for k in range(c)) / c
        out[i] = q / np.sqrt((q ** 2).sum())
    return out


def test_at_loss_matches_loops_and_ignores_channel_count() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    expected = ((_np_attention(_np(s)) - _np_attention(_np(t))) ** 2).mean()
    assert at_loss(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_at_loss_properties() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    assert at_loss(t, t.clone()).item() == pytest.approx(0.0, abs=1e-7)
    # maps are L2-normalised: scaling either feature changes nothing
    assert at_loss(3 * s, 0.5 * t).item() == pytest.approx(at_loss(s, t).item(), rel=1e-5)
    # a student map twice the teacher's size is average-pooled first: 2x2-replicated teacher gives zero
    big = t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # (2, 5, 8, 8)
    assert at_loss(big, t).item() == pytest.approx(0.0, abs=1e-6)


def _np_mmd(fs: np.ndarray, ft: np.ndarray) -> float:
    total = 0.0
    for s, t in zip(fs, ft):
        s = s.reshape(s.shape[0], -1)
        t = t.reshape(t.shape[0], -1)
        s = s / np.linalg.norm(s, axis=1, keepdims=True)
        t = t / np.linalg.norm(t, axis=1, keepdims=True)
        k = lambda a, b: np.mean([[float(x @ y) ** 2 for y in b] for x in a])  # noqa: E731
        total += k(t, t) + k(s, s) - 2 * k(s, t)
    return total / len(fs)


def test_nst_loss_matches_explicit_mmd() -> None:
    torch.manual_seed(2)
    s, t = torch.randn(3, 4, 3, 3), torch.randn(3, 6, 3, 3)
    assert nst_loss(s, t).item() == pytest.approx(_np_mmd(_np(s), _np(t)), rel=1e-5)


def test_nst_loss_properties() -> None:
    torch.manual_seed(3)
    t = torch.randn(2, 6, 3, 3)
    assert nst_loss(t, t.clone()).item() == pytest.approx(0.0, abs=1e-6)
    # channels are samples of a distribution: their order and per-channel scale do not matter
    perm = t[:, torch.randperm(6)] * torch.rand(1, 6, 1, 1).add(0.5)
    assert nst_loss(perm, t).item() == pytest.approx(0.0, abs=1e-6)
    assert nst_loss(torch.randn(2, 4, 3, 3), t).item() > 0  # MMD^2 with a PSD kernel is >= 0


def test_fsp_matrix_matches_loops_and_pools_the_larger_map() -> None:
    torch.manual_seed(4)
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)
    pooled = _np(a).reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5))  # 2x2 block means -> (2, 3, 2, 2)
    g = fsp_matrix(a, b)
    assert g.shape == (2, 3, 5)
    for n in range(2):
        for i in range(3):
            for j in range(5):
                expected = (pooled[n, i] * _np(b)[n, j]).sum() / 4
                assert g[n, i, j].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_ab_loss_matches_case_analysis() -> None:
    m = 1.0
    s = torch.tensor([[-2.0, -0.5, 0.5, 2.0], [-2.0, -0.5, 0.5, 2.0]])
    t = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, 0.0, -3.0]])
    # teacher active -> want s >= m: penalties (m - s)^2 for s <= m; inactive -> want s <= -m: (s + m)^2
    row0 = (1 + 2) ** 2 + (1 + 0.5) ** 2 + (1 - 0.5) ** 2 + 0
    row1 = 0 + (-0.5 + 1) ** 2 + (0.5 + 1) ** 2 + (2 + 1) ** 2
    assert ab_loss(s, t, m).item() == pytest.approx((row0 + row1) / 2)


def test_ab_loss_is_zero_once_boundaries_are_separated_by_the_margin() -> None:
    t = torch.randn(3, 4, 2, 2)
    s = torch.where(t > 0, 1.5, -1.5)
    assert ab_loss(s, t, 1.0).item() == 0.0


def test_vid_loss_matches_gaussian_nll() -> None:
    torch.manual_seed(5)
    mean, target, var = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.tensor([0.5, 1.0, 2.0])
    nll = [0.5 * ((_np(mean)[b, c, n] - _np(target)[b, c, n]) ** 2 / var[c].item() + math.log(var[c].item()))
           for b in range(2) for c in range(3) for n in range(4)]
    assert vid_loss(mean, target, var).item() == pytest.approx(sum(nll) / len(nll), rel=1e-5)


def test_vid_regressor_starts_at_init_variance() -> None:
    reg = VIDRegressor((2, 4, 8, 8), (2, 6, 4, 4), init_var=5.0, eps=1e-5)
    mean, var = reg(torch.randn(3, 4, 8, 8))
    assert mean.shape == (3, 6, 16)
    assert torch.allclose(var, torch.full((6,), 5.0))


def test_ofd_margin_is_mean_of_negative_entries() -> None:
    t = torch.tensor([[[-1.0, 2.0], [0.0, 1.0]], [[-3.0, 0.5], [4.0, 2.0]]])  # (B=2, C=2, N=2)
    # channel 0: negatives -1, -3 -> -2; channel 1: none -> 0
    assert batch_margin(t).tolist() == pytest.approx([-2.0, 0.0])


def test_ofd_loss_matches_case_analysis() -> None:
    margin = torch.tensor([-1.0])
    t = torch.tensor([[[2.0, -0.5, -3.0, -3.0]]])  # (1, 1, 4); clamped teacher: 2, -0.5, -1, -1
    s = torch.tensor([[[1.0, -2.0, 0.0, -1.5]]])
    # t>0: always (1-2)^2; t'=-0.5: s=-2 below it -> 0; t'=-1: s=0 above -> (0+1)^2; s=-1.5 below -> 0
    assert ofd_loss(s, t, margin).item() == pytest.approx(1.0 + 1.0)
    assert ofd_loss(torch.full_like(t, -5.0).masked_scatter(t > 0, t[t > 0]), t, margin).item() == 0.0


def test_factor_loss_matches_numpy_and_is_scale_invariant() -> None:
    torch.manual_seed(6)
    a, b = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    na = _np(a).reshape(2, -1)
    nb = _np(b).reshape(2, -1)
    na, nb = na / np.linalg.norm(na, axis=1, keepdims=True), nb / np.linalg.norm(nb, axis=1, keepdims=True)
    assert factor_loss(a, b).item() == pytest.approx(np.abs(na - nb).mean(), rel=1e-5)
    assert factor_loss(4 * a, b).item() == pytest.approx(factor_loss(a, b).item(), rel=1e-5)


# --- methods: construction, setup with probed shapes, forward, backward ---

# Student (narrow, 8x8) and teacher (wide, 4x4 maps) tap shapes per method.
LAYOUT: dict[str, tuple[list[tuple[int, ...]], list[tuple[int, ...]]]] = {
    "fitnet": ([(4, 8, 8, 8)], [(4, 16, 4, 4)]),
    "at": ([(4, 8, 8, 8), (4, 16, 4, 4)], [(4, 16, 4, 4), (4, 32, 2, 2)]),
    "nst": ([(4, 8, 8, 8)], [(4, 16, 4, 4)]),
    "fsp": ([(4, 8, 8, 8), (4, 16, 4, 4), (4, 32, 2, 2)], [(4, 16, 8, 8), (4, 32, 4, 4), (4, 64, 2, 2)]),
    "ab": ([(4, 8, 4, 4), (4, 16, 2, 2)], [(4, 16, 4, 4), (4, 32, 2, 2)]),
    "vid": ([(4, 8, 8, 8), (4, 32)], [(4, 16, 4, 4), (4, 64)]),
    "ofd": ([(4, 8, 4, 4), (4, 16, 2, 2)], [(4, 16, 4, 4), (4, 32, 2, 2)]),
    "ft": ([(4, 8, 8, 8)], [(4, 16, 4, 4)]),
}


# ab and fsp are initialisation-stage methods by default (main=False: a zero main-stage loss); the tests of their
# main-stage forward keep them in the main objective.
MAIN = {"ab": {"main": True}, "fsp": {"main": True}}


def _build(key: str, **kwargs: object) -> tuple[nn.Module, ModelOutput, ModelOutput, list[torch.Tensor]]:
    kwargs = {**MAIN.get(key, {}), **kwargs}
    s_shapes, t_shapes = LAYOUT[key]
    s_paths = [f"s{i}" for i in range(len(s_shapes))]
    t_paths = [f"t{i}" for i in range(len(t_shapes))]
    method = build_method(key, student_layers=s_paths, teacher_layers=t_paths, **kwargs)
    # probed on a batch of 2, used on a batch of 4
    method.setup(SetupContext({p: (2, *s[1:]) for p, s in zip(s_paths, s_shapes)},
                              {p: (2, *t[1:]) for p, t in zip(t_paths, t_shapes)}, num_samples=10, num_classes=3))
    s_feats = [torch.randn(s, requires_grad=True) for s in s_shapes]
    t_feats = [torch.randn(t).relu() if key == "at" else torch.randn(t) for t in t_shapes]
    s_out = ModelOutput(torch.randn(4, 3), dict(zip(s_paths, s_feats)))
    t_out = ModelOutput(torch.randn(4, 3), dict(zip(t_paths, t_feats)))
    return method, s_out, t_out, s_feats


@pytest.mark.parametrize("key", KEYS)
def test_method_setup_forward_backward(key: str) -> None:
    torch.manual_seed(7)
    method, s_out, t_out, s_feats = _build(key)
    out = method(s_out, t_out, BATCH, CTX)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    assert list(out.terms) == [key]
    assert sum(v.item() for v in out.terms.values()) == pytest.approx(out.loss.item(), rel=1e-6)
    out.loss.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s_feats)
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert trainable or key in ("at", "nst")
    assert all(p.grad is not None for p in trainable)
    # the FT paraphraser is frozen in the main stage: not trainable, no gradient
    frozen = [p for n, p in method.named_parameters() if n.startswith("paraphrasers.")]
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    assert bool(frozen) == (key == "ft")


@pytest.mark.parametrize("key", KEYS)
def test_default_construction_declares_paired_taps(key: str) -> None:
    method = build_method(key)
    assert method.needs.teacher and method.needs.live_teacher
    assert method.needs.student_taps and method.needs.teacher_taps
    cls = METHODS.get(key)
    assert check_kwargs(cls, {"beta": 2.0, "student_layers": ["a", "b"], "teacher_layers": ["c", "d"]},
                        "method", key)


@pytest.mark.parametrize("key", KEYS)
def test_layer_count_mismatch_is_an_error_at_construction(key: str) -> None:
    with pytest.raises(DistillError, match="paired by position"):
        build_method(key, student_layers=["a", "b"], teacher_layers=["c"])


@pytest.mark.parametrize("key", ["fitnet", "fsp", "ab", "vid", "ofd", "ft"])
def test_forward_before_setup_is_explained(key: str) -> None:
    method, s_out, t_out, _ = _build(key)
    fresh = build_method(key, student_layers=list(s_out.feats), teacher_layers=list(t_out.feats), **MAIN.get(key, {}))
    with pytest.raises(RuntimeError, match="setup"):
        fresh(s_out, t_out, BATCH, CTX)
    if key in MAIN:  # the initialisation stage (their default) explains it too
        init = build_method(key, student_layers=list(s_out.feats), teacher_layers=list(t_out.feats))
        with pytest.raises(RuntimeError, match="setup"):
            init.pretrain_loss(s_out, t_out, BATCH, CTX)


@pytest.mark.parametrize("key", ["at", "nst"])
def test_spatial_methods_reject_vector_taps(key: str) -> None:
    method = build_method(key, student_layers=["fc:input"], teacher_layers=["fc:input"])
    with pytest.raises(DistillError, match="spatial"):
        method.setup(SetupContext({"fc:input": (2, 8)}, {"fc:input": (2, 16)}, 10, 3))


def test_fitnet_connector_and_pretrain_term() -> None:
    method, s_out, t_out, _ = _build("fitnet", beta=100.0, pretrain_epochs=3)
    assert method.pretrain_epochs == 3
    main = method(s_out, t_out, BATCH, CTX).loss
    pre = method.pretrain_loss(s_out, t_out, BATCH, CTX)
    assert list(pre.terms) == ["fitnet_pretrain"]
    assert pre.loss.item() == pytest.approx(main.item() / 100, rel=1e-6)  # the hint alone, unweighted
    conn = method.connectors[0]
    assert isinstance(conn.proj, nn.Conv2d) and conn.proj.in_channels == 8 and conn.proj.out_channels == 16
    with pytest.raises(DistillError, match="pretrain_epochs"):
        build_method("fitnet", pretrain_epochs=-1)


def test_fitnet_is_zero_when_student_equals_teacher_through_identity() -> None:
    method = build_method("fitnet", student_layers=["a"], teacher_layers=["b"])
    method.setup(SetupContext({"a": (2, 5)}, {"b": (2, 5)}, 10, 3))
    x = torch.randn(4, 5)
    out = method(ModelOutput(x, {"a": x}), ModelOutput(x, {"b": x.clone()}), BATCH, CTX)
    assert out.loss.item() == 0.0


def test_ft_pretrain_trains_only_the_paraphraser() -> None:
    method, s_out, t_out, s_feats = _build("ft")
    assert method.pretrain_epochs == 30
    method(s_out, t_out, BATCH, CTX)  # a main-stage step freezes the paraphraser ...
    out = method.pretrain_loss(s_out, t_out, BATCH, CTX)  # ... and pre-training makes it trainable again
    assert list(out.terms) == ["ft_pretrain"] and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in method.paraphrasers.parameters())
    assert all(p.grad is None for p in method.translators.parameters())
    assert all(f.grad is None for f in s_feats)
    assert method.paraphrasers[0].encode(torch.randn(4, 16, 4, 4)).shape == (4, 8, 4, 4)  # rate 0.5


def test_ft_pretrain_is_the_authors_mean_absolute_reconstruction_error() -> None:
    # Factor-Transfer-pytorch train_Paraphraser.py: criterion = nn.L1Loss() on (paraphraser(f_t), f_t)
    torch.manual_seed(3)
    method, s_out, t_out, _ = _build("ft")
    t_out.feats["t0"].mul_(50.0)  # a large-scale teacher feature: the error grows linearly, not quadratically
    out = method.pretrain_loss(s_out, t_out, BATCH, CTX)
    f_t = t_out.feats["t0"]
    with torch.no_grad():
        expected = (method.paraphrasers[0](f_t) - f_t).abs().mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_ofd_weights_deeper_pairs_more() -> None:
    method, s_out, t_out, _ = _build("ofd", beta=1.0)
    feats = [(s_out.feats[f"s{k}"], t_out.feats[f"t{k}"]) for k in range(2)]
    per = [ofd_loss(conn(fs), ft, batch_margin(ft)) for conn, (fs, ft) in zip(method.connectors, feats)]
    expected = 0.5 * per[0].item() + per[1].item()
    assert method(s_out, t_out, BATCH, CTX).loss.item() == pytest.approx(expected, rel=1e-5)
    assert all(isinstance(c.proj, nn.Conv2d) for c in method.connectors)  # conv + BN even for equal channels


def test_fsp_needs_two_layers_and_ab_weights_layers() -> None:
    with pytest.raises(DistillError, match="at least 2"):
        build_method("fsp", student_layers=["a"], teacher_layers=["b"])
    method, s_out, t_out, _ = _build("ab", beta=1.0, margin=1.0)
    feats = [(s_out.feats[f"s{k}"], t_out.feats[f"t{k}"]) for k in range(2)]
    per = [ab_loss(conn(fs), ft, 1.0).item() for conn, (fs, ft) in zip(method.connectors, feats)]
    assert method(s_out, t_out, BATCH, CTX).loss.item() == pytest.approx(0.5 * per[0] + per[1], rel=1e-5)
    # the initialisation stage carries the same weighted loss; by default (main=False) the main stage has none
    assert method.pretrain_loss(s_out, t_out, BATCH, CTX).loss.item() == pytest.approx(0.5 * per[0] + per[1],
                                                                                       rel=1e-5)
    init, s_out, t_out, _ = _build("ab", beta=1.0, margin=1.0, main=False)
    out = init(s_out, t_out, BATCH, CTX)
    assert out.loss.item() == 0.0 and out.terms == {}
