"""Tung & Mori, ICCV 2019, "Similarity-Preserving Knowledge Distillation" (SP).

Inputs that the teacher maps to similar activations should get similar student activations too. Per layer
pair, with Q the batch's activations flattened to (B, D)::

    G = Q Q^T,  G~ = G with each row L2-normalised           (B, B)
    L = 1 / B^2 * ||G~_t - G~_s||_F^2,   loss = beta * sum over layer pairs of L

Only B x B matrices are compared, so widths and spatial sizes may differ between student and teacher.
beta=3000 is the paper's (and RepDistiller's / mdistiller's) weight. The default taps, ``auto``, are the paper's
and RepDistiller's (``feat[-2]``): the last stage's feature map before pooling (``layer3`` of a CIFAR ResNet;
``distill.stages``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.connectors import layer_lists
from distill.methods.base import METHODS, Method
from distill.methods.rkd import paired_features, relation_needs
from distill.types import Batch, LossOutput, ModelOutput, StepContext


def similarity_matrix(f: Tensor) -> Tensor:
    """(B, ...) activations -> (B, B) Gram matrix of the flattened rows, each row L2-normalised."""
    q = f.flatten(1)  # (B, D)
    return F.normalize(q @ q.t(), p=2, dim=1)  # (B, B)


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Squared Frobenius distance of the normalised similarity matrices / B^2: (B, ...), (B, ...) -> scalar."""
    diff = similarity_matrix(f_t) - similarity_matrix(f_s)  # (B, B)
    return (diff * diff).sum() / (f_s.shape[0] ** 2)


@METHODS.register("sp")
class SP(Method):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019); returns only ``sp`` = beta * sum of layer losses."""

    auto_layers = "last"

    def __init__(self, beta: float = 3000.0, student_layers: list[str] | str = "auto",
                 teacher_layers: list[str] | str = "auto") -> None:
        super().__init__()
        self.beta = beta
        self.needs = relation_needs("sp", student_layers, teacher_layers)
        self.s_layers, self.t_layers = layer_lists("sp", student_layers, teacher_layers)

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        pairs = paired_features("sp", s, t, self.s_layers, self.t_layers)
        term = self.beta * sum(sp_loss(fs, ft) for fs, ft in pairs)
        return LossOutput(term, {"sp": term})
