"""Connectors built from probed shapes, and the paired-tap plumbing shared by feature methods."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.connectors import (
    build_connector,
    layer_pairs,
    paired_features,
    probed_shapes,
    resize,
)
from distill.errors import DistillError
from distill.types import ModelOutput, SetupContext


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("shape", [(2, 8), (2, 4, 10), (2, 4, 6, 6)])
def test_identity_when_shapes_equal(shape: tuple[int, ...]) -> None:
    conn = build_connector(shape, shape)
    assert isinstance(conn, nn.Identity)
    x = torch.randn(shape)
    assert conn(x) is x


def test_batch_size_is_not_compared() -> None:
    assert isinstance(build_connector((2, 4, 6, 6), (64, 4, 6, 6)), nn.Identity)
    conn = build_connector((2, 4, 8, 8), (2, 6, 4, 4))
    assert conn(torch.randn(5, 4, 8, 8)).shape == (5, 6, 4, 4)  # built on a probe of 2, used on 5


@pytest.mark.parametrize(("s", "t"), [
    ((2, 4, 8, 8), (2, 6, 8, 8)),  # channels only
    ((2, 4, 8, 8), (2, 6, 4, 4)),  # student larger: pooled
    ((2, 4, 4, 4), (2, 6, 8, 8)),  # student smaller: interpolated
    ((2, 4, 3, 8), (2, 6, 6, 4)),  # mixed: interpolated
    ((2, 4, 8, 8), (2, 4, 4, 4)),  # spatial only
    ((2, 3, 16), (2, 5, 16)),
    ((2, 3, 16), (2, 5, 8)),
    ((2, 3, 8), (2, 5, 16)),
    ((2, 7), (2, 3)),
    ((2, 4, 8, 8), (2, 6)),  # map -> vector: global pool + Linear
    ((2, 4, 8, 8), (2, 4)),  # map -> vector, same channels: pool only
    ((2, 3, 16), (2, 5)),
])
def test_output_shape_matches_teacher(s: tuple[int, ...], t: tuple[int, ...]) -> None:
    conn = build_connector(s, t)
    assert conn(torch.randn(s)).shape == t


def test_layers_used_per_rank() -> None:
    conv2 = build_connector((2, 4, 8, 8), (2, 6, 8, 8))
    assert isinstance(conv2.proj, nn.Conv2d) and conv2.proj.kernel_size == (1, 1)
    assert isinstance(conv2.bn, nn.BatchNorm2d)
    conv1 = build_connector((2, 3, 16), (2, 5, 16))
    assert isinstance(conv1.proj, nn.Conv1d) and isinstance(conv1.bn, nn.BatchNorm1d)
    assert isinstance(build_connector((2, 7), (2, 3)).proj, nn.Linear)
    assert isinstance(build_connector((2, 4, 8, 8), (2, 6)).proj, nn.Linear)
    assert _params(build_connector((2, 4, 8, 8), (2, 4, 4, 4))) == 0  # resize only: nothing to learn


def test_pooling_when_student_larger_is_block_average() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    out = build_connector((2, 1, 4, 4), (2, 1, 2, 2))(x)
    for b in range(2):
        for i in range(2):
            for j in range(2):
                block = x[b, 0, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                assert out[b, 0, i, j].item() == pytest.approx(block.mean().item())


def test_interpolation_when_student_smaller_is_linear() -> None:
    a, b = 1.0, 5.0
    out = build_connector((1, 1, 2), (1, 1, 4))(torch.tensor([[[a, b]]]))
    # half-pixel centres: output i samples input position (i + 0.5) / 2 - 0.5, clamped to the ends
    expected = [a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b]
    assert out.flatten().tolist() == pytest.approx(expected)


def test_global_pool_to_vector_teacher() -> None:
    x = torch.randn(3, 4, 5, 5)
    out = build_connector((3, 4, 5, 5), (3, 4))(x)
    assert torch.allclose(out, x.mean(dim=(2, 3)))


@pytest.mark.parametrize(("s", "t"), [((2, 4, 8, 8), (2, 6, 4, 4)), ((2, 3, 8), (2, 5, 16)), ((2, 7), (2, 3)),
                                      ((2, 4, 8, 8), (2, 6))])
def test_gradient_reaches_input_and_connector(s: tuple[int, ...], t: tuple[int, ...]) -> None:
    conn = build_connector(s, t)
    x = torch.randn(s, requires_grad=True)
    conn(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    params = list(conn.parameters())
    assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_vector_student_to_map_teacher_is_explained() -> None:
    with pytest.raises(DistillError, match="no spatial layout"):
        build_connector((2, 8), (2, 4, 8, 8))
    with pytest.raises(DistillError, match="no spatial layout"):
        build_connector((2, 8), (2, 4, 8))


def test_other_invalid_combinations() -> None:
    with pytest.raises(DistillError, match="spatial ranks"):
        build_connector((2, 4, 8, 8), (2, 4, 8))
    with pytest.raises(DistillError, match="not \\(B, D\\)"):
        build_connector((2, 4, 2, 2, 2), (2, 4, 2, 2, 2))
    with pytest.raises(DistillError, match="kind"):
        build_connector((2, 4), (2, 4), kind="mlp")
    with pytest.raises(DistillError, match="cannot change channels"):
        build_connector((2, 4, 8, 8), (2, 6, 8, 8), kind="none")


def test_kind_proj_always_learns_and_none_only_resizes() -> None:
    proj = build_connector((2, 4, 8, 8), (2, 4, 8, 8), kind="proj")
    assert _params(proj) > 0 and proj(torch.randn(2, 4, 8, 8)).shape == (2, 4, 8, 8)
    none = build_connector((2, 4, 8, 8), (2, 4, 4, 4), kind="none")
    assert _params(none) == 0 and none(torch.randn(2, 4, 8, 8)).shape == (2, 4, 4, 4)


def test_resize_is_a_no_op_for_equal_sizes() -> None:
    x = torch.randn(2, 3, 4, 4)
    assert resize(x, (4, 4)) is x


def test_layer_pairs_validation() -> None:
    assert layer_pairs("m", ["a", "b"], ["c", "d"]) == [("a", "c"), ("b", "d")]
    with pytest.raises(DistillError, match="paired by position"):
        layer_pairs("m", ["a", "b"], ["c"])
    with pytest.raises(DistillError, match="at least 2"):
        layer_pairs("m", ["a"], ["c"], min_pairs=2)
    with pytest.raises(DistillError, match="list of module paths"):
        layer_pairs("m", "a", "c")  # type: ignore[arg-type]


def test_missing_probe_or_capture_names_the_path() -> None:
    ctx = SetupContext({"a": (2, 3)}, {"b": (2, 3)}, num_samples=4, num_classes=2)
    assert probed_shapes("m", ctx, [("a", "b")]) == [((2, 3), (2, 3))]
    with pytest.raises(DistillError, match="'zz'"):
        probed_shapes("m", ctx, [("a", "zz")])
    s = ModelOutput(torch.zeros(2, 2), {"a": torch.zeros(2, 3)})
    with pytest.raises(DistillError, match="'b' was not captured"):
        paired_features("m", s, ModelOutput(torch.zeros(2, 2)), [("a", "b")])
    with pytest.raises(DistillError, match="teacher"):
        paired_features("m", s, None, [("a", "b")])


def test_teacher_features_come_back_detached() -> None:
    t_feat = torch.randn(2, 3, requires_grad=True)
    s_feat = torch.randn(2, 3, requires_grad=True)
    [(fs, ft)] = paired_features("m", ModelOutput(torch.zeros(2, 2), {"a": s_feat}),
                                 ModelOutput(torch.zeros(2, 2), {"b": t_feat}), [("a", "b")])
    assert fs.requires_grad and not ft.requires_grad
