"""Passalis & Tefas, ECCV 2018, "Learning Deep Representations with Probabilistic Knowledge Transfer" (PKT).

Each network's embeddings define, for every sample i, a distribution over its batch neighbours j != i
from a cosine-similarity kernel; the student matches the teacher's conditional distributions::

    K(a, b) = (cos(a, b) + 1) / 2                       in [0, 1]
    p_{j|i} = K(t_i, t_j) / sum_{k != i} K(t_i, t_k)    (teacher; q_{j|i} likewise for the student)
    L = mean over pairs i != j of p_{j|i} * log(p_{j|i} / q_{j|i}),   loss = beta * sum over layer pairs

Only B x B kernels are compared, so widths may differ. The paper excludes i = j, as here. The reduction
is a per-entry mean over the B(B - 1) pairs (the per-sample KL summed over neighbours, averaged over
samples, divided by B - 1), because beta=30000 (RepDistiller, mdistiller) was tuned for the reference
code's per-entry mean over all B^2 entries (self-pairs included). ``eps`` guards the log as there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.methods.base import METHODS, Method
from distill.methods.rkd import paired_features, relation_needs
from distill.types import Batch, LossOutput, ModelOutput, StepContext


def conditional_probabilities(f: Tensor, eps: float = 1e-7) -> Tensor:
    """(B, ...) -> (B, B) p_{j|i} from the cosine kernel; row i sums to 1 over j != i, diagonal 0."""
    x = F.normalize(f.flatten(1), p=2, dim=1, eps=eps)  # (B, D)
    kernel = (x @ x.t() + 1.0) / 2.0  # (B, B) in [0, 1]
    off_diag = 1.0 - torch.eye(x.shape[0], device=x.device, dtype=x.dtype)  # (B, B)
    kernel = kernel * off_diag
    return kernel / (kernel.sum(dim=1, keepdim=True) + eps)  # (B, B)


def pkt_loss(f_s: Tensor, f_t: Tensor, eps: float = 1e-7) -> Tensor:
    """KL(teacher || student) of the neighbour distributions, mean over pairs i != j: (B, ...) x2 -> scalar."""
    b = f_s.shape[0]
    if b < 2:
        return f_s.sum() * 0.0
    p = conditional_probabilities(f_t, eps)  # (B, B) teacher
    q = conditional_probabilities(f_s, eps)  # (B, B) student
    kl = p * torch.log((p + eps) / (q + eps))  # (B, B), 0 on the diagonal since p_ii = 0
    return kl.sum() / (b * (b - 1))


@METHODS.register("pkt")
class PKT(Method):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018); returns only ``pkt`` = beta * loss."""

    def __init__(self, beta: float = 30000.0,
                 student_layers: list[str] = ["fc:input"],  # noqa: B006 (never mutated)
                 teacher_layers: list[str] = ["fc:input"]) -> None:  # noqa: B006
        super().__init__()
        self.beta = beta
        self.s_layers, self.t_layers = list(student_layers), list(teacher_layers)
        self.needs = relation_needs("pkt", self.s_layers, self.t_layers)

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        pairs = paired_features("pkt", s, t, self.s_layers, self.t_layers)
        term = self.beta * sum(pkt_loss(fs, ft) for fs, ft in pairs)
        return LossOutput(term, {"pkt": term})
