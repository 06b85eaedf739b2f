"""Chen, Liu, Zhao & Jia, CVPR 2021, "Distilling Knowledge via Knowledge Review" (ReviewKD).

A student stage is supervised by the teacher stage of the same depth *and* by its own deeper stages:
attention-based fusion (ABF) modules run from the deepest stage to the shallowest, each fusing its stage
with the (upsampled) fused result of the stage below it, and map it onto the teacher's channels and
spatial size. The hierarchical context loss (HCL) compares every fused map with the teacher's map at full
resolution and after average pooling to 4x4, 2x2 and 1x1 (levels smaller than the map only), with weights
1, 1/2, 1/4, 1/8 renormalised to sum to one::

    L = sum_stages  sum_l w_l * MSE(pool_l(F_s), pool_l(F_t)) / sum_l w_l

A 2-D stage (B, D), such as the pooled embedding ``fc:input``, is treated as a (B, D, 1, 1) map, as the
paper does with its last, pooled stage. Other ranks are rejected. The teacher maps are taken as tapped;
the paper uses the teacher's pre-activation maps, so tap a pre-ReLU module where one exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.connectors import auto_needs, is_auto, require_resolved
from distill.errors import DistillError
from distill.methods.base import METHODS, Method
from distill.types import Batch, LossOutput, ModelOutput, Needs, SetupContext, StepContext

PYRAMID = (4, 2, 1)  # pooled sizes of the HCL levels, after the full-resolution one


def hcl_loss(fused: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """Hierarchical context loss over paired (B, C, H, W) maps -> scalar, summed over stages.

    Level weights halve per level (1, 1/2, 1/4, 1/8); a level is pooled to (min(size, H), min(size, W)) and
    skipped when that is the full map
    and the weighted MSEs (means over all elements) are divided by the sum of the weights used.
    """
    total = fused[0].new_zeros((), dtype=torch.float32)
    for fs, ft in zip(fused, teacher, strict=True):
        fs, ft = fs.float(), ft.float()  # (B, C, H, W) each
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        h, w = fs.shape[-2:]
        for size in PYRAMID:
            target = (min(size, h), min(size, w))  # a 1-D stage (L, 1) pools along L only
            if target == (h, w):
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, target), F.adaptive_avg_pool2d(ft, target))
            weights += weight
        total = total + loss / weights
    return total


class ABF(nn.Module):
    """Attention-based fusion: 1x1 conv to ``mid`` channels, fused with the deeper stage's result by two
    per-pixel sigmoid attention maps, resized to the teacher's spatial size, then a 3x3 conv to the
    teacher's channels. The deepest ABF has nothing to fuse (``fuse=False``)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)  # the reference initialisation
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """x: (B, C_s, H, W); residual: (B, mid, h, w) from the deeper ABF or None.

        Returns (out (B, C_t, *out_size), fused (B, mid, *out_size) for the next, shallower ABF).
        """
        x = self.conv1(x)  # (B, mid, H, W)
        if self.att is not None:
            if residual is None:
                raise ValueError("a fusing ABF needs the deeper stage's result")
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")  # (B, mid, H, W)
            a = self.att(torch.cat([x, residual], dim=1))  # (B, 2, H, W)
            x = x * a[:, :1] + residual * a[:, 1:]  # (B, mid, H, W)
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")  # (B, mid, *out_size)
        return self.conv2(x), x


def as_map(x: Tensor, layer: str) -> Tensor:
    """A stage feature as a (B, C, H, W) map: 4-D as is, 1-D sequence maps (B, C, L) as (B, C, L, 1),
    2-D (B, D) as (B, D, 1, 1); others rejected."""
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x[..., None]
    if x.dim() == 2:
        return x[:, :, None, None]
    raise DistillError(f"reviewkd: layer {layer!r} gives a {x.dim()}-D feature {tuple(x.shape)}; stages must be "
                       "(B, C, H, W) maps or (B, D) vectors")


def warmup_factor(epoch: int, epochs: int, warmup_epochs: int) -> float:
    """Linear warm-up of the loss weight: (epoch + 1) / W, capped at 1, with 0-based ``epoch``.

    W = min(warmup_epochs, epochs / 12): the reference's 20 epochs of a 240-epoch schedule, shrunk
    proportionally for shorter runs so they reach full weight early too. ``warmup_epochs=0`` disables it.
    """
    span = min(float(warmup_epochs), epochs / 12.0)
    return 1.0 if span <= 0 else min((epoch + 1) / span, 1.0)


