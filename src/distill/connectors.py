"""Shape-driven adapters from student features to teacher features, and plumbing shared by feature methods.

Everything here is built from probed shapes (batch dimension included), never from channel counts typed by
hand. Layout convention: dimension 1 holds channels, so a feature is ``(B, D)`` (a vector), ``(B, C, L)`` (a
sequence) or ``(B, C, H, W)`` (a map). A channels-last tensor such as a transformer's ``(B, tokens, D)`` is
read as ``C = tokens``; tap a layer whose output is channels-first, or ``fc:input``, for such models.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import DistillError
from distill.types import ModelOutput, Needs, SetupContext

Shape = tuple[int, ...]

CONNECTOR_KINDS = ("auto", "proj", "none")
"""``auto``: identity when shapes match, else resize and/or project only what differs; ``proj``: always a
learnable projection (1x1 conv + BN, or Linear) after any resize; ``none``: resize only, channels must match."""

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_ADAPTIVE_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d}
_INTERP_MODE = {1: "linear", 2: "bilinear"}


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """(B, C, *S) -> (B, C, *size): adaptive average pooling when every dimension shrinks (no aliasing),
    (bi)linear interpolation otherwise. Returns ``x`` itself when the size already matches."""
    size = tuple(size)
    if tuple(x.shape[2:]) == size:
        return x
    if all(a >= b for a, b in zip(x.shape[2:], size)):
        return _ADAPTIVE_POOL[len(size)](x, size)
    return F.interpolate(x, size=size, mode=_INTERP_MODE[len(size)], align_corners=False)


def flatten_spatial(x: Tensor) -> Tensor:
    """(B, C, *S) -> (B, C, N) with N = prod(S); a vector (B, D) becomes (B, D, 1)."""
    return x.flatten(2) if x.dim() > 2 else x.unsqueeze(-1)


def pool_larger(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """RepDistiller's rule for maps of different sizes (AT, NST, VID): adaptive average pooling brings the larger
    map down to the smaller one's size, each dimension to the smaller of the two. Vectors pass unchanged."""
    if student.dim() < 3 or student.dim() != teacher.dim():
        return student, teacher
    size = pooled_size(student.shape, teacher.shape)
    return resize(student, size), resize(teacher, size)


