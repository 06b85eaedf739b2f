"""Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (arXiv:1707.01219).

Each channel's spatial activation pattern, L2-normalised, is one sample of the layer's "selectivity"
distribution; the loss is the squared maximum mean discrepancy between the student's and the teacher's
channel samples under the polynomial kernel ``k(x, y) = (x . y + c)^d`` (the paper's best: d = 2, c = 0):

    MMD^2 = mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j') - 2 mean_{i,j} k(s_j, t_i),

averaged over the batch and weighted by ``beta`` = 50 (RepDistiller / mdistiller). Channel counts may
differ; of two maps of different spatial sizes the larger is average-pooled to the smaller's (RepDistiller's
``NSTLoss``), so the samples live in the same space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.connectors import (
    feature_needs,
    layer_pairs,
    paired_features,
    pool_larger,
    probed_shapes,
    require_spatial,
)
from distill.methods.base import METHODS, Method
from distill.types import Batch, LossOutput, ModelOutput, SetupContext, StepContext


def poly_kernel(a: Tensor, b: Tensor, degree: int = 2, c: float = 0.0) -> Tensor:
    """(B, Na, N), (B, Nb, N) -> (B, Na, Nb): (a_i . b_j + c)^degree."""
    return (a @ b.transpose(1, 2) + c).pow(degree)


def nst_loss(student: Tensor, teacher: Tensor, degree: int = 2, c: float = 0.0) -> Tensor:
    """(B, Cs, *Ss), (B, Ct, *St) -> scalar squared MMD between the channel-wise normalised spatial
    patterns (the larger map pooled to the smaller's size), averaged over the batch; computed in fp32."""
    student, teacher = pool_larger(student.float(), teacher.float())  # (B, Cs, *S), (B, Ct, *S)
    f_s = F.normalize(student.flatten(2), dim=2)  # (B, Cs, N)
    f_t = F.normalize(teacher.float().flatten(2), dim=2)  # (B, Ct, N)
    return (poly_kernel(f_t, f_t, degree, c).mean() + poly_kernel(f_s, f_s, degree, c).mean()
            - 2 * poly_kernel(f_s, f_t, degree, c).mean())


@METHODS.register("nst")
class NST(Method):
    """Neuron selectivity transfer: ``beta * sum_pairs nst_loss(student, teacher)``.

    The default, ``auto``, taps every stage's output, as RepDistiller (``feat[1:-1]``), paired by relative
    depth (``distill.stages``); features must be (B, C, L) or (B, C, H, W).
    """

    auto_layers = "stages"

    def __init__(self, student_layers: list[str] | str = "auto", teacher_layers: list[str] | str = "auto",
                 beta: float = 50.0, degree: int = 2, c: float = 0.0) -> None:
        super().__init__()
        self.pairs = layer_pairs("nst", student_layers, teacher_layers)
        self.needs = feature_needs(self.pairs)
        self.beta, self.degree, self.c = beta, degree, c

    def setup(self, ctx: SetupContext) -> None:
        """Nothing to build: check that the taps are spatial maps."""
        require_spatial("nst", self.pairs, probed_shapes("nst", ctx, self.pairs))

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        feats = paired_features("nst", s, t, self.pairs)
        loss = self.beta * torch.stack([nst_loss(fs, ft, self.degree, self.c) for fs, ft in feats]).sum()
        return LossOutput(loss, {"nst": loss})
