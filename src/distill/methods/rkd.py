"""Park, Kim, Lu & Cho, CVPR 2019, "Relational Knowledge Distillation" (RKD).

The student matches the teacher's *structure* over a batch of embeddings, not the embeddings themselves:

    distance:  psi_D(i, j) = ||x_i - x_j|| / mu,  mu = mean distance over the batch's pairs i != j
    angle:     psi_A(i, j, k) = <e_ji, e_jk>,      e_ji = (x_i - x_j) / ||x_i - x_j||   (anchor j)
    loss = w_dist * mean_{i,j} huber(psi_D^s, psi_D^t) + w_angle * mean_{i,j,k} huber(psi_A^s, psi_A^t)

with the Huber (smooth-L1, delta 1) loss. Both potentials are invariant to translating, rotating or
uniformly scaling an embedding, so student and teacher widths may differ and no connector is needed.
Means run over all B^2 pairs and B^3 triplets; degenerate ones (i = j) are 0 on both sides, as in the
reference code the weights were tuned with. Defaults: w_dist=25, w_angle=50 (RepDistiller / mdistiller, with
an overall weight of 1; the paper's 1:2 distance:angle ratio), on the penultimate embedding.

This module also holds the tap plumbing shared by the relation methods (sp, cc, pkt, kdsvd).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.connectors import auto_needs, is_auto, layer_lists, require_resolved
from distill.errors import DistillError
from distill.methods.base import METHODS, Method
from distill.types import Batch, LossOutput, ModelOutput, Needs, StepContext


def relation_needs(name: str, student_layers: list[str] | str, teacher_layers: list[str] | str,
                   min_layers: int = 1) -> Needs:
    """Validate paired tap lists and return the ``Needs`` of a relation method on those taps (placeholders while
    both are ``auto``)."""
    if is_auto(name, student_layers, teacher_layers):
        return auto_needs()
    if len(student_layers) < min_layers or len(student_layers) != len(teacher_layers):
        raise DistillError(f"{name}: student_layers and teacher_layers must be paired lists of the same length "
                           f">= {min_layers}; got {len(student_layers)} and {len(teacher_layers)}")
    return Needs(teacher=True, student_taps=tuple(student_layers), teacher_taps=tuple(teacher_layers),
                 live_teacher=True)


def tapped(name: str, out: ModelOutput, layer: str, role: str) -> Tensor:
    """The captured feature ``layer`` of ``out``, or a DistillError naming what was captured."""
    if layer not in out.feats:
        raise DistillError(f"{name}: the {role} output has no feature {layer!r} (got {sorted(out.feats)}); "
                           f"set {role}_layers to module paths of the {role} model")
    return out.feats[layer]


def paired_features(name: str, s: ModelOutput, t: ModelOutput | None, student_layers: list[str],
                    teacher_layers: list[str]) -> list[tuple[Tensor, Tensor]]:
    """[(student (B, ...), teacher (B, ...) detached)] per layer pair, both in fp32."""
    require_resolved(name, student_layers)
    assert t is not None, f"{name} needs teacher outputs"
    return [(tapped(name, s, ps, "student").float(), tapped(name, t, pt, "teacher").detach().float())
            for ps, pt in zip(student_layers, teacher_layers, strict=True)]


def pairwise_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """(B, D) -> (B, B) Euclidean distances with an exact-zero diagonal and finite gradients.

    sqrt is taken of squared distances clamped at ``eps``: at a zero distance the clamp blocks the
    infinite derivative of sqrt, and the diagonal is masked out afterwards.
    """
    sq = (x * x).sum(dim=1)  # (B,)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp(min=eps)  # (B, B)
    off_diag = 1.0 - torch.eye(x.shape[0], device=x.device, dtype=x.dtype)  # (B, B)
    return d2.sqrt() * off_diag


def _normalised_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """(B, D) -> (B, B) distances divided by their mean over the B(B - 1) pairs i != j."""
    d = pairwise_distances(x)  # (B, B)
    b = x.shape[0]
    return d / (d.sum() / (b * (b - 1))).clamp(min=eps)


def rkd_distance_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Huber loss between mean-normalised distance matrices: (B, Ds), (B, Dt) -> scalar (mean over B^2)."""
    if f_s.shape[0] < 2:
        return f_s.sum() * 0.0
    return F.smooth_l1_loss(_normalised_distances(f_s), _normalised_distances(f_t))


def _angles(x: Tensor) -> Tensor:
    """(B, D) -> (B, B, B): [j, i, k] = cosine of the angle at anchor j between x_i and x_k."""
    e = F.normalize(x[None, :, :] - x[:, None, :], p=2, dim=2)  # (B, B, D): [j, i] = unit(x_i - x_j)
    return torch.bmm(e, e.transpose(1, 2))  # (B, B, B)


def rkd_angle_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Huber loss between triplet angle cosines: (B, Ds), (B, Dt) -> scalar (mean over B^3)."""
    return F.smooth_l1_loss(_angles(f_s), _angles(f_t))


@METHODS.register("rkd")
class RKD(Method):
    """Relational KD (Park et al., CVPR 2019), distance + angle; returns only its own terms.

    Terms: ``rkd_dist`` (w_dist * distance loss) and ``rkd_angle`` (w_angle * angle loss), summed over the
    layer pairs; features are flattened to (B, -1). Combine with ce or kd in the recipe. Memory grows as
    B^2 * D for the angle term.
    """

    auto_layers = "embedding"

    def __init__(self, w_dist: float = 25.0, w_angle: float = 50.0, student_layers: list[str] | str = "auto",
                 teacher_layers: list[str] | str = "auto") -> None:
        super().__init__()
        self.w_dist, self.w_angle = w_dist, w_angle
        self.needs = relation_needs("rkd", student_layers, teacher_layers)
        self.s_layers, self.t_layers = layer_lists("rkd", student_layers, teacher_layers)

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        pairs = paired_features("rkd", s, t, self.s_layers, self.t_layers)
        flat = [(fs.flatten(1), ft.flatten(1)) for fs, ft in pairs]  # (B, Ds), (B, Dt)
        dist = self.w_dist * sum(rkd_distance_loss(fs, ft) for fs, ft in flat)
        angle = self.w_angle * sum(rkd_angle_loss(fs, ft) for fs, ft in flat)
        return LossOutput(dist + angle, {"rkd_dist": dist, "rkd_angle": angle})