@METHODS.register("reviewkd")
class ReviewKD(Method):
    """ReviewKD (Chen et al., CVPR 2021) with ABF fusion and the HCL loss; returns only ``beta * warmup * HCL``.

    ``student_layers`` / ``teacher_layers`` are paired stages ordered shallow to deep. The default, ``auto``, is
    mdistiller's: the student's stage outputs and the teacher's pre-ReLU stage outputs (``preact_feats[1:]``),
    each plus the pooled embedding (``distill.stages``). ``mid_channel=256`` is clamped to the deepest student
    stage's width; ``beta=5`` is the weight of mdistiller's CIFAR configs for most pairs (its code default is 1)
    and ``warmup_epochs=20`` its warm-up (see ``warmup_factor`` for short schedules). The paper pairs it with
    cross-entropy: ``methods: [ce, reviewkd]``.
    """

    auto_layers = "stages_tpreact+embedding"

    def __init__(self, student_layers: list[str] | str = "auto", teacher_layers: list[str] | str = "auto",
                 beta: float = 5.0, mid_channel: int = 256, warmup_epochs: int = 20) -> None:
        super().__init__()
        if is_auto("reviewkd", student_layers, teacher_layers):
            student_layers = teacher_layers = []
            self.needs = auto_needs()
        elif isinstance(student_layers, str) or isinstance(teacher_layers, str) or not student_layers \
                or len(student_layers) != len(teacher_layers):
            raise DistillError(f"reviewkd: student_layers and teacher_layers must be paired lists of the same, "
                               f"non-zero length; got {len(student_layers)} and {len(teacher_layers)}")
        if mid_channel < 1 or warmup_epochs < 0:
            raise DistillError("reviewkd: need mid_channel >= 1 and warmup_epochs >= 0")
        self.s_layers, self.t_layers = list(student_layers), list(teacher_layers)
        self.beta, self.mid_channel, self.warmup_epochs = beta, mid_channel, warmup_epochs
        if self.s_layers:
            self.needs = Needs(teacher=True, student_taps=tuple(self.s_layers), teacher_taps=tuple(self.t_layers),
                               live_teacher=True)
        self.abfs = nn.ModuleList()  # one per stage, shallow to deep; filled by setup()
        self.out_sizes: list[tuple[int, int]] = []

    def setup(self, ctx: SetupContext) -> None:
        """Build one ABF per stage from the probed student and teacher shapes."""
        require_resolved("reviewkd", self.s_layers)
        s_shapes = [_map_shape(ctx.student_shapes, p, "student") for p in self.s_layers]  # (B, C, H, W) each
        t_shapes = [_map_shape(ctx.teacher_shapes, p, "teacher") for p in self.t_layers]
        mid = min(self.mid_channel, s_shapes[-1][1])  # tiny nets: no wider than the deepest student stage
        last = len(s_shapes) - 1
        self.abfs = nn.ModuleList(ABF(s[1], mid, t[1], fuse=i < last)
                                  for i, (s, t) in enumerate(zip(s_shapes, t_shapes, strict=True)))
        self.out_sizes = [(t[2], t[3]) for t in t_shapes]

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        assert t is not None, "reviewkd needs teacher outputs"
        require_resolved("reviewkd", self.s_layers)
        if len(self.abfs) != len(self.s_layers):
            raise DistillError("reviewkd: setup() must run before the first forward (it builds the ABFs)")
        s_maps = [as_map(_feat(s, p, "student"), p) for p in self.s_layers]  # shallow -> deep
        t_maps = [as_map(_feat(t, p, "teacher"), p).detach() for p in self.t_layers]
        fused = self.review(s_maps)
        loss = hcl_loss(fused, t_maps)
        weight = self.beta * warmup_factor(ctx.epoch, ctx.epochs, self.warmup_epochs)
        term = weight * loss
        return LossOutput(term, {"reviewkd": term})

    def review(self, s_maps: list[Tensor]) -> list[Tensor]:
        """Run the ABFs deep -> shallow over student maps (shallow -> deep); outputs in shallow -> deep order,
        each (B, C_t, H_t, W_t) of its teacher stage."""
        outs: list[Tensor] = []
        residual: Tensor | None = None
        for i in reversed(range(len(s_maps))):
            out, residual = self.abfs[i](s_maps[i], residual, self.out_sizes[i])
            outs.append(out)
        return outs[::-1]


def _map_shape(shapes: dict[str, tuple[int, ...]], layer: str, role: str) -> tuple[int, int, int, int]:
    if layer not in shapes:
        raise DistillError(f"reviewkd: no probed shape for {role} layer {layer!r} (probed: {sorted(shapes)})")
    shape = shapes[layer]
    if len(shape) == 2:
        return shape[0], shape[1], 1, 1
    if len(shape) == 3:
        return shape[0], shape[1], shape[2], 1
    if len(shape) == 4:
        return shape[0], shape[1], shape[2], shape[3]
    raise DistillError(f"reviewkd: {role} layer {layer!r} has shape {tuple(shape)}; stages must be "
                       "(B, C, H, W) maps or (B, D) vectors")


def _feat(out: ModelOutput, layer: str, role: str) -> Tensor:
    if layer not in out.feats:
        raise DistillError(f"reviewkd: the {role} output has no feature {layer!r} (got {sorted(out.feats)})")
    return out.feats[layer]