def pooled_size(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> tuple[int, ...]:
    """The common spatial size :func:`pool_larger` gives two feature shapes (batch dim included)."""
    return tuple(min(a, b) for a, b in zip(student_shape[2:], teacher_shape[2:]))


class Resize(nn.Module):
    """Module form of :func:`resize` to a fixed spatial size."""

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: Tensor) -> Tensor:
        return resize(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class GlobalAvgPool(nn.Module):
    """(B, C, *S) -> (B, C): the mean over every spatial position."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).mean(dim=-1)


def _check_rank(shape: Shape, side: str) -> None:
    if not 2 <= len(shape) <= 4 or any(d < 1 for d in shape):
        raise DistillError(f"connector: {side} feature shape {shape} is not (B, D), (B, C, L) or (B, C, H, W)")


def spatial_adapter(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """The parameter-free part of a connector: brings the student's spatial layout to the teacher's
    (resize, or global pooling when the teacher feature is a vector); channels are left alone."""
    s, t = tuple(student_shape), tuple(teacher_shape)
    _check_rank(s, "student")
    _check_rank(t, "teacher")
    if len(s) < len(t):
        raise DistillError(
            f"connector: cannot map a student vector {s} onto a teacher feature map {t}: a vector has no "
            "spatial layout to spread over the teacher's positions; tap a convolutional student layer, or a "
            "vector teacher layer such as 'fc:input'")
    if len(s) > len(t):
        if len(t) != 2:
            raise DistillError(f"connector: student {s} and teacher {t} have different spatial ranks "
                               "(1-D sequence vs 2-D map); tap layers of the same kind")
        return GlobalAvgPool()  # (B, C, *S) -> (B, C)
    return Resize(t[2:]) if s[2:] != t[2:] else nn.Identity()


def _projection(c_in: int, c_out: int, spatial_rank: int) -> list[tuple[str, nn.Module]]:
    """A learnable channel map: Linear for vectors, 1x1 conv + BN for sequences and maps."""
    if spatial_rank == 0:
        return [("proj", nn.Linear(c_in, c_out))]
    conv = _CONV[spatial_rank](c_in, c_out, kernel_size=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return [("proj", conv), ("bn", _BN[spatial_rank](c_out))]


def build_connector(student_shape: Sequence[int], teacher_shape: Sequence[int], *, kind: str = "auto") -> nn.Module:
    """A module mapping a student feature of ``student_shape`` to ``teacher_shape`` (both with batch dim;
    the batch size itself is not compared).

    (B, C, H, W) / (B, C, L): 1x1 conv + BatchNorm for channels, adaptive average pooling (student larger)
    or (bi)linear interpolation (student smaller) for the spatial size. (B, D): Linear. A spatial student
    and a vector teacher: global average pooling + Linear. A vector student cannot feed a spatial teacher
    (DistillError). ``kind`` is one of :data:`CONNECTOR_KINDS`; ``auto`` gives ``nn.Identity`` for equal shapes.
    """
    if kind not in CONNECTOR_KINDS:
        raise DistillError(f"connector kind {kind!r} is not one of {', '.join(CONNECTOR_KINDS)}")
    s, t = tuple(student_shape), tuple(teacher_shape)
    adapter = spatial_adapter(s, t)
    layers: list[tuple[str, nn.Module]] = [] if isinstance(adapter, nn.Identity) else [("resize", adapter)]
    if kind == "proj" or (kind == "auto" and s[1] != t[1]):
        layers += _projection(s[1], t[1], len(t) - 2)
    elif s[1] != t[1]:
        raise DistillError(f"connector kind 'none' cannot change channels: student {s} vs teacher {t}")
    return nn.Sequential(OrderedDict(layers)) if layers else nn.Identity()


# --- plumbing shared by the feature methods (paired student/teacher taps) ---


AUTO = "auto"
"""``student_layers: auto`` / ``teacher_layers: auto``: the engine picks the layers from both models' stages
(``distill.stages``) before anything is probed; until then a method's taps are this placeholder."""


def is_auto(method: str, student_layers: Any, teacher_layers: Any) -> bool:
    """True when both sides say ``auto``; one side ``auto`` and the other a list is a DistillError."""
    s, t = student_layers == AUTO, teacher_layers == AUTO
    if s != t:
        raise DistillError(f"{method}: student_layers and teacher_layers are paired, so both are 'auto' or both "
                           f"are lists of module paths (got {student_layers!r} and {teacher_layers!r})")
    return s


def auto_needs() -> Needs:
    """Needs of a method whose layers are still ``auto``: a live teacher, and placeholder taps."""
    return Needs(teacher=True, live_teacher=True, student_taps=(AUTO,), teacher_taps=(AUTO,))


def layer_lists(method: str, student_layers: Any, teacher_layers: Any) -> tuple[list[str], list[str]]:
    """The two tap lists as lists (empty while ``auto``); a non-list or a non-string path is a DistillError."""
    if is_auto(method, student_layers, teacher_layers):
        return [], []
    _check_paths(method, student_layers, teacher_layers)
    return list(student_layers), list(teacher_layers)


def _check_paths(method: str, student_layers: Any, teacher_layers: Any) -> None:
    for side, layers in (("student_layers", student_layers), ("teacher_layers", teacher_layers)):
        if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or \
                not all(isinstance(p, str) and p for p in layers):
            raise DistillError(f"{method}: {side} must be a list of module paths or 'auto', got {layers!r}")


def require_resolved(method: str, pairs: Sequence[Any]) -> None:
    """A DistillError when a method's layers are still ``auto``: called outside the engine, nothing resolved
    them (``distill.engine.setup_methods`` does, from both models)."""
    if not pairs:
        raise DistillError(f"{method}: its layers are still 'auto'; run it through the engine (distill.fit, a "
                           "recipe, DistillationModel, or distill.engine.setup_methods), which picks them from "
                           "both models, or give student_layers and teacher_layers")


def layer_pairs(method: str, student_layers: Sequence[str], teacher_layers: Sequence[str],
                *, min_pairs: int = 1) -> list[tuple[str, str]]:
    """Pair tap paths by position; a length mismatch, too few pairs or a non-string path is a DistillError.
    ``auto`` on both sides gives no pairs yet (the engine resolves them)."""
    if is_auto(method, student_layers, teacher_layers):
        return []
    _check_paths(method, student_layers, teacher_layers)
    if len(student_layers) != len(teacher_layers):
        raise DistillError(
            f"{method}: student_layers and teacher_layers are paired by position but have "
            f"{len(student_layers)} and {len(teacher_layers)} entries ({list(student_layers)} vs "
            f"{list(teacher_layers)})")
    if len(student_layers) < min_pairs:
        raise DistillError(f"{method}: needs at least {min_pairs} layer pair(s), got {len(student_layers)}")
    return list(zip(student_layers, teacher_layers))


def feature_needs(pairs: Sequence[tuple[str, str]]) -> Needs:
    """Needs of a method reading the paired taps: a live teacher and both sides' taps (de-duplicated); no pairs
    yet (``auto``): placeholders."""
    if not pairs:
        return auto_needs()
    return Needs(teacher=True, live_teacher=True,
                 student_taps=tuple(dict.fromkeys(s for s, _ in pairs)),
                 teacher_taps=tuple(dict.fromkeys(t for _, t in pairs)))


def probed_shapes(method: str, ctx: SetupContext, pairs: Sequence[tuple[str, str]]) -> list[tuple[Shape, Shape]]:
    """The probed (student, teacher) shape of every pair; a path missing from the probe is a DistillError."""
    require_resolved(method, pairs)
    out = []
    for s_path, t_path in pairs:
        for side, path, shapes in (("student", s_path, ctx.student_shapes), ("teacher", t_path, ctx.teacher_shapes)):
            if path not in shapes:
                raise DistillError(f"{method}: {side} tap {path!r} was not probed (probed: {', '.join(shapes)})")
        out.append((tuple(ctx.student_shapes[s_path]), tuple(ctx.teacher_shapes[t_path])))
    return out


def require_spatial(method: str, pairs: Sequence[tuple[str, str]], shapes: Sequence[tuple[Shape, Shape]]) -> None:
    """Raise a DistillError unless every paired feature is a (B, C, L) or (B, C, H, W) map of equal rank."""
    for (s_path, t_path), (s, t) in zip(pairs, shapes):
        if len(s) < 3 or len(t) < 3 or len(s) != len(t):
            raise DistillError(
                f"{method}: needs spatial features of the same rank, got student {s_path!r} {s} and teacher "
                f"{t_path!r} {t}; tap convolutional layers (e.g. 'layer3' or 'avgpool:input' of a zoo CNN)")


def paired_features(method: str, s: ModelOutput, t: ModelOutput | None,
                    pairs: Sequence[tuple[str, str]]) -> list[tuple[Tensor, Tensor]]:
    """(student, teacher) features per pair; the teacher side is detached so no gradient can reach it."""
    require_resolved(method, pairs)
    if t is None:
        raise DistillError(f"{method}: needs teacher outputs")
    out = []
    for s_path, t_path in pairs:
        for side, path, feats in (("student", s_path, s.feats), ("teacher", t_path, t.feats)):
            if path not in feats:
                raise DistillError(f"{method}: {side} feature {path!r} was not captured (captured: "
                                   f"{', '.join(feats) or 'none'}); the engine must tap needs.{side}_taps")
        out.append((s.feats[s_path], t.feats[t_path].detach()))
    return out


def check_setup(method: str, built: nn.ModuleList, pairs: Sequence[tuple[str, str]]) -> None:
    """Guard for forward: the per-pair modules must have been built by ``setup``."""
    if len(built) != len(pairs):
        raise RuntimeError(f"{method}: setup(ctx) must run before forward: it builds the per-layer modules "
                           "from the probed tap shapes")


def init_only_check(method: str, pretrain_epochs: int, main: bool) -> bool:
    """``main`` of an initialisation-stage method (AB, FSP), validated: with no pre-training stage and
    ``main: false`` its loss would never apply."""
    check_pretrain_epochs(method, pretrain_epochs)
    if not isinstance(main, bool):
        raise DistillError(f"{method}: main must be true or false, got {main!r}")
    if pretrain_epochs == 0 and not main:
        raise DistillError(f"{method}: pretrain_epochs 0 with main: false never applies the loss; set "
                           "pretrain_epochs > 0 (its initialisation stage) or main: true")
    return main


def check_pretrain_epochs(method: str, epochs: int) -> int:
    """Validate a ``pretrain_epochs`` argument (a non-negative integer)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise DistillError(f"{method}: pretrain_epochs must be an integer >= 0, got {epochs!r}")
    return epochs
